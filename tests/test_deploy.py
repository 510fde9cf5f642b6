"""Deployment: bundle install / activate / rollback / prune / pack (edge.bundle.install), the health
check (edge.tools.check) against a real HTTP server on 127.0.0.1 and a real SQLite file, and the
deploy/ files (systemd units, install.sh, example config)."""

import io
import json
import os
import shutil
import sqlite3
import subprocess
import tarfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import yaml

from edge.bundle import install
from edge.tools import check as health
from edge.common.errors import EdgeError
from tests.graphs import make_bundle

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEPLOY = os.path.join(REPO, "deploy")


# ---- helpers -----------------------------------------------------------------------------
def edge_cmd(cmd, *argv):
    """Run an `edge` subcommand in-process, as the command line would."""
    from edge import cli

    return cli.main([cmd, *argv])


def snapshot(root):
    """Everything an install could change: files, folders, links and their targets."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            rel = os.path.relpath(p, root)
            if os.path.islink(p):
                out[rel] = "-> " + os.readlink(p)
            elif os.path.isfile(p):
                with open(p, "rb") as f:
                    out[rel] = f.read()
            else:
                out[rel] = "dir"
    return out


def rel_target(root, which):
    t = install.link_target(str(root), which)
    return None if t is None else os.path.basename(t)


@pytest.fixture(scope="module")
def srcs(tmp_path_factory):
    """Five tiny valid bundles (the toy graph, different seeds) named b0..b4."""
    base = tmp_path_factory.mktemp("bundles")
    return [make_bundle(str(base / f"b{i}"), seed=i) for i in range(5)]


@pytest.fixture
def root(tmp_path):
    return str(tmp_path / "root")


def altered_copy(src, dst):
    shutil.copytree(src, dst)
    with open(os.path.join(dst, "model.onnx"), "r+b") as f:
        f.seek(-1, os.SEEK_END)
        last = f.read(1)
        f.seek(-1, os.SEEK_END)
        f.write(bytes([last[0] ^ 1]))
    return dst


def raw_tar(path, members):
    """A .tar.gz with hand-made members: (name, kind, payload) with kind file|sym|hard|dir|fifo."""
    with tarfile.open(path, "w:gz") as tar:
        for name, kind, payload in members:
            ti = tarfile.TarInfo(name)
            if kind == "file":
                ti.size = len(payload)
                tar.addfile(ti, io.BytesIO(payload))
                continue
            ti.type = {"sym": tarfile.SYMTYPE, "hard": tarfile.LNKTYPE, "dir": tarfile.DIRTYPE,
                       "fifo": tarfile.FIFOTYPE, "chr": tarfile.CHRTYPE}[kind]
            if kind in ("sym", "hard"):
                ti.linkname = payload
            tar.addfile(ti)
    return path


def bundle_members(src):
    out = []
    for name in ("manifest.yaml", "model.onnx"):
        with open(os.path.join(src, name), "rb") as f:
            out.append((name, "file", f.read()))
    return out


# ---- install, activate, rollback ---------------------------------------------------------------
def test_install_folder_activate_list(srcs, root, tmp_path):
    # A source with device-local plans: they are not carried over.
    src = str(tmp_path / "with-plans")
    shutil.copytree(srcs[0], src)
    os.makedirs(os.path.join(src, "plans"))
    with open(os.path.join(src, "plans", "x.plan"), "wb") as f:
        f.write(b"not portable")
    with open(os.path.join(src, "manifest.yaml")) as f:
        m = yaml.safe_load(f)
    m["plans"] = {"plans/x.plan": {"gpu": "Orin"}}
    with open(os.path.join(src, "manifest.yaml"), "w") as f:
        yaml.safe_dump(m, f)

    res = install.install(src, root, activate=True, log=lambda *_: None)
    assert res.activated and not res.reused
    assert res.name.startswith("with-plans-") and res.name.endswith(res.id[:8])
    assert os.path.islink(os.path.join(root, "current"))
    assert os.readlink(os.path.join(root, "current")) == os.path.join("bundles", res.name)
    assert not os.path.exists(os.path.join(res.path, "plans"))
    from edge.bundle.manifest import Bundle
    b = Bundle(os.path.join(root, "current"))
    assert "plans" not in b.manifest and install.bundle_id(b.manifest) == res.id
    rows = install.list_bundles(root, verify=True)
    assert [(r["name"], r["state"], r["ok"]) for r in rows] == [(res.name, "current", True)]
    # Installing the same bundle again reuses the copy.
    again = install.install(srcs[0], root, log=lambda *_: None)
    assert again.reused and again.path == res.path
    assert edge_cmd("bundles", "--root", root, "--verify") == 0


def test_pack_deterministic_and_install_from_archives(srcs, root, tmp_path):
    a1, a2, t = str(tmp_path / "b1.tar.gz"), str(tmp_path / "again.tgz"), str(tmp_path / "b1.tar")
    assert edge_cmd("pack", srcs[1], a1) == 0
    install.pack(srcs[1], a2)
    install.pack(srcs[1], t)
    with open(a1, "rb") as f1, open(a2, "rb") as f2:
        assert f1.read() == f2.read()
    with tarfile.open(a1) as tar:
        names = tar.getnames()
        assert names[0] == "manifest.yaml" and names == ["manifest.yaml", "model.onnx"]
        assert {m.mtime for m in tar.getmembers()} == {0} and {m.uid for m in tar.getmembers()} == {0}

    res = install.install(a1, root, activate=True, log=lambda *_: None)
    assert res.name.startswith("b1-") and rel_target(root, "current") == res.name
    assert install.install(t, root, log=lambda *_: None).reused
    assert install.install(srcs[1], root, log=lambda *_: None).reused
    # An archive of a folder (tar czf x.tgz b2/) works too; no leftovers of unpacking.
    nested = str(tmp_path / "nested.tgz")
    with tarfile.open(nested, "w:gz") as tar:
        tar.add(srcs[2], arcname="line3-model")
    res2 = install.install(nested, root, log=lambda *_: None)
    assert res2.name.startswith("line3-model-")
    assert sorted(os.listdir(os.path.join(root, "bundles"))) == sorted([res.name, res2.name])


def test_activate_and_rollback(srcs, root):
    quiet = dict(log=lambda *_: None)
    a = install.install(srcs[0], root, activate=True, **quiet).name
    assert rel_target(root, "previous") is None
    with pytest.raises(EdgeError, match="no previous bundle"):
        install.rollback(root, **quiet)
    b = install.install(srcs[1], root, activate=True, **quiet).name
    assert (rel_target(root, "current"), rel_target(root, "previous")) == (b, a)
    assert edge_cmd("rollback", "--root", root) == 0
    assert (rel_target(root, "current"), rel_target(root, "previous")) == (a, b)
    install.rollback(root, **quiet)                      # a second rollback undoes the first
    assert (rel_target(root, "current"), rel_target(root, "previous")) == (b, a)
    # Re-activating the current bundle changes nothing.
    assert not install.install(srcs[1], root, activate=True, **quiet).activated
    assert (rel_target(root, "current"), rel_target(root, "previous")) == (b, a)
    assert not [e for e in os.listdir(root) if e.endswith(".tmp")]


def test_altered_bundle_refused_nothing_changes(srcs, root, tmp_path):
    quiet = dict(log=lambda *_: None)
    install.install(srcs[0], root, activate=True, **quiet)
    install.install(srcs[1], root, activate=True, **quiet)
    before = snapshot(root)
    bad = altered_copy(srcs[2], str(tmp_path / "bad"))
    with pytest.raises(EdgeError, match="refused, nothing changed.*altered"):
        install.install(bad, root, activate=True, **quiet)
    assert snapshot(root) == before
    archive = str(tmp_path / "bad.tar.gz")
    raw_tar(archive, bundle_members(bad))
    with pytest.raises(EdgeError, match="altered"):
        install.install(archive, root, activate=True, **quiet)
    assert snapshot(root) == before
    assert edge_cmd("install", bad, "--root", root, "--activate") == 2
    assert snapshot(root) == before
    # A damaged previous bundle: rollback is refused and nothing moves.
    prev = install.link_target(root, "previous")
    with open(os.path.join(prev, "model.onnx"), "ab") as f:
        f.write(b"\0")
    before = snapshot(root)
    with pytest.raises(EdgeError, match="rollback refused"):
        install.rollback(root, **quiet)
    assert snapshot(root) == before


@pytest.mark.parametrize("kind", ["absolute", "dotdot", "sym_out", "sym_abs", "hard_out", "fifo", "chr",
                                  "duplicate", "no_manifest"])
def test_unsafe_archives_refused(srcs, root, tmp_path, kind):
    quiet = dict(log=lambda *_: None)
    install.install(srcs[0], root, activate=True, **quiet)
    before = snapshot(root)
    members = bundle_members(srcs[1])
    victim = tmp_path / "victim.txt"
    extra = {
        "absolute": [(str(victim), "file", b"pwned")],
        "dotdot": [("../../../victim.txt", "file", b"pwned")],
        "sym_out": [("link", "sym", "../../../../victim.txt")],
        "sym_abs": [("link", "sym", str(victim))],
        "hard_out": [("link", "hard", "../victim.txt")],
        "fifo": [("pipe", "fifo", None)],
        "chr": [("dev", "chr", None)],
        "duplicate": [("model.onnx", "file", b"second copy")],
        "no_manifest": [],
    }[kind]
    if kind == "no_manifest":
        members = members[1:]
    archive = raw_tar(str(tmp_path / f"{kind}.tar.gz"), members + extra)
    why = {"absolute": "absolute path", "dotdot": "leaves the folder", "sym_out": "points outside",
           "sym_abs": "points outside", "hard_out": "points outside", "fifo": "not a file or folder",
           "chr": "not a file or folder", "duplicate": "appears twice", "no_manifest": "holds no bundle"}[kind]
    with pytest.raises(EdgeError, match=why):
        install.install(archive, root, activate=True, **quiet)
    assert snapshot(root) == before
    assert not victim.exists()


def test_archive_link_inside_becomes_a_copy(srcs, root, tmp_path):
    members = bundle_members(srcs[3])
    (mname, _, mbytes), (gname, _, gbytes) = members
    m = yaml.safe_load(mbytes)
    m["files"]["blobs/graph.bin"] = m["files"][gname]      # the link's target is listed too
    mbytes = yaml.safe_dump(m).encode()
    archive = raw_tar(str(tmp_path / "links.tar.gz"), [
        ("b/" + mname, "file", mbytes), ("b/blobs/graph.bin", "file", gbytes),
        ("b/" + gname, "sym", "blobs/graph.bin")])
    res = install.install(archive, root, log=lambda *_: None)
    graph = os.path.join(res.path, "model.onnx")
    assert os.path.isfile(graph) and not os.path.islink(graph)


def test_prune_keeps_last_n_and_never_current_or_previous(srcs, root):
    quiet = dict(log=lambda *_: None)
    names = []
    a = install.install(srcs[0], root, activate=True, keep=2, **quiet).name
    b = install.install(srcs[1], root, activate=True, keep=2, **quiet).name
    for src in srcs[2:]:
        names.append(install.install(src, root, keep=2, **quiet).name)
    c, d, e = names
    left = set(os.listdir(os.path.join(root, "bundles")))
    assert left == {a, b, d, e}                          # c pruned; current b, previous a kept
    assert (rel_target(root, "current"), rel_target(root, "previous")) == (b, a)
    with open(os.path.join(root, "bundles.json")) as f:
        assert set(json.load(f)) == left
    # keep=1 after activating e: current e, previous b, and nothing else survives.
    install.install(srcs[4], root, activate=True, keep=1, **quiet)
    assert set(os.listdir(os.path.join(root, "bundles"))) == {e, b}
    assert install.prune(root, keep=1, **quiet) == []


def test_crash_leftovers_cleaned_and_lock(srcs, root):
    quiet = dict(log=lambda *_: None)
    install.install(srcs[0], root, **quiet)
    junk = [os.path.join(root, "bundles", n) for n in (".x.partial", ".incoming-abc", ".deleting-y")]
    for j in junk:
        os.makedirs(j)
    install.prune(root, **quiet)
    assert not any(os.path.exists(j) for j in junk)
    with install.root_lock(root):
        with pytest.raises(EdgeError, match="another install"):
            install.install(srcs[1], root, **quiet)


# ---- health check -----------------------------------------------------------------------------
class _Health(BaseHTTPRequestHandler):
    status = 200

    def do_GET(self):
        body = json.dumps({"healthy": self.status == 200}).encode()
        self.send_response(self.status if self.path == "/healthz" else 404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *a):
        pass


@pytest.fixture
def server():
    handler = type("H", (_Health,), {"status": 200})
    srv = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    t = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    t.start()
    srv.url = f"http://127.0.0.1:{srv.server_address[1]}/healthz"
    srv.handler = handler
    yield srv
    srv.shutdown()
    srv.server_close()
    t.join(5)


def make_db(path, walls):
    """A records DB written by the record store, one decision per capture wall time."""
    from edge.records.store import RecordStore
    from edge.runtime.types import Decision

    with RecordStore(path) as store:
        store.start_run(None, {})
        for seq, wall in enumerate(walls):
            store.add(Decision(seq, 0.0, wall, 0.5, False, "ok"))
        store.end_run({})
    return path


def by_check(results):
    return {r["check"]: r for r in results}


def test_check_all_ok_then_each_failure(srcs, root, server, tmp_path, capsys):
    install.install(srcs[0], root, activate=True, log=lambda *_: None)
    db = make_db(str(tmp_path / "records.db"), [time.time() - 30, time.time() - 5])
    common = ["--root", root, "--url", server.url, "--records", db, "--engine", "onnxruntime"]
    assert edge_cmd("check", *common, "--max-age", "60") == 0
    out = capsys.readouterr().out.splitlines()
    assert [line.split()[:2] for line in out] == [["ok", "bundle"], ["ok", "engine"], ["ok", "service"],
                                                  ["ok", "records"], ["ok", "disk"]]
    # Stale records.
    assert edge_cmd("check", *common, "--max-age", "1") == 1
    assert "FAIL records" in capsys.readouterr().out
    # The service says it is faulted.
    server.handler.status = 503
    assert edge_cmd("check", *common, "--json") == 1
    doc = json.loads(capsys.readouterr().out)
    assert doc["ok"] is False and not by_check(doc["checks"])["service"]["ok"]
    assert "503" in by_check(doc["checks"])["service"]["detail"]
    server.handler.status = 200
    # Disk floor above what is free.
    assert edge_cmd("check", *common, "--min-free-mb", "1e12") == 1
    assert "FAIL disk" in capsys.readouterr().out


def test_check_direct_failures(srcs, tmp_path):
    bad = altered_copy(srcs[0], str(tmp_path / "bad"))
    res = by_check(health.run_checks(bad, url="http://127.0.0.1:9/healthz",
                                     records=str(tmp_path / "missing.db")))
    assert not res["bundle"]["ok"] and "altered" in res["bundle"]["detail"]
    assert not res["engine"]["ok"] and "not tried" in res["engine"]["detail"]
    assert not res["service"]["ok"] and not res["records"]["ok"] and res["disk"]["ok"]
    res = by_check(health.run_checks(str(tmp_path / "nowhere"), engine="none"))
    assert not res["bundle"]["ok"] and "engine" not in res
    # No decisions yet: fine without --max-age, a failure with it.
    empty = make_db(str(tmp_path / "empty.db"), [])
    assert health.check_records(empty).endswith("no decisions yet")
    with pytest.raises(health.CheckFailed, match="no decision"):
        health.check_records(empty, max_age=10)
    other = str(tmp_path / "other.db")
    sqlite3.connect(other).execute("CREATE TABLE t (x)").connection.close()
    with pytest.raises(health.CheckFailed, match="unreadable"):
        health.check_records(other)
    with pytest.raises(health.CheckFailed, match="not an http"):
        health.check_url("file:///etc/passwd")


def test_check_records_is_read_only(tmp_path):
    db = make_db(str(tmp_path / "r.db"), [100.0])
    os.chmod(db, 0o444)
    try:
        assert health.last_decision_wall(db) == 100.0
    finally:
        os.chmod(db, 0o644)


def test_check_records_beside_the_writer(tmp_path):
    """The running service holds the store open for writing; the check reads alongside, and a
    file that is not a record store (a lone `decisions` table, say) is refused."""
    from edge.records.store import RecordStore
    from edge.runtime.types import Decision

    db = str(tmp_path / "live.db")
    with RecordStore(db) as store:
        store.start_run(None, {})
        store.add(Decision(0, 0.0, time.time() - 2, 0.5, False, "ok"))
        store.flush()
        assert health.check_records(db, max_age=60).startswith("last decision")
        with pytest.raises(health.CheckFailed, match="more than --max-age"):
            health.check_records(db, max_age=0.5)
    other = str(tmp_path / "decisions.db")
    con = sqlite3.connect(other)
    con.execute("CREATE TABLE decisions (id INTEGER PRIMARY KEY, wall REAL)")
    con.execute("INSERT INTO decisions (wall) VALUES (?)", (time.time(),))
    con.commit()
    con.close()
    with pytest.raises(health.CheckFailed, match="not a records database"):
        health.check_records(other)


def test_check_from_run_config(srcs, root, server, tmp_path, capsys, monkeypatch):
    pytest.importorskip("edge.runtime.config")
    monkeypatch.setenv("VIEW_TOKEN", "t0ken-for-the-plant-network")
    install.install(srcs[0], root, activate=True, log=lambda *_: None)
    db = make_db(str(tmp_path / "records.db"), [time.time()])
    cfg = {"bundle": os.path.join(root, "current"), "source": str(tmp_path),
           "engine": {"kind": "onnxruntime", "precision": "fp32", "batch": 1},
           "records": {"db": "records.db"},
           "view": {"host": "0.0.0.0", "port": server.server_address[1], "token_env": "VIEW_TOKEN"}}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert edge_cmd("check", "--config", str(path), "--max-age", "60", "--json") == 0
    doc = json.loads(capsys.readouterr().out)
    assert {r["check"] for r in doc["checks"]} == {"bundle", "engine", "service", "records", "disk"}
    assert db and doc["ok"]


# ---- deploy/ files ------------------------------------------------------------------------------
def test_example_config_validates():
    config = pytest.importorskip("edge.runtime.config")
    path = os.path.join(DEPLOY, "config", "example.yaml")
    cfg = config.validate(config.load_config(path), os.path.dirname(path))
    assert cfg.bundle == "/opt/lineside/current" and cfg.view.port == 8080
    assert cfg.line["outputs"][0]["type"] == "modbus"


def test_systemd_units_verify(tmp_path):
    exe = shutil.which("systemd-analyze")
    if not exe:
        pytest.skip("systemd-analyze is not installed")
    edge = os.path.join(REPO, ".venv", "bin", "edge")
    if not os.path.exists(edge):
        edge = shutil.which("edge") or "/bin/true"
    units = sorted(os.listdir(os.path.join(DEPLOY, "systemd")))
    assert {"lineside-edge.service", "lineside-health.service", "lineside-health.timer"} <= set(units)
    for name in units:
        with open(os.path.join(DEPLOY, "systemd", name)) as f:
            text = f.read()
        # The installed paths do not exist here: point them at executables that do.
        text = (text.replace("/opt/lineside/venv/bin/edge", edge)
                .replace("/opt/lineside/bin/lineside-watchdog", os.path.join(DEPLOY, "bin", "lineside-watchdog"))
                .replace("/usr/bin/jetson_clocks", "/bin/true"))
        (tmp_path / name).write_text(text)
    paths = [str(tmp_path / n) for n in units]
    proc = subprocess.run([exe, "verify", "--man=no", *paths], capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, SYSTEMD_LOG_LEVEL="notice"))
    ours = [line for line in (proc.stdout + proc.stderr).splitlines() if str(tmp_path) in line]
    assert proc.returncode == 0 and not ours, proc.stdout + proc.stderr
    service = (tmp_path / "lineside-edge.service").read_text()
    for key in ("Restart=always", "User=lineside", "KillSignal=SIGTERM", "TimeoutStopSec=", "LimitNOFILE=",
                "ExecStartPre=" + edge + " build"):
        assert key in service


@pytest.mark.parametrize("script", ["install.sh", "bin/lineside-watchdog"])
def test_shell_scripts(script):
    path = os.path.join(DEPLOY, script)
    shell = "bash" if script.endswith(".sh") else "sh"
    subprocess.run([shell, "-n", path], check=True, timeout=30)
    if not shutil.which("shellcheck"):
        pytest.skip("shellcheck is not installed (apt-get install shellcheck)")
    proc = subprocess.run(["shellcheck", path], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout
