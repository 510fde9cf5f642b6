"""The import rules of docs/architecture.md, checked on the source: every module under edge/ is
parsed (ast, nothing imported) and each import it makes, at the top or inside a function,
must be one its room may make. torch, train and convert are refused everywhere in edge/."""

import ast
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EDGE = os.path.join(REPO, "edge")

# room -> the other rooms of edge it may import (its own room always). "cli" is edge/cli.py,
# "edge" the package's __init__. A dotted name allows one module of a room, not the room.
ALLOWED = {
    "edge": set(),
    "common": set(),
    "engines": {"common"},
    "sources": {"common", "runtime.types"},
    "outputs": {"common", "runtime.types"},
    "bundle": {"common", "engines"},
    "view": {"common"},
    "records": {"common", "view.overlay"},
    "runtime": {"common", "engines", "sources", "outputs", "bundle", "view", "records"},
    "tools": {"common", "engines", "sources", "outputs", "bundle", "view", "records", "runtime"},
    "cli": {"common", "engines", "sources", "outputs", "bundle", "view", "records", "runtime", "tools"},
}
# The types that travel between the stages: what sources and outputs may import of runtime,
# so they must stay a leaf.
LEAVES = {"runtime.types": set()}
FORBIDDEN = ("torch", "torchvision", "train", "convert")


def edge_modules():
    for dirpath, dirnames, filenames in os.walk(EDGE):
        dirnames[:] = sorted(d for d in dirnames if d != "__pycache__")
        for name in sorted(filenames):
            if name.endswith(".py"):
                path = os.path.join(dirpath, name)
                parts = os.path.relpath(path, REPO)[:-3].split(os.sep)
                is_pkg = parts[-1] == "__init__"
                if is_pkg:
                    parts = parts[:-1]
                yield path, ".".join(parts), is_pkg


def imports(path, module, is_pkg):
    """(line, absolute dotted name) of every import in the file; `from X import a` gives X.a
    as well as X, so that `from edge.runtime import types` names the module it takes."""
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    package = module if is_pkg else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                if not base:
                    raise AssertionError(f"{path}:{node.lineno}: relative import above edge")
                base = ".".join(base + ([node.module] if node.module else []))
            else:
                base = node.module
            for alias in node.names:
                yield node.lineno, f"{base}.{alias.name}"


def is_room(name):
    """A sub-package or module of edge (else a name defined in edge/__init__.py)."""
    return os.path.isdir(os.path.join(EDGE, name)) or os.path.isfile(os.path.join(EDGE, name + ".py"))


