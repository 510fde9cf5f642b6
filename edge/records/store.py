"""The local record store: every decision, every event, every run, in one SQLite file next to
the line, plus the flagged frames (with their heat-map overlay) in a date-based folder tree.
It is written so that a process crash (kill -9) or a power cut never loses a committed record
and never leaves a record pointing at a half-written image.

Durability, in order of what happens for one decision:
  1. the image (if saved) is encoded and written through `fsutil.atomic_write_bytes`: a hidden
     temporary file in the same folder, fsync, rename, fsync of the folder. Under its final
     name a file is therefore always complete.
  2. the row is queued in memory and committed in a batch: every `batch_rows` rows (50) or
     `batch_s` seconds (0.2) after the oldest queued row, whichever comes first; `flush()`
     commits at once. A row is never committed before its file is complete.
  3. the database runs in WAL mode with `synchronous=FULL`.

Why FULL and not NORMAL: in WAL mode NORMAL already survives a crash of the *process* (the
committed transaction is in the OS page cache and reaches the WAL file), but not a crash of
the *OS* or a power cut: the WAL is only fsync'ed at checkpoints, so the last transactions
before a power loss can roll back. FULL fsyncs the WAL at every commit. Because commits are
batched (at most ~5 per second at the line's rate plus one per event), FULL costs a handful of
fsyncs a second; measured on the development box it costs little at 100 decisions/s (see
docs/records.md for figures). A committed record is therefore on the disk when `flush()`
returns. Rows still queued (at most 0.2 s of decisions) are lost in a crash: that is the
batching's price, and the reason `flush()` exists. Pass `synchronous="NORMAL"` to trade
power-cut safety for fewer fsyncs.

Disk quota: image files are counted as they are written; a maintenance thread (the same one
that commits a batch after `batch_s`) checks the total every `quota_every_s` seconds and,
above the quota, deletes the oldest files (by their date-based names, so files that no row
refers to are cleaned too) down to 90% of the quota. The rows are updated first
(`image_path = NULL, pruned = 1`, committed) and the files deleted after, so the database
never refers to a missing file; a crash in between leaves only an unreferenced file, which the
next clean-up removes. The per-frame path (`add`) never waits for a clean-up longer than one
short transaction of at most `prune_chunk` row updates.

On open (as the single writer): hidden temporary files left by a crash are deleted, image
files of the last run that no committed row refers to (written just before a crash) are
deleted, and runs left without an end (the process died) are closed with summary
`{"aborted": true}` and an event `run_aborted`. Only one writer per database: a second
`RecordStore` on the same file gets an EdgeError; `RecordStore(..., readonly=True)` reads
alongside (`edge check`, the live view).

Images are named `YYYY/MM/DD/HHMMSS.mmm_r<run>_s<seq>.<ext>` in UTC (so that names sort in
time order across daylight-saving changes); the row stores the path relative to `images_dir`,
so the database and its folder can be moved together. `recent()` returns absolute paths.
"""

import fcntl
import json
import os
import sqlite3
import threading
import time
from contextlib import contextmanager

from ..common.errors import EdgeError
from ..common.fsutil import atomic_write_bytes, json_default, sha256_file
from .full import FullDisk, is_full
from .images import (NAME_RE, TMP_RE, day_folders, encode_image, image_name, remove_empty_upwards,
                            unlink)

SCHEMA_VERSION = 1

SCHEMA = """
CREATE TABLE runs (
    id INTEGER PRIMARY KEY,
    started REAL NOT NULL,          -- time.time()
    ended REAL,
    bundle TEXT,
    bundle_sha256 TEXT,             -- of manifest.yaml for a bundle folder, of the file for an archive
    engine TEXT,
    config TEXT,                    -- JSON
    summary TEXT                    -- JSON, at end_run
);
CREATE TABLE records (
    id INTEGER PRIMARY KEY,
    run_id INTEGER NOT NULL REFERENCES runs(id),
    seq INTEGER NOT NULL,           -- frame sequence number from the source
    wall REAL NOT NULL,             -- capture wall time, time.time()
    latency_ms REAL,                -- capture to decision
    score REAL,
    reject INTEGER NOT NULL,        -- 0 / 1
    reason TEXT,                    -- ok, score, area, failsafe:<why>, late
    defect_area REAL,               -- fraction of map pixels above threshold
    threshold REAL,
    part_id TEXT,
    encoder INTEGER,
    engine TEXT,
    image_path TEXT,                -- relative to the images folder; NULL when not saved or pruned
    pruned INTEGER NOT NULL DEFAULT 0,
    extra TEXT                      -- JSON of Decision.extra, NULL when empty
);
CREATE INDEX records_run_seq ON records(run_id, seq);
CREATE INDEX records_wall ON records(wall);
CREATE INDEX records_image ON records(image_path) WHERE image_path IS NOT NULL;
CREATE TABLE events (
    id INTEGER PRIMARY KEY,
    run_id INTEGER,
    t REAL NOT NULL,                -- time.time()
    kind TEXT NOT NULL,             -- source_lost, source_back, fault, late, plc_gap, run_start, run_end, ...
    detail TEXT                     -- JSON
);
CREATE INDEX events_t ON events(t);
"""

