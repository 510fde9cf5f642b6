"""The `edge` command. Each subcommand lives in its own module, imported only when used,
so that `edge run` on a line-side box never pulls in torch or the training code."""

import argparse
import importlib
import sys

from . import version_report
from .common.errors import EdgeError
from .common.logs import FORMATS, setup as setup_logging

# name -> (module, one-line help). A module provides add_arguments(parser) and run(args) -> int.
COMMANDS = {
    "train": ("train.cli", "train a model on good images and write a model bundle"),
    "evaluate": ("train.evaluate", "evaluate a bundle's ONNX graph on a data set's test split"),
    "compare": ("train.compare", "train several methods on one data set; one table and an accuracy-vs-speed plot"),
    "predict": ("edge.tools.predict", "score images or a folder with a bundle; write heat-map overlays"),
    "threshold": ("edge.tools.threshold", "set a bundle's threshold for a false-reject rate (or a value) without retraining"),
    "quantize": ("convert.quantize", "add an FP16 or INT8 variant of the graph to a bundle"),
    "build": ("convert.build", "build a TensorRT plan for this device from a bundle"),
    "bench": ("edge.tools.bench", "measure throughput and latency of each engine and precision"),
    "run": ("edge.runtime.run", "run the line-side loop: capture, infer, decide, act, record"),
    "check": ("edge.tools.check", "health check of an installed bundle and its runtime"),
    "install": ("edge.bundle.commands.install", "install a bundle (folder or archive) under the install root, verified; --activate"),
    "rollback": ("edge.bundle.commands.rollback", "make the previous installed bundle current again (swaps current and previous)"),
    "bundles": ("edge.bundle.commands.bundles", "list installed bundles and which is current / previous"),
    "pack": ("edge.bundle.commands.pack", "pack a bundle folder into a deterministic .tar.gz (manifest first, no plans)"),
}


def build_parser(command=None):
    """The `edge` parser; only `command`'s module is imported to add its arguments."""
    parser = argparse.ArgumentParser(prog="edge", description="Visual anomaly detection for factory lines: "
                                     "train, convert, run line-side with reject signals.")
    parser.add_argument("--version", action="store_true",
                        help="print the toolkit's version and the inference runtimes found, then exit")
    parser.add_argument("--log-format", choices=FORMATS, default="text",
                        help="text (default; for a terminal) or json (one object per line, e.g. for journald)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(_module=module)
        if name == command:
            importlib.import_module(module).add_arguments(p)
    return parser


def _command_in(argv):
    """The subcommand named in argv: the first word that is neither an option nor its value."""
    words = iter(argv)
    for arg in words:
        if arg in _TAKES_VALUE:
            next(words, None)
        elif not arg.startswith("-"):
            return arg
    return None


_TAKES_VALUE = ("--log-format",)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else [str(a) for a in argv]
    parser = build_parser(_command_in(argv))
    args = parser.parse_args(argv)
    setup_logging(args.log_format)
    if args.version:
        print(version_report())
        return 0
    if not args.command:
        parser.print_help()
        return 2
    try:
        return importlib.import_module(args._module).run(args) or 0
    except EdgeError as exc:
        print(f"edge {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"edge {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