def room_of(module):
    """'edge.records.store' -> 'records', 'edge.cli' -> 'cli', 'edge' -> 'edge'."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "edge"


def allowed(module, target):
    """Whether module (in edge) may import target (a dotted name)."""
    top = target.split(".")[0]
    if top in FORBIDDEN:
        return False
    if top != "edge":
        return True                                   # the standard library and third parties
    rel = target.split(".")[1:]
    if not rel:
        return False                                  # `import edge` from inside: name what you use
    if not is_room(rel[0]):
        return True                                   # a name of edge/__init__ (__version__), a leaf
    own = module.split(".")[1:]
    leaf = LEAVES.get(".".join(own))
    if leaf is not None:
        return ".".join(rel[:2]) == ".".join(own) or rel[0] in leaf
    if rel[0] == room_of(module):
        return True
    rules = ALLOWED[room_of(module)]
    return rel[0] in rules or ".".join(rel[:2]) in rules


def violations():
    found = []
    for path, module, is_pkg in edge_modules():
        assert room_of(module) in ALLOWED, f"{module}: a room docs/architecture.md does not list"
        for line, target in imports(path, module, is_pkg):
            if not allowed(module, target):
                found.append(f"{os.path.relpath(path, REPO)}:{line}: {module} imports {target}")
    return sorted(set(found))


def test_edge_imports_follow_the_rules():
    assert violations() == []


def test_the_rules_bite(tmp_path):
    """The checker itself: each kind of forbidden import is caught, the allowed ones pass."""
    assert not allowed("edge.engines.onnxrt", "torch.nn")
    assert not allowed("edge.runtime.run", "train.cli")
    assert not allowed("edge.tools.bench", "convert.quantize.x")
    assert not allowed("edge.sources.base", "edge.runtime.pipeline.Pipeline")
    assert not allowed("edge.common.fsutil", "edge.bundle.manifest")
    assert not allowed("edge.view.server", "edge.records.store")
    assert not allowed("edge.records.store", "edge.view.server")
    assert not allowed("edge.runtime.types", "edge.runtime.pipeline")
    assert not allowed("edge.bundle.install", "edge.tools.check")
    assert not allowed("edge.engines.onnxrt", "edge.bundle.manifest")
    assert not allowed("edge.common.errors", "edge.cli")
    assert allowed("edge.cli", "edge.__version__")
    assert allowed("edge.sources.base", "edge.runtime.types.Frame")
    assert allowed("edge.records.images", "edge.view.overlay.encode_verdict")
    assert allowed("edge.tools.check", "edge.records.store.RecordStore")
    assert allowed("edge.engines.onnxrt", "numpy")
    # Relative imports resolve against the module's package, including lazy ones in functions.
    src = tmp_path / "m.py"
    src.write_text("from ..common import errors\nfrom . import base\n\ndef f():\n"
                   "    from ..runtime import pipeline\n    import torch\n")
    got = list(imports(str(src), "edge.sources.m", False))
    assert got == [(1, "edge.common.errors"), (2, "edge.sources.base"), (5, "edge.runtime.pipeline"),
                   (6, "torch")]
    assert [allowed("edge.sources.m", t) for _, t in got] == [True, True, False, False]


def test_data_files_in_edge_are_package_data():
    """Every non-Python file under edge/ (the live page) is declared in setup.cfg's
    package_data, so that an installed package (wheel) carries it."""
    import configparser
    import fnmatch

    cfg = configparser.ConfigParser()
    cfg.read(os.path.join(REPO, "setup.cfg"))
    declared = {pkg: value.split() for pkg, value in cfg["options.package_data"].items()}
    missing = []
    for dirpath, dirnames, filenames in os.walk(EDGE):
        dirnames[:] = [d for d in dirnames if d != "__pycache__"]
        package = os.path.relpath(dirpath, REPO).replace(os.sep, ".")
        for name in filenames:
            if not name.endswith((".py", ".pyc")) and not any(
                    fnmatch.fnmatch(name, pattern) for pattern in declared.get(package, ())):
                missing.append(os.path.join(package, name))
    assert missing == []
    assert "page.html" in declared["edge.view"]


# convert/ runs where `edge quantize` runs, without torch: of train/ it may import only the
# torch-free helpers (data set reading, evaluation and its plots), never the trainer, the
# training loop, the graph or the methods.
CONVERT = os.path.join(REPO, "convert")
TRAIN = os.path.join(REPO, "train")
CONVERT_MAY_IMPORT_OF_TRAIN = {"train.data", "train.evaluate", "train.plots"}


def _module_imports(path, module):
    is_pkg = path.endswith("__init__.py")
    return [t for _, t in imports(path, module, is_pkg)]


def _train_module(target):
    """'train.data.MvtecSet' -> 'train.data' (the module of train/ a name comes from)."""
    parts = target.split(".")
    for k in range(len(parts), 1, -1):
        if os.path.isfile(os.path.join(REPO, *parts[:k]) + ".py"):
            return ".".join(parts[:k])
    return ".".join(parts[:2])


def convert_violations():
    found = []
    for name in sorted(os.listdir(CONVERT)):
        if not name.endswith(".py"):
            continue
        path = os.path.join(CONVERT, name)
        module = "convert." + (name[:-3] if name != "__init__.py" else "")
        for target in _module_imports(path, module.rstrip(".")):
            top = target.split(".")[0]
            if top in ("torch", "torchvision", "timm"):
                found.append(f"convert/{name}: imports {target}")
            elif top == "train" and _train_module(target) not in CONVERT_MAY_IMPORT_OF_TRAIN:
                found.append(f"convert/{name}: imports {target} (train/ trainer code)")
    # The helpers convert/ may use import no torch either, nor other parts of train/.
    for module in sorted(CONVERT_MAY_IMPORT_OF_TRAIN):
        path = os.path.join(REPO, *module.split(".")) + ".py"
        for target in _module_imports(path, module):
            top = target.split(".")[0]
            if top in ("torch", "torchvision", "timm") or (
                    top == "train" and _train_module(target) not in CONVERT_MAY_IMPORT_OF_TRAIN):
                found.append(f"{module}: imports {target}")
    return found


def test_convert_imports_no_trainer_code():
    assert convert_violations() == []


def test_the_convert_rule_bites(tmp_path, monkeypatch):
    """A convert module importing the trainer (even inside a function) is caught."""
    bad = tmp_path / "convert"
    bad.mkdir()
    (bad / "x.py").write_text("def f():\n    from train.trainer import train_bundle\n    from train.data import MvtecSet\n")
    monkeypatch.setattr(sys.modules[__name__], "CONVERT", str(bad))
    assert convert_violations() == ["convert/x.py: imports train.trainer.train_bundle (train/ trainer code)"]
