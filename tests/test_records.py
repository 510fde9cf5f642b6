"""The record store: WAL, batching, a real kill -9 of a writing process, quota clean-up, bad
database files. No timing assertions: batching by time is checked through flush()."""

import os
import selectors
import signal
import sqlite3
import subprocess
import sys
import time

import numpy as np
import pytest

from edge.common.errors import EdgeError
from edge.common.imageio import read_rgb
from edge.records.store import SCHEMA_VERSION, RecordStore
from edge.runtime.types import Decision

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def dec(seq, reject=False, wall=None, **kw):
    return Decision(seq=seq, t_capture=0.0, wall=time.time() if wall is None else wall, score=0.9 if reject else 0.1,
                    reject=reject, reason="score" if reject else "ok", latency_s=0.012, defect_area=0.01 if reject else 0,
                    **kw)


IMG = np.random.default_rng(0).integers(0, 255, (48, 64, 3), dtype=np.uint8)
AMAP = np.random.default_rng(1).random((32, 32)).astype(np.float32)


def image_files(folder):
    out = []
    for dirpath, _dirs, names in os.walk(folder):
        out += [os.path.join(dirpath, n) for n in names]
    return sorted(out)


def test_failed_commit_rolls_back_and_keeps_the_rows(tmp_path):
    """A write the database refuses (another process holds the write lock) rolls back, leaves
    no transaction open, names the file, and keeps the queued rows for the next commit."""
    db = str(tmp_path / "busy.db")
    with RecordStore(db, batch_rows=1000, batch_s=60, busy_timeout_s=0.05) as store:
        store.start_run(None, {})
        for seq in range(3):
            store.add(dec(seq))
        holder = sqlite3.connect(db, isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")                   # a second writer, outside the store
        try:
            with pytest.raises(EdgeError, match="busy.db: cannot commit records: database is locked"):
                store.flush()
            with pytest.raises(EdgeError, match="busy.db: cannot commit records"):
                store.end_run({})                           # which flushes first
            assert not store._conn.in_transaction and store.run_id is not None
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        store.flush()
        assert store.counts()["records"] == 3
        store.end_run({"frames": 3})
    with RecordStore(db, readonly=True) as ro:
        assert ro.counts()["records"] == 3 and ro.counts()["runs"] == 1
        assert [e["kind"] for e in ro.events()] == ["run_end", "run_start"]


def test_wal_rows_images_events_runs(tmp_path):
    db = tmp_path / "rec" / "records.db"
    with RecordStore(str(db), str(tmp_path / "img"), save="flagged", image_format="png", batch_rows=1000, batch_s=1000) as store:
        assert store._conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert store._conn.execute("PRAGMA synchronous").fetchone()[0] == 2          # FULL
        rid = store.start_run(None, {"engine": {"kind": "onnxruntime", "precision": "fp32"}})
        for i in range(10):
            store.add(dec(i, reject=(i == 3), part_id=f"P{i}", encoder=100 + i), IMG, AMAP, 0.5)
        store.add(dec(10, extra={"engine": "tensorrt/fp16", "note": 1}), IMG, None, 0.5)
        # queued, not yet committed (batch of 1000 rows / 1000 s): a second connection sees none
        other = sqlite3.connect(str(db))
        assert other.execute("SELECT count(*) FROM records").fetchone()[0] == 0
        assert store.recent(2)[0]["seq"] == 10               # recent() includes queued rows
        store.flush()
        assert other.execute("SELECT count(*) FROM records").fetchone()[0] == 11
        store.event("source_lost", {"uri": "rtsp://cam"}, t=123.0)
        store.end_run({"frames": 11})
        row = other.execute("SELECT run_id, seq, latency_ms, reject, reason, part_id, encoder, engine, image_path "
                            "FROM records WHERE seq=3").fetchone()
        assert row[:8] == (rid, 3, pytest.approx(12.0), 1, "score", "P3", 103, "onnxruntime/fp32")
        assert row[8].endswith(f"_r{rid}_s3.png") and row[8].count("/") == 3      # YYYY/MM/DD/name
        assert other.execute("SELECT engine, extra FROM records WHERE seq=10").fetchone() == ("tensorrt/fp16", '{"note": 1}')
        assert other.execute("SELECT count(image_path) FROM records").fetchone()[0] == 1
        kinds = [r[0] for r in other.execute("SELECT kind FROM events ORDER BY id")]
        assert kinds == ["run_start", "source_lost", "run_end"]
        assert other.execute("SELECT ended IS NOT NULL, summary FROM runs").fetchone() == (1, '{"frames": 11}')
        assert other.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        other.close()
        c = store.counts()
        assert (c["records"], c["rejects"], c["images"], c["events"], c["runs"]) == (11, 1, 1, 3, 1)
        saved = store.recent(20)[-4]
        assert saved["seq"] == 3 and os.path.isfile(saved["image"])
        img = read_rgb(saved["image"])                                  # complete PNG, label bar on top
        assert img.shape[1:] == (32, 3) and img.shape[0] >= 32 + 18     # the caption wraps on 32 px
        assert (img.shape[0] - 32 - 4) % 14 == 0


def test_batches_commit_by_rows_and_jpeg_all(tmp_path):
    with RecordStore(str(tmp_path / "r.db"), str(tmp_path / "img"), save="all", image_format="jpg",
                     batch_rows=5, batch_s=1000) as store:
        for i in range(7):
            store.add(dec(i), IMG, AMAP, 0.5)
        other = sqlite3.connect(str(tmp_path / "r.db"))
        assert other.execute("SELECT count(*) FROM records").fetchone()[0] == 5    # one batch of 5 committed
        other.close()
        assert all(p.endswith(".jpg") for p in image_files(tmp_path / "img"))
        assert len(image_files(tmp_path / "img")) == 7


CHILD = r"""
import sys, time
import numpy as np
sys.path.insert(0, sys.argv[3])
from edge.records.store import RecordStore
from edge.runtime.types import Decision
store = RecordStore(sys.argv[1], sys.argv[2], save="all", batch_rows=10, batch_s=0.05)
store.start_run(None, {})
img = np.full((40, 40, 3), 128, np.uint8)
amap = np.linspace(0, 1, 1600, dtype=np.float32).reshape(40, 40)
for seq in range(100000):
    store.add(Decision(seq, 0.0, time.time(), 0.5, seq % 2 == 0, "score"), img, amap, 0.5)
    if seq % 7 == 6:
        store.flush()
        print(seq, flush=True)
"""


def test_committed_records_survive_kill_9(tmp_path):
    db, images = str(tmp_path / "r.db"), str(tmp_path / "img")
    proc = subprocess.Popen([sys.executable, "-c", CHILD, db, images, ROOT], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    reported = []
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    try:
        buf = b""
        deadline = time.monotonic() + 60
        while len(reported) < 40 and time.monotonic() < deadline and proc.poll() is None:
            if sel.select(timeout=1.0):
                chunk = os.read(proc.stdout.fileno(), 4096)
                if not chunk:
                    break
                buf += chunk
                *lines, buf = buf.split(b"\n")
                reported += [int(x) for x in lines if x.strip()]
        assert len(reported) >= 40, proc.stderr.read().decode()[-2000:] if proc.poll() is not None else "child too slow"
        os.kill(proc.pid, signal.SIGKILL)            # mid-stream: images being written, rows queued
        rest, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    reported += [int(x) for x in rest.split() if x.strip()]
    last = max(reported)
    assert proc.returncode == -signal.SIGKILL

    # before any repair: every visible image is complete (temp files are hidden dot-files)
    for path in image_files(images):
        if not os.path.basename(path).startswith("."):
            read_rgb(path)                                    # raises on a truncated PNG

    con = sqlite3.connect(db)
    assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    seqs = {r[0] for r in con.execute("SELECT seq FROM records")}
    assert set(range(last + 1)) <= seqs                       # every reported row is there
    con.close()

    store = RecordStore(db, images)                           # recovery on open
    try:
        files = image_files(images)
        assert not [f for f in files if os.path.basename(f).startswith(".")]       # temp files removed
        paths = {os.path.join(images, r[0]) for r in store._conn.execute(
            "SELECT image_path FROM records WHERE image_path IS NOT NULL")}
        assert paths == set(files)                            # no orphan files, no missing files
        run = store._conn.execute("SELECT ended IS NOT NULL, summary FROM runs").fetchone()
        assert run == (1, '{"aborted": true}')
        assert store.events(5)[0]["kind"] == "run_aborted"
    finally:
        store.close()


def test_stray_temp_and_orphan_cleaned_on_open(tmp_path):
    db, images = str(tmp_path / "r.db"), str(tmp_path / "img")
    with RecordStore(db, images, save="all") as store:
        rid = store.start_run(None, {})
        store.add(dec(1, wall=1_700_000_000.5), IMG, AMAP, 0.5)
        store.flush()
        day = os.path.join(images, "2023", "11", "14")
        kept = image_files(images)
        assert len(kept) == 1 and kept[0].startswith(day)
    con = sqlite3.connect(db)                      # as if the process had died: the run has no end
    con.execute("UPDATE runs SET ended=NULL")
    con.commit()
    con.close()
    tmp = os.path.join(day, ".221320.500_r1_s2.png.abc123.tmp")
    orphan = os.path.join(day, f"221320.600_r{rid}_s2.png")
    for p in (tmp, orphan):
        with open(p, "wb") as f:
            f.write(b"\x89PNG partial")
    RecordStore(db, images).close()
    assert image_files(images) == kept


def test_quota_removes_oldest_first_and_keeps_db_consistent(tmp_path):
    db, images = str(tmp_path / "r.db"), str(tmp_path / "img")
    noise = np.random.default_rng(2).integers(0, 255, (100, 100, 3), dtype=np.uint8)   # ~30 kB PNGs
    # quota of 0.2 MB, checked only when asked (quota_every_s is large)
    with RecordStore(db, images, save="all", quota_mb=0.2, quota_every_s=1e9) as store:
        store.start_run(None, {})
        t0 = 1_700_000_000.0
        for i in range(20):                  # two days apart halfway: oldest files in the older day folder
            store.add(dec(i, wall=t0 + i + (86400 if i >= 10 else 0)), noise, None, 0.5)
        store.flush()
        before = store.image_bytes
        assert before > store.quota_bytes
        deleted = store.enforce_quota()
        assert deleted > 0
        assert store.image_bytes <= 0.9 * store.quota_bytes
        assert store.image_bytes == sum(os.path.getsize(p) for p in image_files(images))
        rows = store._conn.execute("SELECT seq, image_path, pruned FROM records ORDER BY seq").fetchall()
        pruned = [s for s, p, x in rows if x]
        assert pruned == list(range(deleted))                 # the oldest ones, in order
        assert all(p is None for s, p, x in rows if x)
        for s, p, x in rows:
            if not x:
                assert os.path.isfile(os.path.join(images, p))
        assert len(image_files(images)) == 20 - deleted
        if deleted >= 10:
            assert not os.path.exists(os.path.join(images, "2023", "11", "14"))     # empty day folder removed
        assert store.counts()["pruned"] == deleted
        assert store.enforce_quota() == 0                     # under the quota: nothing to do


def test_bad_db_paths(tmp_path):
    not_db = tmp_path / "notes.db"
    not_db.write_text("this is not a database, just some text " * 100)
    with pytest.raises(EdgeError, match="notes.db.*not a records database or corrupt"):
        RecordStore(str(not_db))
    with pytest.raises(EdgeError, match="is a folder"):
        RecordStore(str(tmp_path))
    other = tmp_path / "other.db"
    con = sqlite3.connect(str(other))
    con.execute("CREATE TABLE t(x)")
    con.commit()
    with pytest.raises(EdgeError, match="other.db: not a records database"):
        RecordStore(str(other))
    con.close()

    good = str(tmp_path / "good.db")
    RecordStore(good).close()
    con = sqlite3.connect(good)
    con.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    con.commit()
    con.close()
    with pytest.raises(EdgeError, match=f"good.db: records schema version {SCHEMA_VERSION + 1}.*newer"):
        RecordStore(good)

    locked = str(tmp_path / "locked.db")
    RecordStore(locked).close()
    holder = sqlite3.connect(locked, isolation_level=None)
    holder.execute("PRAGMA locking_mode=EXCLUSIVE")
    holder.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(EdgeError, match="locked.db: database is locked"):
            RecordStore(locked, busy_timeout_s=0.05)
    finally:
        holder.execute("ROLLBACK")
        holder.close()

    with RecordStore(locked):
        with pytest.raises(EdgeError, match="in use by another record store"):
            RecordStore(locked)
        ro = RecordStore(locked, readonly=True)             # readers are welcome
        assert ro.counts()["records"] == 0
        ro.close()

    with pytest.raises(EdgeError, match="missing.db: database not found"):
        RecordStore(str(tmp_path / "missing.db"), readonly=True)
    with pytest.raises(EdgeError, match="save must be"):
        RecordStore(str(tmp_path / "x.db"), save="some")


def test_record_caption_fits_a_narrow_image():
    """A caption wider than a small frame wraps onto more lines: every word is inside the image."""
    import numpy as np
    from edge.view.overlay import _caption_lines, label
    text = "REJECT score 123.45 thr 100.0 frame 1234"
    lines = _caption_lines(text, 64)
    assert len(lines) > 1 and " ".join(lines) == text
    img = label(np.zeros((64, 64, 3), np.uint8), text, True)
    assert img.shape[1] == 64 and img.shape[0] == 64 + 4 + 14 * len(lines)
    assert len(_caption_lines(text, 400)) == 1