# The store-and-forward outbox (edge/records/outbox.py): one row per decision to send to the
# plant, written in the same transaction as the record, deleted once the plant acknowledged it.
# AUTOINCREMENT: a sequence number is never reused, across restarts too (the de-duplication key).
OUTBOX_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    t REAL NOT NULL,
    payload TEXT NOT NULL,          -- JSON of the decision
    image_path TEXT                 -- relative to the images folder, or NULL
);
"""

SAVE_MODES = ("flagged", "all", "none")
FORMATS = {"png": ".png", "jpg": ".jpg", "jpeg": ".jpg"}

RECORD_COLUMNS = ("id", "run_id", "seq", "wall", "latency_ms", "score", "reject", "reason", "defect_area",
                  "threshold", "part_id", "encoder", "engine", "image_path", "pruned", "extra")


def _json(obj):
    return json.dumps(obj, default=json_default, sort_keys=True)


def bundle_sha256(bundle_path):
    """An identity for a bundle: the sha256 of its manifest (which lists every file's sha256)
    for a folder, of the file itself for an archive; None when absent."""
    if not bundle_path:
        return None
    try:
        if os.path.isdir(bundle_path):
            manifest = os.path.join(bundle_path, "manifest.yaml")
            return sha256_file(manifest) if os.path.isfile(manifest) else None
        if os.path.isfile(bundle_path):
            return sha256_file(bundle_path)
    except OSError:
        return None
    return None


class RecordStore:
    """See the module docstring. Thread-safe; meant to be fed from one record-stage thread."""

    def __init__(self, db_path, images_dir=None, quota_mb=1024, save="flagged", image_format="jpg",
                 synchronous="FULL", batch_rows=50, batch_s=0.2, quota_every_s=5.0, prune_chunk=200,
                 busy_timeout_s=2.0, readonly=False, jpeg_quality=90, on_full="failsafe", reserve_kb=512,
                 outbox=False):
        if save not in SAVE_MODES:
            raise EdgeError(f"save must be one of {', '.join(SAVE_MODES)}, not {save!r}", "records")
        if image_format not in FORMATS:
            raise EdgeError(f"image format must be png or jpg, not {image_format!r}", "records")
        if synchronous not in ("FULL", "NORMAL", "EXTRA"):
            raise EdgeError(f"synchronous must be FULL, NORMAL or EXTRA, not {synchronous!r}", "records")
        self.db_path = os.path.abspath(db_path)
        self.images_dir = os.path.abspath(images_dir) if images_dir else None
        self.quota_bytes = int(float(quota_mb) * 1024 * 1024)
        self.save = save if self.images_dir else "none"
        self.ext = FORMATS[image_format]
        self.jpeg_quality = int(jpeg_quality)
        self.batch_rows = int(batch_rows)
        self.batch_s = float(batch_s)
        self.quota_every_s = float(quota_every_s)
        self.prune_chunk = int(prune_chunk)
        self.readonly = readonly
        self.outbox = bool(outbox) and not readonly
        self.run_id = None
        self._run_engine = None
        self._lock = threading.RLock()
        self._pending = []
        self._pending_since = None
        self._full_retry = False
        self._late_full_note = None     # a full disk first found by a dropped commit (degrade)
        self._image_bytes = 0
        self._last_quota = time.monotonic()
        self._closed = False
        self._stop = threading.Event()
        self._thread = None
        self._lockfd = None
        self.stats = {"committed": 0, "commits": 0, "images": 0, "pruned_files": 0, "image_errors": 0}
        self.full = FullDisk(on_full, self.db_path, self.images_dir, int(reserve_kb) * 1024)
        self._conn = self._open(synchronous, busy_timeout_s)
        if not readonly:
            try:
                self._recover()
            except sqlite3.Error as exc:
                self._fail_open(exc)
            try:
                self.full.make_reserve()        # a run must be able to record its end
            except EdgeError:
                self._conn.close()
                self._release_lock()
                raise
            self._thread = threading.Thread(target=self._maintain, name="records-maintain", daemon=True)
            self._thread.start()

    # ---------------------------------------------------------------- opening

    def _fail_open(self, exc):
        if self._conn is not None:
            try:
                self._conn.close()
            except sqlite3.Error:
                pass
        self._release_lock()
        msg = str(exc)
        if "locked" in msg or "busy" in msg:
            msg = f"database is locked by another process ({msg})"
        elif "not a database" in msg or "malformed" in msg or "corrupt" in msg:
            msg = f"not a records database or corrupt ({msg})"
        raise EdgeError(msg, self.db_path) from None

    def _release_lock(self):
        if self._lockfd is not None:
            os.close(self._lockfd)
            self._lockfd = None

    def _open(self, synchronous, busy_timeout_s):
        self._conn = None
        path = self.db_path
        if os.path.isdir(path):
            raise EdgeError("is a folder, not a database file", path)
        if self.readonly:
            if not os.path.isfile(path):
                raise EdgeError("database not found", path)
        else:
            try:
                os.makedirs(os.path.dirname(path), exist_ok=True)
                # one writer per database: an flock on the file, held until close(). (SQLite's own
                # locks are POSIX record locks; flock locks are separate, and this descriptor is
                # closed only after SQLite's connection.)
                self._lockfd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as exc:
                raise EdgeError(f"cannot open for writing: {exc.strerror}", path) from None
            try:
                fcntl.flock(self._lockfd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                self._release_lock()
                raise EdgeError("database in use by another record store (one writer per database)", path) from None
        try:
            if self.readonly:
                conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=busy_timeout_s,
                                       check_same_thread=False, isolation_level=None)
            else:
                conn = sqlite3.connect(path, timeout=busy_timeout_s, check_same_thread=False, isolation_level=None)
            self._conn = conn
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            if version == 0 and not tables:
                if self.readonly:
                    raise EdgeError("empty database (no records yet)", path)
                conn.execute("PRAGMA journal_mode=WAL")
                conn.executescript(f"BEGIN IMMEDIATE;\n{SCHEMA}\nPRAGMA user_version = {SCHEMA_VERSION};\nCOMMIT;")
            elif version == 0 or not {"runs", "records", "events"} <= tables:
                raise EdgeError("not a records database (its tables are not runs/records/events)", path)
            elif version != SCHEMA_VERSION:
                newer = "a newer" if version > SCHEMA_VERSION else "an older"
                raise EdgeError(f"records schema version {version}, this edge reads version {SCHEMA_VERSION} "
                                f"(written by {newer} edge: move the file aside or use the matching edge)", path)
            if not self.readonly:
                mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
                if mode.lower() != "wal":
                    raise EdgeError(f"cannot switch to WAL mode (journal mode stays {mode})", path)
                conn.execute(f"PRAGMA synchronous={synchronous}")
                conn.execute("PRAGMA journal_size_limit=67108864")
                conn.executescript(OUTBOX_SCHEMA)
                ok = conn.execute("PRAGMA quick_check").fetchone()[0]
                if ok != "ok":
                    raise EdgeError(f"corrupt database (quick_check: {ok})", path)
            conn.execute("PRAGMA foreign_keys=ON")
            return conn
        except EdgeError:
            if self._conn is not None:
                self._conn.close()
            self._release_lock()
            raise
        except sqlite3.Error as exc:
            self._fail_open(exc)

    def _recover(self):
        """After a crash: delete temp files and the images of unfinished runs that no row
        refers to, close those runs, count the images folder for the quota."""
        conn = self._conn
        unfinished = conn.execute("SELECT id, started FROM runs WHERE ended IS NULL").fetchall()
        now = time.time()
        if self.images_dir:
            self._clean_images({rid for rid, _ in unfinished})
        # runs are closed after their files are cleaned: a crash in between redoes the cleaning
        if unfinished:
            with self._transaction() as conn:
                for rid, started in unfinished:
                    last = conn.execute("SELECT max(wall) FROM records WHERE run_id=?", (rid,)).fetchone()[0]
                    conn.execute("UPDATE runs SET ended=?, summary=? WHERE id=?",
                                 (last or started, _json({"aborted": True}), rid))
                    conn.execute("INSERT INTO events(run_id, t, kind, detail) VALUES (?,?,?,?)",
                                 (rid, now, "run_aborted", _json({"run_id": rid, "last_record_wall": last})))

    def _clean_images(self, crashed):
        conn = self._conn
        os.makedirs(self.images_dir, exist_ok=True)
        # only a run that died can leave files that no row refers to
        total = 0
        for _day, folder, names in day_folders(self.images_dir):
            for name in names:
                path = os.path.join(folder, name)
                if TMP_RE.match(name):
                    unlink(path)
                    continue
                m = NAME_RE.match(name) if crashed else None
                if m and int(m.group(1)) in crashed:
                    rel = os.path.relpath(path, self.images_dir)
                    if conn.execute("SELECT 1 FROM records WHERE image_path=?", (rel,)).fetchone() is None:
                        unlink(path)
                        continue
                try:
                    total += os.path.getsize(path)
                except OSError:
                    pass
        self._image_bytes = total

    # ---------------------------------------------------------------- runs and events

    def start_run(self, bundle_path, config, engine=None, bundle_sha=None):
        """Open a run; returns its id. Committed at once (image names carry the run id)."""
        self._writable()
        self.flush()
        now = time.time()
        if engine is None and isinstance(config, dict):
            eng = config.get("engine")
            if isinstance(eng, dict):
                engine = "/".join(str(eng[k]) for k in ("kind", "precision") if eng.get(k) is not None) or None
            elif isinstance(eng, str):
                engine = eng
        sha = bundle_sha or bundle_sha256(bundle_path)
        with self._lock:
            with self._transaction("cannot write") as conn:
                run_id = conn.execute(
                    "INSERT INTO runs(started, bundle, bundle_sha256, engine, config) VALUES (?,?,?,?,?)",
                    (now, os.path.abspath(bundle_path) if bundle_path else None, sha, engine, _json(config or {}))
                ).lastrowid
                conn.execute("INSERT INTO events(run_id, t, kind, detail) VALUES (?,?,?,?)",
                             (run_id, now, "run_start", _json({"bundle": bundle_path, "bundle_sha256": sha})))
            self.run_id = run_id
            self._run_engine = engine
        return self.run_id

    def end_run(self, summary):
        """Flush and close the current run with its summary (and what a full disk dropped)."""
        self._writable()
        if self.run_id is None:
            return
        if self.full.any():
            self.full.release()                  # the reserve is kept for this moment
            summary = dict(summary or {}, records=self.full.report())
        self.flush()
        now = time.time()
        with self._lock:
            with self._transaction("cannot end the run") as conn:
                dropped = self.full.unreported()
                if dropped:
                    conn.execute("INSERT INTO events(run_id, t, kind, detail) VALUES (?,?,?,?)",
                                 (self.run_id, now, "records_dropped", _json(dropped)))
                conn.execute("UPDATE runs SET ended=?, summary=? WHERE id=?", (now, _json(summary or {}), self.run_id))
                conn.execute("INSERT INTO events(run_id, t, kind, detail) VALUES (?,?,?,?)",
                             (self.run_id, now, "run_end", _json(summary or {})))
            self.run_id = None

    def event(self, kind, detail=None, t=None):
        """Record an event (source outage, fault, late part, PLC gap...): committed with the
        queued rows at once, since events are rare and matter after a crash."""
        self._writable()
        row = (self.run_id, time.time() if t is None else float(t), str(kind), _json(detail or {}))
        with self._lock:
            self._commit_pending(extra_event=row)

    # ---------------------------------------------------------------- decisions

    def add(self, decision, image_rgb=None, amap=None, threshold=None):
        """Queue one decision; write its image first when it is to be saved. Commits the batch
        when `batch_rows` rows are queued (the maintenance thread commits after `batch_s`)."""
        self._writable()
        if self.run_id is None:
            self.start_run(None, {}, engine=None)
        engine = decision.extra.get("engine") if decision.extra else None
        if engine is None:
            engine = self._run_engine
        rel = not_saved = None
        if image_rgb is not None and (self.save == "all" or (self.save == "flagged" and decision.reject)):
            rel, not_saved = self._write_image(decision, image_rgb, amap, threshold)
        extra = {k: v for k, v in (decision.extra or {}).items() if k != "engine"}
        if not_saved:
            extra["image_not_saved"] = not_saved
        row = (self.run_id, int(decision.seq), float(decision.wall), float(decision.latency_s) * 1000.0,
               float(decision.score), 1 if decision.reject else 0, decision.reason, float(decision.defect_area),
               None if threshold is None else float(threshold), decision.part_id,
               None if decision.encoder is None else int(decision.encoder),
               None if engine is None else str(engine), rel, 0, _json(extra) if extra else None)
        with self._lock:
            if not self._pending:
                self._pending_since = time.monotonic()
            self._pending.append(row)
            if len(self._pending) >= self.batch_rows:
                self._commit_pending()

    def _write_image(self, decision, image_rgb, amap, threshold):
        """-> (relative path, None) or (None, why not saved); the row is kept either way."""
        if self.full.images_paused():           # the disk is (nearly) full: images go first
            return self._image_dropped(decision, None)
        try:
            data = encode_image(decision, image_rgb, amap, threshold, self.ext, self.jpeg_quality)
            rel = image_name(decision, self.run_id, self.ext)
            atomic_write_bytes(os.path.join(self.images_dir, rel), data)
        except Exception as exc:
            if is_full(exc):
                return self._image_dropped(decision, exc)
            self.stats["image_errors"] += 1
            self.stats["last_image_error"] = str(exc)
            return None, str(exc)
        with self._lock:
            self._image_bytes += len(data)
            self.stats["images"] += 1
        return rel, None

    def _image_dropped(self, decision, exc):
        first = self.full.full_at is None
        if first or exc is not None:
            self.full.full("images", exc if exc is not None else "less free space than the reserve")
        self.full.dropped("images_dropped", 1, (int(decision.seq),))
        if first:
            self.event("records_full", dict(self.full.report(), found_by="image write" if exc else "free space"))
        return None, "disk full"

    def flush(self):
        """Commit every queued row now; on return they are on disk (synchronous=FULL)."""
        if self._closed or self.readonly:
            return
        with self._lock:
            self._commit_pending()

    def _commit_pending(self, extra_event=None):
        rows, self._pending = self._pending, []
        self._pending_since = None
        events = extra_event if isinstance(extra_event, list) else [] if extra_event is None else [extra_event]
        if not rows and not events:
            return
        try:
            with self._transaction() as conn:
                if rows and self.outbox:
                    conn.executemany("INSERT INTO outbox(t, payload, image_path) VALUES (?,?,?)",
                                     [(time.time(), _json(dict(zip(RECORD_COLUMNS[1:-2], r[:-2]))), r[12])
                                      for r in rows])
                if rows:
                    conn.executemany("INSERT INTO records(run_id, seq, wall, latency_ms, score, reject, reason, "
                                     "defect_area, threshold, part_id, encoder, engine, image_path, pruned, extra) "
                                     "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)", rows)
                if events:
                    conn.executemany("INSERT INTO events(run_id, t, kind, detail) VALUES (?,?,?,?)", events)
        except sqlite3.Error as exc:
            if is_full(exc):
                return self._commit_full(rows, events, exc)
            self._pending = rows + self._pending   # keep them for the next try
            raise self._error("cannot commit records", exc) from None
        self.stats["committed"] += len(rows)
        self.stats["commits"] += 1
        late = []
        if self._late_full_note is not None:       # the full disk itself, found by a commit it dropped
            late.append((self.run_id, time.time(), "records_full", _json(self._late_full_note)))
            self._late_full_note = None
        dropped = self.full.unreported() if self.full.any() else None
        if dropped:                                # space again after drops: say what was lost
            late.append((self.run_id, time.time(), "records_dropped", _json(dropped)))
        if late:
            self._commit_pending(extra_event=late)

    def _commit_full(self, rows, events, exc):
        """A commit found the disk full (see edge/records/full.py): failsafe frees the reserve
        and tries once more; otherwise the rows and events are dropped and counted."""
        if not self._full_retry:               # first: move the WAL into the database and truncate it
            self._full_retry = True
            try:
                if self._checkpoint():
                    self._pending = rows + self._pending
                    return self._commit_pending(extra_event=events)
            finally:
                self._full_retry = False
        first = self.full.full_at is None
        if self.full.full("rows", exc):
            self._pending = rows + self._pending
            note = (self.run_id, time.time(), "records_full", _json(dict(self.full.report(), found_by="commit")))
            return self._commit_pending(extra_event=events + [note])
        self.full.dropped("rows_dropped", len(rows), [r[1] for r in rows])
        if events:
            self.full.dropped("events_dropped", len(events))
        if first:                                  # recorded with the first commit that succeeds
            self._late_full_note = dict(self.full.report(), found_by="commit")

    def _checkpoint(self):
        try:
            busy = self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
        except sqlite3.Error:
            return False
        return busy == 0

    @contextmanager
    def _transaction(self, what=None):
        """BEGIN IMMEDIATE ... COMMIT around the block, which gets the connection; ROLLBACK
        when anything in it fails. A database error is raised as EdgeError("<what>: ...")
        naming the file, or as it is when `what` is None (while opening)."""
        conn = self._conn
        try:
            conn.execute("BEGIN IMMEDIATE")
            yield conn
            conn.execute("COMMIT")
        except BaseException as exc:
            try:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass
            if what is not None and isinstance(exc, sqlite3.Error):
                raise self._error(what, exc) from None
            raise

    def _error(self, what, exc):
        return EdgeError(f"{what}: {exc}", self.db_path)

    def _writable(self):
        if self._closed:
            raise EdgeError("record store is closed", self.db_path)
        if self.readonly:
            raise EdgeError("record store opened read-only", self.db_path)

    # ---------------------------------------------------------------- maintenance

    def _maintain(self):
        tick = min(0.05, self.batch_s / 2) if self.batch_s > 0 else 0.05
        while not self._stop.wait(tick):
            try:
                with self._lock:
                    if self._pending and time.monotonic() - self._pending_since >= self.batch_s:
                        self._commit_pending()
                if self.images_dir and time.monotonic() - self._last_quota >= self.quota_every_s:
                    self._last_quota = time.monotonic()
                    self.enforce_quota()
            except Exception as exc:  # keep maintaining; the error is visible in stats
                self.stats["maintain_error"] = str(exc)

    def enforce_quota(self):
        """Delete the oldest image files until their total is under 90% of the quota (only
        when it is over the quota). Returns the number of files deleted."""
        if not self.images_dir or self._image_bytes <= self.quota_bytes:
            return 0
        target = int(self.quota_bytes * 0.9)
        deleted = 0
        chunk = []
        excess = self._image_bytes - target
        for _day, folder, names in day_folders(self.images_dir):
            for name in names:
                if excess <= 0:
                    break
                if TMP_RE.match(name) or not NAME_RE.match(name):
                    continue
                path = os.path.join(folder, name)
                try:
                    size = os.path.getsize(path)
                except OSError:
                    continue
                chunk.append((path, size))
                excess -= size
                if len(chunk) >= self.prune_chunk:
                    deleted += self._prune(chunk)
                    chunk = []
            if excess <= 0:
                break
        if chunk:
            deleted += self._prune(chunk)
        for _day, folder, names in list(day_folders(self.images_dir)):
            if not names:
                remove_empty_upwards(folder, self.images_dir)
        return deleted

    def _prune(self, files):
        rels = [(os.path.relpath(p, self.images_dir),) for p, _ in files]
        with self._lock:
            self._commit_pending()           # a queued row may refer to one of these files
            with self._transaction("cannot mark pruned images") as conn:
                conn.executemany("UPDATE records SET image_path=NULL, pruned=1 WHERE image_path=?", rels)
        for path, size in files:
            unlink(path)
            with self._lock:
                self._image_bytes -= size
        self.stats["pruned_files"] += len(files)
        return len(files)

    @property
    def image_bytes(self):
        return self._image_bytes

    # ---------------------------------------------------------------- reading

    def recent(self, n=20):
        """The last n records (committed and queued), newest first, as dicts; `image` is the
        absolute path of the saved image or None."""
        n = int(n)
        with self._lock:
            queued = list(self._pending)[-n:]
            rows = self._conn.execute(f"SELECT {', '.join(RECORD_COLUMNS)} FROM records ORDER BY id DESC LIMIT ?",
                                      (n,)).fetchall()
        out = [dict(zip(RECORD_COLUMNS, (None,) + r)) for r in reversed(queued)]
        out += [dict(zip(RECORD_COLUMNS, r)) for r in rows]
        out = out[:n]
        for r in out:
            r["reject"] = bool(r["reject"])
            r["extra"] = json.loads(r["extra"]) if r["extra"] else {}
            r["image"] = os.path.join(self.images_dir, r["image_path"]) if r["image_path"] and self.images_dir else None
        return out

    def flagged(self, n=12):
        """The last n rejected records that still have their image (committed), newest first."""
        with self._lock:
            rows = self._conn.execute(f"SELECT {', '.join(RECORD_COLUMNS)} FROM records WHERE reject = 1 AND "
                                      "image_path IS NOT NULL ORDER BY id DESC LIMIT ?", (int(n),)).fetchall()
        return [dict(zip(RECORD_COLUMNS, r)) for r in rows]

    def image_of(self, record_id):
        """Absolute path of a record's saved image, or None."""
        with self._lock:
            row = self._conn.execute("SELECT image_path FROM records WHERE id=?", (int(record_id),)).fetchone()
        if not row or not row[0] or not self.images_dir:
            return None
        return os.path.join(self.images_dir, row[0])

    def outbox_next(self, n=50):
        """The oldest n outbox rows (committed) as (seq, payload dict, absolute image path or None)."""
        self.flush()
        with self._lock:
            rows = self._conn.execute("SELECT seq, payload, image_path FROM outbox ORDER BY seq LIMIT ?",
                                      (int(n),)).fetchall()
        return [(seq, json.loads(p), os.path.join(self.images_dir, img) if img and self.images_dir else None)
                for seq, p, img in rows]

    def outbox_done(self, seq):
        """Outbox rows up to `seq` reached the plant: delete them."""
        with self._lock:
            with self._transaction("cannot update the outbox") as conn:
                conn.execute("DELETE FROM outbox WHERE seq <= ?", (int(seq),))

    def outbox_backlog(self):
        with self._lock:
            return self._conn.execute("SELECT count(*) FROM outbox").fetchone()[0]

    def counts(self, run_id=None):
        """Totals for `edge check` and the live view: records, rejects, saved images, pruned,
        events, runs; and the same for one run (the current one by default) under "run"."""
        self.flush()
        q = ("SELECT count(*), coalesce(sum(reject),0), count(image_path), coalesce(sum(pruned),0) FROM records")
        with self._lock:
            r = self._conn.execute(q).fetchone()
            out = {"records": r[0], "rejects": r[1], "images": r[2], "pruned": r[3],
                   "events": self._conn.execute("SELECT count(*) FROM events").fetchone()[0],
                   "runs": self._conn.execute("SELECT count(*) FROM runs").fetchone()[0],
                   "image_mb": round(self._image_bytes / 1048576, 3) if not self.readonly else None}
            rid = run_id if run_id is not None else self.run_id
            if rid is None:
                last = self._conn.execute("SELECT max(id) FROM runs").fetchone()[0]
                rid = last
            if rid is not None:
                r = self._conn.execute(q + " WHERE run_id=?", (rid,)).fetchone()
                out["run"] = {"id": rid, "records": r[0], "rejects": r[1], "images": r[2], "pruned": r[3]}
        return out

    def last_decision_wall(self):
        """Capture wall time (seconds since the epoch) of the newest decision, or None when
        there is none yet (`edge check --max-age` asks this of a read-only store)."""
        self.flush()
        with self._lock:
            wall = self._conn.execute("SELECT max(wall) FROM records").fetchone()[0]
        return None if wall is None else float(wall)

    def events(self, n=50, kind=None):
        """The last n events, newest first, as dicts with detail decoded."""
        sql = "SELECT id, run_id, t, kind, detail FROM events"
        args = ()
        if kind:
            sql += " WHERE kind=?"
            args = (kind,)
        with self._lock:
            rows = self._conn.execute(sql + " ORDER BY id DESC LIMIT ?", args + (int(n),)).fetchall()
        return [{"id": i, "run_id": r, "t": t, "kind": k, "detail": json.loads(d) if d else {}} for i, r, t, k, d in rows]

    # ---------------------------------------------------------------- closing

    def close(self):
        """Flush, stop the maintenance thread, checkpoint the WAL, close. Idempotent."""
        if self._closed:
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        with self._lock:
            try:
                if not self.readonly:
                    self._commit_pending()
                    if self.run_id is not None:
                        self.end_run({"closed_without_summary": True})
                    try:
                        self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                    except sqlite3.Error:
                        pass
            finally:
                self._closed = True
                self._conn.close()
                self._release_lock()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False
