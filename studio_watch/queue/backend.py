"""What a SQL backend supplies to the shared statements, and what every statement needs.

One transaction's statements (`Tx`), the hooks where SQLite and PostgreSQL really differ (connections and
transactions, how a claim locks rows and how long it lasts, index hints), values as the columns store them and
rows as Jobs, the meta table, and the schema steps both backends run the same way. Statements are written in
SQLite's dialect (`?` placeholders, `IS ?` for a comparison that treats NULL as a value); the PostgreSQL backend's
transaction object translates them (`%s`, `IS NOT DISTINCT FROM`).
"""

from __future__ import annotations

import abc
import contextlib
import os
import time
from typing import Any, Callable, Mapping, Protocol, Sequence

from studio_watch.errors import DatabaseTooNew
from studio_watch.logs import redact
from studio_watch.queue.base import JobQueue
from studio_watch.queue.model import JOB_FIELDS, PATH_COLUMNS, TEXT_COLUMNS, Job, State, job_from_row

Row = Mapping[str, Any]

# Claim order: finish what is in flight (after-upload actions, completes, PUTs) before starting new uploads.
# (index to walk, which rows)
CLAIM_ORDER = (
    ("jobs_after", "state = 'completed' AND after_done = 0"),
    ("jobs_due", "state IN ('uploaded', 'url_issued')"),
    ("jobs_due", "state = 'ready'"),
)
JOB_COLUMNS = JOB_FIELDS  # the jobs table's columns are the Job's fields, in both backends
RELEASED = {"claimed_by": None, "claimed_at": None, "bytes_sent": None, "progress_at": None}
SET_META = "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value"


class Tx(Protocol):
    """One transaction's statements, whichever database runs them."""

    def rows(self, sql: str, args: Sequence[Any] = ()) -> list[Row]: ...

    def one(self, sql: str, args: Sequence[Any] = ()) -> Row | None: ...

    def run(self, sql: str, args: Sequence[Any] = ()) -> int:
        """Execute; the number of rows changed."""


def as_bytes(path: str | None) -> bytes | None:
    """A path as its column stores it (undecodable names and all)."""
    return None if path is None else os.fsencode(path)


def as_column(name: str, value: Any) -> Any:
    """A Python value as the column stores it (paths as bytes, flags as 0/1, states as their word, error text
    redacted: a secret echoed in an error never reaches the database)."""
    if name in PATH_COLUMNS:
        return as_bytes(value)
    if name in TEXT_COLUMNS and isinstance(value, str):
        return redact(value)
    if isinstance(value, State):
        return value.value
    if isinstance(value, bool):
        return int(value)
    return value


def as_dict(row: Row) -> dict[str, Any]:
    """A row of either driver as a plain dict (SQLite's rows are not mappings)."""
    return row if isinstance(row, dict) else dict(zip(row.keys(), row))  # type: ignore[attr-defined]


def as_job(row: Row) -> Job:
    return job_from_row(as_dict(row))


def run_migrations(execute: Callable[[str], Any], version: int, steps: Sequence[tuple[int, str]], newest: int,
                   where: str, advice: str) -> None:
    """Bring a database at schema `version` up to `newest`: each step's statements whose target is above it, in
    order. Raises DatabaseTooNew (with `advice`, the backend's way out) for a database newer than this program."""
    if version > newest:
        raise DatabaseTooNew(f"{where} was written by a newer studio-watch (schema {version}, this one knows "
                             f"{newest}); {advice}")
    for target, script in steps:
        if version < target:
            for statement in script.split(";"):
                if statement.strip():
                    execute(statement)


class SqlBackend(JobQueue):
    """The hooks each backend fills in, and the little every group of shared statements uses."""

    @abc.abstractmethod
    def _tx(self, durable: bool = True) -> contextlib.AbstractContextManager[Tx]:
        """One write transaction; `durable=False`: its commit need not wait for the disk (see the backends)."""

    @abc.abstractmethod
    def _read(self, sql: str, args: Sequence[Any] = ()) -> list[Row]:
        """Rows of one query outside any write transaction."""

    def _index(self, name: str) -> str:
        """An index hint for the query planner ("" where the planner needs none)."""
        return ""

    def _no_index(self) -> str:
        """A hint to walk the table by id rather than an index ("" where the planner needs none)."""
        return ""

    def _claimable(self) -> str:
        """SQL: a row nobody holds (PostgreSQL: or whose holder's lease ran out; one `?`, now, per use)."""
        return "claimed_by IS NULL"

    def _claimable_args(self, now: float) -> tuple[Any, ...]:
        return ()

    def _lock_rows(self) -> str:
        """A claim's row locking clause inside its sub-select ("" where a write transaction serialises)."""
        return ""

    def _held(self, now: float) -> dict[str, Any]:
        """Columns a claim (and each step that keeps it) sets besides claimed_by / claimed_at (a lease)."""
        return {}

    def _released(self) -> dict[str, Any]:
        return RELEASED

    def _serialise_content(self, tx: Tx, content_hash: str, size: int | None) -> None:
        """Make content verdicts on the same bytes one at a time (a write transaction already does, in SQLite)."""

    def _on_conflict(self) -> str:
        """Appended to an observed file's INSERT: PostgreSQL lets the unique index decide between nodes."""
        return ""

    def _recover_where(self) -> tuple[str, tuple[Any, ...]]:
        """The claims `recover()` may release: (SQL condition, args)."""
        return "claimed_by IS NOT NULL", ()

    def _after_load(self, tx: Tx) -> None:
        """After rows came in with their ids: let new ids continue after them (PostgreSQL's sequence)."""

    def now(self) -> float:
        return time.time()

    def _read_one(self, sql: str, args: Sequence[Any] = ()) -> Row | None:
        rows = self._read(sql, args)
        return rows[0] if rows else None

    # -- meta: pause, daemon snapshots, link-import attempts ----------------------------------------------

    def set_meta(self, key: str, value: str | None, durable: bool = True) -> None:
        with self._tx(durable) as tx:
            if value is None:
                tx.run("DELETE FROM meta WHERE key = ?", (key,))
            else:
                tx.run(SET_META, (key, value))

    def meta(self, key: str) -> str | None:
        row = self._read_one("SELECT value FROM meta WHERE key = ?", (key,))
        return row["value"] if row else None
