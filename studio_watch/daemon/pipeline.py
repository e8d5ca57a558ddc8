"""One job's steps: generate an upload URL → PUT the bytes → complete → the after-upload action.

`Pipeline.run(job)` takes a claimed job from wherever its state says it is and carries it as far as it can.
Every step's result is committed to the queue before the next step's side effect begins, so a crash at any
moment resumes at the exact step: `url_issued` re-PUTs to the stored URL, `uploaded` only completes,
`completed` only finishes the after-upload action. The job leaves `run` unclaimed in every case, except when
its claim was lost (another node took it over after its lease ran out): every step's commit is a guarded
transition, and one that no longer applies (LeaseLost) stops the job here with nothing more done to it.
What to do about any other error is the retry policy's decision (studio/retry.py).

One responsibility, kept in one module over ~400 lines on purpose: the steps and the commits between them are
read together (which commit precedes which side effect is the whole point); the decisions live elsewhere
(studio/retry.py, files/writers.py, the queue's transition table).
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any, Callable, Protocol

from studio_watch.logs import get_logger
from studio_watch import logs
from studio_watch.config import MAX_UPLOAD_BYTES, RetryConfig, readable
from studio_watch.daemon.activity import NullObserver, Observer
from studio_watch.errors import (CaptionsDisabled, DatabaseUnavailable, LeaseLost, MediaNotFound, PermanentError,
                                 SourceChanged, SourceUnreadable, SourceVanished, Stopping, StorageFull, StudioError,
                                 TransientError, UploadUrlExpired)
from studio_watch.files import after_upload, links, marks, reading, sources
from studio_watch.queue import Job, JobQueue, State, Step, Verdict
from studio_watch.studio import retry as policy
from studio_watch.queue.admin import CANCELLED
from studio_watch.studio.client import StudioClient
from studio_watch.studio.imports import import_link

log = get_logger(__name__)

URL_RENEWALS = 3  # new upload URLs asked for within one run of a job before it is rescheduled
PROCESSED_STATES = frozenset({"completed", "complete", "ready", "done", "processed", "success", "succeeded",
                              "finished", "transcoded"})
FAILED_STATES = frozenset({"failed", "error", "errored"})


class _CancelledMidway(Exception):
    """`studio-watch cancel` came while the PUT was on the wire: the PUT stops, the job is cancelled (never
    completed in Studio)."""


class Pause(Protocol):
    """The queue-wide pause switch the daemon owns."""

    def trip(self, reason: str) -> None: ...


class Pipeline:
    def __init__(self, queue: JobQueue, client: StudioClient, retry: RetryConfig, pause: Pause,
                 stop: threading.Event, observer: Observer | None = None,
                 processed_timeout: Callable[[Job], float] = lambda job: 86400.0,
                 heartbeat: Callable[[], None] = lambda: None,
                 hold_after_upload: Callable[[Job], tuple[float, str] | None] = lambda job: None) -> None:
        self.queue, self.client, self.retry, self.pause, self.stop = queue, client, retry, pause, stop
        self.observer = observer or NullObserver()
        self.processed_timeout = processed_timeout
        self.heartbeat = heartbeat  # "this worker is alive": at every step and progress report
        self.hold_after_upload = hold_after_upload  # (seconds, why) before a delete/cross-fs move may act
        self._hashes: dict[tuple[int, tuple[Any, ...]], str] = {}
        self._current = threading.local()  # .job: this worker's job as of its last committed step
        self._warned_captions = False

    # -- the driver ----------------------------------------------------------------------------------------

    def run(self, job: Job) -> None:
        """Carry one claimed job as far as it goes; leaves it unclaimed unless its claim was lost."""
        log.debug("job_claimed", job_id=job.id, state=job.state.value, path=job.display_path)
        self._current.job = job
        try:
            self._run(job)
        except (LeaseLost, DatabaseUnavailable) as exc:  # from a handler's own transition
            self._let_go(job, exc)
        finally:
            self.queue.let_go(job)

    def _run(self, job: Job) -> None:
        try:
            self._advance(job)
            return
        except StorageFull:  # no write can succeed now: the worker pauses the queue, the job stays claimed
            raise
        except Exception as exc:  # every other error is the retry policy's to judge, after the except block
            error: Exception = exc
        # The job as of its last committed step (every commit updates `_current`): the failure's transition is
        # guarded by that state. A stop interrupts in-flight I/O, so an error then says nothing about the job:
        # released unchanged, it resumes at this step next time.
        job = self._current.job
        action = policy.decide(error, stopping=self.stop.is_set())
        try:
            self._handle(job, error, action)
        except Stopping:  # from a handler's own request (the outage probe) once the stop began
            current = self._current.job
            self._held(self.queue.release(current), current)

    def _let_go(self, job: Job, exc: Exception) -> None:
        """The claim is gone, or the database is: nothing more is done to the job here."""
        if isinstance(exc, LeaseLost):
            # Another node holds the job now and carries it on from its last committed step.
            log.warning("lease_lost", job_id=job.id, path=job.display_path, owner=job.claimed_by)
        else:  # the claim stays until it is recovered or its lease runs out
            log.error("database_unavailable", job_id=job.id, error=str(exc))

    def _handle(self, job: Job, exc: Exception, action: policy.Action) -> None:
        """Carry out the retry policy's decision about a job whose step raised `exc`."""
        if action is policy.Action.PROBE:
            action = policy.Action.PAUSE if self._studio_down() else policy.Action.RESCHEDULE
        if action is policy.Action.LET_GO:
            self._let_go(job, exc)
        elif action is policy.Action.RELEASE:
            self._held(self.queue.release(job), job)
        elif action is policy.Action.PAUSE:
            self._outage(job, exc)
        elif action is policy.Action.FAIL and job.state is State.COMPLETED:
            # the media is safe in Studio: never call this upload failed
            self._finish(job, reason=f"after-upload step abandoned, file kept: {exc}")
            log.warning("after_upload_abandoned", job_id=job.id, media_id=job.media_id, reason=str(exc))
        elif action is policy.Action.FAIL:
            self._fail(job, str(exc))
        elif action is policy.Action.SKIP and job.folder and not os.path.isdir(job.folder):
            # the share is not mounted here: not a vanished file
            log.warning("folder_missing", job_id=job.id, folder=job.folder, path=job.display_path)
            self._held(self.queue.reschedule(job, next_attempt_at=self.queue.now() + self.retry.max_seconds,
                                             last_error=f"folder missing: {job.folder}"), job)
        elif action is policy.Action.SKIP:
            self._skip(job, "vanished")
        elif action is policy.Action.RESETTLE:
            self._resettle(job, exc)
        else:  # RESCHEDULE, or CRASH: a bug must not kill the worker or lose the job
            if action is policy.Action.CRASH:
                log.error("job_crashed", job_id=job.id, path=job.display_path, exc_info=exc)
            self._reschedule(self._fresh(job), exc)

    def _advance(self, job: Job) -> None:
        renewals = 0
        while True:
            if self.queue.cancel_requested(job.id):  # `studio-watch cancel` while it was in flight
                if job.state is not State.COMPLETED:
                    self._held(self.queue.skip(job, CANCELLED), job)
                    log.info("job_cancelled", job_id=job.id, path=job.display_path, at=job.state.value)
                    return
                self.queue.clear_cancel_request(job.id)  # too late: Studio has it; the after-upload step goes on
            step = job.step
            if step is Step.AFTER_UPLOAD:
                job = self._after_upload(job)
            elif job.kind == "link" and step in (Step.READY, Step.LINK_MAYBE_SENT):
                job = self._import_link(job)
            elif job.kind != "file" or step not in (Step.READY, Step.SENDING, Step.COMPLETING):
                self._held(self.queue.release(job), job)
                return
            elif step is Step.READY:
                job = self._generate(job)
            elif step is Step.SENDING:
                try:
                    job = self._put(job)
                except _CancelledMidway:  # the PUT was cut short: the loop's first look cancels the job
                    log.info("upload_cut_short", job_id=job.id, reason="cancel requested")
                    continue
                except UploadUrlExpired as exc:
                    renewals += 1
                    log.info("upload_url_refused", job_id=job.id, media_id=job.media_id, error=str(exc))
                    job = self._restart(job, str(exc))
                    if renewals > URL_RENEWALS:
                        raise TransientError(f"upload URL refused {renewals} times in a row") from None
            else:
                job = self._complete(job)
            if job.claimed_by is None:  # a step released the job itself (skipped, waiting, ...)
                return

    def _fresh(self, job: Job) -> Job:
        """The job as the queue has it now, with this run's claim (a step may have committed facts since)."""
        fresh = self.queue.get(job.id)
        if fresh is None or fresh.claimed_by != job.claimed_by or fresh.claimed_at != job.claimed_at:
            return job  # the guarded transition that follows finds out whether the claim still holds
        return fresh

    def _held(self, applied: bool, job: Job) -> None:
        """A transition that did not apply: this claim is gone (LeaseLost); else this worker is alive."""
        if not applied:
            raise LeaseLost(f"job {job.id} is no longer held by {job.claimed_by}")
        self.heartbeat()

    def _step(self, job: Job, applied: bool, **changes: Any) -> Job:
        """After a step's transition committed: the job as it now is, still claimed."""
        self._held(applied, job)
        self._current.job = job = job.evolve(**changes)
        return job

    def _finish(self, job: Job, final_path: str | None = None, reason: str | None = None) -> Job:
        """The after-upload step is done (or abandoned): hand the job back, finished."""
        self._held(self.queue.finish(job, final_path=final_path, reason=reason), job)
        changes: dict[str, Any] = {"claimed_by": None, "after_done": True}
        if final_path is not None:
            changes["final_path"] = final_path
        if reason is not None:
            changes["reason"] = reason
        return job.evolve(**changes)

    # -- step 1 ------------------------------------------------------------------------------------------------

    def _generate(self, job: Job) -> Job:
        assert job.path is not None and job.size is not None
        _check_file(job)
        if job.size > MAX_UPLOAD_BYTES:
            raise PermanentError(f"file is {job.size:,} bytes; Studio accepts at most {MAX_UPLOAD_BYTES:,} (10 GB)")
        job = self._dedupe(job)
        if job.claimed_by is None:
            return job
        media_id, url = self.client.generate(job.collection_id, job.user_id)
        # Committed before the PUT, but without waiting for the disk: only a power cut can lose it, and then
        # nothing after it was durable either (the `uploaded` commit, which waits, flushes it), so at worst an
        # upload never completed is left pending in Studio and the file is sent again under a new media id,
        # which alone is completed.
        at = self.queue.now()
        job = self._step(job, self.queue.issue_url(job, media_id, url, at), state=State.URL_ISSUED,
                         media_id=media_id, upload_url=url, url_issued_at=at)
        log.info("upload_url_issued", job_id=job.id, media_id=media_id, path=job.display_path)
        return job

    def _dedupe(self, job: Job) -> Job:
        """Before sending: when another job may hold the same bytes, hash now and skip or wait if it does.

        Returns the job to go on with (its content_hash now known), or the job handed back (skipped, or
        waiting for its copy to finish: claimed_by is None). Only a job with a same-sized sibling pays for this
        read; the others are hashed in the upload pass.
        """
        if job.duplicates != "skip" or job.content_hash is not None or not self.queue.same_size_elsewhere(job):
            return job
        assert job.path is not None
        key = (job.id, job.identity)
        if key not in self._hashes:  # a job waiting for its copy must not re-read the file every time
            self._hashes[key] = reading.hash_file(job.path, self.stop, job.identity)
        verdict, media_id = self.queue.content_verdict(job, self._hashes[key])
        if verdict is Verdict.WAIT:
            return self._wait_for_copy(job)
        digest = self._hashes.pop(key)
        if verdict is Verdict.DUPLICATE:
            return self._skip(job, "duplicate", media_id=media_id)
        return job.evolve(content_hash=digest)

    def _wait_for_copy(self, job: Job) -> Job:
        self._held(self.queue.reschedule(job, next_attempt_at=self.queue.now() + self.retry.initial_seconds), job)
        log.info("job_waiting_for_copy", job_id=job.id, path=job.display_path)
        return _released(job)

    def _restart(self, job: Job, why: str) -> Job:
        """Back to step 1: the media or its upload URL is gone."""
        return self._step(job, self.queue.restart(job, why), state=State.READY, media_id=None, upload_url=None,
                          url_issued_at=None, last_error=why)

    # -- step 2 ------------------------------------------------------------------------------------------------

    def _put(self, job: Job) -> Job:
        assert job.path is not None and job.upload_url is not None  # the client checks the file as it opens it
        job = self._dedupe(job)  # a same-sized file may have appeared since this job's URL was issued
        if job.claimed_by is None:
            return job
        size = job.size or 0

        def progress(sent: int) -> None:  # twice a second at most (the client's pace)
            self.heartbeat()
            cancelled = self.queue.set_progress(job, sent)
            self.observer.progress(job.id, sent, size)
            if cancelled:
                raise _CancelledMidway

        log.debug("upload_started", job_id=job.id, media_id=job.media_id, path=job.display_path, bytes=size)
        try:
            result = self.client.put(job.upload_url, reading.UploadFile(job.path, job.identity), progress)
        finally:  # sent, failed or stopped: it is no longer a live transfer
            self.observer.transfer_ended(job.id)
        self.observer.put_done(result.bytes, result.seconds)
        if job.content_hash is not None and result.content_hash != job.content_hash:
            raise SourceChanged(f"the bytes sent differ from those hashed before: {job.display_path}")
        if job.duplicates == "skip" and job.content_hash is None:
            verdict, earlier = self.queue.content_verdict(job, result.content_hash)
            if verdict is Verdict.DUPLICATE:  # a copy was completed while these bytes were on the wire
                return self._skip(job, "duplicate", media_id=earlier)
            if verdict is Verdict.WAIT:  # a copy claimed these bytes meanwhile: do not complete; look again later
                return self._wait_for_copy(job)
        job = self._step(job, self.queue.mark_uploaded(job, result.content_hash), state=State.UPLOADED,
                         content_hash=result.content_hash)
        log.info("upload_sent", job_id=job.id, media_id=job.media_id, bytes=result.bytes,
                 seconds=round(result.seconds, 3), mb_per_s=round(result.bytes / 1e6 / max(result.seconds, 1e-6), 1))
        return job

    # -- step 3 ------------------------------------------------------------------------------------------------

    def _complete(self, job: Job) -> Job:
        assert job.media_id is not None
        title = job.title or logs.title_text(readable(Path(job.path or "media").stem))
        description = job.description or ""
        captions_disabled = False
        try:
            media = self.client.complete(job.media_id, title, description, job.auto_caption and not job.captions_skipped)
        except CaptionsDisabled:
            captions_disabled = True
        except MediaNotFound as exc:
            log.warning("media_not_found", job_id=job.id, media_id=job.media_id, error=str(exc))
            return self._restart(job, str(exc))
        if captions_disabled:  # completed again without captions, outside the except block (no I/O in one)
            if not self._warned_captions:
                self._warned_captions = True
                log.warning("captions_disabled", job_id=job.id,
                            message="auto-captioning is not enabled for this Studio account; completing without it")
            job = self._step(job, self.queue.skip_captions(job), captions_skipped=True)
            media = self.client.complete(job.media_id, title, description, False)
        status = (media or {}).get("transcoding_status")
        # after_upload keep: nothing follows, and losing this commit to a power cut costs only a second complete
        # (409): it need not wait for the disk, and the job is handed back in it. Before a move or delete it
        # must wait, and does.
        keep, at = job.after_upload == "keep", self.queue.now()
        job = self._step(job, self.queue.complete(job, transcoding_status=status, at=at, release=keep),
                         state=State.COMPLETED, transcoding_status=status, last_error=None, completed_at=at,
                         **({"after_done": True, "claimed_by": None} if keep else {}))
        if keep and job.path is not None:  # a memory of the upload on the file itself, should the database be lost
            marks.record(job.path, job.media_id, job.size, job.mtime_ns, job.inode, job.collection_id, job.user_id)
        log.info("upload_completed", job_id=job.id, media_id=job.media_id, path=job.display_path, bytes=job.size,
                 title=title, already_completed=media is None, captions_skipped=job.captions_skipped)
        return job

    # -- link files ---------------------------------------------------------------------------------------------

    def _import_link(self, job: Job) -> Job:
        """A .url/.webloc file: one create-from-URL request, reconciled first if an earlier send's fate is unknown."""
        assert job.path is not None
        maybe_sent_at = job.url_issued_at if job.step is Step.LINK_MAYBE_SENT else None
        # Before anything is sent it must be the file that settled; once it may have been sent, its URL is read
        # again whatever became of the file, so the import is reconciled rather than left half-known.
        identity = job.identity if job.step is Step.READY else None
        if job.step is Step.READY:  # recorded before the request goes out: a crash after it means "maybe sent"
            at = self.queue.now()
            job = self._step(job, self.queue.link_sending(job, at), state=State.URL_ISSUED, url_issued_at=at)
        url = links.parse_link_file(job.path, identity)
        media = import_link(self.client, url, job.title or readable(Path(job.path).stem), job.description or "",
                            job.auto_caption, job.collection_id, job.user_id, source=job.path,
                            maybe_sent_at=maybe_sent_at)
        keep, at = job.after_upload == "keep", self.queue.now()
        facts = dict(media_id=media.get("id"), transcoding_status=media.get("transcoding_status"),
                     captions_skipped=bool(media.get("captions_skipped")))
        job = self._step(job, self.queue.complete(job, at=at, release=keep, **facts), state=State.COMPLETED,
                         completed_at=at, last_error=None, **facts,
                         **({"after_done": True, "claimed_by": None} if keep else {}))
        log.info("link_imported", job_id=job.id, media_id=job.media_id, path=job.display_path, title=job.title)
        return job

    # -- after upload ------------------------------------------------------------------------------------------

    def _after_upload(self, job: Job) -> Job:
        if job.after_upload == "keep":
            return self._finish(job)
        if job.after_upload_when == "processed" and not self._processed(job):
            return _released(job)
        hold = self.hold_after_upload(job)
        if hold is not None:  # a writer may still add to the file: deleting or copying it now would lose that
            seconds, why = hold
            log.info("after_upload_waiting", job_id=job.id, path=job.display_path, seconds=round(seconds, 1),
                     reason=why)
            self._held(self.queue.reschedule(job, next_attempt_at=self.queue.now() + seconds), job)
            return _released(job)
        assert job.path is not None
        # A move or delete happens once, by the holder of the claim: confirmed (and the lease extended) first, so
        # a node back from a partition never acts on a file another node has taken over.
        self._held(self.queue.renew(job), job)
        try:
            try:
                if job.after_upload == "delete":
                    done: Path | bool | None = after_upload.delete(job.path, job.id, job.identity)
                else:
                    assert job.move_to is not None
                    done = after_upload.move(job.path, job.id, job.identity, Path(job.move_to))
            except after_upload.NotTheUploadedFile:
                log.warning("after_upload_skipped", job_id=job.id, path=job.display_path,
                            reason="the file at this path is not the one uploaded; left in place")
                return self._finish(job, reason="source replaced; not moved or deleted")
        except OSError as exc:
            # Never fatal: the media is safe in Studio; try the move/delete again later (the file is in view).
            attempts = job.attempts + 1
            log.warning("after_upload_failed", job_id=job.id, path=job.display_path, error=str(exc), attempts=attempts)
            self.observer.failure("after_upload")
            self._held(self.queue.reschedule(job, attempts=attempts, last_error=f"{job.after_upload} failed: {exc}",
                                             next_attempt_at=self.queue.now() + policy.backoff(attempts, self.retry)),
                       job)
            return _released(job)
        if not done:
            log.info("after_upload_nothing_to_do", job_id=job.id, path=job.display_path, reason="file gone")
            return self._finish(job)
        if done is True:
            log.info("source_deleted", job_id=job.id, path=job.display_path, media_id=job.media_id)
            return self._finish(job)
        log.info("source_moved", job_id=job.id, path=job.display_path, to=os.fsencode(done).decode(
            "utf-8", "backslashreplace"), media_id=job.media_id)
        return self._finish(job, final_path=str(done))

    def _processed(self, job: Job) -> bool:
        """For after_upload_when: processed. True once Studio finished transcoding; reschedules otherwise."""
        assert job.media_id is not None
        media = self.client.get_media(job.media_id) or {}
        status = str(media.get("transcoding_status") or "").lower()
        if status != (job.transcoding_status or ""):
            log.info("transcoding_status", job_id=job.id, media_id=job.media_id, status=status or None)
            self._held(self.queue.note_transcoding(job, status or None), job)
        if status in PROCESSED_STATES:
            return True
        gave_up = self.queue.now() - (job.completed_at or job.created_at) > self.processed_timeout(job)
        if status in FAILED_STATES or gave_up:
            why = "Studio reports transcoding failed" if status in FAILED_STATES else "gave up waiting for processing"
            log.warning("after_upload_abandoned", job_id=job.id, media_id=job.media_id, reason=why, status=status)
            self._finish(job, reason=f"{why}; file kept")
            return False
        self._held(self.queue.reschedule(job, next_attempt_at=self.queue.now() + min(60.0, self.retry.max_seconds)), job)
        return False

    # -- endings -----------------------------------------------------------------------------------------------

    def _skip(self, job: Job, reason: str, media_id: int | None = None) -> Job:
        self._held(self.queue.skip(job, reason, media_id), job)
        log.info("job_skipped", job_id=job.id, path=job.display_path, reason=reason, media_id=media_id)
        return job.evolve(state=State.SKIPPED, claimed_by=None)

    def _fail(self, job: Job, error: str) -> None:
        self._held(self.queue.fail(job, error), job)
        self.observer.failure(_reason_label(error))
        self.observer.job_failed(job, error)
        log.error("job_failed", job_id=job.id, path=job.display_path, error=error)

    def _reschedule(self, job: Job, exc: BaseException) -> None:
        """Try again later; after max_attempts, fail — except a completed job, whose upload cannot fail any more."""
        attempts = job.attempts + 1
        if attempts >= self.retry.max_attempts and job.state is not State.COMPLETED:
            self._fail(job, f"gave up after {attempts} attempts: {exc}")
            return
        delay = policy.backoff(attempts, self.retry, getattr(exc, "retry_after", None))
        self._held(self.queue.reschedule(job, attempts=attempts, next_attempt_at=self.queue.now() + delay,
                                         last_error=str(exc)), job)
        self.observer.failure("transient")
        log.warning("job_retry_scheduled", job_id=job.id, path=job.display_path, attempts=attempts,
                    wait=round(delay, 2), error=str(exc))

    def _outage(self, job: Job, exc: BaseException) -> None:
        """Studio is down or refuses our token: pause the queue; this job keeps its attempts."""
        self._held(self.queue.release(job, last_error=str(exc)), job)
        self.pause.trip(str(exc))

    def _studio_down(self) -> bool:
        """After a job's transient failure: is the API itself down (then pause) or was it this job's luck?"""
        try:
            self.client.probe()
        except StudioError as exc:
            return policy.studio_down(exc)
        return False

    def _resettle(self, job: Job, exc: BaseException) -> None:
        """The file changed under us: wait for it to settle again, then upload the new content."""
        identity: tuple[int, int, int, int] | None = None
        try:
            assert job.path is not None
            st = os.stat(job.path)
            identity = (st.st_size, st.st_mtime_ns, st.st_ino, st.st_dev)
        except OSError:
            pass
        self._held(self.queue.resettle(job, identity, self.queue.now(), str(exc)), job)
        log.warning("source_changed", job_id=job.id, path=job.display_path, error=str(exc))


def _released(job: Job) -> Job:
    """The job as it is once a step has handed it back to the queue."""
    return job.evolve(claimed_by=None)


def _check_file(job: Job) -> None:
    """The file must still be exactly the one that settled."""
    assert job.path is not None
    try:
        st = os.lstat(job.path)
    except FileNotFoundError:
        raise SourceVanished(job.display_path) from None
    except PermissionError as exc:
        raise SourceUnreadable(f"cannot stat {job.display_path}: {exc.strerror}") from None
    why = sources.not_a_plain_file(job.path, st, job.folder)
    if why is not None:  # a link or a FIFO swapped in for the file that settled: a clear error, never a hang
        raise SourceUnreadable(f"{job.display_path}: {why}")
    if sources.identity_of(st) != job.identity:
        raise SourceChanged(f"file changed since it settled: {job.display_path}")
    if not os.access(job.path, os.R_OK):
        raise SourceUnreadable(f"cannot read {job.display_path}: permission denied")


def _reason_label(error: str) -> str:
    """A short, bounded label for the failures metric."""
    for word in ("too large", "not found", "not permitted", "invalid", "gave up", "cannot read"):
        if word in error:
            return word.replace(" ", "_")
    return "other"
