"""`edge install BUNDLE_DIR_OR_ARCHIVE [--root R] [--activate [--engine E] [--precision P]] [--keep N] [--trust KEY.pub]`"""

from ...common.names import ENGINE_CHOICES, PRECISIONS
from ..archive import MAX_UNPACKED_MB
from ..install import DEFAULT_KEEP, install
from . import add_root


def add_arguments(parser):
    parser.add_argument("source", help="bundle folder or archive (.tar, .tar.gz, .tgz)")
    parser.add_argument("--activate", action="store_true",
                        help="make it the current bundle (the old one becomes previous), once its "
                             "reference frames score on this box as on the workstation")
    parser.add_argument("--engine", default="auto", choices=ENGINE_CHOICES,
                        help="engine the box will run the bundle with (checked at --activate; default auto)")
    parser.add_argument("--precision", default="fp32", choices=PRECISIONS,
                        help="precision the box will run (checked at --activate; default fp32)")
    parser.add_argument("--keep", type=int, default=DEFAULT_KEEP,
                        help=f"keep the N most recently installed bundles (default {DEFAULT_KEEP}); "
                             f"current and previous are always kept")
    parser.add_argument("--trust", action="append", metavar="KEY.pub", default=[],
                        help="install only an archive signed by this ed25519 public key (repeatable; "
                             "keys in <root>/trusted-keys/*.pub are always trusted)")
    parser.add_argument("--signature", metavar="FILE", help="the archive's signature (default ARCHIVE.sig)")
    parser.add_argument("--max-unpacked-mb", type=float, default=MAX_UNPACKED_MB,
                        help=f"refuse an archive that unpacks to more (default {MAX_UNPACKED_MB})")
    add_root(parser)


def run(args):
    install(args.source, args.root, activate=args.activate, keep=args.keep, trust=args.trust,
            signature=args.signature, max_unpacked_mb=args.max_unpacked_mb, engine=args.engine,
            precision=args.precision)
    return 0
