"""The durable job queue: all of studio-watch's SQL lives here.

One row per file (or URL) in `jobs`; its `state` is a plain word readable in the `sqlite3` shell. The connection
is in autocommit mode and every read-then-write runs inside `BEGIN IMMEDIATE`, so each state change is one
committed transaction before the caller starts the next side effect. A claim marks the row with its owner in
the same transaction that picks it; `recover()` clears the marks at daemon start (the daemon lock guarantees
nobody else holds them). Rows become `Job` dataclasses in exactly one function, `_job`.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import time
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

from studio_watch.errors import DatabaseTooNew
from studio_watch.logs import redact
from studio_watch.private import private_dir

SCHEMA_VERSION = 4


class State(str, Enum):
    SETTLING = "settling"
    READY = "ready"
    URL_ISSUED = "url_issued"
    UPLOADED = "uploaded"
    COMPLETED = "completed"
    FAILED = "failed"
    SKIPPED = "skipped"


STATES = tuple(s.value for s in State)
TERMINAL = (State.COMPLETED.value, State.FAILED.value, State.SKIPPED.value)
WAITING = (State.SETTLING.value, State.READY.value, State.URL_ISSUED.value, State.UPLOADED.value)

_SCHEMA = """
CREATE TABLE jobs (
    id INTEGER PRIMARY KEY,
    kind TEXT NOT NULL DEFAULT 'file',          -- file | url
    state TEXT NOT NULL,
    path BLOB,                                  -- os.fsencode() of the source file
    folder BLOB,                                -- the watched folder it was found in (NULL: by hand)
    source_url TEXT,                            -- URL imports
    is_external INTEGER NOT NULL DEFAULT 0,
    collection_id INTEGER,
    user_id INTEGER,
    title TEXT,
    description TEXT,
    auto_caption INTEGER NOT NULL DEFAULT 0,
    captions_skipped INTEGER NOT NULL DEFAULT 0,
    after_upload TEXT NOT NULL DEFAULT 'keep',  -- keep | move | delete
    after_upload_when TEXT NOT NULL DEFAULT 'completed',  -- completed | processed
    move_to BLOB,
    after_done INTEGER NOT NULL DEFAULT 0,      -- the after-upload action has finished
    final_path BLOB,                            -- where a moved file went
    duplicates TEXT NOT NULL DEFAULT 'skip',
    settle_seconds REAL NOT NULL DEFAULT 0,
    size INTEGER,
    mtime_ns INTEGER,
    inode INTEGER,
    device INTEGER,
    stable_since REAL,
    content_hash TEXT,
    media_id INTEGER,
    upload_url TEXT,
    url_issued_at REAL,
    transcoding_status TEXT,
    completed_at REAL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL DEFAULT 0,
    last_error TEXT,
    reason TEXT,
    claimed_by TEXT,
    claimed_at REAL,
    bytes_sent INTEGER,
    progress_at REAL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE INDEX jobs_path ON jobs (path, id);
CREATE INDEX jobs_due ON jobs (state, next_attempt_at);
CREATE INDEX jobs_hash ON jobs (content_hash);
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT);
"""

# Each step brings a database from the version before it to `target`; a new database runs them all.
_MIGRATIONS = (
    (1, _SCHEMA),
    (2, "CREATE INDEX jobs_size ON jobs (size);"  # duplicate checks look for same-sized jobs
        # claims look for after-upload actions still to do among (perhaps) 100,000 finished jobs
        "CREATE INDEX jobs_after ON jobs (next_attempt_at) WHERE state = 'completed' AND after_done = 0"),
    (3, "ALTER TABLE jobs ADD COLUMN failed_state TEXT;"  # the step a failed job failed at: `retry` resumes there
        # jobs that failed before this column existed: those whose complete failed are known by their error
        "UPDATE jobs SET failed_state = 'uploaded' WHERE state = 'failed' AND media_id IS NOT NULL AND "
        "(last_error LIKE 'complete:%' OR last_error LIKE 'gave up after % attempts: complete:%')"),
    # Timetables: the files each folder saw by when (jobs.created_at is when a file was first seen), the verdict
    # on each expected lecture (one row, so it is never alerted twice), and since when a folder was judged.
    (4, "CREATE INDEX jobs_folder_seen ON jobs (folder, created_at);"
        "CREATE TABLE lectures (folder BLOB NOT NULL, lecture TEXT NOT NULL, summary TEXT NOT NULL, zone TEXT, "
        "starts_at REAL NOT NULL, ends_at REAL NOT NULL, due_at REAL NOT NULL, late_until REAL NOT NULL, "
        "outcome TEXT NOT NULL, job_id INTEGER, judged_at REAL NOT NULL, resolved_at REAL, "
        "PRIMARY KEY (folder, lecture));"
        "CREATE INDEX lectures_open ON lectures (outcome, late_until);"
        "CREATE TABLE timetable_watch (folder BLOB PRIMARY KEY, since REAL NOT NULL)"),
)

# Columns a caller may set through `update()`; everything else has a dedicated transition.
_UPDATABLE = frozenset({
    "state", "title", "description", "auto_caption", "captions_skipped", "after_done", "final_path",
    "size", "mtime_ns", "inode", "device", "stable_since", "content_hash", "media_id", "upload_url",
    "url_issued_at", "transcoding_status", "completed_at", "attempts", "next_attempt_at", "last_error", "reason",
    "bytes_sent", "progress_at", "claimed_by", "claimed_at", "failed_state",
})
_PATH_COLUMNS = ("path", "folder", "move_to", "final_path")
_TEXT_COLUMNS = frozenset({"last_error", "reason"})  # error text: redacted before it is stored (logs.redact)
# Once the bytes are in Studio (or the job ended without needing them), the upload URL is never used again.
_REDACTED_KEY = "error_text_redacted"  # meta: older rows' error text has been passed through redact() once
_URL_SPENT = frozenset({State.UPLOADED.value, State.COMPLETED.value, State.SKIPPED.value})
# Claim order: finish what is in flight (after-upload actions, completes, PUTs) before starting new uploads.
_CLAIM_ORDER = (
    ("jobs_after", "state = 'completed' AND after_done = 0"),
    ("jobs_due", "state IN ('uploaded', 'url_issued')"),
    ("jobs_due", "state = 'ready'"),
)


@dataclass(frozen=True)
class Job:
    id: int
    kind: str
    state: State
    path: str | None
    folder: str | None
    source_url: str | None
    is_external: bool
    collection_id: int | None
    user_id: int | None
    title: str | None
    description: str | None
    auto_caption: bool
    captions_skipped: bool
    after_upload: str
    after_upload_when: str
    move_to: str | None
    after_done: bool
    final_path: str | None
    duplicates: str
    settle_seconds: float
    size: int | None
    mtime_ns: int | None
    inode: int | None
    device: int | None
    stable_since: float | None
    content_hash: str | None
    media_id: int | None
    upload_url: str | None
    url_issued_at: float | None
    transcoding_status: str | None
    completed_at: float | None
    attempts: int
    next_attempt_at: float
    last_error: str | None
    reason: str | None
    claimed_by: str | None
    claimed_at: float | None
    bytes_sent: int | None
    progress_at: float | None
    created_at: float
    updated_at: float
    failed_state: str | None  # the state a failed job was in when it failed

    @property
    def identity(self) -> tuple[int | None, int | None, int | None]:
        return (self.inode, self.size, self.mtime_ns)

    def evolve(self, **changes: Any) -> Job:
        """A copy with `changes`: dataclasses.replace without re-running __init__ over forty fields (the pipeline
        makes several copies per file, and replace() was the costliest Python in a small file's path)."""
        job = object.__new__(Job)
        job.__dict__.update(self.__dict__, **changes)
        return job

    @property
    def display_path(self) -> str:
        """The path for humans: undecodable bytes shown as escapes, never a crash."""
        return self.source_url or "" if self.path is None else show_path(self.path)

    def summary(self) -> dict[str, Any]:
        """The job for `jobs --json`, `status --json` and alerts."""
        return {"id": self.id, "state": self.state.value, "kind": self.kind, "path": self.display_path,
                "media_id": self.media_id, "attempts": self.attempts, "last_error": self.last_error,
                "reason": self.reason, "collection_id": self.collection_id, "user_id": self.user_id,
                "title": self.title, "size": self.size, "content_hash": self.content_hash,
                "captions_skipped": self.captions_skipped, "transcoding_status": self.transcoding_status,
                "final_path": None if self.final_path is None else show_path(self.final_path),
                "created_at": self.created_at, "updated_at": self.updated_at}


@dataclass(frozen=True)
class LectureRecord:
    """The verdict on one expected lecture (see expect/judge.py): recorded, missing, or late."""

    folder: str
    lecture: str  # the lecture's key: UID and start instant
    summary: str
    zone: str | None
    starts_at: float
    ends_at: float
    due_at: float
    late_until: float
    outcome: str
    job_id: int | None
    judged_at: float
    resolved_at: float | None = None

    def summary_dict(self) -> dict[str, Any]:
        return {"folder": show_path(self.folder), "lecture": self.lecture, "summary": self.summary,
                "zone": self.zone, "start": self.starts_at, "end": self.ends_at, "outcome": self.outcome,
                "job_id": self.job_id, "judged_at": self.judged_at, "resolved_at": self.resolved_at}


def show_path(path: str) -> str:
    """A path for humans and logs: bytes that are not UTF-8 shown as escapes, never a crash."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def _job(row: sqlite3.Row) -> Job:
    """The one place where a row becomes a Job."""
    values = dict(zip(row.keys(), row))
    for name in _PATH_COLUMNS:
        if values[name] is not None:
            values[name] = os.fsdecode(bytes(values[name]))
    for name in ("is_external", "auto_caption", "captions_skipped", "after_done"):
        values[name] = bool(values[name])
    values["state"] = State(values["state"])
    return Job(**values)


def _lecture(row: sqlite3.Row) -> LectureRecord:
    values = dict(zip(row.keys(), row))
    values["folder"] = os.fsdecode(bytes(values["folder"]))
    return LectureRecord(**values)


@dataclass(frozen=True)
class Seen:
    """A file the watcher found: its path, its watched folder's settings and one stat() of it."""

    path: str
    folder: str
    size: int
    mtime_ns: int
    inode: int
    device: int
    collection_id: int | None
    user_id: int | None
    auto_caption: bool
    after_upload: str
    move_to: str | None
    duplicates: str
    settle_seconds: float
    after_upload_when: str = "completed"
    kind: str = "file"
    changed_at: float | None = None  # when the file last changed by this machine's clock, where that is known

    @property
    def identity(self) -> tuple[int, int, int]:
        return (self.inode, self.size, self.mtime_ns)


def _fs(path: str | None) -> bytes | None:
    return None if path is None else os.fsencode(path)


class JobQueue:
    """The state database: one connection, shared by this process's threads under one lock.

    One connection keeps one page cache. With a connection per thread, every commit by one worker made the
    other re-read its pages (measured: a quarter more CPU per small file with two workers), and SQLite's busy
    handler, which sleeps in steps of milliseconds, arbitrated between them. Other processes (`status`, an
    `upload` beside the daemon) open their own connection and meet this one at SQLite's locks.
    """

    def __init__(self, path: Path, busy_timeout_ms: int = 10_000) -> None:
        self.path = Path(path)
        self._mutex = threading.RLock()
        self._create_file()
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False,
                                   timeout=busy_timeout_ms / 1000)
        self._db.row_factory = sqlite3.Row
        self._db.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
        self._db.execute("PRAGMA journal_mode = WAL")
        self._db.execute("PRAGMA synchronous = NORMAL")  # FULL is set around each durable commit: see _tx
        self._migrate()

    # -- connections and transactions ---------------------------------------------------------------------

    def _create_file(self) -> None:
        private_dir(self.path.parent)
        fd = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o600)
        os.close(fd)

    def _read(self, sql: str, args: Sequence[Any] = ()) -> list[sqlite3.Row]:
        """Rows of one query, never in the middle of another thread's transaction."""
        with self._mutex:
            return self._db.execute(sql, args).fetchall()

    def _read_one(self, sql: str, args: Sequence[Any] = ()) -> sqlite3.Row | None:
        rows = self._read(sql, args)
        return rows[0] if rows else None

    @contextlib.contextmanager
    def _tx(self, durable: bool = True) -> Iterator[sqlite3.Connection]:
        """One write transaction (BEGIN IMMEDIATE), holding the connection's lock from BEGIN to COMMIT.

        A durable commit waits for the disk (synchronous=FULL). `durable=False` does not (synchronous=NORMAL: in
        WAL mode still atomic, and it survives the process being killed; only a power cut can lose it, together
        with everything after it). It is for leases, caches and progress, and for the state changes whose loss
        only repeats a step that is safe to repeat (the pipeline says which, where it commits them).
        """
        conn = self._db
        with self._mutex:
            if durable:
                conn.execute("PRAGMA synchronous = FULL")
            try:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    yield conn
                    conn.execute("COMMIT")
                except BaseException:
                    if conn.in_transaction:  # also when COMMIT itself failed (disk full): never leave it open
                        conn.execute("ROLLBACK")
                    raise
            finally:
                if durable:
                    conn.execute("PRAGMA synchronous = NORMAL")

    def close(self) -> None:
        with self._mutex, contextlib.suppress(sqlite3.Error):
            self._db.close()

    def _migrate(self) -> None:
        with self._tx() as conn:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise DatabaseTooNew(f"{self.path} was written by a newer studio-watch (schema {version}, this one "
                                     f"knows {SCHEMA_VERSION}); upgrade studio-watch or use another state_db")
            for target, script in _MIGRATIONS:
                if version < target:
                    for statement in script.split(";"):
                        if statement.strip():
                            conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    # -- reading --------------------------------------------------------------------------------------------

    def get(self, job_id: int) -> Job | None:
        row = self._read_one("SELECT * FROM jobs WHERE id = ?", (job_id,))
        return _job(row) if row else None

    def jobs(self, state: str | None = None, limit: int | None = None) -> list[Job]:
        sql, args = "SELECT * FROM jobs", []
        if state:
            sql, args = sql + " WHERE state = ?", [state]
        sql += " ORDER BY id"
        if limit:
            sql += f" LIMIT {int(limit)}"
        return [_job(r) for r in self._read(sql, args)]

    def counts(self) -> dict[str, int]:
        counts = dict.fromkeys(STATES, 0)
        for state, n in self._read("SELECT state, count(*) FROM jobs GROUP BY state"):
            counts[state] = n
        return counts

    def oldest_waiting(self) -> Job | None:
        marks = ",".join("?" * len(WAITING))
        row = self._read_one(f"SELECT * FROM jobs WHERE state IN ({marks}) ORDER BY created_at, id LIMIT 1", WAITING)
        return _job(row) if row else None

    def recent_failures(self, limit: int = 5) -> list[Job]:
        rows = self._read("SELECT * FROM jobs WHERE state = 'failed' ORDER BY updated_at DESC LIMIT ?", (limit,))
        return [_job(r) for r in rows]

    def in_flight(self) -> list[Job]:
        return [_job(r) for r in self._read("SELECT * FROM jobs WHERE claimed_by IS NOT NULL ORDER BY id")]

    def settling(self) -> list[Job]:
        return [_job(r) for r in self._read("SELECT * FROM jobs WHERE state = 'settling' ORDER BY id")]

    def latest_by_path(self) -> dict[bytes, tuple[str, tuple[int | None, int | None, int | None]]]:
        """For a rescan: each known path's newest job's state and identity (inode, size, mtime_ns); the state is
        "vanished" for a job skipped because its file had gone (a file found there now is back)."""
        rows = self._read(
            "SELECT path, CASE WHEN state = 'skipped' AND reason = 'vanished' THEN 'vanished' ELSE state END, "
            "inode, size, mtime_ns FROM jobs WHERE id IN "
            "(SELECT max(id) FROM jobs WHERE path IS NOT NULL GROUP BY path)")
        return {bytes(p): (s, (i, z, m)) for p, s, i, z, m in rows}

    def next_due(self) -> float | None:
        """When the earliest claimable job becomes due (None when there is none)."""
        row = self._read_one(
            "SELECT min(next_attempt_at) FROM jobs WHERE claimed_by IS NULL AND "
            "(state IN ('ready', 'url_issued', 'uploaded') OR (state = 'completed' AND after_done = 0))")
        return row[0] if row else None

    # -- meta: pause state ------------------------------------------------------------------------------------

    def set_meta(self, key: str, value: str | None) -> None:
        with self._tx() as conn:
            if value is None:
                conn.execute("DELETE FROM meta WHERE key = ?", (key,))
            else:
                conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))

    def meta(self, key: str) -> str | None:
        row = self._read_one("SELECT value FROM meta WHERE key = ?", (key,))
        return row[0] if row else None

    # -- timetables: what each folder saw, and the verdict on each lecture ---------------------------------------

    def watching_since(self, folder: str, now: float | None) -> float | None:
        """When this folder's timetable began to be judged (set by the first call with `now`; lectures before are
        not judged). With `now` None, only read (None: never judged)."""
        if now is None:
            row = self._read_one("SELECT since FROM timetable_watch WHERE folder = ?", (_fs(folder),))
            return None if row is None else float(row[0])
        with self._tx() as conn:
            conn.execute("INSERT OR IGNORE INTO timetable_watch (folder, since) VALUES (?, ?)", (_fs(folder), now))
            return float(conn.execute("SELECT since FROM timetable_watch WHERE folder = ?", (_fs(folder),)).fetchone()[0])

    def newest_job_id(self) -> int:
        """The id of the newest job (0 for none): a cheap "has any file been seen since?" """
        row = self._read_one("SELECT max(id) FROM jobs")
        return int(row[0] or 0) if row else 0

    def seen_in(self, folder: str, since: float, until: float) -> list[Job]:
        """The files first seen in a watched folder between two instants (a recursive folder's subfolders too)."""
        rows = self._read("SELECT * FROM jobs WHERE folder = ? AND created_at >= ? AND created_at <= ? AND "
                          "kind = 'file' ORDER BY created_at, id", (_fs(folder), since, until))
        return [_job(r) for r in rows]

    def record_lecture(self, record: LectureRecord) -> bool:
        """Store a verdict unless the lecture already has one; True when this call stored it."""
        with self._tx() as conn:
            cur = conn.execute(
                "INSERT OR IGNORE INTO lectures (folder, lecture, summary, zone, starts_at, ends_at, due_at, late_until, "
                "outcome, job_id, judged_at, resolved_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (_fs(record.folder), record.lecture, record.summary, record.zone, record.starts_at, record.ends_at,
                 record.due_at, record.late_until, record.outcome, record.job_id, record.judged_at,
                 record.resolved_at))
            return cur.rowcount == 1

    def lecture_late(self, folder: str, lecture: str, job_id: int, now: float) -> bool:
        """A missing lecture's file turned up: missing becomes late (True only for the call that changed it)."""
        with self._tx() as conn:
            cur = conn.execute("UPDATE lectures SET outcome = 'late', job_id = ?, resolved_at = ? WHERE folder = ? "
                               "AND lecture = ? AND outcome = 'missing'", (job_id, now, _fs(folder), lecture))
            return cur.rowcount == 1

    def lectures(self, folder: str | None = None, since: float | None = None, until: float | None = None,
                 outcome: str | None = None, open_at: float | None = None, limit: int | None = None) -> list[LectureRecord]:
        """Verdicts, newest lecture first: by folder, lectures starting in [since, until), by outcome, or (open_at)
        missing ones that a late file may still resolve."""
        where, args = [], []
        for clause, value in (("folder = ?", _fs(folder) if folder is not None else None), ("starts_at >= ?", since),
                              ("starts_at < ?", until), ("outcome = ?", outcome),
                              ("outcome = 'missing' AND late_until >= ?", open_at)):
            if value is not None:
                where.append(clause)
                args.append(value)
        sql = "SELECT * FROM lectures" + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY starts_at DESC"
        if limit:
            sql += f" LIMIT {int(limit)}"
        return [_lecture(r) for r in self._read(sql, args)]

    # -- writing ----------------------------------------------------------------------------------------------

    def observe(self, seen: Iterable[Seen], now: float | None = None) -> list[tuple[int, Seen]]:
        """Record files the watcher found; returns the jobs created (id, what was seen). One transaction for the batch.

        A path with no job, whose last job is finished and was a different file (inode, size, mtime), or whose
        last job was skipped because the file had vanished (it is back), gets a new `settling` job. A settling job whose file changed restarts its settle clock. Anything else is left
        to the pipeline, which re-checks the file before it sends it.
        """
        now = time.time() if now is None else now
        created: list[tuple[int, Seen]] = []
        with self._tx() as conn:
            for s in seen:
                row = conn.execute("SELECT id, state, inode, size, mtime_ns, updated_at, reason FROM jobs "
                                   "WHERE path = ? ORDER BY id DESC LIMIT 1", (_fs(s.path),)).fetchone()
                back = row is not None and row["state"] == State.SKIPPED.value and row["reason"] == "vanished"
                if row is None or back or (row["state"] in TERMINAL and (row[2], row[3], row[4]) != s.identity):
                    created.append((self._insert(conn, s, now), s))
                elif row["state"] == State.SETTLING.value and (row[2], row[3], row[4]) != s.identity:
                    since = settle_clock(s.mtime_ns, row["updated_at"], now)
                    conn.execute("UPDATE jobs SET size = ?, mtime_ns = ?, inode = ?, device = ?, stable_since = ?, "
                                 "updated_at = ? WHERE id = ?",
                                 (s.size, s.mtime_ns, s.inode, s.device, since, now, row["id"]))
        return created

    def _insert(self, conn: sqlite3.Connection, s: Seen, now: float, state: State = State.SETTLING,
                **extra: Any) -> int:
        # Settling counts from the last change where it is known (a file that sat unchanged in a local folder
        # while the daemon was down need not wait again), else from the moment the file was found.
        stable_since = now if s.changed_at is None else min(now, s.changed_at)
        values = dict(kind=s.kind, state=state.value, path=_fs(s.path), folder=_fs(s.folder),
                      collection_id=s.collection_id, user_id=s.user_id, auto_caption=int(s.auto_caption),
                      after_upload=s.after_upload, after_upload_when=s.after_upload_when, move_to=_fs(s.move_to), duplicates=s.duplicates,
                      settle_seconds=s.settle_seconds, size=s.size, mtime_ns=s.mtime_ns, inode=s.inode,
                      device=s.device, stable_since=stable_since, created_at=now, updated_at=now, **extra)
        cols = ", ".join(values)
        cur = conn.execute(f"INSERT INTO jobs ({cols}) VALUES ({', '.join('?' * len(values))})",
                           tuple(values.values()))
        return int(cur.lastrowid)

    def add(self, seen: Seen, state: State, **extra: Any) -> int:
        """Insert one job directly (a manual upload, a URL import)."""
        with self._tx() as conn:
            return self._insert(conn, seen, time.time(), state, **extra)

    def find_manual(self, seen: Seen) -> Job | None:
        """The newest job for this exact file (same path and identity), if any."""
        row = self._read_one(
            "SELECT * FROM jobs WHERE path = ? AND inode = ? AND size = ? AND mtime_ns = ? ORDER BY id DESC LIMIT 1",
            (_fs(seen.path), seen.inode, seen.size, seen.mtime_ns))
        return _job(row) if row else None

    def update(self, job_id: int, durable: bool = True, **values: Any) -> None:
        """Commit a change to one job (state transitions and the facts that come with them)."""
        self.update_many([(job_id, values)], durable)

    def update_many(self, changes: Sequence[tuple[int, dict[str, Any]]], durable: bool = True,
                    if_settling_as: dict[int, tuple[Any, ...]] | None = None) -> set[int]:
        """Commit changes to several jobs in one transaction (all or none); see `_tx` for `durable`.

        `if_settling_as` maps job ids to the identity (inode, size, mtime_ns) a decision was based on: those
        rows change only if they are still settling with exactly that identity. Returns the ids changed.
        """
        now = time.time()
        changed: set[int] = set()
        guards = if_settling_as or {}
        with self._tx(durable) as conn:
            for job_id, values in changes:
                bad = set(values) - _UPDATABLE
                if bad:
                    raise ValueError(f"not updatable: {sorted(bad)}")
                row = {k: _fs(v) if k in _PATH_COLUMNS else v.value if isinstance(v, State) else
                       redact(v) if k in _TEXT_COLUMNS and isinstance(v, str) else v for k, v in values.items()}
                if row.get("state") in _URL_SPENT:
                    row["upload_url"] = None  # its signature is a secret that need not be kept any longer
                row["updated_at"] = now
                sql = f"UPDATE jobs SET {', '.join(f'{k} = ?' for k in row)} WHERE id = ?"
                args: tuple[Any, ...] = (*row.values(), job_id)
                if job_id in guards:
                    sql += " AND state = 'settling' AND inode IS ? AND size IS ? AND mtime_ns IS ?"
                    args += tuple(guards[job_id])
                if conn.execute(sql, args).rowcount:
                    changed.add(job_id)
        return changed

    def set_progress(self, job_id: int, bytes_sent: int) -> None:
        """Record transfer progress for `status` and `upload` (not a state change)."""
        with self._tx(durable=False) as conn:
            conn.execute("UPDATE jobs SET bytes_sent = ?, progress_at = ? WHERE id = ?", (bytes_sent, time.time(), job_id))

    def claim(self, owner: str, limit: int = 1, now: float | None = None) -> list[Job]:
        """Atomically take up to `limit` due jobs for `owner`; in-flight jobs before new ones.

        Each UPDATE picks and marks rows in one statement, all in one transaction, so two workers never take the
        same job; each walks the (state, next_attempt_at) index, so a claim costs the same with 10 or 100,000
        jobs waiting.
        """
        now = time.time() if now is None else now
        claimed: list[Job] = []
        with self._tx(durable=False) as conn:
            for index, which in _CLAIM_ORDER:
                if len(claimed) >= limit:
                    break
                rows = conn.execute(
                    f"UPDATE jobs SET claimed_by = ?, claimed_at = ? WHERE id IN (SELECT id FROM jobs INDEXED BY "
                    f"{index} WHERE {which} AND next_attempt_at <= ? AND claimed_by IS NULL "
                    f"ORDER BY next_attempt_at, id LIMIT ?) RETURNING *",
                    (owner, now, now, limit - len(claimed))).fetchall()
                claimed.extend(sorted((_job(r) for r in rows), key=lambda j: (j.next_attempt_at, j.id)))
        return claimed

    def claim_id(self, job_id: int, owner: str) -> Job | None:
        """Take one given job if nobody holds it (the `upload` command doing its own work)."""
        now = time.time()
        with self._tx() as conn:
            cur = conn.execute("UPDATE jobs SET claimed_by = ?, claimed_at = ? WHERE id = ? AND claimed_by IS NULL",
                               (owner, now, job_id))
            if cur.rowcount != 1:
                return None
            return _job(conn.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone())

    def release(self, job_id: int, durable: bool = True, **values: Any) -> None:
        """Give a claimed job back, with whatever else changed."""
        self.update(job_id, durable, claimed_by=None, claimed_at=None, bytes_sent=None, progress_at=None, **values)

    def recover(self) -> list[Job]:
        """At daemon start: release every claim left by a process that died. Returns the jobs released."""
        with self._tx() as conn:
            rows = conn.execute("SELECT * FROM jobs WHERE claimed_by IS NOT NULL").fetchall()
            conn.execute("UPDATE jobs SET claimed_by = NULL, claimed_at = NULL, bytes_sent = NULL, progress_at = NULL "
                         "WHERE claimed_by IS NOT NULL")
            conn.execute(f"UPDATE jobs SET upload_url = NULL WHERE upload_url IS NOT NULL AND state IN "
                         f"({', '.join(repr(s) for s in sorted(_URL_SPENT))})")  # rows written before this rule
            if conn.execute("SELECT 1 FROM meta WHERE key = ?", (_REDACTED_KEY,)).fetchone() is None:
                self._redact_stored(conn)  # once: error text stored before it was redacted on the way in
        return [_job(r) for r in rows]

    @staticmethod
    def _redact_stored(conn: sqlite3.Connection) -> None:
        rows = conn.execute("SELECT id, last_error, reason FROM jobs WHERE last_error IS NOT NULL OR "
                            "(reason IS NOT NULL AND reason NOT IN ('duplicate', 'vanished', 'empty'))").fetchall()
        for job_id, error, reason in rows:
            clean = (redact(error) if error else error, redact(reason) if reason else reason)
            if clean != (error, reason):
                conn.execute("UPDATE jobs SET last_error = ?, reason = ? WHERE id = ?", (*clean, job_id))
        conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, '1')", (_REDACTED_KEY,))

    def content_verdict(self, job: Job, content_hash: str) -> tuple[str, int | None]:
        """Record `content_hash` for a job about to be uploaded, unless the same bytes went to the same target.

        Returns ("upload", None), ("duplicate", media_id of the earlier upload) or ("wait", None) when another
        job with the same bytes is still in flight. One transaction, so two copies never both go ahead. Its
        commit does not wait for the disk: the job's next state change (synchronous=FULL) makes it durable
        before any request goes out, and a hash lost in a crash is simply computed and asked about again.
        """
        with self._tx(durable=False) as conn:
            row = conn.execute(
                "SELECT id, state, media_id, claimed_by FROM jobs WHERE content_hash = ? AND id != ? AND "
                "collection_id IS ? AND user_id IS ? AND state NOT IN ('failed', 'skipped', 'settling') "
                "ORDER BY state != 'completed', id LIMIT 1",
                (content_hash, job.id, job.collection_id, job.user_id)).fetchone()
            if row is not None and row["state"] == State.COMPLETED.value:
                return "duplicate", row["media_id"]
            if row is not None:  # it recorded these bytes first and will upload them without asking again
                return "wait", None
            # A same-sized job already sending (its hash is not known until its PUT ends). By state: the jobs in
            # flight are few, while one batch of same-sized clips can be thousands.
            if job.state is State.READY and conn.execute(
                    "SELECT 1 FROM jobs INDEXED BY jobs_due WHERE state IN ('url_issued', 'uploaded') AND size = ? "
                    "AND id != ? AND content_hash IS NULL AND kind = 'file' AND collection_id IS ? AND user_id IS ? "
                    "AND claimed_by IS NOT NULL LIMIT 1",  # one merely waiting to resume will ask when its PUT ends
                    (job.size, job.id, job.collection_id, job.user_id)).fetchone() is not None:
                return "wait", None
            conn.execute("UPDATE jobs SET content_hash = ?, updated_at = ? WHERE id = ?",
                         (content_hash, time.time(), job.id))
        return "upload", None

    def same_size_elsewhere(self, job: Job) -> bool:
        """Could another job hold the same bytes? (Only then is a hash needed before the upload.)"""
        row = self._read_one(
            "SELECT 1 FROM jobs WHERE size = ? AND id != ? AND kind = 'file' AND collection_id IS ? AND user_id IS ? "
            "AND state NOT IN ('failed', 'skipped') LIMIT 1",
            (job.size, job.id, job.collection_id, job.user_id))
        return row is not None

    def retry(self, ids: Sequence[int] | None) -> list[int]:
        """Put failed jobs (the given ones, or all with None) back in the queue; returns the ids moved.

        Each resumes at the step it failed at: a job whose bytes Studio already has (it failed completing) only
        completes, one with an upload URL PUTs again, a link import that may have been sent is looked for in
        Studio before it is sent again, any other starts over. Resumed before the upload, a job is asked about
        duplicates again.
        """
        with self._tx() as conn:
            sql = "SELECT id, kind, upload_url, media_id, failed_state FROM jobs WHERE state = 'failed'"
            if ids is None:
                rows = conn.execute(sql).fetchall()
            else:
                rows = conn.execute(f"{sql} AND id IN ({','.join('?' * len(ids))})", tuple(ids)).fetchall()
            now = time.time()
            for row in rows:
                if row["failed_state"] == State.UPLOADED.value and row["media_id"] is not None:
                    state, forget_hash = State.UPLOADED, False
                elif row["kind"] == "link" and row["failed_state"] == State.URL_ISSUED.value:
                    state, forget_hash = State.URL_ISSUED, True  # maybe sent: reconciled before it is sent again
                else:
                    state, forget_hash = State.URL_ISSUED if row["upload_url"] else State.READY, True
                conn.execute("UPDATE jobs SET state = ?, attempts = 0, next_attempt_at = ?, reason = NULL, "
                             "failed_state = NULL, content_hash = CASE WHEN ? THEN NULL ELSE content_hash END, "
                             "updated_at = ? WHERE id = ?", (state.value, now, forget_hash, now, row["id"]))
        return [r["id"] for r in rows]


def settle_clock(mtime_ns: int, last_seen: float, now: float) -> float:
    """When a file that was just seen to change last changed: its mtime if that is believable, else now.

    The mtime is used when it falls between the previous look and now, so a file closed a while ago is not
    made to wait a whole extra settle period; a clock-skewed or preserved mtime falls back to now.
    """
    mtime = mtime_ns / 1e9
    return mtime if last_seen <= mtime <= now else now
