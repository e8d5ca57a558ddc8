"""The SQL both backends share: every named transition, written once.

Statements are written in SQLite's dialect (`?` placeholders, `IS ?` for a comparison that treats NULL as a
value); the PostgreSQL backend's transaction object translates them (`%s`, `IS NOT DISTINCT FROM`). What
really differs (connections and transactions, migrations, how a claim locks rows and how long it lasts,
index hints) is a hook each backend fills in. One responsibility (the statements themselves), hence one module
past the usual size.
"""

from __future__ import annotations

import abc
import contextlib
import os
import time
from typing import Any, Iterable, Iterator, Mapping, Protocol, Sequence

from studio_watch.queue.base import JobQueue
from studio_watch.logs import redact
from studio_watch.queue.model import (CANCEL_REQUESTED, CANCELLED, JOB_FIELDS, PATH_COLUMNS, TEXT_COLUMNS, URL_SPENT, LectureRecord,
                                      lecture_from_row, STATES, TERMINAL, WAITING, Job, Seen, Settled, State, Verdict,
                                      check_transition, job_from_row, settle_clock)

Row = Mapping[str, Any]

# Claim order: finish what is in flight (after-upload actions, completes, PUTs) before starting new uploads.
# (index to walk, which rows)
CLAIM_ORDER = (
    ("jobs_after", "state = 'completed' AND after_done = 0"),
    ("jobs_due", "state IN ('uploaded', 'url_issued')"),
    ("jobs_due", "state = 'ready'"),
)
# next_due: one indexed probe per claimable kind (an OR across them made SQLite walk every completed row).
NEXT_DUE = (CLAIM_ORDER[0], ("jobs_due", "state = 'uploaded'"), ("jobs_due", "state = 'url_issued'"), CLAIM_ORDER[2])
LOOKUP_CHUNK = 500  # paths per `latest_by_path` query: below SQLite's oldest limit of 999 bound parameters
PAGE = 256  # rows per query while `each_job` streams (memory stays flat whatever the history)
REDACTED_KEY = "error_text_redacted"  # meta: older rows' error text has been passed through redact() once
JOB_COLUMNS = JOB_FIELDS  # the jobs table's columns are the Job's fields, in both backends
_RELEASED = {"claimed_by": None, "claimed_at": None, "bytes_sent": None, "progress_at": None}


class Tx(Protocol):
    """One transaction's statements, whichever database runs them."""

    def rows(self, sql: str, args: Sequence[Any] = ()) -> list[Row]: ...

    def one(self, sql: str, args: Sequence[Any] = ()) -> Row | None: ...

    def run(self, sql: str, args: Sequence[Any] = ()) -> int:
        """Execute; the number of rows changed."""


def _fs(path: str | None) -> bytes | None:
    return None if path is None else os.fsencode(path)


def _value(name: str, value: Any) -> Any:
    """A Python value as the column stores it (paths as bytes, flags as 0/1, states as their word, error text
    redacted: a secret echoed in an error never reaches the database)."""
    if name in PATH_COLUMNS:
        return _fs(value)
    if name in TEXT_COLUMNS and isinstance(value, str):
        return redact(value)
    if isinstance(value, State):
        return value.value
    if isinstance(value, bool):
        return int(value)
    return value


def as_job(row: Row) -> Job:
    return job_from_row(row if isinstance(row, dict) else dict(zip(row.keys(), row)))


