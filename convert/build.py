"""`edge build`: build a TensorRT plan for this device from a bundle's ONNX graph, and cache it.

    edge build BUNDLE [--precision fp32|fp16|int8[,..]] [--batch 1,4] [--workspace MB]
                      [--dla N] [--force] [--check]

The plan is keyed by GPU model, compute capability, TensorRT version, precision, batch range
and the graph's sha256 (edge/engines/plan_key.py); a cached plan whose key or checksum does
not match is refused and rebuilt. The timing cache is kept in BUNDLE/plans/timing.cache,
loaded before and saved (atomically) after each build.

Precision lives in the graph (FP16 casts, INT8 Q/DQ pairs), so networks are created strongly
typed where TensorRT offers it (TensorRT 11 has nothing else) and the deprecated FP16/INT8
builder flags and calibrators are never used on the GPU. DLA is the exception: TensorRT 10's
DLA needs a weakly typed network with the FP16 (and for int8, INT8) builder flags; with
--dla that is what is built, with GPU fallback on, for one static batch (DLA runs only
min = opt = max shapes: a range is refused). A TensorRT without those flags refuses --dla.

Without `tensorrt`, `--check` falls back to `tensorrt_rtx` (TensorRT for RTX, PyPI): it shares
TensorRT's ONNX parser and builder front end and builds without a GPU, so it checks that a
graph parses and builds. Its plans are for RTX GPUs only, never for Jetson, and are not saved.
"""

import os
import time
import warnings

from edge.bundle.manifest import Bundle
from edge.engines import plan_key as pk
from edge.common.errors import EdgeError
from edge.common.fsutil import atomic_write_bytes

from edge.common.names import PRECISIONS
INPUT = "frames"


# ---- TensorRT module --------------------------------------------------------------------
def import_builder_trt(allow_rtx=False):
    """tensorrt, or (when allow_rtx) tensorrt_rtx for build checks. EdgeError when neither."""
    try:
        import tensorrt as trt
        return trt
    except ImportError:
        pass
    if allow_rtx:
        try:
            import tensorrt_rtx as trt
            return trt
        except ImportError:
            pass
    raise EdgeError("TensorRT is not installed (Jetson: comes with JetPack; x86: NVIDIA's "
                    "tensorrt wheels); `edge build --check` can check a graph without a GPU "
                    "using tensorrt-rtx (pip install tensorrt-rtx)")


def detect_device():
    """(name, (major, minor)) of CUDA device 0, or None when there is none."""
    from edge.engines.cuda import cuda_available, get_api

    if not cuda_available():
        return None
    return get_api().device_info()


_LOGGERS = {}


def _logger(trt, verbose=False):
    """One logger per TensorRT module: TensorRT keeps the first one it is given anyway."""
    logger = _LOGGERS.get(trt.__name__)
    if logger is None:
        logger = _LOGGERS[trt.__name__] = trt.Logger(trt.Logger.WARNING)
    logger.min_severity = trt.Logger.VERBOSE if verbose else trt.Logger.WARNING
    return logger


def _has_flag(trt, name):
    return hasattr(trt.BuilderFlag, name)


def strongly_typed_flag(trt):
    flag = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    return None if flag is None else 1 << int(flag)


# ---- network --------------------------------------------------------------------------
def parse_network(trt, builder, graph_path, logger, strongly_typed=True):
    """(network, parser) for the ONNX graph; EdgeError listing the parser's errors by node."""
    flags = 0
    st = strongly_typed_flag(trt)
    if strongly_typed and st is not None:
        flags |= st
    # TensorRT 10+: every network is explicit-batch (the flag is gone or ignored).
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    ok = parser.parse_from_file(graph_path)
    if not ok:
        errors = []
        for i in range(parser.num_errors):
            err = parser.get_error(i)
            where = ""
            if hasattr(err, "node_name") and err.node() >= 0:
                where = f"node {err.node()} '{err.node_name()}' ({err.node_operator()}): "
            desc = " ".join(str(err.desc()).split())
            errors.append(f"{where}{desc}")
        raise EdgeError("TensorRT's ONNX parser rejected the graph: " + " | ".join(errors or ["no detail"]),
                        graph_path)
    return network, parser


