"""A full records disk (records.on_full): failsafe faults the run and still records every
decision made; degrade keeps inspecting, drops images first and rows next, and counts every
one. On a real 2 MB tmpfs (root only), and by fault injection at the write calls."""

import errno
import json
import os
import sqlite3
import subprocess

import numpy as np
import pytest

from edge.records import store as store_mod
from edge.records.store import RecordStore
from edge.runtime.types import Decision
from tests.test_faults import GOOD, bundle, faultrun, run_config, run_row  # noqa: F401 (fixture)


@pytest.fixture
def small_disk(tmp_path):
    """A 2 MB tmpfs, mounted for the test."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a 2 MB tmpfs needs root")
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {res.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def decision(seq, reject=True):
    return Decision(seq, 0.0, 1.7e9 + seq * 0.01, 9.0 if reject else 1.0, reject, "score" if reject else "ok",
                    0.01, 0.1)


def check_store(db, images):
    """Integrity, and every image a row names is there."""
    con = sqlite3.connect(db)
    try:
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        paths = [r[0] for r in con.execute("SELECT image_path FROM records WHERE image_path IS NOT NULL")]
        summary = json.loads(con.execute("SELECT summary FROM runs ORDER BY id DESC").fetchone()[0])
        kinds = [r[0] for r in con.execute("SELECT kind FROM events")]
        n = con.execute("SELECT count(*) FROM records").fetchone()[0]
    finally:
        con.close()
    assert all(os.path.isfile(os.path.join(images, p)) for p in paths)
    return n, len(paths), summary, kinds


def test_degrade_drops_images_first_then_rows_and_counts_each(small_disk):
    rng = np.random.default_rng(0)
    st = RecordStore(str(small_disk / "r.db"), str(small_disk / "img"), save="all", image_format="png",
                     on_full="degrade", reserve_kb=256)
    st.start_run(None, {})
    added = 0
    while st.full.counts["images_dropped"] < 3:            # noise images: ~190 kB each, incompressible
        st.add(decision(added), rng.integers(0, 255, (256, 256, 3), np.uint8))
        added += 1
        assert added < 50
    assert st.full.counts["rows_dropped"] == 0              # images went first
    while st.full.counts["rows_dropped"] == 0:              # then rows only, until the database is full
        st.add(decision(added), None)
        added += 1
        assert added < 200000
    for _ in range(100):                                    # the line goes on; these rows are dropped too
        st.add(decision(added), None)
        added += 1
    st.end_run({"decided": added})
    st.close()
    n, n_img, summary, kinds = check_store(small_disk / "r.db", small_disk / "img")
    rec = summary["records"]
    assert n + rec["rows_dropped"] == added                 # every decision: recorded or counted as dropped
    assert rec["images_dropped"] >= 3 and rec["rows_dropped"] >= 100 and rec["on_full"] == "degrade"
    assert rec["last_seq"] == added - 1
    assert "records_full" in kinds and "records_dropped" in kinds and "run_end" in kinds


def test_a_disk_without_room_for_the_reserve_is_refused(small_disk):
    with open(small_disk / "filler", "wb") as f:
        f.write(b"\0" * (1900 * 1024))
    with pytest.raises(store_mod.EdgeError) as err:
        RecordStore(str(small_disk / "r.db"), str(small_disk / "img"))
    assert "disk full" in str(err.value) and "reserve" in str(err.value)


@pytest.mark.parametrize("on_full", ["failsafe", "degrade"])
def test_edge_run_on_a_full_disk(bundle, tmp_path, small_disk, on_full):  # noqa: F811
    """save: all on 2 MB: failsafe faults the run, degrade inspects on; neither loses a decision."""
    cfg = run_config(tmp_path, bundle, {"uri": GOOD, "options": {"loop": True}}, max_frames=400,
                     records={"db": str(small_disk / "r.db"), "images": str(small_disk / "img"), "save": "all",
                              "format": "png", "on_full": on_full})
    res, report = faultrun(tmp_path, cfg)
    summary = res.stdout.strip().splitlines()[-1]
    n, n_img, run_summary, kinds = check_store(small_disk / "r.db", small_disk / "img")
    rec = run_summary["records"]
    assert "run_end" in kinds
    assert "records_full" in kinds or rec["events_dropped"] > 0     # under degrade it may be dropped, and counted
    assert rec["images_dropped"] > 0 and "images" in summary and "dropped (disk full" in summary
    assert n + rec["rows_dropped"] == run_summary["frames"]
    if on_full == "failsafe":
        assert res.returncode == 3 and "FAULT: record: records disk full" in summary
        assert report["line"]["plc"]["fault_kind"] == "records" and report["healthz"][0] == 503
        assert rec["rows_dropped"] == 0 and run_summary["frames"] < 400
    else:
        assert res.returncode == 0, res.stderr
        assert run_summary["frames"] == 400 and report["line"]["plc"]["fault_kind"] is None


class FullConn:
    """A sqlite3 connection whose INSERTs fail with SQLITE_FULL while `full` is set."""

    def __init__(self, conn):
        self._conn, self.full = conn, False

    def execute(self, sql, *args):
        if self.full and sql.startswith(("INSERT", "UPDATE")):
            raise sqlite3.OperationalError("database or disk is full")
        return self._conn.execute(sql, *args)

    def executemany(self, sql, *args):
        if self.full:
            raise sqlite3.OperationalError("database or disk is full")
        return self._conn.executemany(sql, *args)

    def __getattr__(self, name):
        return getattr(self._conn, name)


@pytest.mark.parametrize("on_full", ["failsafe", "degrade"])
def test_full_disk_by_fault_injection(tmp_path, monkeypatch, on_full):
    """ENOSPC from the image write, SQLITE_FULL from the commit: the same rules without a mount."""
    st = RecordStore(str(tmp_path / "r.db"), str(tmp_path / "img"), save="all", on_full=on_full,
                     batch_rows=1)
    st.start_run(None, {})
    img = np.zeros((32, 32, 3), np.uint8)
    for i in range(3):
        st.add(decision(i), img)
    real = store_mod.atomic_write_bytes

    def no_space(path, data):
        raise OSError(errno.ENOSPC, "No space left on device", path)

    monkeypatch.setattr(store_mod, "atomic_write_bytes", no_space)
    st.add(decision(3), img)                               # the image fails: row kept without it
    assert st.full.counts["images_dropped"] == 1
    assert (st.full.tripped is not None) == (on_full == "failsafe")
    conn = st._conn = FullConn(st._conn)
    conn.full = on_full == "degrade"                       # failsafe freed its reserve: commits go on
    for i in range(4, 8):
        st.add(decision(i), img)
    conn.full = False
    monkeypatch.setattr(store_mod, "atomic_write_bytes", real)
    st.end_run({"decided": 8})
    st.close()
    n, n_img, summary, kinds = check_store(tmp_path / "r.db", tmp_path / "img")
    rec = summary["records"]
    assert n_img == 3 and n + rec["rows_dropped"] == 8
    if on_full == "failsafe":
        assert n == 8 and rec["images_dropped"] == 5 and "tripped" in rec
    else:
        assert n == 4 and rec["rows_dropped"] == 4 and "records_dropped" in kinds
    assert not os.path.exists(str(tmp_path / "r.db") + ".reserve")       # freed for the run's end
