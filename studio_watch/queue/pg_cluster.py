"""A node's membership of the cluster, beyond the rows of the queue: its name, the `nodes` table, waking the other
nodes' workers, and locks every node respects.

- **Node names**: a session advisory lock per name, held on a connection of its own while the daemon runs
  (SIGKILL closes the socket and frees it); the `nodes` table says who was seen when, for `status`.
- **Waking other nodes**: a job that becomes ready sends `NOTIFY studio_watch_work`; every daemon LISTENs and
  wakes its workers at once, instead of at its next poll (procrastinate does the same).
- **Shared locks**: `shared_lock` gives any caller (an OAuth refresh) a cluster-wide lock, on a connection of its
  own for the length of the block.
"""

from __future__ import annotations

import abc
import contextlib
import json
import threading
from typing import Any, Callable, Iterator

from studio_watch import __version__
from studio_watch.errors import DatabaseUnavailable, NodeNameInUse, StorageFull
from studio_watch.queue import pg_driver
from studio_watch.queue.backend import SqlBackend

CHANNEL = "studio_watch_work"  # NOTIFY channel: a job became ready


class ClusterMember(SqlBackend):
    """The cluster's side of PostgresQueue (its connections, clock and leases are postgres.py's)."""

    node: str
    lease_seconds: float
    _stop: threading.Event
    _node_conn: Any  # holds the node name's advisory lock
    _registered: tuple[str, int, str] | None
    _listener: threading.Thread | None

    @abc.abstractmethod
    def _connect(self) -> Any:
        """A connection of its own (raises DatabaseUnavailable)."""

    @abc.abstractmethod
    def _start_heartbeat(self) -> None:
        """Keep the node's name (and the leases of its jobs) alive from now on."""

    # -- the node's name --------------------------------------------------------------------------------------

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

    def _name_held(self) -> bool:
        """Is the connection holding the node name's lock still alive?"""
        return pg_driver.alive(self._node_conn)

    def _seen_alive(self, tx: Any, now: float) -> None:
        """The heartbeat's note in `nodes` (inside its transaction), once the node has registered."""
        if self._registered is not None:
            tx.run("UPDATE nodes SET last_seen = ? WHERE name = ?", (now, self.node))

    def node_seen(self, status: dict[str, Any] | None) -> None:
        if self._registered is None:
            return
        with self._tx(durable=False) as tx:
            if status is None:
                self._seen_alive(tx, self.now())
            else:
                tx.run("UPDATE nodes SET last_seen = ?, status = ? WHERE name = ?",
                       (self.now(), json.dumps(status), self.node))

    def _stopped(self) -> None:
        """Say in `nodes` that this node stopped (best effort: the server may be gone already)."""
        if self._registered is not None:
            with contextlib.suppress(Exception):
                with self._tx() as tx:
                    tx.run("UPDATE nodes SET stopped_at = ?, status = NULL WHERE name = ?", (self.now(), self.node))

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

    # -- waking the cluster's workers ------------------------------------------------------------------------

    def _notify(self) -> None:
        with contextlib.suppress(DatabaseUnavailable):
            with self._tx(durable=False) as tx:
                tx.run(f"NOTIFY {CHANNEL}")

    def on_work(self, wake: Callable[[], None]) -> None:
        """Call `wake()` whenever any node makes a job ready (a LISTEN on a connection of its own)."""
        def listen() -> None:
            while not self._stop.is_set():
                try:
                    conn = self._connect()
                except DatabaseUnavailable:
                    self._stop.wait(1.0)
                    continue
                try:
                    with pg_driver.spoken(self.where):
                        conn.execute(f"LISTEN {CHANNEL}")
                        while not self._stop.is_set():
                            for _ in conn.notifies(timeout=1.0):
                                wake()
                except (DatabaseUnavailable, StorageFull):
                    self._stop.wait(1.0)
                finally:
                    with contextlib.suppress(Exception):
                        conn.close()

        self._listener = threading.Thread(target=listen, name="queue-listener", daemon=True)
        self._listener.start()

    # -- locks every node respects ------------------------------------------------------------------------------

    @contextlib.contextmanager
    def shared_lock(self, name: str) -> Iterator[None]:
        """A session advisory lock on a connection of its own, held for the block (waits for other nodes)."""
        conn = self._connect()
        key = f"studio-watch lock {name}"
        try:
            with pg_driver.spoken(self.where):
                conn.execute("SELECT pg_advisory_lock(hashtextextended(%s, 0))", (key,))
                try:
                    yield
                finally:
                    with contextlib.suppress(Exception):
                        conn.execute("SELECT pg_advisory_unlock(hashtextextended(%s, 0))", (key,))
        finally:
            conn.close()
