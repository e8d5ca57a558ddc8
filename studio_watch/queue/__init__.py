"""All SQL: the durable job queue, one interface (`JobQueue`) with two backends.

`open_queue(state_db)` picks the backend: a `postgresql://` (or `postgres://`) URI is a cluster's shared
PostgreSQL database, anything else the path of a single machine's SQLite file.
"""

from __future__ import annotations

from pathlib import Path

from studio_watch.queue.base import JobQueue
from studio_watch.queue.model import (STATE_WORDS, STATES, TERMINAL, TRANSITIONS, WAITING, IllegalTransition, Job, LectureRecord,
                                      Seen, Settled, State, Step, Verdict, settle_clock, show_path)

__all__ = ["JobQueue", "STATE_WORDS", "STATES", "TERMINAL", "TRANSITIONS", "WAITING", "IllegalTransition", "Job", "LectureRecord",
           "Seen", "Settled",
           "State", "Step", "Verdict", "settle_clock", "show_path", "open_queue", "is_postgres"]

DEFAULT_LEASE_SECONDS = 30.0


def is_postgres(state_db: str | Path) -> bool:
    return str(state_db).startswith(("postgresql://", "postgres://"))


def open_queue(state_db: str | Path, *, node: str = "local", password: str | None = None,
               lease_seconds: float = DEFAULT_LEASE_SECONDS, new_database: bool = False,
               verify: bool = False) -> JobQueue:
    """The queue at `state_db`. Raises DatabaseTooNew, DatabaseUnavailable (PostgreSQL), ConfigError (psycopg
    is not installed); for a SQLite file DatabaseUnusable and StorageFull too. `new_database` and `verify` (the
    daemon's `run --new-database`, its quick_check at start) concern a file: a PostgreSQL database is the
    server's to keep whole and cannot be lost as a file can."""
    if is_postgres(state_db):
        from studio_watch.queue.postgres import PostgresQueue  # start-up cost: psycopg, only for a cluster

        return PostgresQueue(str(state_db), node=node, password=password, lease_seconds=lease_seconds)
    from studio_watch.queue.sqlite import SqliteQueue  # start-up cost: the one backend this process uses

    return SqliteQueue(Path(state_db), new_database=new_database, verify=verify)
