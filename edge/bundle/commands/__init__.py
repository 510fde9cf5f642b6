"""The bundle commands, one module each (add_arguments(parser), run(args), as edge.cli's
table expects): `edge install`, `edge rollback`, `edge bundles` over edge.bundle.install,
`edge pack` over edge.bundle.archive."""

from ...common.names import DEFAULT_ROOT


def add_root(parser):
    parser.add_argument("--root", default=None,
                        help=f"install root (default $LINESIDE_ROOT or {DEFAULT_ROOT})")