class SqlQueue(JobQueue):
    """The named transitions over a `jobs` table, for any backend that supplies the hooks below."""

    # -- hooks ------------------------------------------------------------------------------------------------

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
        return _RELEASED

    def _serialise_content(self, tx: Tx, content_hash: str, size: int | None) -> None:
        """Make content verdicts on the same bytes one at a time (a write transaction already does, in SQLite)."""

    def _on_conflict(self) -> str:
        """Appended to an observed file's INSERT: PostgreSQL lets the unique index decide between nodes."""
        return ""

    def _recover_where(self) -> tuple[str, tuple[Any, ...]]:
        """The claims `recover()` may release: (SQL condition, args)."""
        return "claimed_by IS NOT NULL", ()

    def now(self) -> float:
        return time.time()

    # -- reading --------------------------------------------------------------------------------------------

    def _read_one(self, sql: str, args: Sequence[Any] = ()) -> Row | None:
        rows = self._read(sql, args)
        return rows[0] if rows else None

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
        for clause, value in (("state = ?", state), ("folder = ?", _fs(folder)), ("created_at < ?", created_before),
                              ("created_at >= ?", created_after)):
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

    # -- the operator's verbs ---------------------------------------------------------------------------------

    def cancel(self, ids: Sequence[int]) -> dict[int, str]:
        out: dict[int, str] = {}
        marks = ",".join("?" * len(WAITING))
        with self._tx() as tx:
            for job_id in ids:
                row = tx.one("SELECT state, claimed_by FROM jobs WHERE id = ?", (job_id,))
                if row is None:
                    out[job_id] = "no such job"
                elif row["state"] not in WAITING:
                    out[job_id] = f"already {row['state']}: nothing left to cancel"
                elif tx.run(f"UPDATE jobs SET state = 'skipped', reason = ?, next_attempt_at = 0, updated_at = ? "
                            f"WHERE id = ? AND claimed_by IS NULL AND state IN ({marks})",
                            (CANCELLED, self.now(), job_id, *WAITING)):
                    out[job_id] = "cancelled"
                else:
                    tx.run("UPDATE jobs SET reason = ? WHERE id = ?", (CANCEL_REQUESTED, job_id))
                    out[job_id] = "requested"
        return out

    def cancel_requested(self, job_id: int) -> bool:
        row = self._read_one("SELECT reason FROM jobs WHERE id = ?", (job_id,))
        return row is not None and row["reason"] == CANCEL_REQUESTED

    def clear_cancel_request(self, job_id: int) -> None:
        with self._tx() as tx:
            tx.run("UPDATE jobs SET reason = NULL WHERE id = ? AND reason = ?", (job_id, CANCEL_REQUESTED))

    def delete_unclaimed(self, jobs: Iterable[Job]) -> list[int]:
        deleted: list[int] = []
        with self._tx() as tx:
            for job in jobs:
                if tx.run("DELETE FROM jobs WHERE id = ? AND state = ? AND updated_at = ? AND claimed_by IS NULL",
                          (job.id, job.state.value, job.updated_at)):
                    deleted.append(job.id)
        return deleted

    def finished_before(self, cutoff: float, after_id: int = 0, limit: int = 1000) -> list[Job]:
        rows = self._read(
            "SELECT * FROM jobs WHERE id > ? AND updated_at < ? AND claimed_by IS NULL AND "
            "(state IN ('failed', 'skipped') OR (state = 'completed' AND after_done = 1)) ORDER BY id LIMIT ?",
            (after_id, cutoff, limit))
        return [as_job(r) for r in rows]

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
        wanted = [_fs(p) for p in paths]
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
            (_fs(seen.path), seen.inode, seen.size, seen.mtime_ns))
        return as_job(row) if row else None

    def same_size_elsewhere(self, job: Job) -> bool:
        """Could another job hold the same bytes? (Only then is a hash needed before the upload.)"""
        row = self._read_one(
            "SELECT 1 AS x FROM jobs WHERE size = ? AND id != ? AND kind = 'file' AND collection_id IS ? AND "
            "user_id IS ? AND state NOT IN ('failed', 'skipped') LIMIT 1",
            (job.size, job.id, job.collection_id, job.user_id))
        return row is not None

    # -- meta -------------------------------------------------------------------------------------------------

    def set_meta(self, key: str, value: str | None, durable: bool = True) -> None:
        with self._tx(durable) as tx:
            if value is None:
                tx.run("DELETE FROM meta WHERE key = ?", (key,))
            else:
                tx.run("INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = "
                       "excluded.value", (key, value))

    def meta(self, key: str) -> str | None:
        row = self._read_one("SELECT value FROM meta WHERE key = ?", (key,))
        return row["value"] if row else None

    # -- finding and settling ---------------------------------------------------------------------------------

    def observe(self, seen: Iterable[Seen], now: float | None = None) -> list[tuple[int, Seen]]:
        """Record files a watcher found; returns the jobs created (id, what was seen). One transaction.

        A path with no job, whose last job is finished and was a different file (inode, size, mtime), or whose
        last job was skipped because the file had vanished (it is back), gets a new `settling` job. A settling
        job whose file changed restarts its settle clock. Anything else is left to the pipeline, which
        re-checks the file before it sends it. Paths in a fixed order: two nodes inserting the same batch wait
        for each other in the same order, never in a cycle.
        """
        now = self.now() if now is None else now
        created: list[tuple[int, Seen]] = []
        with self._tx() as tx:
            for s in sorted(seen, key=lambda s: os.fsencode(s.path)):
                row = tx.one("SELECT id, state, inode, size, mtime_ns, updated_at, reason FROM jobs "
                             "WHERE path = ? ORDER BY id DESC LIMIT 1", (_fs(s.path),))
                known = None if row is None else (row["inode"], row["size"], row["mtime_ns"])
                back = row is not None and row["state"] == State.SKIPPED.value and row["reason"] == "vanished"
                if row is None or back or (row["state"] in TERMINAL and known != s.identity):
                    job_id = self._insert(tx, s, now, conflict=self._on_conflict())
                    if job_id is not None:
                        created.append((job_id, s))
                elif row["state"] == State.SETTLING.value and known != s.identity:
                    since = settle_clock(s.mtime_ns, row["updated_at"], now)
                    tx.run("UPDATE jobs SET size = ?, mtime_ns = ?, inode = ?, device = ?, stable_since = ?, "
                           "updated_at = ? WHERE id = ?", (s.size, s.mtime_ns, s.inode, s.device, since, now, row["id"]))
        return created

    def _insert(self, tx: Tx, s: Seen, now: float, state: State = State.SETTLING, conflict: str = "",
                **extra: Any) -> int | None:
        # Settling counts from the last change where it is known (a file that sat unchanged in a local folder
        # while the daemon was down need not wait again), else from the moment the file was found.
        stable_since = now if s.changed_at is None else min(now, s.changed_at)
        values = dict(kind=s.kind, state=state.value, path=_fs(s.path), folder=_fs(s.folder),
                      collection_id=s.collection_id, user_id=s.user_id, auto_caption=int(s.auto_caption),
                      after_upload=s.after_upload, after_upload_when=s.after_upload_when, move_to=_fs(s.move_to),
                      duplicates=s.duplicates, settle_seconds=s.settle_seconds, size=s.size, mtime_ns=s.mtime_ns,
                      inode=s.inode, device=s.device, stable_since=stable_since, created_at=now, updated_at=now,
                      **{k: _value(k, v) for k, v in extra.items()})
        row = tx.one(f"INSERT INTO jobs ({', '.join(values)}) VALUES ({', '.join('?' * len(values))}){conflict} "
                     "RETURNING id", tuple(values.values()))
        return None if row is None else int(row["id"])

    def add(self, seen: Seen, state: State, **extra: Any) -> int:
        with self._tx() as tx:
            job_id = self._insert(tx, seen, self.now(), state, **extra)
        assert job_id is not None
        return job_id

    def settle(self, decisions: Sequence[Settled]) -> set[int]:
        now = self.now()
        changed: set[int] = set()
        with self._tx() as tx:
            for d in decisions:
                values = {**{k: _value(k, v) for k, v in d.facts.items()}, "state": d.state.value, "updated_at": now}
                sql = (f"UPDATE jobs SET {', '.join(f'{k} = ?' for k in values)} WHERE id = ? AND state = 'settling' "
                       "AND inode IS ? AND size IS ? AND mtime_ns IS ?")
                if tx.run(sql, (*values.values(), d.job_id, *d.identity)):
                    changed.add(d.job_id)
        return changed

    # -- claims -----------------------------------------------------------------------------------------------

    def claim(self, owner: str, limit: int = 1, now: float | None = None) -> list[Job]:
        """Atomically take up to `limit` due jobs for `owner`; in-flight jobs before new ones.

        Each UPDATE picks and marks rows in one statement, all in one transaction, so two workers never take the
        same job; each walks the (state, next_attempt_at) index, so a claim costs the same with 10 or 100,000
        jobs waiting.
        """
        now = self.now() if now is None else now
        held = {"claimed_by": owner, "claimed_at": now, **self._held(now)}
        sets = ", ".join(f"{k} = ?" for k in held)
        claimed: list[Job] = []
        with self._tx(durable=False) as tx:
            for index, which in CLAIM_ORDER:
                if len(claimed) >= limit:
                    break
                rows = tx.rows(
                    f"UPDATE jobs SET {sets} WHERE id IN (SELECT id FROM jobs {self._index(index)} WHERE {which} AND "
                    f"next_attempt_at <= ? AND {self._claimable()} ORDER BY next_attempt_at, id LIMIT ? "
                    f"{self._lock_rows()}) RETURNING *",
                    (*held.values(), now, *self._claimable_args(now), limit - len(claimed)))
                claimed.extend(sorted((as_job(r) for r in rows), key=lambda j: (j.next_attempt_at, j.id)))
        return claimed

    def claim_id(self, job_id: int, owner: str) -> Job | None:
        now = self.now()
        held = {"claimed_by": owner, "claimed_at": now, **self._held(now)}
        with self._tx() as tx:
            row = tx.one(f"UPDATE jobs SET {', '.join(f'{k} = ?' for k in held)} WHERE id = ? AND "
                         f"{self._claimable()} RETURNING *", (*held.values(), job_id, *self._claimable_args(now)))
        return as_job(row) if row else None

    def recover(self) -> list[Job]:
        where, args = self._recover_where()
        released = self._released()
        with self._tx() as tx:
            rows = tx.rows(f"SELECT * FROM jobs {self._index('jobs_claimed')} WHERE {where} ORDER BY id {self._lock_rows().replace(' SKIP LOCKED', '')}",
                           args)
            tx.run(f"UPDATE jobs SET {', '.join(f'{k} = NULL' for k in released)} WHERE {where}", args)
            # Once, like the redaction below (both walk every row: a year of history is a million): rows written
            # before spent upload URLs were cleared on the way in. A database marked redacted had this done too.
            if tx.one("SELECT 1 AS x FROM meta WHERE key = ?", (REDACTED_KEY,)) is None:
                marks = ", ".join("?" * len(URL_SPENT))
                tx.run(f"UPDATE jobs SET upload_url = NULL WHERE upload_url IS NOT NULL AND state IN ({marks})",
                       tuple(sorted(s.value for s in URL_SPENT)))  # rows written before this rule
                self._redact_stored(tx)  # once: error text stored before it was redacted on the way in
        return [as_job(r) for r in rows]

    @staticmethod
    def _redact_stored(tx: Tx) -> None:
        rows = tx.rows("SELECT id, last_error, reason FROM jobs WHERE last_error IS NOT NULL OR "
                       "(reason IS NOT NULL AND reason NOT IN ('duplicate', 'vanished', 'empty'))")
        for row in rows:
            error, reason = row["last_error"], row["reason"]
            clean = (redact(error) if error else error, redact(reason) if reason else reason)
            if clean != (error, reason):
                tx.run("UPDATE jobs SET last_error = ?, reason = ? WHERE id = ?", (*clean, row["id"]))
        tx.run("INSERT INTO meta (key, value) VALUES (?, '1') ON CONFLICT (key) DO UPDATE SET value = excluded.value",
               (REDACTED_KEY,))

    def renew(self, job: Job) -> bool:
        return self._move(job, job.state, durable=False)

    # -- the guarded transition ------------------------------------------------------------------------------

    def _move(self, job: Job, to: State, *, release: bool = False, durable: bool = True, **facts: Any) -> bool:
        """The one guarded UPDATE every named transition is: from the job's state, by its claim."""
        check_transition(job.state, to)
        if job.claimed_by is None:
            raise ValueError(f"job {job.id} is not claimed: transitions need the claim they are guarded by")
        now = self.now()
        values = {k: _value(k, v) for k, v in facts.items()}
        values.update(state=to.value, updated_at=now)
        if to in URL_SPENT:
            values["upload_url"] = None  # its signature is a secret that need not be kept any longer
        values.update(self._released() if release else self._held(now))
        sql = (f"UPDATE jobs SET {', '.join(f'{k} = ?' for k in values)} WHERE id = ? AND state = ? AND "
               "claimed_by = ? AND claimed_at IS ?")
        with self._tx(durable) as tx:
            return tx.run(sql, (*values.values(), job.id, job.state.value, job.claimed_by, job.claimed_at)) == 1

    def issue_url(self, job: Job, media_id: int, upload_url: str, at: float) -> bool:
        return self._move(job, State.URL_ISSUED, durable=False, media_id=media_id, upload_url=upload_url,
                          url_issued_at=at)

    def link_sending(self, job: Job, at: float) -> bool:
        return self._move(job, State.URL_ISSUED, url_issued_at=at)

    def restart(self, job: Job, why: str) -> bool:
        return self._move(job, State.READY, media_id=None, upload_url=None, url_issued_at=None, last_error=why)

    def mark_uploaded(self, job: Job, content_hash: str) -> bool:
        return self._move(job, State.UPLOADED, content_hash=content_hash)

    def skip_captions(self, job: Job) -> bool:
        return self._move(job, job.state, captions_skipped=True)

    def complete(self, job: Job, *, transcoding_status: str | None, at: float, release: bool,
                 media_id: int | None = None, captions_skipped: bool | None = None) -> bool:
        facts: dict[str, Any] = {"transcoding_status": transcoding_status, "last_error": None, "completed_at": at}
        if media_id is not None:
            facts["media_id"] = media_id
        if captions_skipped is not None:
            facts["captions_skipped"] = captions_skipped
        if release:
            facts["after_done"] = True
        return self._move(job, State.COMPLETED, release=release, durable=not release, **facts)

    def note_transcoding(self, job: Job, status: str | None) -> bool:
        return self._move(job, job.state, transcoding_status=status)

    def finish(self, job: Job, *, final_path: str | None = None, reason: str | None = None) -> bool:
        facts: dict[str, Any] = {"after_done": True}
        if final_path is not None:
            facts["final_path"] = final_path
        if reason is not None:
            facts["reason"] = reason
        return self._move(job, State.COMPLETED, release=True, **facts)

    def skip(self, job: Job, reason: str, media_id: int | None = None) -> bool:
        facts: dict[str, Any] = {"reason": reason}
        if media_id is not None:
            facts["media_id"] = media_id
        return self._move(job, State.SKIPPED, release=True, **facts)

    def fail(self, job: Job, error: str) -> bool:
        return self._move(job, State.FAILED, release=True, last_error=error, reason=error,
                          failed_state=job.state.value)

    def reschedule(self, job: Job, *, next_attempt_at: float, attempts: int | None = None,
                   last_error: str | None = None) -> bool:
        facts: dict[str, Any] = {"next_attempt_at": next_attempt_at}
        if attempts is not None:
            facts["attempts"] = attempts
        if last_error is not None:
            facts["last_error"] = last_error
        return self._move(job, job.state, release=True, **facts)

    def release(self, job: Job, last_error: str | None = None) -> bool:
        facts = {} if last_error is None else {"last_error": last_error}
        return self._move(job, job.state, release=True, **facts)

    def resettle(self, job: Job, identity: tuple[int, int, int, int] | None, at: float, last_error: str) -> bool:
        facts: dict[str, Any] = {"stable_since": at, "content_hash": None, "last_error": last_error}
        if identity is not None:
            facts.update(zip(("size", "mtime_ns", "inode", "device"), identity))
        if job.state in (State.URL_ISSUED, State.UPLOADED):
            facts.update(media_id=None, upload_url=None, url_issued_at=None)
        return self._move(job, State.SETTLING, release=True, **facts)

    def set_progress(self, job: Job, bytes_sent: int) -> None:
        with self._tx(durable=False) as tx:
            tx.run("UPDATE jobs SET bytes_sent = ?, progress_at = ? WHERE id = ? AND claimed_by = ?",
                   (bytes_sent, time.time(), job.id, job.claimed_by))

    def content_verdict(self, job: Job, content_hash: str) -> tuple[Verdict, int | None]:
        """See JobQueue.content_verdict. Its commit does not wait for the disk: the job's next state change (a
        durable one) makes it durable before any request goes out, and a hash lost in a crash is simply
        computed and asked about again."""
        with self._tx(durable=False) as tx:
            self._serialise_content(tx, content_hash, job.size)
            row = tx.one(
                "SELECT id, state, media_id FROM jobs WHERE content_hash = ? AND id != ? AND "
                "collection_id IS ? AND user_id IS ? AND state NOT IN ('failed', 'skipped', 'settling') "
                "ORDER BY state != 'completed', id LIMIT 1",
                (content_hash, job.id, job.collection_id, job.user_id))
            if row is not None and row["state"] == State.COMPLETED.value:
                return Verdict.DUPLICATE, row["media_id"]
            if row is not None:  # it recorded these bytes first and will upload them without asking again
                return Verdict.WAIT, None
            # A same-sized job already sending (its hash is not known until its PUT ends). By state: the jobs in
            # flight are few, while one batch of same-sized clips can be thousands.
            if job.state is State.READY and tx.one(
                    f"SELECT 1 AS x FROM jobs {self._index('jobs_due')} WHERE state IN ('url_issued', 'uploaded') "
                    "AND size = ? AND id != ? AND content_hash IS NULL AND kind = 'file' AND collection_id IS ? AND "
                    "user_id IS ? AND claimed_by IS NOT NULL LIMIT 1",  # one merely waiting will ask after its PUT
                    (job.size, job.id, job.collection_id, job.user_id)) is not None:
                return Verdict.WAIT, None
            tx.run("UPDATE jobs SET content_hash = ?, updated_at = ? WHERE id = ? AND claimed_by IS ? AND claimed_at IS ?",
                   (content_hash, self.now(), job.id, job.claimed_by, job.claimed_at))  # fenced like a transition
        return Verdict.UPLOAD, None

    # -- clocks ---------------------------------------------------------------------------------------------

    def clamp_times(self, now: float, max_wait: float) -> int:
        changed = 0
        with self._tx() as tx:
            for state in ("ready", "url_issued", "uploaded", "completed"):  # each an indexed range
                changed += tx.run("UPDATE jobs SET next_attempt_at = ? WHERE state = ? AND next_attempt_at > ?",
                                  (now, state, now + max_wait))
            changed += tx.run("UPDATE jobs SET stable_since = ? WHERE state = 'settling' AND stable_since > ?",
                              (now, now + 1.0))
            marks = ",".join("?" * len(WAITING))
            changed += tx.run(f"UPDATE jobs SET created_at = ? WHERE state IN ({marks}) AND created_at > ?",
                              (now, *WAITING, now + 1.0))
        return changed

    # -- operators ------------------------------------------------------------------------------------------

    def retry(self, ids: Sequence[int] | None) -> list[int]:
        """Each resumes at the step it failed at: a job whose bytes Studio already has (it failed completing) only
        completes, one with an upload URL PUTs again, a link import that may have been sent is looked for in
        Studio before it is sent again, any other starts over. Resumed before the upload, a job is asked about
        duplicates again."""
        with self._tx() as tx:
            sql = "SELECT id, kind, upload_url, media_id, failed_state FROM jobs WHERE state = 'failed'"
            if ids is None:
                rows = tx.rows(sql + " ORDER BY id")
            else:
                rows = tx.rows(f"{sql} AND id IN ({','.join('?' * len(ids))}) ORDER BY id", tuple(ids))
            now = self.now()
            for row in rows:
                if row["failed_state"] == State.UPLOADED.value and row["media_id"] is not None:
                    state, forget_hash = State.UPLOADED, False
                elif row["kind"] == "link" and row["failed_state"] == State.URL_ISSUED.value:
                    state, forget_hash = State.URL_ISSUED, True  # maybe sent: reconciled before it is sent again
                else:
                    state, forget_hash = State.URL_ISSUED if row["upload_url"] else State.READY, True
                check_transition(State.FAILED, state)
                tx.run("UPDATE jobs SET state = ?, attempts = 0, next_attempt_at = ?, reason = NULL, "
                       "failed_state = NULL, content_hash = CASE WHEN ? = 1 THEN NULL ELSE content_hash END, "
                       "updated_at = ? WHERE id = ? AND state = 'failed'",
                       (state.value, now, int(forget_hash), now, row["id"]))
        return [int(r["id"]) for r in rows]

    # -- timetables: what each folder saw, and the verdict on each lecture ---------------------------------------

    def watching_since(self, folder: str, now: float | None) -> float | None:
        """When this folder's timetable began to be judged (set by the first call with `now`; lectures before are
        not judged). With `now` None, only read (None: never judged)."""
        if now is None:
            row = self._read_one("SELECT since FROM timetable_watch WHERE folder = ?", (_fs(folder),))
            return None if row is None else float(row["since"])
        with self._tx() as tx:
            tx.run("INSERT INTO timetable_watch (folder, since) VALUES (?, ?) ON CONFLICT DO NOTHING",
                   (_fs(folder), now))
            row = tx.one("SELECT since FROM timetable_watch WHERE folder = ?", (_fs(folder),))
            assert row is not None
            return float(row["since"])

    def newest_job_id(self) -> int:
        """The id of the newest job (0 for none): a cheap "has any file been seen since?" """
        row = self._read_one("SELECT max(id) AS newest FROM jobs")
        return int(row["newest"] or 0) if row else 0

    def seen_in(self, folder: str, since: float, until: float) -> list[Job]:
        """The files first seen in a watched folder between two instants (a recursive folder's subfolders too)."""
        rows = self._read("SELECT * FROM jobs WHERE folder = ? AND created_at >= ? AND created_at <= ? AND "
                          "kind = 'file' ORDER BY created_at, id", (_fs(folder), since, until))
        return [as_job(r) for r in rows]

    def record_lecture(self, record: LectureRecord) -> bool:
        """Store a verdict unless the lecture already has one; True when this call stored it (in a cluster:
        the one node whose call stored it, so a missing recording is alerted once)."""
        with self._tx() as tx:
            return tx.run(
                "INSERT INTO lectures (folder, lecture, summary, zone, starts_at, ends_at, due_at, late_until, "
                "outcome, job_id, judged_at, resolved_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT DO NOTHING",
                (_fs(record.folder), record.lecture, record.summary, record.zone, record.starts_at, record.ends_at,
                 record.due_at, record.late_until, record.outcome, record.job_id, record.judged_at,
                 record.resolved_at)) == 1

    def lecture_late(self, folder: str, lecture: str, job_id: int, now: float) -> bool:
        """A missing lecture's file turned up: missing becomes late (True only for the call that changed it)."""
        with self._tx() as tx:
            return tx.run("UPDATE lectures SET outcome = 'late', job_id = ?, resolved_at = ? WHERE folder = ? "
                          "AND lecture = ? AND outcome = 'missing'", (job_id, now, _fs(folder), lecture)) == 1

    def lectures(self, folder: str | None = None, since: float | None = None, until: float | None = None,
                 outcome: str | None = None, open_at: float | None = None,
                 limit: int | None = None) -> list[LectureRecord]:
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
        return [lecture_from_row(r if isinstance(r, dict) else dict(zip(r.keys(), r))) for r in self._read(sql, args)]

    # -- moving a queue to another database (`studio-watch migrate`) -------------------------------------------

    def dump(self) -> tuple[list[dict[str, Any]], dict[str, str]]:
        """Every job row (as columns) and every meta entry, for `migrate`."""
        jobs = [dict(zip(r.keys(), r)) if not isinstance(r, dict) else dict(r)
                for r in self._read("SELECT * FROM jobs ORDER BY id")]
        meta = {r["key"]: r["value"] for r in self._read("SELECT key, value FROM meta")}
        return jobs, meta

    def load(self, jobs: Sequence[Mapping[str, Any]], meta: Mapping[str, str]) -> int:
        """Insert another queue's jobs, ids kept, claims cleared, into this empty queue (one transaction).
        Raises ValueError when this queue already holds jobs."""
        released = self._released()
        with self._tx() as tx:
            if tx.one("SELECT 1 AS x FROM jobs LIMIT 1") is not None:
                raise ValueError(f"{self.where} already holds jobs: migrate only into an empty queue")
            columns: list[str] | None = None
            for job in jobs:
                row = {**{k: v for k, v in job.items() if k in JOB_COLUMNS}, **dict.fromkeys(released)}
                if columns is None:
                    columns = list(row)
                tx.run(f"INSERT INTO jobs ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})",
                       tuple(bytes(row[c]) if isinstance(row[c], memoryview) else row[c] for c in columns))
            for key, value in meta.items():
                tx.run("INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = "
                       "excluded.value", (key, value))
            self._after_load(tx)
        return len(jobs)

    def _after_load(self, tx: Tx) -> None:
        """After rows came in with their ids: let new ids continue after them (PostgreSQL's sequence)."""
