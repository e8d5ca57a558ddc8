"""`studio-watch upload FILE`: one file by hand, through the durable queue, followed to completion."""

from __future__ import annotations

import argparse
import os
import stat
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from studio_watch import config as cfg
from studio_watch import logs
from studio_watch.cli.output import (CONFIRMING, EXIT_FAILURE, EXIT_OK, AroundBar, ProgressBar, config_error,
                                     load_config, quiet_level, stop_on_signals)
from studio_watch.daemon.lock import DaemonLock
from studio_watch.daemon.statedb import queue_for
from studio_watch.daemon.workers import finished
from studio_watch.errors import DatabaseLocked
from studio_watch.files.rules import classify
from studio_watch.queue import STATE_WORDS, TERMINAL, Job, JobQueue, Seen, State
from studio_watch.studio.auth import make_tokens
from studio_watch.studio.client import TokenSource

if TYPE_CHECKING:
    from studio_watch.daemon.engine import LoneUpload


def cmd_upload(args: argparse.Namespace) -> int:
    """`upload FILE...`: every file is checked and queued first, then sent one after the other on one engine."""
    config = load_config(args)
    around = AroundBar(sys.stderr)  # warnings get their own lines, not the progress bar's
    logs.setup(quiet_level(config), config.log.format, stream=around)
    if args.title and len(args.files) > 1:
        raise config_error("--title", "gives one title to one FILE; with several, each is titled from its name")
    # Everything is checked before any job is recorded: a refused command leaves nothing behind for the next
    # daemon start to upload.
    files = [_upload_source(name, args.force) for name in args.files]
    queue = queue_for(config)
    try:
        # A missing or loose token file refuses the command here (exit 2). A cluster's OAuth pair is the one in
        # its database.
        tokens = make_tokens(config, queue)
        pending = [job_id for path, st in files if (job_id := _enqueue_upload(queue, args, path, st)) is not None]
        codes: list[int] = []
        if queue.shared:
            if pending and any(n["live"] for n in queue.nodes()):
                print(f"{_jobs_text(pending)} queued; a node of the cluster uploads "
                      f"{'it' if len(pending) == 1 else 'them'}", file=sys.stderr)
                _follow_all(queue, pending, codes, lambda: any(n["live"] for n in queue.nodes()), around)
            # with no node up, this process does it (its claim is a lease like theirs, so a node that comes up
            # meanwhile leaves it alone)
            alone = _upload_alone(config, queue, pending, tokens, around) if pending else []
            return max(codes + alone, default=EXIT_OK)
        lock = DaemonLock(Path(config.state_db), role="upload")
        while pending:
            try:
                lock.acquire()
            except DatabaseLocked as exc:
                # A daemon uploads the jobs; another `upload` working alone does not, but lets go when it is done.
                print(f"pid {exc.pid} holds the queue: {_jobs_text(pending)} uploaded there if it is a daemon, "
                      f"or here once the queue is free", file=sys.stderr)
                _follow_all(queue, pending, codes, lambda: lock.held_by_other() is not None, around)
                continue
            try:
                codes += _upload_alone(config, queue, pending, tokens, around)
                pending = []
            finally:
                lock.release()
        return max(codes, default=EXIT_OK)
    finally:
        queue.close()


def _jobs_text(ids: list[int]) -> str:
    return f"job {ids[0]} is" if len(ids) == 1 else f"jobs {', '.join(map(str, ids))} are"


def _follow_all(queue: JobQueue, pending: list[int], codes: list[int], worked_on: Callable[[], bool],
                around: AroundBar | None = None) -> None:
    """Follow the jobs another process uploads, in order, moving each finished one from `pending` to `codes`;
    returns when all are done or nobody works on the queue any more (the rest are done here)."""
    while pending:
        code = _follow(queue, pending[0], worked_on, around=around)
        if code is None:
            return
        codes.append(code)
        pending.pop(0)


