"""How TensorRT plans are named, described and matched (shared by `edge build` and the engine).

A plan runs only on the GPU model, compute capability and TensorRT version that built it, for
the graph it was built from, within the batch range of its optimisation profile. All of that
is its key:

    plans/<gpu-slug>_sm87_trt10.3.0_int8_b1-4_<graph-sha8>.plan
    plans/<same>.json      sidecar: the key in full, the plan's sha256, build options

The manifest lists built plans under `plans:` (not under `files:`; plans are device-local),
and a plan whose key or sha256 does not match is refused and rebuilt by `edge build`.
"""

import json
import os
import re
from dataclasses import asdict, dataclass, fields
from typing import Optional

from ..common.errors import EdgeError
from ..common.fsutil import atomic_write_text, sha256_file

PLANS_DIR = "plans"
TIMING_CACHE = "timing.cache"
SIDECAR_FORMAT = 1
# Fields that must match for a plan to be usable. batch_opt only steers tactic choice.
MATCH_FIELDS = ("gpu", "cc", "runtime", "trt_version", "precision", "dla", "graph_sha256")


@dataclass(frozen=True)
class PlanKey:
    gpu: str                    # device name as CUDA reports it, e.g. "Orin" or "NVIDIA A2"
    cc: str                     # compute capability "8.7"
    runtime: str                # "tensorrt" or "tensorrt_rtx" (rtx plans are not for Jetson)
    trt_version: str            # full version, e.g. "10.3.0.30"
    precision: str              # fp32 | fp16 | int8
    batch_min: int
    batch_opt: int
    batch_max: int
    graph_sha256: str
    dla: Optional[int] = None   # DLA core, or None for the GPU

    # ---- naming ---------------------------------------------------------------------------
    def filename(self):
        ver = ".".join(self.trt_version.split(".")[:3])
        rt = "rtx" if self.runtime == "tensorrt_rtx" else "trt"
        batch = f"b{self.batch_min}-{self.batch_max}"
        if self.batch_opt != self.batch_max:
            batch += f"o{self.batch_opt}"
        dla = f"_dla{self.dla}" if self.dla is not None else ""
        return (f"{slug(self.gpu)}_sm{self.cc.replace('.', '')}_{rt}{ver}_{self.precision}"
                f"{dla}_{batch}_{self.graph_sha256[:8]}.plan")

    def to_dict(self):
        return asdict(self)

    @classmethod
    def from_dict(cls, d):
        names = {f.name for f in fields(cls)}
        missing = [n for n in names if n not in d and n != "dla"]
        if missing:
            raise ValueError(f"plan key lacks {', '.join(sorted(missing))}")
        return cls(**{k: d[k] for k in names if k in d})

    # ---- matching -------------------------------------------------------------------------
    def mismatches(self, other):
        """Reasons why a plan built under `other` cannot stand in for this key (empty: it can).
        The batch range must cover this key's range."""
        why = []
        for name in MATCH_FIELDS:
            mine, theirs = getattr(self, name), getattr(other, name)
            if mine != theirs:
                shown = (mine[:12], theirs[:12]) if name == "graph_sha256" else (mine, theirs)
                why.append(f"{name} is {shown[1]} (here: {shown[0]})")
        if other.batch_min > self.batch_min or other.batch_max < self.batch_max:
            why.append(f"batch range is {other.batch_min}-{other.batch_max} "
                       f"(needed: {self.batch_min}-{self.batch_max})")
        return why


def slug(name):
    s = re.sub(r"[^a-z0-9]+", "-", str(name).lower()).strip("-")
    return s or "gpu"


def cc_string(cc):
    if isinstance(cc, (tuple, list)):
        return f"{int(cc[0])}.{int(cc[1])}"
    return str(cc)


def parse_batches(text):
    """'1,4' -> (min, opt, max) = (1, 4, 4). A single size n gives (n, n, n)."""
    try:
        sizes = sorted({int(x) for x in str(text).split(",") if x.strip()})
    except ValueError:
        raise EdgeError(f"--batch must be sizes separated by commas, like 1,4 (got '{text}')") from None
    if not sizes or sizes[0] < 1:
        raise EdgeError(f"--batch sizes must be 1 or more (got '{text}')")
    return sizes[0], sizes[-1], sizes[-1]


# ---- where plans live -------------------------------------------------------------------
def plans_dir(bundle_path):
    return os.path.join(bundle_path, PLANS_DIR)


