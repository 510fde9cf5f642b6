"""`edge install BUNDLE_DIR_OR_ARCHIVE [--root R] [--activate] [--keep N]`"""

from ..install import DEFAULT_KEEP, install
from . import add_root


def add_arguments(parser):
    parser.add_argument("source", help="bundle folder or archive (.tar, .tar.gz, .tgz)")
    parser.add_argument("--activate", action="store_true",
                        help="make it the current bundle (the old one becomes previous)")
    parser.add_argument("--keep", type=int, default=DEFAULT_KEEP,
                        help=f"keep the N most recently installed bundles (default {DEFAULT_KEEP}); "
                             f"current and previous are always kept")
    add_root(parser)


def run(args):
    install(args.source, args.root, activate=args.activate, keep=args.keep)
    return 0
