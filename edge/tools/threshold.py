"""`edge threshold BUNDLE --false-reject X | --value V`: move a bundle's operating point without
retraining. With --false-reject the rule is applied again to the held-out good images' scores
kept in the bundle; the old threshold is kept in the manifest's threshold history, and each
precision variant's own threshold moves with it (its recorded shift from FP32)."""

from ..bundle.manifest import Bundle
from ..common import oppoint as op
from ..common.errors import EdgeError


def set_threshold(bundle_path, false_reject=None, value=None, log=print):
    if (false_reject is None) == (value is None):
        raise EdgeError("give exactly one of --false-reject RATE or --value V")
    bundle = Bundle(bundle_path)
    entry = bundle.manifest["threshold"]
    names, scores = op.read_holdout(bundle.path, entry) if entry.get("holdout_file") else (None, None)
    if value is not None:
        try:
            value = float(value)
        except (TypeError, ValueError):
            raise EdgeError(f"--value must be a number, got '{value}'") from None
        if not value == value or value in (float("inf"), float("-inf")):
            raise EdgeError(f"--value must be finite, got '{value}'")
    if names is None:
        if value is None:
            op.read_holdout(bundle.path, entry)        # raises: no held-out scores
        new = {"value": value, "rule": f"value {value:.6g} set by hand", "method": "set by hand", "set": op.now()}
    else:
        new = op.operating_point(names, scores, false_reject, value=value)
    why = (f"edge threshold --false-reject {false_reject:g}" if value is None else f"edge threshold --value {value:g}")
    bundle.manifest["threshold"] = op.replace(entry, new, why)
    moved = []
    for precision, g in bundle.manifest["graphs"].items():
        for sub_name, sub in [(precision, g)] + [(f"{precision} ({k})", v) for k, v in g.items()
                                                  if isinstance(v, dict) and "file" in v]:
            own = sub.get("threshold")
            if not own:
                continue
            if "shift" in own:
                sub["threshold"] = op.carried_over(new, own["shift"], own["rule"].split(" on ", 1)[-1])
                moved.append(f"{sub_name} {sub['threshold']['value']:.6g}")
            else:
                sub.pop("threshold")           # an older variant: it now uses the bundle's threshold
                moved.append(f"{sub_name} uses the bundle's")
    bundle.save()
    log(f"{bundle.path}: threshold {entry['value']:.6g} -> {new['value']:.6g} ({new['rule']})")
    if "implied_false_reject" in new:
        log(op.describe(new))
    short = op.shortfall(new)
    if short:
        log(f"warning: {short}")
    if moved:
        log("variants: " + ", ".join(moved))
    return bundle.manifest["threshold"]


def add_arguments(p):
    p.add_argument("bundle", help="model bundle folder")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--false-reject", type=float, metavar="RATE",
                   help="target share of good parts rejected, set from the bundle's held-out good images")
    g.add_argument("--value", type=float, metavar="V", help="the threshold itself")


def run(args):
    set_threshold(args.bundle, args.false_reject, args.value)
    return 0
