"""`edge pack BUNDLE OUT.tar.gz [--sign KEY]`: a deterministic archive of a bundle folder, optionally signed."""

from .. import signing
from ..archive import pack


def add_arguments(parser):
    parser.add_argument("bundle", help="bundle folder")
    parser.add_argument("out", help="archive to write (.tar.gz, .tgz or .tar)")
    parser.add_argument("--sign", metavar="KEY", help="ed25519 private key (OpenSSH or PEM): also "
                                                      "write OUT.sig, a detached signature")


def run(args):
    if args.sign:
        signing.load_private_key(args.sign)          # a bad key fails before anything is written
    digest = pack(args.bundle, args.out)
    print(f"packed {args.out} (sha256 {digest})")
    if args.sign:
        print(f"signed: {signing.sign_archive(args.out, args.sign)}")
    return 0
