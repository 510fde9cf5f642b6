"""`make bench-faults`: faults and bad inputs against a real `edge run`, and what each does
to the line and the records.

Each case is a child process running `edge run` (through scripts/faultrun.py, which injects
the fault and reads back the in-process `memory` line output and /healthz). A small PaDiM
bundle is trained first (64 px, about 10 s). Records lost = decisions made whose row is
neither in the records nor counted (as dropped on a full disk, or named in an `unrecorded`
event); after a kill -9: committed rows that are gone, holes in the frame numbers, rows
naming a missing image. It must be 0 everywhere.
"""

import argparse
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time

from scripts.badinputs import BAD

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CAT = os.path.join(ROOT, "data", "piped", "PA_BDP01_TL")
GOOD = os.path.join(CAT, "test", "good")
INJECTED = [("dead source (capture thread raises)", "source"), ("preprocess raises", "preprocess"),
            ("engine raises", "engine"), ("decide stage raises", "decide"), ("line output raises", "output"),
            ("record stage raises", "record")]


def sh(*args, timeout=180, **kw):
    return subprocess.run([sys.executable, *map(str, args)], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, **kw)


class Bench:
    def __init__(self, work):
        self.work = work
        self.rows = []
        self.n = 0

    def folder(self, n=12, bad=None):
        """n good frames; a bad file (name, writer) as the sixth."""
        self.n += 1
        d = os.path.join(self.work, f"frames{self.n}")
        os.makedirs(d)
        goods = sorted(os.listdir(GOOD))
        for i in range(n):
            shutil.copy(os.path.join(GOOD, goods[i % len(goods)]), os.path.join(d, f"{i:03d}.png"))
        if bad is not None:
            name, write = bad
            write(os.path.join(d, f"005_{name}"), os.path.join(GOOD, goods[0]))
        return d

    def config(self, source, on_fault="reject_all", records=None, **extra):
        self.n += 1
        case = os.path.join(self.work, f"case{self.n}")
        os.makedirs(case)
        rec = {"db": os.path.join(case, "r.db"), "save": "flagged"}
        rec.update(records or {})
        cfg = {"bundle": self.bundle, "source": source, "status_every_s": 0.2, "records": rec,
               "view": {"host": "127.0.0.1", "port": 0},
               "line": {"timing": {"mode": "delay", "delay_ms": 300}, "heartbeat_ms": 20,
                        "failsafe": {"on_fault": on_fault}, "outputs": [{"type": "memory", "name": "plc"}]}}
        cfg.update(extra)
        path = os.path.join(case, "run.yaml")
        with open(path, "w") as f:
            json.dump(cfg, f)
        return path, rec["db"]

    def run(self, kind, what, cfg, db, fault="none", after=0, args=()):
        report = os.path.join(os.path.dirname(cfg), "report.json")
        t0 = time.monotonic()
        try:
            res = sh("-m", "scripts.faultrun", report, fault, after, "--", cfg, "--quiet", *args)
        except subprocess.TimeoutExpired:
            self.rows.append({"kind": kind, "what": what, "exit": "HUNG", "line": "-", "lost": "?"})
            return
        rep = json.load(open(report)) if os.path.exists(report) else {}
        row = {"kind": kind, "what": what, "exit": res.returncode, "s": round(time.monotonic() - t0, 1)}
        row.update(records_of(db))
        line = (rep.get("line") or {}).get("plc")
        if line and line["fault_kind"]:
            acts = [a for a in ("reject_all", "stop_line") if line[a]]
            hb = "heartbeat stopped" if line["heartbeats_after_fault"] <= 1 else "HEARTBEAT GOES ON"
            row["line"] = (f"fault bit ({line['fault_kind']}), {hb}, {'+'.join(acts) or 'fault only'}, "
                           f"{line['failsafe_rejects']} fail-safe rejects")
        elif line:
            row["line"] = "no fault: inspection goes on"
        else:
            row["line"] = "refused before start: line never armed"
        hz = rep.get("healthz")
        row["healthz"] = hz[0] if hz else "-"
        last = (res.stdout.strip().splitlines() or [""])[-1]
        err = [ln for ln in res.stderr.splitlines() if ln.startswith("edge run: error:")]
        if "FAULT: " in last:
            says = last.split("FAULT: ", 1)[1]
        elif err:
            says = err[-1]
        else:
            says = last.split("; records: ", 1)[1] if "; records: " in last else last
        row["says"] = says[:100]
        if "Traceback" in res.stderr:
            row["says"] = "TRACEBACK: " + row["says"]
        self.rows.append(row)

    def kill9(self, i):
        """SIGKILL while recording (save: all); then the next writer's recovery and a check."""
        cfg, db = self.config({"uri": GOOD, "options": {"loop": True}}, records={"save": "all", "format": "jpg"})
        proc = subprocess.Popen([sys.executable, "-m", "edge.cli", "run", cfg, "--quiet"], cwd=ROOT,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        committed = 0
        deadline = time.monotonic() + 60
        try:
            while time.monotonic() < deadline and committed < 40 + 25 * i:
                time.sleep(0.05)
                committed = count(db, "SELECT count(*) FROM records") if os.path.exists(db) else 0
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        from edge.records.store import RecordStore
        RecordStore(db, os.path.join(os.path.dirname(db), "images")).close()     # the next start's recovery
        con = sqlite3.connect(db)
        seqs = [r[0] for r in con.execute("SELECT seq FROM records ORDER BY seq")]
        paths = [r[0] for r in con.execute("SELECT image_path FROM records WHERE image_path IS NOT NULL")]
        ok = con.execute("PRAGMA integrity_check").fetchone()[0]
        con.close()
        missing = sum(not os.path.isfile(os.path.join(os.path.dirname(db), "images", p)) for p in paths)
        holes = (seqs[-1] + 1 - len(seqs)) if seqs else 0
        lost = max(0, committed - len(seqs)) + holes + missing + (ok != "ok")
        self.rows.append({"kind": "fault", "what": f"kill -9 while recording (#{i + 1})", "exit": -9,
                          "decided": f">={committed}", "recorded": len(seqs), "dropped": 0, "lost": lost,
                          "line": "box gone: heartbeat stops (PLC watchdog)", "healthz": "-",
                          "says": f"recovered: run closed as aborted, integrity {ok}, {len(paths)} images"})


def count(db, sql):
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    try:
        return con.execute(sql).fetchone()[0]
    except sqlite3.Error:
        return 0
    finally:
        con.close()


def records_of(db):
    if not os.path.exists(db):
        return {"decided": 0, "recorded": 0, "dropped": 0, "lost": 0}
    con = sqlite3.connect(db)
    try:
        summary = json.loads(con.execute("SELECT summary FROM runs ORDER BY id DESC").fetchone()[0] or "{}")
        n = con.execute("SELECT count(*) FROM records").fetchone()[0]
        unrecorded = con.execute("SELECT count(*) FROM events WHERE kind = 'unrecorded'").fetchone()[0]
    finally:
        con.close()
    decided = summary.get("frames", 0)          # the run status contract (edge/common/status.py)
    dropped = (summary.get("records") or {}).get("rows_dropped", 0) + unrecorded
    return {"decided": decided, "recorded": n, "dropped": dropped, "lost": decided - n - dropped,
            "images_dropped": (summary.get("records") or {}).get("images_dropped", 0)}


def small_disk(path):
    """A 2 MB tmpfs (root only); None and why when it cannot be mounted."""
    os.makedirs(path)
    if os.geteuid() != 0:
        return None, "needs root to mount a 2 MB tmpfs"
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", path], capture_output=True, text=True)
    return (path, None) if res.returncode == 0 else (None, res.stderr.strip())


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--json", help="write the table as JSON too")
    args = p.parse_args(argv)
    t_start = time.monotonic()
    work = tempfile.mkdtemp(prefix="bench-faults-")
    mounts = []
    b = Bench(work)
    try:
        b.bundle = os.path.join(work, "bundle")
        res = sh("-m", "edge.cli", "train", "--method", "padim", "--data", CAT, "--out", b.bundle, "--size", "64",
                 "--no-eval", timeout=600)
        if res.returncode:
            raise SystemExit(res.stderr)
        for what, fault in INJECTED:
            cfg, db = b.config({"uri": b.folder(), "options": {"loop": True, "fps": 60}})
            b.run("fault", what, cfg, db, fault, after=8)
        for on_full, on_fault in (("failsafe", "stop_line"), ("degrade", "reject_all")):
            disk, why = small_disk(os.path.join(work, f"disk-{on_full}"))
            if disk is None:
                b.rows.append({"kind": "fault", "what": f"full disk, on_full: {on_full}", "exit": "skipped",
                               "line": why, "lost": 0})
                continue
            mounts.append(disk)
            cfg, db = b.config({"uri": GOOD, "options": {"loop": True}}, on_fault=on_fault, max_frames=300,
                               records={"db": os.path.join(disk, "r.db"), "images": os.path.join(disk, "img"),
                                        "save": "all", "format": "png", "on_full": on_full})
            b.run("fault", f"records disk full (2 MB), on_full: {on_full}", cfg, db)
        for i in range(2):
            b.kill9(i)
        for name, write in BAD.items():
            cfg, db = b.config(b.folder(bad=(name, write)))
            b.run("bad input", f"folder frame: {name}", cfg, db)
        cfg, db = b.config({"uri": GOOD, "options": {"width": 100000, "height": 100000}})
        b.run("bad input", "source options width/height 100000", cfg, db)
        cfg, db = b.config(GOOD)
        b.run("bad input", "--max-frames 0", cfg, db, args=("--max-frames", "0"))
    finally:
        for m in mounts:
            subprocess.run(["umount", "-l", m], capture_output=True)
        shutil.rmtree(work, ignore_errors=True)
    print_table(b.rows, time.monotonic() - t_start)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(b.rows, f, indent=1)
    lost = sum(r["lost"] for r in b.rows if isinstance(r.get("lost"), int))
    return 1 if lost or any(r.get("exit") == "HUNG" for r in b.rows) else 0


def print_table(rows, elapsed):
    cols = ["what", "exit", "decided", "recorded", "dropped", "lost", "healthz", "line", "says"]
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join(str(r.get(c, "-")).replace("|", "/") for c in cols) + " |")
    faults = sum(r["kind"] == "fault" and r.get("exit") != "skipped" for r in rows)
    bad = sum(r["kind"] == "bad input" for r in rows)
    lost = sum(r["lost"] for r in rows if isinstance(r.get("lost"), int))
    hung = sum(r.get("exit") == "HUNG" for r in rows)
    print(f"\nfaults injected: {faults}; bad inputs tried: {bad}; records lost: {lost}; runs hung: {hung}; "
          f"{elapsed:.0f} s")


if __name__ == "__main__":
    sys.exit(main())