def timing_cache_path(bundle_path):
    return os.path.join(plans_dir(bundle_path), TIMING_CACHE)


def sidecar_path(plan_path):
    return os.path.splitext(plan_path)[0] + ".json"


def graph_sha256(bundle, precision):
    """The graph's sha256 from the manifest's checksums (verified on load), else hashed now."""
    path = bundle.graph_path(precision)
    rel = os.path.relpath(path, bundle.path)
    return bundle.manifest.get("files", {}).get(rel) or sha256_file(path)


def write_sidecar(plan_path, key, extra=None):
    doc = {"format": SIDECAR_FORMAT, "key": key.to_dict(), "plan": os.path.basename(plan_path),
           "plan_sha256": sha256_file(plan_path)}
    doc.update(extra or {})
    atomic_write_text(sidecar_path(plan_path), json.dumps(doc, indent=2, sort_keys=False) + "\n")
    return doc


def read_sidecar(plan_path):
    """(key, doc) for a plan; raises EdgeError naming the file when the sidecar is unusable."""
    spath = sidecar_path(plan_path)
    try:
        with open(spath) as f:
            doc = json.load(f)
        return PlanKey.from_dict(doc["key"]), doc
    except FileNotFoundError:
        raise EdgeError("plan has no sidecar describing its key; run `edge build` again", spath) from None
    except (ValueError, KeyError, TypeError) as exc:
        raise EdgeError(f"plan sidecar is not valid ({exc}); run `edge build` again", spath) from None


def check_plan(plan_path, want, verify_sha=True):
    """Reasons why the plan at plan_path cannot be used for key `want` (empty: usable)."""
    if not os.path.isfile(plan_path):
        return ["plan file missing"]
    try:
        have, doc = read_sidecar(plan_path)
    except EdgeError as exc:
        return [str(exc)]
    why = want.mismatches(have)
    if verify_sha and not why and sha256_file(plan_path) != doc.get("plan_sha256"):
        why.append("plan file altered (sha256 does not match its sidecar)")
    return why


def candidate_plans(bundle):
    """Plan files named in the manifest's `plans:` and any found in plans/ (deduplicated)."""
    seen, out = set(), []
    for rel in (bundle.manifest.get("plans") or {}):
        p = os.path.join(bundle.path, rel)
        if p not in seen:
            seen.add(p)
            out.append(p)
    folder = plans_dir(bundle.path)
    if os.path.isdir(folder):
        for name in sorted(os.listdir(folder)):
            p = os.path.join(folder, name)
            if name.endswith(".plan") and p not in seen:
                seen.add(p)
                out.append(p)
    return out


def find_plan(bundle, want):
    """(path, []) for a usable plan, or (None, [(path, reasons), ...]) for the ones refused.
    The plan named exactly by `want` is preferred; else any whose key covers `want`."""
    exact = os.path.join(plans_dir(bundle.path), want.filename())
    refused = []
    paths = candidate_plans(bundle)
    if exact in paths:
        paths.remove(exact)
        paths.insert(0, exact)
    for path in paths:
        why = check_plan(path, want)
        if not why:
            return path, []
        refused.append((path, why))
    return None, refused


def record_in_manifest(bundle, plan_path, key, plan_sha):
    """Note a built plan under the manifest's `plans:` and save the manifest atomically."""
    rel = os.path.relpath(plan_path, bundle.path).replace(os.sep, "/")
    plans = bundle.manifest.get("plans") or {}
    entry = key.to_dict()
    entry["plan_sha256"] = plan_sha
    plans[rel] = entry
    bundle.manifest["plans"] = plans
    bundle.save()


def runtime_name(trt_module):
    """'tensorrt' or 'tensorrt_rtx' for the imported TensorRT module."""
    return trt_module.__name__.split(".")[0]


def make_key(trt_module, device, precision, batches, graph_sha, dla=None):
    """The key for a plan built (or wanted) here. device = (name, (major, minor)) and
    batches = (min, opt, max)."""
    name, cc = device
    bmin, bopt, bmax = (int(b) for b in batches)
    return PlanKey(gpu=str(name), cc=cc_string(cc), runtime=runtime_name(trt_module),
                   trt_version=str(trt_module.__version__), precision=precision,
                   batch_min=bmin, batch_opt=bopt, batch_max=bmax, graph_sha256=graph_sha,
                   dla=None if dla is None else int(dla))
