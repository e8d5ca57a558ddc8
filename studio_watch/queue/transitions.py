"""The guarded transitions: recording found files, claims, and each named step of a claimed job.

Every step of a claimed job is one guarded UPDATE (`_move`): from the job's state, by its claim (claimed_by,
claimed_at), checked against the transition table, committed before the caller's next side effect. A claim is
one statement that picks and marks rows, so two workers never take the same job.
"""

from __future__ import annotations

import os
import time
from typing import Any, Iterable, Sequence

from studio_watch.logs import redact
from studio_watch.queue.backend import CLAIM_ORDER, SET_META, SqlBackend, Tx, as_bytes, as_column, as_job
from studio_watch.queue.model import (CANCEL_REQUESTED, TERMINAL, URL_SPENT, WAITING, Job, Seen, Settled, State,
                                      Verdict, check_transition, settle_clock)

REDACTED_KEY = "error_text_redacted"  # meta: older rows' error text has been passed through redact() once


def _given(**facts: Any) -> dict[str, Any]:
    """The facts a caller gave (None: not given, so its column keeps what it holds)."""
    return {k: v for k, v in facts.items() if v is not None}


class Transitions(SqlBackend):
    """The shared statements that change jobs on the pipeline's way (and the clamp of a wrong clock)."""

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
                             "WHERE path = ? ORDER BY id DESC LIMIT 1", (as_bytes(s.path),))
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
        values = dict(kind=s.kind, state=state.value, path=as_bytes(s.path), folder=as_bytes(s.folder),
                      collection_id=s.collection_id, user_id=s.user_id, auto_caption=int(s.auto_caption),
                      after_upload=s.after_upload, after_upload_when=s.after_upload_when, move_to=as_bytes(s.move_to),
                      duplicates=s.duplicates, settle_seconds=s.settle_seconds, size=s.size, mtime_ns=s.mtime_ns,
                      inode=s.inode, device=s.device, stable_since=stable_since, created_at=now, updated_at=now,
                      **{k: as_column(k, v) for k, v in extra.items()})
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
                values = {**{k: as_column(k, v) for k, v in d.facts.items()}, "state": d.state.value, "updated_at": now}
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
        tx.run(SET_META, (REDACTED_KEY, "1"))

    def renew(self, job: Job) -> bool:
        return self._move(job, job.state, durable=False)

    # -- the guarded transition ------------------------------------------------------------------------------

    def _move(self, job: Job, to: State, *, release: bool = False, durable: bool = True, **facts: Any) -> bool:
        """The one guarded UPDATE every named transition is: from the job's state, by its claim."""
        check_transition(job.state, to)
        if job.claimed_by is None:
            raise ValueError(f"job {job.id} is not claimed: transitions need the claim they are guarded by")
        now = self.now()
        values = {k: as_column(k, v) for k, v in facts.items()}
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
        return self._move(job, State.COMPLETED, release=release, durable=not release,
                          transcoding_status=transcoding_status, last_error=None, completed_at=at,
                          **_given(media_id=media_id, captions_skipped=captions_skipped,
                                   after_done=True if release else None))

    def note_transcoding(self, job: Job, status: str | None) -> bool:
        return self._move(job, job.state, transcoding_status=status)

    def finish(self, job: Job, *, final_path: str | None = None, reason: str | None = None) -> bool:
        return self._move(job, State.COMPLETED, release=True, after_done=True,
                          **_given(final_path=final_path, reason=reason))

    def skip(self, job: Job, reason: str, media_id: int | None = None) -> bool:
        return self._move(job, State.SKIPPED, release=True, reason=reason, **_given(media_id=media_id))

    def fail(self, job: Job, error: str) -> bool:
        return self._move(job, State.FAILED, release=True, last_error=error, reason=error,
                          failed_state=job.state.value)

    def reschedule(self, job: Job, *, next_attempt_at: float, attempts: int | None = None,
                   last_error: str | None = None) -> bool:
        return self._move(job, job.state, release=True, next_attempt_at=next_attempt_at,
                          **_given(attempts=attempts, last_error=last_error))

    def release(self, job: Job, last_error: str | None = None) -> bool:
        return self._move(job, job.state, release=True, **_given(last_error=last_error))

    def resettle(self, job: Job, identity: tuple[int, int, int, int] | None, at: float, last_error: str) -> bool:
        facts: dict[str, Any] = {"stable_since": at, "content_hash": None, "last_error": last_error}
        if identity is not None:
            facts.update(zip(("size", "mtime_ns", "inode", "device"), identity))
        if job.state in (State.URL_ISSUED, State.UPLOADED):
            facts.update(media_id=None, upload_url=None, url_issued_at=None)
        return self._move(job, State.SETTLING, release=True, **facts)

    def set_progress(self, job: Job, bytes_sent: int) -> bool:
        with self._tx(durable=False) as tx:
            row = tx.one("UPDATE jobs SET bytes_sent = ?, progress_at = ? WHERE id = ? AND claimed_by = ? "
                         "RETURNING reason", (bytes_sent, time.time(), job.id, job.claimed_by))
        return row is not None and row["reason"] == CANCEL_REQUESTED

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
