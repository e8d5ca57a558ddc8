"""The PostgreSQL backend: one queue shared by a cluster of nodes (psycopg 3, through `pg_driver.py`).

What the cluster needs beyond the shared SQL (`sql.py`), and where it is done:

- **One job per file across nodes**: a unique index on the path of the live jobs (settling … uploaded); an
  observed file's INSERT is `ON CONFLICT DO NOTHING`, so the first node's observation decides (`pg_schema.py`).
- **Leases** (the procrastinate / pg-boss pattern), here: a claim takes rows `FOR UPDATE SKIP LOCKED` and stamps
  `lease_expires_at`; a heartbeat thread extends the leases of the jobs this process is working on. A job whose
  lease ran out (its node was killed, frozen or cut off) is claimable again, by any node, at the step it had
  committed.
- **Fencing**: every transition is guarded by the claim's (claimed_by, claimed_at); a node back from a
  partition finds its claim replaced and its transitions no longer apply (`LeaseLost` in the pipeline).
- **One clock**, here: times are the server's (`now()`), so nodes with skewed clocks agree on settling and
  leases. `clamp_times` clamps against the server's clock (this node's offset to it measured again first), so a
  node whose own clock stepped neither clamps the cluster's waits wrongly nor keeps a stale offset.
- **Node names, waking other nodes, cluster-wide locks**: `pg_cluster.py`.
- **Content verdicts** on same-sized files take a transaction advisory lock, so two copies of the same bytes
  on two nodes never both go ahead.
- **Outages**: a lost connection raises DatabaseUnavailable; the next call reconnects. A server whose disk is
  full raises StorageFull (`pg_driver.py`).
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from typing import Any, Iterator, Sequence

from studio_watch.config import redact_uri
from studio_watch.errors import DatabaseUnavailable
from studio_watch.logs import get_logger
from studio_watch.queue import pg_driver, pg_schema
from studio_watch.queue.backend import RELEASED, Row
from studio_watch.queue.model import Job, Retried
from studio_watch.queue.pg_cluster import ClusterMember
from studio_watch.queue.pg_driver import PgTx
from studio_watch.queue.sql import SqlQueue

log = get_logger(__name__)

SKEW_TOLERANCE = 1.0  # seconds of clock difference to the server that are left uncorrected (NTP keeps within)
_CONTENT_LOCK = 0x5357  # advisory lock class of content verdicts (the second key: the file size)


class PostgresQueue(ClusterMember, SqlQueue):
    """A cluster's queue in one PostgreSQL database; one connection per process, shared under a lock."""

    shared = True

    def __init__(self, uri: str, node: str, password: str | None = None, lease_seconds: float = 30.0) -> None:
        pg_driver.require()
        self.uri, self.node, self.lease_seconds = uri, node, lease_seconds
        self.where = redact_uri(uri)
        self._password = password
        self._mutex = threading.RLock()
        self._conn: Any = None
        self._cache: dict[str, str] = {}
        self._skew = 0.0
        self._prefix = f"{node}/{os.getpid()}/"
        self._holding: dict[int, tuple[str, float]] = {}  # job id → claim this process works on (heartbeat)
        self._node_conn = None  # holds the node name's advisory lock (pg_cluster.py)
        self._registered: tuple[str, int, str] | None = None
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None
        self._listener: threading.Thread | None = None
        with self._mutex:
            self._connection()
        with self._tx() as tx:
            pg_schema.migrate(tx, self.where)

    # -- connections ------------------------------------------------------------------------------------------

    def _connect(self) -> Any:
        return pg_driver.connect(self.uri, where=self.where, node=self.node, password=self._password)

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

    def _lost(self) -> None:
        """The shared connection failed: forget it (the next call reconnects)."""
        with contextlib.suppress(Exception):
            self._conn.close()
        self._conn = None

    def now(self) -> float:
        return time.time() + self._skew

    def _read(self, sql: str, args: Sequence[Any] = ()) -> list[Row]:
        with self._mutex, pg_driver.spoken(self.where, self._lost):
            return PgTx(self._connection().cursor(), self._cache).rows(sql, args)

    @contextlib.contextmanager
    def _tx(self, durable: bool = True) -> Iterator[PgTx]:
        """One transaction. `durable=False`: synchronous_commit off for it (the server acknowledges before its WAL
        reaches the disk: a crash of the *server* may lose it, never half of it): the same bargain as SQLite's."""
        with self._mutex, pg_driver.spoken(self.where, self._lost):
            conn = self._connection()
            with conn.transaction():
                cur = conn.cursor()
                if not durable:
                    cur.execute("SET LOCAL synchronous_commit = off")
                yield PgTx(cur, self._cache)

    def clamp_times(self, now: float, max_wait: float) -> int:
        """Times here are the server's, so `now` (this node's idea of it) is not trusted: the offset to the server
        is measured again (a step of this node's clock is noticed here) and the server's time used instead."""
        with self._mutex, pg_driver.spoken(self.where, self._lost):
            self._connection()
            self._measure_skew()
        return super().clamp_times(self.now(), max_wait)

    def close(self) -> None:
        self._stop.set()
        for thread in (self._beat, self._listener):
            if thread is not None:
                thread.join(timeout=5)
        with self._mutex:
            self._stopped()
            for conn in (self._conn, self._node_conn):
                with contextlib.suppress(Exception):
                    if conn is not None:
                        conn.close()
            self._conn = self._node_conn = None

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
        return {**RELEASED, "lease_expires_at": None}

    def _serialise_content(self, tx: Any, content_hash: str, size: int | None) -> None:
        # The same bytes have the same size: verdicts on one size go one at a time, cluster-wide.
        tx.rows("SELECT pg_advisory_xact_lock(?, ?)", (_CONTENT_LOCK, (size or 0) % 2**31))

    def _on_conflict(self) -> str:
        return " ON CONFLICT DO NOTHING"

    def _recover_where(self) -> tuple[str, tuple[Any, ...]]:
        # This node's claims only: its name is held by this process, so a claim signed with it is a dead run's.
        prefix = f"{self.node}/"
        return "left(claimed_by, ?) = ?", (len(prefix), prefix)

    def _after_load(self, tx: Any) -> None:
        tx.rows("SELECT setval(pg_get_serial_sequence('jobs', 'id'), (SELECT coalesce(max(id), 0) + 1 FROM jobs), "
                "false)")

    # -- waking the cluster's workers (pg_cluster.py) whenever a job becomes ready ------------------------------

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

    def retry(self, ids: Sequence[int] | None) -> Retried:
        retried = super().retry(ids)
        if retried.moved:
            self._notify()
        return retried

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
            self._seen_alive(tx, now)
        if self._registered is not None and not self._name_held():
            self._take_name()  # the server restarted: the name's lock went with the old connection
