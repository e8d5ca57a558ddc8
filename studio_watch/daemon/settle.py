"""Settling: a found file becomes `ready` once its size and mtime have held still for `settle_seconds` and no
writer holds it open; what the queue records of a found file; which rescanned files need the queue's attention.

The settler is one thread: it looks at every settling job whose time is up and commits its decisions
SETTLE_BATCH to a transaction, each only if the row is still as it was looked at.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any, Callable

from studio_watch.logs import get_logger
from studio_watch import config as cfg
from studio_watch import logs
from studio_watch.daemon.activity import Activity
from studio_watch.files import sources
from studio_watch.files.rules import Found, rule_for
from studio_watch.errors import DatabaseUnavailable, StorageFull
from studio_watch.files import marks
from studio_watch.queue import Job, JobQueue, Seen, Settled, State, settle_clock

log = get_logger(__name__)

SETTLE_BATCH = 1000  # settle promotions per transaction: docs/decisions/settle-batches.md


class Settler:
    """Promotes settled files to `ready`; `kick` it when files were found, it sets `wake` when some are ready."""

    def __init__(self, queue: JobQueue, folders: Callable[[], tuple[cfg.FolderRule, ...]], activity: Activity,
                 stop: threading.Event, wake: threading.Event,
                 writing: Callable[[str], bool] = lambda path: False,
                 storage_full: Callable[[StorageFull], None] = lambda exc: None) -> None:
        self.queue, self.folders, self.activity, self.stop, self.wake = queue, folders, activity, stop, wake
        self.writing = writing  # the watcher's view: a writer still holds this file open (files/writers.py)
        self.storage_full = storage_full  # a write failed for want of space: the daemon pauses the queue
        self.kick = threading.Event()

    def loop(self) -> None:
        while not self.stop.is_set():
            try:
                next_due = self.settle_once()
            except DatabaseUnavailable as exc:  # PostgreSQL down or restarting: the daemon waits for it
                log.warning("database_unavailable", during="settle", error=str(exc))
                next_due = time.time() + 1.0
            except StorageFull as exc:
                self.storage_full(exc)
                next_due = time.time() + 1.0
            except Exception:
                log.exception("settle_failed")
                next_due = time.time() + 1.0
            # Due times are the queue's clock (a cluster's is the database server's).
            timeout = 1.0 if next_due is None else min(1.0, max(0.01, next_due - self.queue.now()))
            self.kick.wait(timeout)
            self.kick.clear()

    def settle_once(self, now: float | None = None) -> float | None:
        """Promote settled files to ready, SETTLE_BATCH to a transaction; returns when the next one is due."""
        next_due: float | None = None
        batch: list[tuple[Job, Settled, tuple[str, dict[str, Any]] | None]] = []
        now = self.queue.now() if now is None else now
        for job in self.queue.settling():
            # a settle clock in the future was written under a clock since stepped back: counted from now
            due: float | None = min(job.stable_since or now, now) + job.settle_seconds
            if due is not None and due <= now:
                change, due, event = self._settle(job, now)
                batch.append((job, change, event))
                if len(batch) >= SETTLE_BATCH:
                    self._promote(batch)
                    batch = []
            if due is not None:
                next_due = due if next_due is None else min(next_due, due)
        if batch:
            self._promote(batch)
        return next_due

    def _promote(self, batch: list[tuple[Job, Settled, tuple[str, dict[str, Any]] | None]]) -> None:
        """Commit settle decisions in one transaction: each only if its row is still as it was looked at (a
        watcher event, on this node or another, may have changed it meanwhile)."""
        changed = self.queue.settle([decision for _, decision, _ in batch])
        for job, _, event in batch:
            if job.id in changed and event is not None:
                name, fields = event
                (log.error if name == "job_failed" else log.info)(name, **fields)
                if name == "job_failed":  # failed before any upload (too large, unreadable): page like any other
                    self.activity.job_failed(job, fields["error"])
        if any(decision.state is State.READY for job, decision, _ in batch if job.id in changed):
            self.wake.set()

    def _settle(self, job: Job, now: float) -> tuple[Settled, float | None, tuple[str, dict[str, Any]] | None]:
        change, due, event = self._look(job, now)
        state = change.pop("state", State.SETTLING)
        return Settled(job.id, job.identity, state, change), due, event

    def _look(self, job: Job, now: float) -> tuple[dict[str, Any], float | None, tuple[str, dict[str, Any]] | None]:
        """Look at one file whose settle time is up: (the change to commit, when it is next due, what to log)."""
        assert job.path is not None
        about = {"job_id": job.id, "path": job.display_path}
        try:
            st = os.lstat(job.path)  # the entry itself: a symlink is never followed
        except FileNotFoundError:
            if job.folder and not os.path.isdir(job.folder):  # an unmounted share, not a vanished file: look later
                return {"stable_since": now}, now + max(job.settle_seconds, 10.0), None
            return {"state": State.SKIPPED, "reason": "vanished"}, None, ("job_skipped", {**about, "reason": "vanished"})
        except OSError as exc:
            why = f"cannot stat: {exc.strerror}"
            return {"state": State.FAILED, "reason": why, "last_error": why}, None, ("job_failed", {**about, "error": why})
        outside = sources.not_a_plain_file(job.path, st, job.folder)
        if outside is not None:  # a link or a FIFO swapped in, or a subfolder turned into a link out of the folder
            return {"state": State.SKIPPED, "reason": outside}, None, ("job_skipped", {**about, "reason": outside})
        if sources.identity_of(st) != job.identity:
            since = settle_clock(st.st_mtime_ns, job.updated_at, now)
            return ({"size": st.st_size, "mtime_ns": st.st_mtime_ns, "inode": st.st_ino, "device": st.st_dev,
                     "stable_since": since}, since + job.settle_seconds, None)
        if self.writing(job.path) or sources.open_for_writing(job.path):
            # A writer still holds it (files/writers.py): not finished, however quiet it is; the settle time
            # counts again from its close.
            return {"stable_since": now}, now + max(job.settle_seconds, 1.0), None
        if st.st_size == 0:
            return {"state": State.SKIPPED, "reason": "empty"}, None, ("job_skipped", {**about, "reason": "empty"})
        if st.st_size > cfg.MAX_UPLOAD_BYTES and job.kind == "file":
            why = f"file is {st.st_size:,} bytes; Studio accepts at most {cfg.MAX_UPLOAD_BYTES:,} (10 GB)"
            self.activity.failure("too_large")
            return {"state": State.FAILED, "reason": why, "last_error": why}, None, ("job_failed", {**about, "error": why})
        if job.kind == "file":
            media_id = marks.uploaded_as(job.path, st, job.collection_id, job.user_id,
                                         same_inode_only=job.duplicates == "upload")
            if media_id is not None:  # uploaded before, by a database that is gone: never twice
                return ({"state": State.SKIPPED, "reason": "already uploaded (marked on the file)",
                         "media_id": media_id}, None,
                        ("job_skipped", {**about, "reason": "already_uploaded", "media_id": media_id}))
        rule = rule_for(self.folders(), job.path) or cfg.FolderRule(path=Path(job.folder or "/"))
        folder, path = Path(job.folder or rule.path), Path(job.path)
        title = logs.title_text(cfg.render(rule.title, path, folder, st.st_size, st.st_mtime))
        description = cfg.render(rule.description, path, folder, st.st_size, st.st_mtime)
        return ({"state": State.READY, "title": title, "description": description, "next_attempt_at": now}, None,
                ("file_ready", {**about, "bytes": st.st_size, "title": title}))


def to_seen(found: Found, local_clock: bool = False) -> Seen:
    """What the queue records of a found file. `local_clock`: its times come from this machine's clock (a local
    filesystem), so its last change is known: the later of mtime and ctime (a tool can set the mtime, never the
    ctime; a rename into the folder sets the ctime)."""
    r, st = found.rule, found.stat
    return Seen(path=found.path, folder=str(r.path), size=st.st_size, mtime_ns=st.st_mtime_ns, inode=st.st_ino,
                device=st.st_dev, collection_id=r.collection_id, user_id=r.user_id, auto_caption=r.auto_caption,
                after_upload=r.after_upload, after_upload_when=r.after_upload_when,
                move_to=str(r.move_to) if r.move_to else None, duplicates=r.duplicates,
                settle_seconds=r.settle_seconds, kind=found.kind,
                changed_at=max(st.st_mtime, st.st_ctime) if local_clock else None)


def changed(known: tuple[str, tuple[Any, ...]] | None, st: os.stat_result) -> bool:
    """Does a rescanned file need the queue's attention? (New, or changed since its last finished job.)"""
    if known is None:
        return True
    state, identity = known
    if state == "vanished":  # it was gone when its job looked; it is back
        return True
    return identity != sources.identity_of(st) and state in (
        State.SETTLING.value, State.COMPLETED.value, State.FAILED.value, State.SKIPPED.value)
