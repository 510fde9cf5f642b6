"""`edge install BUNDLE_DIR_OR_ARCHIVE [--root R] [--activate [--engine E] [--precision P]] [--keep N]`"""

from ..install import DEFAULT_KEEP, install
from . import add_root


def add_arguments(parser):
    parser.add_argument("source", help="bundle folder or archive (.tar, .tar.gz, .tgz)")
    parser.add_argument("--activate", action="store_true",
                        help="make it the current bundle (the old one becomes previous), once its "
                             "reference frames score on this box as on the workstation")
    parser.add_argument("--engine", default="auto", choices=("auto", "onnxruntime", "tensorrt"),
                        help="engine the box will run the bundle with (checked at --activate; default auto)")
    parser.add_argument("--precision", default="fp32", choices=("fp32", "fp16", "int8"),
                        help="precision the box will run (checked at --activate; default fp32)")
    parser.add_argument("--keep", type=int, default=DEFAULT_KEEP,
                        help=f"keep the N most recently installed bundles (default {DEFAULT_KEEP}); "
                             f"current and previous are always kept")
    add_root(parser)


def run(args):
    install(args.source, args.root, activate=args.activate, keep=args.keep, engine=args.engine,
            precision=args.precision)
    return 0
