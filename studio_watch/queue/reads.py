"""Reading the queue: the lookups, listings and counts that `status`, `jobs`, rescans and the daemon's loop ask
for, each bounded by an index so that a year of history costs no more than a day's
(docs/decisions/queue-indexes.md)."""

from __future__ import annotations

from typing import Any, Iterable, Iterator

from studio_watch.queue.backend import CLAIM_ORDER, SqlBackend, as_bytes, as_job
from studio_watch.queue.model import STATES, WAITING, Job, Seen

# next_due: one indexed probe per claimable kind (an OR across them made SQLite walk every completed row).
NEXT_DUE = (CLAIM_ORDER[0], ("jobs_due", "state = 'uploaded'"), ("jobs_due", "state = 'url_issued'"), CLAIM_ORDER[2])
LOOKUP_CHUNK = 500  # paths per `latest_by_path` query: below SQLite's oldest limit of 999 bound parameters
PAGE = 256  # rows per query while `each_job` streams (memory stays flat whatever the history)


class QueueReads(SqlBackend):
    """The shared read queries (none of them writes)."""

    def get(self, job_id: int) -> Job | None:
        row = self._read_one("SELECT * FROM jobs WHERE id = ?", (job_id,))
        return as_job(row) if row else None

    def jobs(self, state: str | None = None, limit: int | None = None, folder: str | None = None,
             created_before: float | None = None, created_after: float | None = None,
             newest_first: bool = False) -> list[Job]:
        return list(self.each_job(state, limit or None, folder, created_before, created_after, newest_first))

    def each_job(self, state: str | None = None, limit: int | None = None, folder: str | None = None,
                 created_before: float | None = None, created_after: float | None = None,
                 newest_first: bool = True) -> Iterator[Job]:
        """Jobs fetched PAGE rows per query by id (keyset paging), the filters applied in SQL.

        The connection's lock is held only for each page, never across a yield. A waiting state is read through
        `jobs_due` (its rows are few); a finished one by walking ids in order (a year's history is nearly all
        finished rows: the first page of completed, failed or skipped jobs is found among the newest few
        thousand rows).
        """
        op, order = ("<", "DESC") if newest_first else (">", "ASC")
        hint = "" if not state else self._index("jobs_due") if state in WAITING else self._no_index()
        base: list[str] = []
        base_args: list[Any] = []
        for clause, value in (("state = ?", state), ("folder = ?", as_bytes(folder)),
                              ("created_at < ?", created_before), ("created_at >= ?", created_after)):
            if value is not None:
                base.append(clause)
                base_args.append(value)
        after: int | None = None
        left = limit or None
        while left is None or left > 0:
            n = PAGE if left is None else min(PAGE, left)
            where, args = list(base), list(base_args)
            if after is not None:
                where, args = where + [f"id {op} ?"], args + [after]
            rows = self._read(f"SELECT * FROM jobs {hint}{' WHERE ' if where else ''}{' AND '.join(where)} "
                              f"ORDER BY id {order} LIMIT {n}", args)
            for row in rows:
                yield as_job(row)
            if len(rows) < n:
                return
            after = rows[-1]["id"]
            if left is not None:
                left -= len(rows)

    def pending(self) -> int:
        marks = ",".join("?" * len(WAITING))
        row = self._read_one(f"SELECT count(*) AS n FROM jobs WHERE state IN ({marks}) "
                             "OR (state = 'completed' AND after_done = 0)", WAITING)
        return int(row["n"]) if row else 0

    def last_completed_at(self) -> float | None:
        row = self._read_one("SELECT max(completed_at) AS t FROM jobs WHERE state = 'completed'")
        return row["t"] if row else None

    def newest_job_id(self) -> int:
        """The id of the newest job (0 for none): a cheap "has any file been seen since?" """
        row = self._read_one("SELECT max(id) AS newest FROM jobs")
        return int(row["newest"] or 0) if row else 0

    def counts(self) -> dict[str, int]:
        counts = dict.fromkeys(STATES, 0)
        for row in self._read("SELECT state, count(*) AS n FROM jobs GROUP BY state"):
            counts[row["state"]] = int(row["n"])
        return counts

    def oldest_waiting(self) -> Job | None:
        marks = ",".join("?" * len(WAITING))
        row = self._read_one(f"SELECT * FROM jobs WHERE state IN ({marks}) ORDER BY created_at, id LIMIT 1", WAITING)
        return as_job(row) if row else None

    def recent_failures(self, limit: int = 5) -> list[Job]:
        rows = self._read(f"SELECT * FROM jobs {self._index('jobs_failed')} WHERE state = 'failed' "
                          "ORDER BY updated_at DESC LIMIT ?", (limit,))
        return [as_job(r) for r in rows]

    def in_flight(self) -> list[Job]:
        return [as_job(r) for r in self._read(f"SELECT * FROM jobs {self._index('jobs_claimed')} "
                                              "WHERE claimed_by IS NOT NULL ORDER BY id")]

    def settling(self) -> list[Job]:
        return [as_job(r) for r in self._read("SELECT * FROM jobs WHERE state = 'settling' ORDER BY id")]

    def latest_by_path(self, paths: Iterable[str]) -> dict[bytes, tuple[str, tuple[int | None, int | None, int | None]]]:
        """For a rescan: the newest job's state and identity (inode, size, mtime_ns) of each of `paths` that has
        a job; the state is "vanished" for a job skipped because its file had gone (a file found there now is back).

        Looked up by the paths present (the `jobs_path` index, LOOKUP_CHUNK at a time), so a rescan costs
        O(files present), not O(jobs ever).
        """
        wanted = [as_bytes(p) for p in paths]
        found: dict[bytes, tuple[str, tuple[int | None, int | None, int | None]]] = {}
        for start in range(0, len(wanted), LOOKUP_CHUNK):
            chunk = wanted[start:start + LOOKUP_CHUNK]
            rows = self._read(
                "SELECT path, CASE WHEN state = 'skipped' AND reason = 'vanished' THEN 'vanished' ELSE state END AS s, "
                f"inode, size, mtime_ns FROM jobs WHERE id IN (SELECT max(id) FROM jobs {self._index('jobs_path')} "
                f"WHERE path IN ({','.join('?' * len(chunk))}) GROUP BY path)", chunk)
            found.update((bytes(r["path"]), (r["s"], (r["inode"], r["size"], r["mtime_ns"]))) for r in rows)
        return found

    def next_due(self) -> float | None:
        """When the earliest claimable job becomes due (None when there is none)."""
        row = self._read_one(
            "SELECT min(t) AS due FROM (" + " UNION ALL ".join(
                f"SELECT (SELECT next_attempt_at FROM jobs {self._index(index)} WHERE {which} AND claimed_by IS NULL "
                "ORDER BY next_attempt_at LIMIT 1) AS t" for index, which in NEXT_DUE) + ") AS probes")
        return row["due"] if row else None

    def find_manual(self, seen: Seen) -> Job | None:
        """The newest job for this exact file (same path and identity), if any."""
        row = self._read_one(
            "SELECT * FROM jobs WHERE path = ? AND inode = ? AND size = ? AND mtime_ns = ? ORDER BY id DESC LIMIT 1",
            (as_bytes(seen.path), seen.inode, seen.size, seen.mtime_ns))
        return as_job(row) if row else None

    def same_size_elsewhere(self, job: Job) -> bool:
        """Could another job hold the same bytes? (Only then is a hash needed before the upload.)"""
        row = self._read_one(
            "SELECT 1 AS x FROM jobs WHERE size = ? AND id != ? AND kind = 'file' AND collection_id IS ? AND "
            "user_id IS ? AND state NOT IN ('failed', 'skipped') LIMIT 1",
            (job.size, job.id, job.collection_id, job.user_id))
        return row is not None