def _upload_source(name: str, force: bool) -> tuple[str, os.stat_result]:
    """A FILE named on the command line, checked: (its real path, its stat). A link the user names is theirs
    to follow; what it leads to must be a non-empty regular file with a media name (or --force)."""
    path = os.path.realpath(name)
    try:
        st = os.stat(path)
    except OSError as exc:
        raise config_error("FILE", f"{name}: {exc.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        raise config_error("FILE", f"{name}: not a regular file")
    if st.st_size == 0:
        raise config_error("FILE", f"{name}: the file is empty")
    kind, why = classify(cfg.FolderRule(path=Path(os.path.dirname(path))), path)
    if kind != "file" and not force:
        why = "a browser link file (use import-url for its URL)" if kind == "link" else \
            why.replace("this folder uploads", "a watched folder uploads by default")
        raise config_error("FILE", f"{name}: refused: {why}; add --force to upload it anyway")
    return path, st


def _enqueue_upload(queue: JobQueue, args: argparse.Namespace, path: str, st: os.stat_result) -> int | None:
    seen = Seen(path=path, folder="", size=st.st_size, mtime_ns=st.st_mtime_ns, inode=st.st_ino, device=st.st_dev,
                collection_id=args.collection, user_id=args.user, auto_caption=args.auto_caption,
                after_upload="keep", move_to=None, duplicates="upload" if args.again else "skip", settle_seconds=0)
    existing = queue.find_manual(seen)
    if existing is not None and not args.again:
        if existing.state is State.COMPLETED:
            print(f"already uploaded: job {existing.id}, media {existing.media_id} (use --again to upload anyway)")
            return None
        if existing.state.value not in TERMINAL and existing.state is not State.SETTLING:
            print(f"resuming job {existing.id} ({existing.state.value})", file=sys.stderr)
            return existing.id
    title = logs.title_text(args.title or cfg.readable(Path(path).stem))
    return queue.add(seen, State.READY, title=title, description=args.description or "")


def _upload_alone(config: cfg.Config, queue: JobQueue, job_ids: list[int], tokens: TokenSource,
                  around: AroundBar | None = None) -> list[int]:
    """No daemon: the composition root's worker loop does the jobs here, one after the other on one engine (one
    HTTP connection), while this follows each row in turn; their exit codes. Stopped (Ctrl-C), the rest stay
    queued."""
    from studio_watch.daemon.engine import LoneUpload  # the engine: only when this process uploads

    stop = threading.Event()
    stop_on_signals(stop)
    codes = []
    with LoneUpload(config, queue, job_ids, stop, tokens) as alone:
        for job_id in job_ids:
            code = _follow(queue, job_id, stop=stop, alone=alone, around=around)
            codes.append(_report(queue.get(job_id)) if code is None else code)
    return codes


def _follow(queue: JobQueue, job_id: int, worked_on: Callable[[], bool] | None = None,
            stop: threading.Event | None = None, alone: LoneUpload | None = None,
            around: AroundBar | None = None) -> int | None:
    """Watch the job's row until it ends (the exit code). Following another process: None once nobody works on
    the queue any more (`worked_on` False: no daemon holds the lock, no cluster node is live) with the job
    unfinished (do it here). Following `alone`: say why it waits; stop when the file changed under the upload
    (nothing here waits for it to settle) or on `stop`."""
    bar: ProgressBar | None = None
    said: tuple[object, ...] = ()
    while stop is None or not stop.is_set():
        job = queue.get(job_id)
        assert job is not None
        if bar is None and job.size:
            bar = ProgressBar(job.size)
            if around is not None:
                around.bar = bar  # a log line ends the bar's line first
        if finished(job):
            if bar:
                bar.update(job.size or 0, STATE_WORDS[job.state.value])
                bar.done()
            return _report(job)
        if worked_on is not None and not worked_on():  # nobody works on the queue (a claim left by a dead
            return None                                    # process is stale)
        if alone is not None and job.state is State.SETTLING and job.claimed_by is None:
            if bar:
                bar.interrupt()
            print(f"{logs.shown(job.display_path)} changed while it was being sent: run upload again once it is "
                  f"finished, or leave job {job.id} to a daemon", file=sys.stderr)
            return None
        if alone is not None:
            said = _say_why_waiting(job, alone, said, bar)
        if bar:
            sent = job.bytes_sent or (job.size if job.state is State.UPLOADED else 0) or 0
            bar.update(sent, CONFIRMING if job.state is State.UPLOADED else STATE_WORDS[job.state.value])
        _wait_for_change(stop, alone)
    return None


def _wait_for_change(stop: threading.Event | None, alone: LoneUpload | None) -> None:
    """Until the row may have moved on: at once when this process's worker has run the job, else a progress
    tick (0.25 s; another process's progress is seen only in its rows)."""
    if alone is not None:
        alone.changed.wait(0.25)
        alone.changed.clear()
    elif stop is not None:
        stop.wait(0.25)
    else:
        time.sleep(0.25)


def _say_why_waiting(job: Job, alone: LoneUpload, said: tuple[object, ...],
                     bar: ProgressBar | None = None) -> tuple[object, ...]:
    """One line each time the upload starts waiting: for Studio to answer again, or for its next attempt."""
    if alone.pause.paused:
        if said != ("paused", alone.pause.reason):
            if bar:
                bar.interrupt()
            print(f"Studio unavailable: {logs.shown(alone.pause.reason)}; trying again as soon as it answers "
                  "(Ctrl-C to stop; the job stays queued)", file=sys.stderr)
        return ("paused", alone.pause.reason)
    wait = job.next_attempt_at - time.time()
    if job.claimed_by is None and wait > 0:
        if said != ("waiting", job.attempts, job.next_attempt_at):
            why = job.last_error or "a file with the same bytes is being uploaded"
            if bar:
                bar.interrupt()
            print(f"{logs.shown(why)}; trying again in {wait:.1f}s", file=sys.stderr)
        return ("waiting", job.attempts, job.next_attempt_at)
    return said


def _report(job: Job | None) -> int:
    assert job is not None
    if job.state is State.COMPLETED:
        note = " (captions skipped: not enabled for this account)" if job.captions_skipped else ""
        print(f"uploaded {logs.shown(job.display_path)} as media {job.media_id} (job {job.id}){note}")
        return EXIT_OK
    if job.state is State.SKIPPED:
        extra = f" of media {job.media_id}" if job.media_id else ""
        print(f"skipped {logs.shown(job.display_path)}: {logs.shown(job.reason)}{extra} (job {job.id})")
        return EXIT_OK
    if job.state is State.FAILED:
        print(f"failed {logs.shown(job.display_path)}: {logs.shown(job.last_error)} "
              f"(job {job.id}; `studio-watch retry {job.id}`)",
              file=sys.stderr)
        return EXIT_FAILURE
    print(f"stopped: job {job.id} is {job.state.value} and stays queued", file=sys.stderr)
    return EXIT_FAILURE
