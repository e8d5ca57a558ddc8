"""The PostgreSQL backend: one queue shared by a cluster of nodes (psycopg 3).

What the cluster needs beyond the shared SQL (`sql.py`), and how it is done here:

- **One job per file across nodes**: a unique index on the path of the live jobs (settling … uploaded); an
  observed file's INSERT is `ON CONFLICT DO NOTHING`, so the first node's observation decides.
- **Leases** (the procrastinate / pg-boss pattern): a claim takes rows `FOR UPDATE SKIP LOCKED` and stamps
  `lease_expires_at`; a heartbeat thread extends the leases of the jobs this process is working on. A job whose
  lease ran out (its node was killed, frozen or cut off) is claimable again, by any node, at the step it had
  committed.
- **Fencing**: every transition is guarded by the claim's (claimed_by, claimed_at); a node back from a
  partition finds its claim replaced and its transitions no longer apply (`LeaseLost` in the pipeline).
- **One clock**: times are the server's (`now()`), so nodes with skewed clocks agree on settling and leases.
- **Node names**: a session advisory lock per name, held on a connection of its own while the daemon runs
  (SIGKILL closes the socket and frees it); the `nodes` table says who was seen when, for `status`.
- **Content verdicts** on same-sized files take a transaction advisory lock, so two copies of the same bytes
  on two nodes never both go ahead; `shared_lock` gives any caller (an OAuth refresh) a cluster-wide lock.
- **Waking other nodes**: a job that becomes ready sends `NOTIFY studio_watch_work`; every daemon LISTENs and
  wakes its workers at once, instead of at its next poll (procrastinate does the same).
- **Outages**: a lost connection raises DatabaseUnavailable; the next call reconnects. A server whose disk is
  full (SQLSTATE 53100) raises StorageFull, as a full SQLite disk does: the daemon pauses the queue until a write
  succeeds again.
- **Clocks**: `clamp_times` clamps against the server's clock (this node's offset to it measured again first),
  so a node whose own clock stepped neither clamps the cluster's waits wrongly nor keeps a stale offset.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from typing import Any, Iterator, Sequence

from studio_watch.logs import get_logger
from studio_watch import __version__
from studio_watch.config import redact_uri
from studio_watch.errors import ConfigError, DatabaseTooNew, DatabaseUnavailable, NodeNameInUse, StorageFull
from studio_watch.queue.model import Job
from studio_watch.queue.sql import _RELEASED, Row, SqlQueue

try:
    import psycopg
    from psycopg.rows import dict_row
except ImportError:  # pragma: no cover - the optional extra is not installed
    psycopg = None  # type: ignore[assignment]

log = get_logger(__name__)

SCHEMA_VERSION = 2
CONNECT_TIMEOUT = 5  # seconds: a node must notice an unreachable server quickly, and say so
SKEW_TOLERANCE = 1.0  # seconds of clock difference to the server that are left uncorrected (NTP keeps within)
_CONTENT_LOCK = 0x5357  # advisory lock class of content verdicts (the second key: the file size)
_MIGRATE_LOCK = 0x53574D  # advisory lock held while one node migrates the schema
CHANNEL = "studio_watch_work"  # NOTIFY channel: a job became ready

_SCHEMA = """
CREATE TABLE jobs (
    id BIGSERIAL PRIMARY KEY,
    kind TEXT NOT NULL DEFAULT 'file',
    state TEXT NOT NULL,
    path BYTEA,
    folder BYTEA,
    source_url TEXT,
    is_external INTEGER NOT NULL DEFAULT 0,
    collection_id BIGINT,
    user_id BIGINT,
    title TEXT,
    description TEXT,
    auto_caption INTEGER NOT NULL DEFAULT 0,
    captions_skipped INTEGER NOT NULL DEFAULT 0,
    after_upload TEXT NOT NULL DEFAULT 'keep',
    after_upload_when TEXT NOT NULL DEFAULT 'completed',
    move_to BYTEA,
    after_done INTEGER NOT NULL DEFAULT 0,
    final_path BYTEA,
    duplicates TEXT NOT NULL DEFAULT 'skip',
    settle_seconds DOUBLE PRECISION NOT NULL DEFAULT 0,
    size BIGINT,
    mtime_ns BIGINT,
    inode BIGINT,
    device BIGINT,
    stable_since DOUBLE PRECISION,
    content_hash TEXT,
    media_id BIGINT,
    upload_url TEXT,
    url_issued_at DOUBLE PRECISION,
    transcoding_status TEXT,
    completed_at DOUBLE PRECISION,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at DOUBLE PRECISION NOT NULL DEFAULT 0,
    last_error TEXT,
    reason TEXT,
    claimed_by TEXT,
    claimed_at DOUBLE PRECISION,
    bytes_sent BIGINT,
    progress_at DOUBLE PRECISION,
    created_at DOUBLE PRECISION NOT NULL,
    updated_at DOUBLE PRECISION NOT NULL,
    failed_state TEXT,
    lease_expires_at DOUBLE PRECISION
);
CREATE INDEX jobs_path ON jobs (path, id);
CREATE INDEX jobs_due ON jobs (state, next_attempt_at);
CREATE INDEX jobs_hash ON jobs (content_hash);
CREATE INDEX jobs_size ON jobs (size);
CREATE INDEX jobs_after ON jobs (next_attempt_at) WHERE state = 'completed' AND after_done = 0;
CREATE INDEX jobs_claimed ON jobs (claimed_by) WHERE claimed_by IS NOT NULL;
CREATE UNIQUE INDEX jobs_one_live_job_per_path ON jobs (path)
    WHERE state IN ('settling', 'ready', 'url_issued', 'uploaded');
