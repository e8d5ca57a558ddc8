"""The operator's verbs on the queue: cancel, forget, prune, retry, and moving a queue to another database
(`migrate`).

Each is one guarded statement per row, so a worker claiming a job at the same moment wins or loses cleanly: a
claimed job is never deleted, a job in flight is never changed under its worker (a cancel is a request its
worker honours at its next step), and a failed job is put back only while no other job for its file is live.
What may be deleted without a duplicate is decided by daemon/housekeeping.py, which looks at the files.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping, Sequence

from studio_watch.queue.backend import JOB_COLUMNS, SET_META, Row, SqlBackend, Tx, as_dict, as_job
from studio_watch.queue.model import (CANCEL_REQUESTED, CANCELLED, STATE_WORDS, WAITING, Job, Retried, State,
                                      check_transition)

__all__ = ["CANCELLED", "CANCEL_REQUESTED", "OperatorVerbs"]


def _resumes_at(row: Row) -> tuple[State, bool]:
    """The state a failed job goes back to, and whether its content hash is asked about again."""
    if row["failed_state"] == State.UPLOADED.value and row["media_id"] is not None:
        return State.UPLOADED, False
    if row["kind"] == "link" and row["failed_state"] == State.URL_ISSUED.value:
        return State.URL_ISSUED, True  # maybe sent: reconciled before it is sent again
    return (State.URL_ISSUED if row["upload_url"] else State.READY), True


class OperatorVerbs(SqlBackend):
    """The shared statements behind cancel, forget, prune, retry and migrate."""

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

    def retry(self, ids: Sequence[int] | None) -> Retried:
        """Each resumes at the step it failed at: a job whose bytes Studio already has (it failed completing) only
        completes, one with an upload URL PUTs again, a link import that may have been sent is looked for in
        Studio before it is sent again, any other starts over. Resumed before the upload, a job is asked about
        duplicates again.

        Refused while another job for the same file is live (the file was found again since, as a new job): two
        live jobs would send one file twice, and PostgreSQL's unique index on the live jobs' paths forbids it.
        Newest first, so of two failed jobs for one file the newer one is put back.
        """
        moved: list[int] = []
        refused: dict[int, str] = {}
        with self._tx() as tx:
            sql = "SELECT id, path, kind, upload_url, media_id, failed_state FROM jobs WHERE state = 'failed'"
            if ids is None:
                rows = tx.rows(sql + " ORDER BY id DESC")
            else:
                rows = tx.rows(f"{sql} AND id IN ({','.join('?' * len(ids))}) ORDER BY id DESC", tuple(ids))
            now = self.now()
            for row in rows:
                live = self._live_job_for(tx, row)
                if live is not None:
                    refused[int(row["id"])] = (f"job {live['id']} for the same file is already queued "
                                               f"({STATE_WORDS[live['state']]})")
                    continue
                state, forget_hash = _resumes_at(row)
                check_transition(State.FAILED, state)
                tx.run("UPDATE jobs SET state = ?, attempts = 0, next_attempt_at = ?, reason = NULL, "
                       "failed_state = NULL, content_hash = CASE WHEN ? = 1 THEN NULL ELSE content_hash END, "
                       "updated_at = ? WHERE id = ? AND state = 'failed'",
                       (state.value, now, int(forget_hash), now, row["id"]))
                moved.append(int(row["id"]))
        return Retried(sorted(moved), dict(sorted(refused.items())))

    def _live_job_for(self, tx: Tx, failed: Row) -> Row | None:
        """Another job for the failed job's file that is not finished (settling, waiting, in flight), if any."""
        if failed["path"] is None:
            return None
        marks = ",".join("?" * len(WAITING))
        return tx.one(f"SELECT id, state FROM jobs {self._index('jobs_path')} WHERE path = ? AND id != ? AND "
                      f"state IN ({marks}) ORDER BY id DESC LIMIT 1", (failed["path"], failed["id"], *WAITING))

    # -- moving a queue to another database (`studio-watch migrate`) -------------------------------------------

    def dump(self) -> tuple[list[dict[str, Any]], dict[str, str]]:
        """Every job row (as columns) and every meta entry, for `migrate`."""
        jobs = [dict(as_dict(r)) for r in self._read("SELECT * FROM jobs ORDER BY id")]
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
                tx.run(SET_META, (key, value))
            self._after_load(tx)
        return len(jobs)