def add_profile(trt, builder, config, network, batches, graph_path):
    """One optimisation profile for `frames` covering batches (min, opt, max)."""
    names = [network.get_input(i).name for i in range(network.num_inputs)]
    if INPUT not in names:
        raise EdgeError(f"graph has no input '{INPUT}' (inputs: {', '.join(names)})", graph_path)
    shape = tuple(network.get_input(names.index(INPUT)).shape)
    if len(shape) != 4 or any(d < 0 for d in shape[1:]):
        raise EdgeError(f"input '{INPUT}' shape {shape}: only the batch dim may be dynamic", graph_path)
    bmin, bopt, bmax = batches
    if shape[0] >= 0:
        if (bmin, bmax) != (shape[0], shape[0]):
            raise EdgeError(f"graph has a fixed batch of {shape[0]}; build with --batch {shape[0]} "
                            "or export with a dynamic batch", graph_path)
        return None
    profile = builder.create_optimization_profile()
    rest = tuple(shape[1:])
    profile.set_shape(INPUT, (bmin,) + rest, (bopt,) + rest, (bmax,) + rest)
    config.add_optimization_profile(profile)
    return profile


# ---- timing cache ---------------------------------------------------------------------
def load_timing_cache(config, path, log=print):
    """Attach the timing cache at `path` (or a fresh one) to config; returns the cache."""
    data = b""
    if path and os.path.isfile(path):
        with open(path, "rb") as f:
            data = f.read()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # a no-op on TensorRT-RTX
        cache = config.create_timing_cache(data)
        if cache is None and data:
            log(f"warning: timing cache {path} unreadable; starting a fresh one")
            cache = config.create_timing_cache(b"")
        if cache is not None and not config.set_timing_cache(cache, False):
            log(f"warning: timing cache {path} does not match this device; starting a fresh one")
            cache = config.create_timing_cache(b"")
            config.set_timing_cache(cache, False)
    return cache


def save_timing_cache(config, path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        cache = config.get_timing_cache()
        if cache is None:
            return False
        data = bytes(memoryview(cache.serialize()))
    if not data:
        return False
    atomic_write_bytes(path, data)
    return True


# ---- the build ------------------------------------------------------------------------
def _configure_dla(trt, builder, config, dla, precision, graph_path):
    if precision == "fp32":
        raise EdgeError("DLA runs FP16 or INT8 only; build with --precision fp16 or int8", graph_path)
    if not (_has_flag(trt, "FP16") and _has_flag(trt, "GPU_FALLBACK")):
        raise EdgeError(f"this TensorRT ({trt.__version__}) has no FP16/INT8 builder flags, which "
                        "DLA builds need; build for the GPU (no --dla)")
    cores = getattr(builder, "num_DLA_cores", 0)
    if dla < 0 or dla >= cores:
        raise EdgeError(f"--dla {dla}: this device has {cores} DLA core(s)")
    config.default_device_type = trt.DeviceType.DLA
    config.DLA_core = int(dla)
    config.set_flag(trt.BuilderFlag.GPU_FALLBACK)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        config.set_flag(trt.BuilderFlag.FP16)
        if precision == "int8":
            config.set_flag(trt.BuilderFlag.INT8)   # explicit Q/DQ in the graph; no calibrator


def dla_layers(config, network):
    """(layers DLA can run, all layers) for a DLA-configured build, or None where the
    builder cannot say. With GPU fallback on, the rest runs on the GPU."""
    can = getattr(config, "can_run_on_DLA", None)
    if can is None:
        return None
    n = network.num_layers
    return sum(1 for i in range(n) if can(network.get_layer(i))), n


def check_dla_batches(dla, batches):
    """DLA runs only static shapes (min = opt = max); a batch range would put every layer on
    the GPU through the fallback while the plan is still named for DLA."""
    if dla is not None and batches[0] != batches[2]:
        raise EdgeError(f"--dla needs one static batch: DLA runs only min = opt = max shapes, so a "
                        f"range ({batches[0]}-{batches[2]}) would run every layer on the GPU; build "
                        f"with --batch {batches[2]} --dla {dla} (smaller batches are padded)")


def serialize_plan(trt, graph_path, batches, precision="fp32", workspace_mb=None, dla=None,
                   timing_cache=None, verbose=False, log=print):
    """Parse the graph and build a serialised plan; returns (plan bytes, info dict)."""
    check_dla_batches(dla, batches)
    logger = _logger(trt, verbose)
    builder = trt.Builder(logger)
    use_dla = dla is not None
    network, _parser = parse_network(trt, builder, graph_path, logger, strongly_typed=not use_dla)
    config = builder.create_builder_config()
    if workspace_mb:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_mb) << 20)
    add_profile(trt, builder, config, network, batches, graph_path)
    dla_count = None
    if use_dla:
        _configure_dla(trt, builder, config, int(dla), precision, graph_path)
        dla_count = dla_layers(config, network)
        if dla_count is not None:
            if dla_count[0] == 0:
                raise EdgeError(f"no layer of this graph can run on DLA core {dla}; build for the "
                                "GPU (no --dla)", graph_path)
            log(f"DLA core {dla}: {dla_count[0]} of {dla_count[1]} layers on DLA, the rest on the GPU")
    load_timing_cache(config, timing_cache, log)
    t0 = time.monotonic()
    plan = builder.build_serialized_network(network, config)
    seconds = time.monotonic() - t0
    if plan is None:
        raise EdgeError("TensorRT could not build a plan from the graph (see the TensorRT log above)",
                        graph_path)
    if timing_cache:
        save_timing_cache(config, timing_cache)
    info = {"build_seconds": round(seconds, 3),
            "strongly_typed": (not use_dla) and strongly_typed_flag(trt) is not None,
            "workspace_mb": workspace_mb, "builder": f"{pk.runtime_name(trt)} {trt.__version__}"}
    if dla_count is not None:
        info["dla_layers"], info["layers"] = dla_count
    return bytes(memoryview(plan)), info


