"""`edge bundles [--root R] [--verify] [--json]`: the installed bundles, newest install first;
exit 1 when one is broken."""

import json
import os
import time

from ...common.names import install_root
from ..install import list_bundles
from . import add_root


def add_arguments(parser):
    parser.add_argument("--verify", action="store_true", help="check every file's sha256")
    parser.add_argument("--json", action="store_true", help="print JSON")
    add_root(parser)


def run(args):
    rows = list_bundles(args.root, verify=args.verify)
    if args.json:
        print(json.dumps(rows, indent=1))
    elif not rows:
        print(f"no bundles installed under {os.path.abspath(install_root(args.root))}")
    for row in rows if not args.json else ():
        when = (time.strftime("%Y-%m-%d %H:%M", time.localtime(row["installed"]))
                if row["installed"] else "?")
        print(f"{row['state'] or '-':9} {row['name']:40} {row['method'] or '?':12} installed {when}"
              + ("" if row["ok"] else f"  BROKEN: {row['problem']}"))
    return 0 if all(r["ok"] for r in rows) else 1
