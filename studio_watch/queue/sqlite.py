"""The SQLite backend: one machine's queue in one file (the default `state_db`).

One row per file (or URL) in `jobs`; its `state` is a plain word readable in the `sqlite3` shell. The connection
is in autocommit mode and every read-then-write runs inside `BEGIN IMMEDIATE`, so each state change is one
committed transaction before the caller starts the next side effect. A claim marks the row with its owner in
the same transaction that picks it; `recover()` clears the marks at daemon start (the daemon lock guarantees
nobody else holds them). The statements themselves are shared with PostgreSQL (`sql.py`); the file's own
hazards (lost, replaced, damaged, on a full disk) are `integrity.py`'s.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, Iterator, Sequence

from studio_watch.queue import integrity
from studio_watch.queue.backend import Row, run_migrations
from studio_watch.queue.model import STATES
from studio_watch.queue.sql import SqlQueue

SCHEMA_VERSION = 5

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
    # A year of history is a million rows: every query a command or an idle daemon runs walks an index of what
    # it asks for, not the table (docs/decisions/queue-indexes.md). The claims in flight (`status`, `recover`),
    # the latest failures (`status`). An index on (state, id) for `jobs --state` was measured and left out: it
    # cost 25 µs of CPU per uploaded file (every state change moves its entry); see each_job for the way instead.
    (5, "CREATE INDEX IF NOT EXISTS jobs_claimed ON jobs (claimed_by) WHERE claimed_by IS NOT NULL;"
        "CREATE INDEX IF NOT EXISTS jobs_failed ON jobs (updated_at) WHERE state = 'failed'"),
)


class _SqliteTx:
    """One transaction's statements on the connection (the shared SQL is already in SQLite's dialect)."""

    __slots__ = ("conn",)

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def rows(self, sql: str, args: Sequence[Any] = ()) -> list[Row]:
        return self.conn.execute(sql, args).fetchall()

    def one(self, sql: str, args: Sequence[Any] = ()) -> Row | None:
        rows = self.conn.execute(sql, args).fetchall()
        return rows[0] if rows else None

    def run(self, sql: str, args: Sequence[Any] = ()) -> int:
        return self.conn.execute(sql, args).rowcount


class SqliteQueue(SqlQueue):
    """The state database: one connection, shared by this process's threads under one lock (why:
    docs/decisions/one-sqlite-connection.md)."""

    shared = False

    def __init__(self, path: Path, busy_timeout_ms: int = 10_000, new_database: bool = False,
                 verify: bool = False) -> None:
        """Open (or create) the database at `path`. A blank database where an earlier one left traces is refused
        unless `new_database`; `verify` runs SQLite's quick_check first (the daemon, at start). Raises
        DatabaseUnusable (one line naming the file and what to do), StorageFull, DatabaseTooNew."""
        self.path = Path(path)
        self.where = str(self.path)
        self._mutex = threading.RLock()
        integrity.prepare(self.path, new_database)
        self._create_file()
        try:
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False,
                                       timeout=busy_timeout_ms / 1000)
            self._db.row_factory = sqlite3.Row
            self._tx_view = _SqliteTx(self._db)
            self._db.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
            self._db.execute("PRAGMA journal_mode = WAL")
            self._db.execute("PRAGMA synchronous = NORMAL")  # FULL is set around each durable commit: see _tx
            if verify:
                found = [r[0] for r in self._db.execute("PRAGMA quick_check(3)")]
                if found != ["ok"]:
                    raise sqlite3.DatabaseError("database disk image is malformed: " + "; ".join(found))
        except sqlite3.Error as exc:
            with contextlib.suppress(Exception):
                self._db.close()
            raise integrity.translate(self.path, exc) from None
        self.opened = integrity.file_identity(self.path)
        self._meta_changes = 0
        self._counted: tuple[tuple[int, int] | None, dict[str, int]] = (None, {})
        self._migrate()

    def _create_file(self) -> None:
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o600)
        except OSError as exc:
            raise integrity.opening_error(self.path, exc) from None
        os.close(fd)

    def check_same_file(self) -> None:
        """Raise DatabaseReplaced when the file at the path is no longer the one this queue has open."""
        integrity.check_same(self.path, self.opened)

    def probe_write(self) -> None:
        """One small durable write (raises StorageFull while the disk is still full)."""
        self.set_meta("write_probe", str(time.time()))

    def _read(self, sql: str, args: Sequence[Any] = ()) -> list[Row]:
        """Rows of one query, never in the middle of another thread's transaction."""
        with self._mutex:
            try:
                return self._db.execute(sql, args).fetchall()
            except sqlite3.Error as exc:
                raise integrity.translate(self.path, exc) from None

    @contextlib.contextmanager
    def _tx(self, durable: bool = True) -> Iterator[_SqliteTx]:
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
                    yield self._tx_view
                    conn.execute("COMMIT")
                except BaseException:
                    if conn.in_transaction:  # also when COMMIT itself failed (disk full): never leave it open
                        with contextlib.suppress(sqlite3.Error):
                            conn.execute("ROLLBACK")
                    raise
            except sqlite3.Error as exc:  # disk full or failing, damaged: an error the caller can act on
                raise integrity.translate(self.path, exc) from None
            finally:
                if durable:
                    conn.execute("PRAGMA synchronous = NORMAL")

    def renew(self, job: Any) -> bool:
        # One machine: the daemon lock is the fence (no other process works on this queue, and claims end only
        # by this process's own transitions), so there is no lease to confirm and no write to pay for.
        return job.claimed_by is not None

    def _index(self, name: str) -> str:
        # SQLite's planner picks the (size) index for some of these queries and scans; the hint keeps each
        # claim walking the (state, next_attempt_at) index, so it costs the same with 10 or 100,000 jobs.
        return f"INDEXED BY {name}"

    def _no_index(self) -> str:
        return "NOT INDEXED"

    def counts(self) -> dict[str, int]:
        """Jobs per state. Counting a million rows takes ~30 ms and the daemon counts every 5 s, so the answer is
        kept until a job changes: a commit by this connection (`total_changes`, less the meta writes) or by any
        other (`data_version`). Triggers keeping a counts table were measured: 70 µs more per uploaded file."""
        with self._mutex:
            try:
                seen = (self._db.total_changes - self._meta_changes,
                        self._db.execute("PRAGMA data_version").fetchone()[0])
                if seen == self._counted[0]:
                    return dict(self._counted[1])
                counts = dict.fromkeys(STATES, 0)
                for state, n in self._db.execute("SELECT state, count(*) FROM jobs GROUP BY state"):
                    counts[state] = n
            except sqlite3.Error as exc:
                raise integrity.translate(self.path, exc) from None
            self._counted = (seen, counts)
            return dict(counts)

    def set_meta(self, key: str, value: str | None, durable: bool = True) -> None:
        with self._mutex:  # the connection's lock: no other thread's change lands between the two readings
            before = self._db.total_changes
            try:
                super().set_meta(key, value, durable)
            finally:
                self._meta_changes += self._db.total_changes - before  # not a change to any job: counts() stay valid

    def close(self) -> None:
        with self._mutex, contextlib.suppress(sqlite3.Error):
            self._db.close()

    def _migrate(self) -> None:
        if self._read_one("PRAGMA user_version")[0] == SCHEMA_VERSION:  # type: ignore[index]
            return  # nothing to write: a full disk must not stop a current database from opening
        with self._tx() as tx:
            version = tx.conn.execute("PRAGMA user_version").fetchone()[0]
            run_migrations(tx.conn.execute, version, _MIGRATIONS, SCHEMA_VERSION, self.where,
                           "upgrade studio-watch or use another state_db")
            tx.conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