CREATE INDEX jobs_folder_seen ON jobs (folder, created_at);
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT);
CREATE TABLE lectures (
    folder BYTEA NOT NULL,
    lecture TEXT NOT NULL,
    summary TEXT NOT NULL,
    zone TEXT,
    starts_at DOUBLE PRECISION NOT NULL,
    ends_at DOUBLE PRECISION NOT NULL,
    due_at DOUBLE PRECISION NOT NULL,
    late_until DOUBLE PRECISION NOT NULL,
    outcome TEXT NOT NULL,
    job_id BIGINT,
    judged_at DOUBLE PRECISION NOT NULL,
    resolved_at DOUBLE PRECISION,
    PRIMARY KEY (folder, lecture)
);
CREATE INDEX lectures_open ON lectures (outcome, late_until);
CREATE TABLE timetable_watch (folder BYTEA PRIMARY KEY, since DOUBLE PRECISION NOT NULL);
CREATE TABLE nodes (
    name TEXT PRIMARY KEY,
    host TEXT,
    pid INTEGER,
    version TEXT,
    started_at DOUBLE PRECISION,
    last_seen DOUBLE PRECISION,
    stopped_at DOUBLE PRECISION,
    status TEXT
)
"""
_MIGRATIONS = (
    (1, _SCHEMA),
    # The latest failures (`status`) without walking a year of history: the same partial index as SQLite's
    # schema 5 (its other index there, jobs_claimed, was in this schema from the start). PostgreSQL's planner
    # picks the indexes itself (no hints). counts() is not cached here: other nodes commit too, and PostgreSQL has
    # no cheap "did anything change" like SQLite's data_version (docs/decisions/queue-indexes.md).
    (2, "CREATE INDEX IF NOT EXISTS jobs_failed ON jobs (updated_at) WHERE state = 'failed'"),
)


def _translate(sql: str) -> str:
    """The shared SQL (SQLite's dialect) in PostgreSQL's: `%s` placeholders, IS NOT DISTINCT FROM."""
    return sql.replace("%", "%%").replace(" IS ?", " IS NOT DISTINCT FROM ?").replace("?", "%s")


class _PgTx:
    __slots__ = ("cur", "_cache")

    def __init__(self, cur: Any, cache: dict[str, str]) -> None:
        self.cur, self._cache = cur, cache

    def _sql(self, sql: str) -> str:
        out = self._cache.get(sql)
        if out is None:
            out = self._cache[sql] = _translate(sql)
        return out

    def rows(self, sql: str, args: Sequence[Any] = ()) -> list[Row]:
        self.cur.execute(self._sql(sql), tuple(args))
        return self.cur.fetchall() if self.cur.description else []

    def one(self, sql: str, args: Sequence[Any] = ()) -> Row | None:
        rows = self.rows(sql, args)
        return rows[0] if rows else None

    def run(self, sql: str, args: Sequence[Any] = ()) -> int:
        self.cur.execute(self._sql(sql), tuple(args))
        return self.cur.rowcount


class PostgresQueue(SqlQueue):
    """A cluster's queue in one PostgreSQL database; one connection per process, shared under a lock."""

    shared = True

    def __init__(self, uri: str, node: str, password: str | None = None, lease_seconds: float = 30.0) -> None:
        if psycopg is None:
            raise ConfigError("state_db is a postgresql:// URI, but psycopg is not installed: "
                              "pip install 'studio-watch[postgresql]'")
        self.uri, self.node, self.lease_seconds = uri, node, lease_seconds
        self.where = redact_uri(uri)
        self._password = password
        self._mutex = threading.RLock()
        self._conn: Any = None
        self._cache: dict[str, str] = {}
        self._skew = 0.0
        self._prefix = f"{node}/{os.getpid()}/"
        self._holding: dict[int, tuple[str, float]] = {}  # job id → claim this process works on (heartbeat)
        self._node_conn: Any = None  # holds the node name's advisory lock
        self._registered: tuple[str, int, str] | None = None
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None
        self._listener: threading.Thread | None = None
        with self._mutex:
            self._connection()
        self._migrate()

    # -- connections ------------------------------------------------------------------------------------------

    def _connect(self) -> Any:
        kwargs: dict[str, Any] = {"autocommit": True, "row_factory": dict_row, "connect_timeout": CONNECT_TIMEOUT,
                                  "application_name": f"studio-watch {self.node}"[:63]}
        if self._password is not None:
            kwargs["password"] = self._password
        try:
            return psycopg.connect(self.uri, **kwargs)
        except psycopg.OperationalError as exc:
            raise DatabaseUnavailable(f"{self.where}: {_first_line(exc)}") from None
        except psycopg.ProgrammingError as exc:  # a malformed URI
            raise ConfigError(f"state_db: {self.where}: {_first_line(exc)}") from None

    def _connection(self) -> Any:
        if self._conn is None or self._conn.closed:
            self._conn = self._connect()
            self._measure_skew()
        return self._conn

    def _measure_skew(self) -> None:
        before = time.time()
        row = self._conn.execute("SELECT extract(epoch FROM clock_timestamp())::float8 AS t").fetchone()
        after = time.time()
        skew = row["t"] - (before + after) / 2
        self._skew = skew if abs(skew) > SKEW_TOLERANCE else 0.0
        if self._skew:
            log.warning("clock_skew", seconds=round(skew, 3), message="this node's clock differs from the "
                        "database server's; the server's is used for the queue")

    def _lost(self, exc: BaseException) -> DatabaseUnavailable:
        with contextlib.suppress(Exception):
            self._conn.close()
        self._conn = None
        return DatabaseUnavailable(f"{self.where}: {_first_line(exc)}")

    def now(self) -> float:
        return time.time() + self._skew

    def _read(self, sql: str, args: Sequence[Any] = ()) -> list[Row]:
        with self._mutex:
            try:
                return _PgTx(self._connection().cursor(), self._cache).rows(sql, args)
            except psycopg.errors.DiskFull as exc:
                raise self._full(exc) from None
            except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
                raise self._lost(exc) from None

    @contextlib.contextmanager
    def _tx(self, durable: bool = True) -> Iterator[_PgTx]:
        """One transaction. `durable=False`: synchronous_commit off for it (the server acknowledges before its WAL
        reaches the disk: a crash of the *server* may lose it, never half of it): the same bargain as SQLite's."""
        with self._mutex:
            try:
                conn = self._connection()
                with conn.transaction():
                    cur = conn.cursor()
                    if not durable:
                        cur.execute("SET LOCAL synchronous_commit = off")
                    yield _PgTx(cur, self._cache)
            except psycopg.errors.DiskFull as exc:  # the server is up; its disk is not: pause, do not reconnect
                raise self._full(exc) from None
            except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
                raise self._lost(exc) from None

    def _full(self, exc: BaseException) -> StorageFull:
        return StorageFull(f"{self.where}: the database server cannot write: {_first_line(exc)} (free space on "
                           "its disk; the queue resumes by itself)")

    def clamp_times(self, now: float, max_wait: float) -> int:
        """Times here are the server's, so `now` (this node's idea of it) is not trusted: the offset to the server
        is measured again (a step of this node's clock is noticed here) and the server's time used instead."""
        with self._mutex:
            try:
                self._connection()
                self._measure_skew()
            except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
                raise self._lost(exc) from None
        return super().clamp_times(self.now(), max_wait)

    def close(self) -> None:
        self._stop.set()
        for thread in (self._beat, self._listener):
            if thread is not None:
                thread.join(timeout=5)
        with self._mutex:
            if self._registered is not None:
                with contextlib.suppress(Exception):
                    self._connection().execute("UPDATE nodes SET stopped_at = %s, status = NULL WHERE name = %s",
                                               (self.now(), self.node))
            for conn in (self._conn, self._node_conn):
                with contextlib.suppress(Exception):
                    if conn is not None:
                        conn.close()
            self._conn = self._node_conn = None

    def _migrate(self) -> None:
        with self._tx() as tx:
            tx.rows("SELECT pg_advisory_xact_lock(?)", (_MIGRATE_LOCK,))  # one node migrates; the others wait
            tx.run("CREATE TABLE IF NOT EXISTS studio_watch_schema (version INTEGER NOT NULL)")
            row = tx.one("SELECT max(version) AS v FROM studio_watch_schema")
            version = (row["v"] if row else None) or 0
            if version > SCHEMA_VERSION:
                raise DatabaseTooNew(f"{self.where} was written by a newer studio-watch (schema {version}, this "
                                     f"one knows {SCHEMA_VERSION}); upgrade studio-watch on this node")
            for target, script in _MIGRATIONS:
                if version < target:
                    for statement in script.split(";"):
                        if statement.strip():
                            tx.cur.execute(statement)
            if version < SCHEMA_VERSION:
                tx.run("DELETE FROM studio_watch_schema")
                tx.run("INSERT INTO studio_watch_schema (version) VALUES (?)", (SCHEMA_VERSION,))

    # -- hooks of the shared SQL ------------------------------------------------------------------------------

    def owner(self, worker: str) -> str:
        return self._prefix + worker

    def _claimable(self) -> str:
        return "(claimed_by IS NULL OR lease_expires_at < ?)"

    def _claimable_args(self, now: float) -> tuple[Any, ...]:
        return (now,)

    def _lock_rows(self) -> str:
        return "FOR UPDATE SKIP LOCKED"

    def _held(self, now: float) -> dict[str, Any]:
        return {"lease_expires_at": now + self.lease_seconds}

    def _released(self) -> dict[str, Any]:
        return {**_RELEASED, "lease_expires_at": None}

    def _serialise_content(self, tx: Any, content_hash: str, size: int | None) -> None:
        # The same bytes have the same size: verdicts on one size go one at a time, cluster-wide.
        tx.rows("SELECT pg_advisory_xact_lock(?, ?)", (_CONTENT_LOCK, (size or 0) % 2**31))

    def _on_conflict(self) -> str:
        return " ON CONFLICT DO NOTHING"

    def _recover_where(self) -> tuple[str, tuple[Any, ...]]:
        # This node's claims only: its name is held by this process, so a claim signed with it is a dead run's.
        prefix = f"{self.node}/"
        return "left(claimed_by, ?) = ?", (len(prefix), prefix)

    # -- waking the cluster's workers ------------------------------------------------------------------------

    def _notify(self) -> None:
        with contextlib.suppress(DatabaseUnavailable):
            with self._tx(durable=False) as tx:
                tx.run(f"NOTIFY {CHANNEL}")

    def settle(self, decisions: Sequence[Any]) -> set[int]:
        changed = super().settle(decisions)
        if any(d.state.value == "ready" and d.job_id in changed for d in decisions):
            self._notify()
        return changed

    def add(self, seen: Any, state: Any, **extra: Any) -> int:
        job_id = super().add(seen, state, **extra)
        if state.value == "ready":
            self._notify()
        return job_id

    def retry(self, ids: Sequence[int] | None) -> list[int]:
        moved = super().retry(ids)
        if moved:
            self._notify()
        return moved

    def on_work(self, wake: Any) -> None:
        """Call `wake()` whenever any node makes a job ready (a LISTEN on a connection of its own)."""
        def listen() -> None:
            while not self._stop.is_set():
                try:
                    conn = self._connect()
                except DatabaseUnavailable:
                    self._stop.wait(1.0)
                    continue
                try:
                    conn.execute(f"LISTEN {CHANNEL}")
                    while not self._stop.is_set():
                        for _ in conn.notifies(timeout=1.0):
                            wake()
                except (psycopg.OperationalError, psycopg.InterfaceError):
                    self._stop.wait(1.0)
                finally:
                    with contextlib.suppress(Exception):
                        conn.close()

        self._listener = threading.Thread(target=listen, name="queue-listener", daemon=True)
        self._listener.start()

    def _after_load(self, tx: Any) -> None:
        tx.rows("SELECT setval(pg_get_serial_sequence('jobs', 'id'), (SELECT coalesce(max(id), 0) + 1 FROM jobs), "
                "false)")

    # -- claims and the heartbeat -----------------------------------------------------------------------------

    def claim(self, owner: str, limit: int = 1, now: float | None = None) -> list[Job]:
        jobs = super().claim(owner, limit, now)
        self._hold(jobs)
        return jobs

    def claim_id(self, job_id: int, owner: str) -> Job | None:
        job = super().claim_id(job_id, owner)
        self._hold([job] if job else [])
        return job

    def _hold(self, jobs: list[Job]) -> None:
        for job in jobs:
            assert job.claimed_by is not None and job.claimed_at is not None
            self._holding[job.id] = (job.claimed_by, job.claimed_at)
        if jobs:
            self._start_heartbeat()

    def _move(self, job: Job, to: Any, *, release: bool = False, durable: bool = True, **facts: Any) -> bool:
        applied = super()._move(job, to, release=release, durable=durable, **facts)
        if release or not applied:
            self._holding.pop(job.id, None)
        return applied

    def let_go(self, job: Job) -> None:
        self._holding.pop(job.id, None)

    def _start_heartbeat(self) -> None:
        with self._mutex:
            if self._beat is None:
                self._beat = threading.Thread(target=self._heartbeat, name="queue-heartbeat", daemon=True)
                self._beat.start()

    def _heartbeat(self) -> None:
        """Extend the leases of the jobs this process works on, and say the node is alive, lease/3 apart."""
        interval = max(0.2, self.lease_seconds / 3)
        while not self._stop.wait(interval):
            try:
                self.keep_alive()
            except DatabaseUnavailable as exc:
                log.warning("database_unavailable", during="heartbeat", error=str(exc))
            except Exception:  # never let the heartbeat die: the leases would run out under live work
                log.exception("heartbeat_failed")

    def keep_alive(self) -> None:
        now = self.now()
        held = list(self._holding.items())
        with self._tx(durable=False) as tx:
            for job_id, (owner, claimed_at) in held:
                if not tx.run("UPDATE jobs SET lease_expires_at = ? WHERE id = ? AND claimed_by = ? AND claimed_at = ?",
                              (now + self.lease_seconds, job_id, owner, claimed_at)):
                    self._holding.pop(job_id, None)  # released meanwhile, or taken over: nothing to extend
            if self._registered is not None:
                tx.run("UPDATE nodes SET last_seen = ? WHERE name = ?", (now, self.node))
        if self._registered is not None and not self._name_held():
            self._take_name()  # the server restarted: the name's lock went with the old connection

    def _name_held(self) -> bool:
        """Is the connection holding the node name's lock still alive? (An idle connection does not notice a
        server restart until it is used.)"""
        if self._node_conn is None or self._node_conn.closed:
            return False
        try:
            self._node_conn.execute("SELECT 1")
            return True
        except psycopg.Error:
            return False

    # -- nodes ------------------------------------------------------------------------------------------------

    def register_node(self, name: str, pid: int, host: str) -> None:
        assert name == self.node
        self._registered = (name, pid, host)
        self._take_name()
        now = self.now()
        with self._tx() as tx:
            tx.run("INSERT INTO nodes (name, host, pid, version, started_at, last_seen, stopped_at, status) VALUES "
                   "(?, ?, ?, ?, ?, ?, NULL, NULL) ON CONFLICT (name) DO UPDATE SET host = excluded.host, pid = "
                   "excluded.pid, version = excluded.version, started_at = excluded.started_at, last_seen = "
                   "excluded.last_seen, stopped_at = NULL, status = NULL", (name, host, pid, __version__, now, now))
        self._start_heartbeat()

    def _take_name(self) -> None:
        """Hold the node name's advisory lock on a connection of its own (refused: a live daemon has it)."""
        conn = self._connect()
        row = conn.execute("SELECT pg_try_advisory_lock(hashtextextended(%s, 0)) AS ok",
                           (f"studio-watch node {self.node}",)).fetchone()
        if not row["ok"]:
            conn.close()
            other = self._read_one("SELECT host, pid, last_seen FROM nodes WHERE name = ?", (self.node,)) or {}
            raise NodeNameInUse(f"node_name {self.node!r} is in use by a live studio-watch daemon (pid "
                                f"{other.get('pid')} on {other.get('host')}) on {self.where}; give each node its "
                                "own node_name")
        old, self._node_conn = self._node_conn, conn
        if old is not None:
            with contextlib.suppress(Exception):
                old.close()

    def node_seen(self, status: dict[str, Any] | None) -> None:
        if self._registered is None:
            return
        with self._tx(durable=False) as tx:
            if status is None:
                tx.run("UPDATE nodes SET last_seen = ? WHERE name = ?", (self.now(), self.node))
            else:
                tx.run("UPDATE nodes SET last_seen = ?, status = ? WHERE name = ?",
                       (self.now(), json.dumps(status), self.node))

    def nodes(self) -> list[dict[str, Any]]:
        now = self.now()
        sending: dict[str, list[int]] = {}
        for row in self._read("SELECT id, claimed_by FROM jobs WHERE claimed_by IS NOT NULL AND state = 'url_issued' "
                              "AND lease_expires_at >= ? ORDER BY id", (now,)):
            sending.setdefault(row["claimed_by"].split("/", 1)[0], []).append(int(row["id"]))
        out = []
        for row in self._read("SELECT name, host, pid, version, started_at, last_seen, stopped_at FROM nodes "
                              "ORDER BY name"):
            live = row["stopped_at"] is None and (row["last_seen"] or 0) >= now - self.lease_seconds
            out.append({"name": row["name"], "host": row["host"], "pid": row["pid"], "version": row["version"],
                        "started_at": row["started_at"], "last_seen": row["last_seen"], "live": live,
                        "sending": sending.get(row["name"], [])})
        return out

    @contextlib.contextmanager
    def shared_lock(self, name: str) -> Iterator[None]:
        """A session advisory lock on a connection of its own, held for the block (waits for other nodes)."""
        conn = self._connect()
        try:
            key = f"studio-watch lock {name}"
            conn.execute("SELECT pg_advisory_lock(hashtextextended(%s, 0))", (key,))
            try:
                yield
            finally:
                with contextlib.suppress(Exception):
                    conn.execute("SELECT pg_advisory_unlock(hashtextextended(%s, 0))", (key,))
        except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
            raise DatabaseUnavailable(f"{self.where}: {_first_line(exc)}") from None
        finally:
            conn.close()


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
