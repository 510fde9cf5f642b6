"""`edge pack BUNDLE OUT.tar.gz`: a deterministic archive of a bundle folder."""

from ..archive import pack


def add_arguments(parser):
    parser.add_argument("bundle", help="bundle folder")
    parser.add_argument("out", help="archive to write (.tar.gz, .tgz or .tar)")


def run(args):
    digest = pack(args.bundle, args.out)
    print(f"packed {args.out} (sha256 {digest})")
    return 0