def check_graph_floor(bundle, precision, graph, trt_version):
    """EdgeError when the graph needs a newer TensorRT than this one: the manifest records
    the oldest TensorRT that parses each graph (graphs.<precision>.min_tensorrt); for a bundle
    made before that, it is worked out from the graph where onnx is installed."""
    from convert.graphcheck import tensorrt_floor, version_tuple

    entry = bundle.manifest.get("graphs", {}).get(precision)
    floor = dict(entry) if isinstance(entry, dict) and entry.get("min_tensorrt") else tensorrt_floor(graph)
    need = floor.get("min_tensorrt")
    try:
        too_old = need is not None and version_tuple(trt_version) < version_tuple(need)
    except ValueError:
        return
    if too_old:
        why = ", ".join(floor.get("min_tensorrt_ops") or []) or "its ops"
        raise EdgeError(f"the {precision} graph needs TensorRT {need} or newer ({why}); this box has "
                        f"TensorRT {trt_version}: export without those ops or move to a newer JetPack",
                        graph)


def build_plan(bundle, precision="fp32", batches=(1, 1, 1), workspace_mb=None, dla=None,
               force=False, check_only=False, device=None, trt=None, verbose=False, log=print):
    """Build (or reuse) the plan for `bundle` on this device. Returns a dict: plan (path or None
    for check_only), key, built (False when a cached plan was reused), build_seconds, refused
    (reasons a cached plan was not used)."""
    if isinstance(bundle, str):
        bundle = Bundle(bundle)
    if precision not in PRECISIONS:
        raise EdgeError(f"unknown precision '{precision}' (choose from: {', '.join(PRECISIONS)})")
    check_dla_batches(dla, batches)
    trt = trt or import_builder_trt(allow_rtx=check_only)
    graph = bundle.graph_path(precision)
    if pk.runtime_name(trt) == "tensorrt":
        from edge.engines.tensorrt import check_tensorrt_version
        check_tensorrt_version(trt)
        check_graph_floor(bundle, precision, graph, trt.__version__)
    if device is None:
        device = detect_device()
    if device is None:
        if not check_only:
            raise EdgeError("no CUDA device here: a plan must be built on the device that runs it "
                            "(`edge build --check` parses and builds without saving)")
        device = ("no-gpu", (0, 0))
    key = pk.make_key(trt, device, precision, batches, pk.graph_sha256(bundle, precision), dla)
    plan_path = os.path.join(pk.plans_dir(bundle.path), key.filename())
    result = {"plan": None if check_only else plan_path, "key": key, "built": False,
              "build_seconds": 0.0, "refused": []}

    if not check_only and not force and os.path.exists(plan_path):
        why = pk.check_plan(plan_path, key)
        if not why:
            log(f"{precision}: cached plan fits this device: {os.path.relpath(plan_path, bundle.path)}")
            return result
        result["refused"] = why
        log(f"{precision}: refusing cached plan {os.path.basename(plan_path)}: {'; '.join(why)}; rebuilding")
    if pk.runtime_name(trt) == "tensorrt_rtx":
        log("note: building with TensorRT-RTX (a parse-and-build check): its plans are for RTX "
            "GPUs, not Jetson")

    tc = None if check_only else pk.timing_cache_path(bundle.path)
    data, info = serialize_plan(trt, graph, batches, precision, workspace_mb, dla, tc, verbose, log)
    result.update(built=True, build_seconds=info["build_seconds"], plan_bytes=len(data))
    if check_only:
        log(f"{precision}: graph parses and builds with {info['builder']} "
            f"({len(data) / 2**20:.1f} MiB plan in {info['build_seconds']:.1f} s; not saved)")
        return result
    atomic_write_bytes(plan_path, data)
    from edge.bundle.reference import check_plan
    check_plan(bundle, plan_path, precision, log)          # the reference frames through the plan
    info["built_at"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    doc = pk.write_sidecar(plan_path, key, info)
    pk.record_in_manifest(bundle, plan_path, key, doc["plan_sha256"])
    log(f"{precision}: built {os.path.relpath(plan_path, bundle.path)} "
        f"({len(data) / 2**20:.1f} MiB in {info['build_seconds']:.1f} s)")
    return result


# ---- command line ---------------------------------------------------------------------
def add_arguments(parser):
    parser.add_argument("bundle", help="bundle folder")
    parser.add_argument("--precision", default="fp32",
                        help="fp32, fp16 or int8, or several separated by commas (default fp32); "
                             "the bundle must hold that graph (see `edge quantize`)")
    parser.add_argument("--batch", default="1",
                        help="batch sizes the plan must serve, e.g. 1,4: profile min=smallest, "
                             "opt=max=largest (default 1)")
    parser.add_argument("--workspace", type=int, metavar="MB",
                        help="builder workspace limit in MiB (default: TensorRT's)")
    parser.add_argument("--dla", type=int, metavar="N",
                        help="build for DLA core N with GPU fallback (Jetson; fp16/int8 only; one "
                             "static batch: --batch 4 --dla 0)")
    parser.add_argument("--force", action="store_true", help="rebuild even when a cached plan fits")
    parser.add_argument("--check", action="store_true",
                        help="parse and build without saving; needs no GPU (falls back to tensorrt-rtx)")
    parser.add_argument("--verbose", action="store_true", help="TensorRT's verbose log")


def run(args):
    from convert.graphcheck import check_graph

    bundle = Bundle(args.bundle)
    batches = pk.parse_batches(args.batch)
    precisions = [p.strip() for p in str(args.precision).split(",") if p.strip()]
    for p in precisions:
        if p not in PRECISIONS:
            raise EdgeError(f"unknown precision '{p}' (choose from: {', '.join(PRECISIONS)})")
    try:
        import tensorrt
        target = tensorrt.__version__                 # check for the TensorRT that builds here
    except ImportError:
        target = None                                 # JetPack 6's (graphcheck's default)
    for p in precisions:
        graph = bundle.graph_path(p)
        for problem in check_graph(graph, tensorrt=target):
            print(f"warning: {os.path.basename(graph)}: {problem}")
        build_plan(bundle, p, batches, workspace_mb=args.workspace, dla=args.dla, force=args.force,
                   check_only=args.check, verbose=args.verbose)
    return 0
