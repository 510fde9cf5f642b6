"""`edge rollback [--root R]`: current and previous swap places."""

from ..install import rollback
from . import add_root


def add_arguments(parser):
    add_root(parser)


def run(args):
    rollback(args.root)
    return 0
