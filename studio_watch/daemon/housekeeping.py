"""Forgetting and pruning jobs without a duplicate and without losing one in flight.

A finished job's row is also the daemon's memory that its file was dealt with: a rescan takes up a file the
queue does not know. So a row is dropped only when that memory is no longer needed: its file is gone from
where it was found, or is no longer the file the job saw (moved or deleted after upload, vanished, replaced).
A row whose file is still there, unchanged, is kept (pruning it would upload a kept file again, or retry a
failed one by itself). Rows held by a worker are never touched (the delete is guarded in the same statement).
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

from studio_watch import logs
from studio_watch.files import sources
from studio_watch.queue import Job, JobQueue, State

log = logs.get_logger(__name__)


def file_still_there(job: Job) -> bool:
    """Is the file this job saw still at its path, unchanged (same inode, size and mtime)?"""
    if job.path is None:
        return False
    try:
        st = os.stat(job.path, follow_symlinks=False)
    except OSError:
        return False
    return sources.identity_of(st) == job.identity


@dataclass
class PruneResult:
    deleted: list[int] = field(default_factory=list)
    kept: list[int] = field(default_factory=list)  # finished and old enough, but their files are still there


def prune(queue: JobQueue, older_than: float, now: float | None = None, batch: int = 1000) -> PruneResult:
    """Drop finished jobs (completed, failed, skipped) last changed more than `older_than` seconds ago whose
    files are gone or changed; keep the others (see the module docstring)."""
    cutoff = (now or time.time()) - older_than
    result = PruneResult()
    after = 0
    while True:
        page = queue.finished_before(cutoff, after, batch)
        if not page:
            return result
        after = page[-1].id
        droppable = []
        for job in page:
            if file_still_there(job):
                result.kept.append(job.id)
            else:
                droppable.append(job)
        result.deleted += queue.delete_unclaimed(droppable)


def forget(queue: JobQueue, ids: list[int]) -> dict[int, str]:
    """Drop these rows so their files may be queued again: {id: "forgotten" | why not}."""
    jobs = {job_id: job for job_id in ids if (job := queue.get(job_id)) is not None}
    out: dict[int, str] = {}
    droppable: list[Job] = []
    for job_id in ids:
        job = jobs.get(job_id)
        if job is None:
            out[job_id] = "no such job"
        elif job.claimed_by is not None:
            out[job_id] = "in flight right now: `studio-watch cancel` it, or wait until it is done"
        elif job.state is State.COMPLETED and file_still_there(job):
            out[job_id] = (f"uploaded as media {job.media_id} and its file is still there: forgetting it would "
                           "upload it again")
        else:
            droppable.append(job)
    deleted = set(queue.delete_unclaimed(droppable))
    for job in droppable:
        out[job.id] = "forgotten" if job.id in deleted else "changed meanwhile (a worker took it): not forgotten"
    return out


def prune_now_and_then(queue: JobQueue, older_than: Callable[[], float | None], stop: threading.Event,
                       every: float) -> None:
    """The daemon's housekeeper thread (`prune_after`): prune at start, then every `every` seconds; never dies.
    `older_than` is asked each time: a reload may change it."""
    while not stop.is_set():
        older = older_than()
        if older:
            try:
                result = prune(queue, older)
                if result.deleted:
                    log.info("jobs_pruned", deleted=len(result.deleted), kept=len(result.kept),
                             older_than_seconds=older)
            except Exception:  # the database busy or a bug: try again next time
                log.exception("prune_failed")
        stop.wait(every)
