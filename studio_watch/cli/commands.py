"""What each `studio-watch` subcommand does (cli.py parses; this module acts and prints)."""

from __future__ import annotations

import argparse
import json
import os
import stat
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

from studio_watch import config as cfg
from studio_watch import logs
from studio_watch.cli.main import (EXIT_FAILURE, EXIT_OK, ProgressBar, config_error, human_age, human_bytes, load_config,
                  print_json, stop_on_signals)
from studio_watch.daemon.control import PAUSE_KEY, STATUS_KEY, DaemonLock
from studio_watch.daemon.app import Daemon, make_tokens, queue_for
from studio_watch.errors import ConfigError, DatabaseLocked, StudioWatchError
from studio_watch.queue import STATES, TERMINAL, Job, JobQueue, Seen, State, Step
from studio_watch.daemon.pipeline import NullObserver, Pipeline
from studio_watch.files.watcher import classify
from studio_watch.files.writers import unseen_message
from studio_watch.studio.client import StudioClient, TokenSource


def cmd_run(args: argparse.Namespace) -> int:
    config = load_config(args)
    if not config.folders:
        raise ConfigError(f"{config.source}: folders: no folder to watch; `run` needs at least one (upload and "
                          "import-url work without)")
    logs.setup(config.log.level, config.log.format)
    stop = threading.Event()
    daemon = Daemon(config, stop, new_database=getattr(args, "new_database", False))
    stop_on_signals(stop, on_hup=daemon.reload_requested.set)
    daemon.run()
    return EXIT_OK


# -- reading the queue ---------------------------------------------------------------------------------------

def status_data(config: cfg.Config) -> dict[str, Any]:
    """Everything `status` shows, as one JSON-able object."""
    queue = queue_for(config)
    try:
        oldest = queue.oldest_waiting()
        pause = json.loads(queue.meta(PAUSE_KEY) or "null")
        nodes = queue.nodes()
        if queue.shared:  # a cluster: this node's daemon is the one `status` reports on, beside the list of all
            mine = next((n for n in nodes if n["name"] == config.node_name and n["live"]), None)
            held = (mine["pid"], "daemon") if mine else None
        else:
            held = DaemonLock(Path(config.state_db)).holding()
        pid = held[0] if held and held[1] == "daemon" else None
        upload = held[0] if held and held[1] == "upload" else None
        key = f"{STATUS_KEY}:{config.node_name}" if queue.shared else STATUS_KEY
        snapshot = json.loads(queue.meta(key) or "null") if pid else None
        watched = {f["path"]: f for f in (snapshot or {}).get("folders", [])}
        return {
            "jobs": queue.counts(),
            "paused": pause is not None,
            "pause_reason": pause["reason"] if pause else None,
            "paused_since": pause["since"] if pause else None,
            "daemon": {"running": pid is not None, "pid": pid if pid and pid > 0 else None,
                       "healthy": (snapshot or {}).get("healthy"),
                       "upload_window_open": (snapshot or {}).get("upload_window_open")},
            "upload_by_hand_pid": upload,  # an `upload` working alone holds the database
            "oldest_waiting": _summary(oldest) if oldest else None,
            "oldest_waiting_seconds": waited(oldest.created_at) if oldest else None,
            "transfers": [_transfer(j) for j in queue.in_flight() if j.state is State.URL_ISSUED],
            "recent_failures": [_summary(j) for j in queue.recent_failures()],
            "storage_paused": (snapshot or {}).get("storage_paused"),
            "folders": [_folder(f, watched.get(str(f.path))) for f in config.folders],
            "state_db": queue.where,
            "node": config.node_name,
            "nodes": nodes,  # a cluster's members: name, host, pid, last_seen, live, sending (job ids)
            "timetables": _timetables(config, queue, (snapshot or {}).get("timetables")),
        }
    finally:
        queue.close()


def _summary(job: Job) -> dict[str, Any]:
    """A job for --json: error text redacted once more (rows written before redaction was applied on storing)."""
    data = job.summary()
    for key in ("last_error", "reason"):
        if data.get(key):
            data[key] = logs.redact(data[key])
    return data


def _timetables(config: cfg.Config, queue: JobQueue, snapshot: Any) -> list[dict[str, Any]]:
    if not any(f.expect is not None for f in config.folders):
        return []
    from studio_watch.daemon.timetable_report import status_timetables

    return status_timetables(config, queue, time.time(), snapshot)


def waited(since: float, now: float | None = None) -> float:
    """How long a job has waited: never negative, never zero (a time from a clock that ran fast counts as now)."""
    return max(1.0, round((time.time() if now is None else now) - since, 1))


def _folder(rule: cfg.FolderRule, watched: dict[str, Any] | None) -> dict[str, Any]:
    """A folder for `status`: from the daemon's snapshot when one runs, else from what is on disk now."""
    w = watched or {}
    available = w.get("available", True) if watched else os.path.isdir(rule.path)
    reason = w.get("unavailable_reason") if watched else (None if available else "missing")
    return {"path": str(rule.path), "collection_id": rule.collection_id, "user_id": rule.user_id,
            "observer": w.get("observer"), "watching": w.get("alive"), "last_scan": w.get("last_scan"),
            "available": available, "unavailable_reason": reason, "unavailable_since": w.get("unavailable_since"),
            "polling_reason": w.get("polling_reason"), "polled_mounts": w.get("polled_mounts", []),
            "warning": w.get("warning"), "settle_seconds": rule.settle_seconds,
            # False: polled, a writer holding a file open cannot be seen (None: not watched now)
            "open_writers_seen": w.get("open_writers_seen")}


def _transfer(job: Job) -> dict[str, Any]:
    sent, total = job.bytes_sent or 0, job.size or 0
    elapsed = max((job.progress_at or time.time()) - (job.claimed_at or time.time()), 1e-6)
    rate = sent / elapsed
    return {"id": job.id, "path": job.display_path, "bytes_sent": sent, "size": total,
            "percent": round(100 * sent / total, 1) if total else None, "bytes_per_second": round(rate),
            "eta_seconds": round((total - sent) / rate, 1) if rate > 0 else None}


def cmd_status(args: argparse.Namespace) -> int:
    data = status_data(load_config(args))
    if args.json:
        print_json(data)
        return EXIT_OK
    daemon = data["daemon"]
    state = f"running (pid {daemon['pid']})" if daemon["running"] else "not running"
    if daemon["running"] and daemon["healthy"] is False:
        state += ", UNHEALTHY (a watcher or worker is dead or stuck)"
    if daemon["upload_window_open"] is False:
        state += ", outside upload hours"
    if data["upload_by_hand_pid"]:
        state += f"; an upload by hand (pid {data['upload_by_hand_pid']}) is working on the queue"
    print(f"daemon:  {state}")
    if data["storage_paused"]:
        print(f"queue:   PAUSED: {logs.shown(data['storage_paused'])}")
    elif data["paused"]:
        print(f"queue:   PAUSED since {human_age(time.time() - data['paused_since'])} ago: "
              f"{logs.shown(data['pause_reason'])}")
    else:
        print("queue:   running")
    print("jobs:    " + ", ".join(f"{state} {data['jobs'][state]}" for state in STATES))
    for n in data["nodes"]:
        seen = f"last seen {human_age(max(0.0, time.time() - n['last_seen']))} ago" if n["last_seen"] else "never seen"
        sending = ", ".join(f"job {i}" for i in n["sending"]) or "nothing"
        print(f"node:    {n['name']} ({n['host']}, pid {n['pid']}) {'up' if n['live'] else 'DOWN'}, {seen}, "
              f"sending {sending}")
    if data["oldest_waiting"]:
        o = data["oldest_waiting"]
        print(f"oldest waiting: job {o['id']} ({o['state']}) {human_age(data['oldest_waiting_seconds'])}: "
              f"{logs.shown(o['path'])}")
    for t in data["transfers"]:
        eta = human_age(t["eta_seconds"]) if t["eta_seconds"] is not None else "?"
        print(f"uploading: job {t['id']} {t['percent']}% of {human_bytes(t['size'])} at "
              f"{human_bytes(t['bytes_per_second'])}/s, ETA {eta}: {logs.shown(t['path'])}")
    for f in data["recent_failures"]:
        print(f"failed:  job {f['id']}: {logs.shown(f['path'])}: {logs.shown(f['last_error'])}")
    for f in data["folders"]:
        target = cfg.target_text(f["collection_id"], f["user_id"])
        if not f["available"]:
            since = f" for {human_age(time.time() - f['unavailable_since'])}" if f["unavailable_since"] else ""
            watch = f"UNAVAILABLE{since}: {logs.shown(f['unavailable_reason'])}"
        elif f["watching"] is None:
            watch = "not watched (daemon not running)"
        else:
            watch = f"{f['observer']} {'ok' if f['watching'] else 'DEAD'}" + \
                (f" (instead of inotify: {f['polling_reason']})" if f["polling_reason"] else "") + \
                (f", polling network mounts {', '.join(f['polled_mounts'])}" if f["polled_mounts"] else "") + \
                (f", scanned {human_age(time.time() - f['last_scan'])} ago" if f["last_scan"] else "") + \
                (f"; WARNING: {f['warning']}" if f["warning"] else "")
        writers = f"; {unseen_message(f['settle_seconds'])}" if f["open_writers_seen"] is False else ""
        print(f"folder:  {logs.shown(f['path'])} → {target} [{watch}{writers}]")
    for t in data["timetables"]:
        _print_timetable(t)
    return EXIT_OK


def _print_timetable(t: dict[str, Any]) -> None:
    name = logs.shown(Path(t["path"]).name)
    problem = f" [calendar: {logs.shown(t['calendar_error'])}]" if t["calendar_error"] else ""
    nxt = t["next"]
    upcoming = "no lecture in the next days" if nxt is None else \
        f"{'now' if nxt['in_progress'] else 'next'}: {nxt['summary']!r} {nxt['when']}"
    print(f"timetable: {name}: {upcoming}{problem}")
    for r in t["recent"]:
        print(f"  {r['outcome']:<8} {r['summary']!r} {r['when']}" + (f" (job {r['job_id']})" if r["job_id"] else ""))
    for m in t["missing"]:
        print(f"MISSING: {logs.shown(m['line'])}")


def cmd_jobs(args: argparse.Namespace) -> int:
    config = load_config(args)
    queue = queue_for(config)
    try:
        jobs = queue.jobs(args.state, args.limit)
    finally:
        queue.close()
    if args.json:
        print_json([_summary(j) for j in jobs])
        return EXIT_OK
    print(f"{'ID':>6}  {'STATE':<10}  {'MEDIA':>8}  {'TRIES':>5}  PATH / LAST ERROR")
    for job in jobs:
        note = logs.shown(job.last_error or job.reason or "")
        print(f"{job.id:>6}  {job.state.value:<10}  {job.media_id or '-':>8}  {job.attempts:>5}  "
              f"{logs.shown(job.display_path)}" + (f"  ({note})" if note and job.state is not State.COMPLETED else ""))
    return EXIT_OK


def cmd_retry(args: argparse.Namespace) -> int:
    if not args.ids and not args.failed:
        raise config_error("retry", "give JOB_ID... or --failed")
    if args.ids and args.failed:
        raise config_error("retry", "give JOB_ID... or --failed, not both")
    config = load_config(args)
    queue = queue_for(config)
    try:
        moved = queue.retry(None if args.failed else args.ids)
    finally:
        queue.close()
    missing = sorted(set(args.ids or []) - set(moved))
    print(f"requeued {len(moved)} job(s)" + (f": {', '.join(map(str, moved))}" if moved else ""))
    if missing:
        print(f"not failed or not found: {', '.join(map(str, missing))}", file=sys.stderr)
        return EXIT_FAILURE
    return EXIT_OK


# -- upload by hand -------------------------------------------------------------------------------------------

class _LocalPause:
    """The pause switch for `upload` working alone: remember why, and let the caller wait."""

    def __init__(self) -> None:
        self.reason: str | None = None

    def trip(self, reason: str) -> None:
        self.reason = reason


def cmd_upload(args: argparse.Namespace) -> int:
    config = load_config(args)
    logs.setup("warning" if config.log.level == "info" else config.log.level, config.log.format)
    # Everything is checked before the job is recorded: a refused command leaves nothing behind for the next
    # daemon start to upload.
    path, st = _upload_source(args)
    queue = queue_for(config)
    try:
        # A missing or loose token file refuses the command here (exit 2). A cluster's OAuth pair is the one in
        # its database.
        tokens = make_tokens(config, queue)
        job_id = _enqueue_upload(queue, args, path, st)
        if job_id is None:
            return EXIT_OK
        if queue.shared:
            return _upload_in_cluster(config, queue, job_id, tokens)
        lock = DaemonLock(Path(config.state_db), role="upload")
        while True:
            try:
                lock.acquire()
            except DatabaseLocked as exc:
                # A daemon uploads the job; another `upload` working alone does not, but lets go when it is done.
                print(f"pid {exc.pid} holds the queue: job {job_id} is uploaded there if it is a daemon, "
                      f"or here once the queue is free", file=sys.stderr)
                code = _follow(queue, job_id, lambda: lock.held_by_other() is not None)
                if code is not None:
                    return code
                continue
            try:
                return _upload_alone(config, queue, job_id, tokens)
            finally:
                lock.release()
    finally:
        queue.close()


def _upload_source(args: argparse.Namespace) -> tuple[str, os.stat_result]:
    """The file named on the command line, checked: (its real path, its stat). A link the user names is theirs
    to follow; what it leads to must be a non-empty regular file with a media name (or --force)."""
    path = os.path.realpath(args.file)
    try:
        st = os.stat(path)
    except OSError as exc:
        raise config_error("FILE", f"{args.file}: {exc.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        raise config_error("FILE", f"{args.file}: not a regular file")
    if st.st_size == 0:
        raise config_error("FILE", f"{args.file}: the file is empty")
    kind, why = classify(cfg.FolderRule(path=Path(os.path.dirname(path))), path)
    if kind != "file" and not args.force:
        why = "a browser link file (use import-url for its URL)" if kind == "link" else \
            why.replace("this folder uploads", "a watched folder uploads by default")
        raise config_error("FILE", f"{args.file}: refused: {why}; add --force to upload it anyway")
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


def _upload_in_cluster(config: cfg.Config, queue: JobQueue, job_id: int, tokens: TokenSource) -> int:
    """A cluster's queue: the live nodes upload the job; with none up, this process does (its claim is a lease
    like theirs, so a node that comes up meanwhile leaves it alone)."""
    if any(n["live"] for n in queue.nodes()):
        print(f"job {job_id} is queued; a node of the cluster uploads it", file=sys.stderr)
        code = _follow(queue, job_id, lambda: any(n["live"] for n in queue.nodes()))
        if code is not None:
            return code
    return _upload_alone(config, queue, job_id, tokens)


def _upload_alone(config: cfg.Config, queue: JobQueue, job_id: int, tokens: TokenSource) -> int:
    """No daemon: run the pipeline here, waiting out retries, until the job ends."""
    stop = threading.Event()
    stop_on_signals(stop)
    if not queue.shared:  # the lock says nobody else works on this queue: claims left behind are stale
        queue.recover()
    pause = _LocalPause()
    job = queue.get(job_id)
    assert job is not None
    bar = ProgressBar(job.size or 0)

    class _Progress(NullObserver):
        def progress(self, job_id: int, sent: int, total: int) -> None:
            bar.update(sent, "uploading")

    client = StudioClient(config.studio, config.retry, tokens, stop)
    pipeline = Pipeline(queue, client, config.retry, pause, stop, _Progress())
    try:
        while not stop.is_set():
            claimed = queue.claim_id(job_id, queue.owner("upload"))
            if claimed is None:
                break
            pipeline.run(claimed)
            job = queue.get(job_id) or claimed
            if job.step in (Step.DONE, Step.FAILED, Step.SKIPPED):
                break
            if job.state is State.SETTLING:  # the file changed under the upload; nothing here waits for it to settle
                print(f"\n{logs.shown(job.display_path)} changed while it was being sent: run upload again once it is "
                      f"finished, or leave job {job.id} to a daemon", file=sys.stderr)
                break
            wait = max(0.0, job.next_attempt_at - time.time())
            if pause.reason:
                wait = max(wait, config.retry.initial_seconds)
                print(f"\nStudio unavailable: {logs.shown(pause.reason)}; trying again in {wait:.1f}s "
                      "(Ctrl-C to stop; the job stays queued)", file=sys.stderr)
                pause.reason = None
            elif wait:
                why = job.last_error or "a file with the same bytes is being uploaded"
                print(f"\n{logs.shown(why)}; trying again in {wait:.1f}s", file=sys.stderr)
            stop.wait(wait)
    finally:
        client.close()
        bar.done()
    return _report(queue.get(job_id))


def _follow(queue: JobQueue, job_id: int, worked_on: Callable[[], bool]) -> int | None:
    """Another process works on the queue: watch the job's row until it ends (the exit code), or until nobody
    works on it any more (`worked_on` False) with the job unfinished (None: do it here)."""
    bar: ProgressBar | None = None
    while True:
        job = queue.get(job_id)
        assert job is not None
        if bar is None and job.size:
            bar = ProgressBar(job.size)
        if job.step in (Step.DONE, Step.FAILED, Step.SKIPPED):
            if bar:
                bar.update(job.size or 0, job.state.value)
                bar.done()
            return _report(job)
        if not worked_on():  # nobody works on the queue (a claim left by a dead process is stale)
            return None
        if bar:
            sent = job.bytes_sent or (job.size if job.state is State.UPLOADED else 0) or 0
            bar.update(sent, job.state.value)
        time.sleep(0.25)


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


# -- the sandbox and the demo ------------------------------------------------------------------------------

def cmd_sandbox(args: argparse.Namespace) -> int:
    from studio_watch.sandbox.server import sandbox_from_args, serve_forever_until

    stop = threading.Event()
    stop_on_signals(stop)
    try:
        sandbox = sandbox_from_args(args)
    except OSError as exc:  # the port is taken (or may not be bound): one line, not a traceback
        raise StudioWatchError(f"sandbox: cannot listen on port {getattr(args, 'port', '?')}: "
                               f"{exc.strerror or exc} (choose another with --port, or 0 for any free one)") from None
    try:
        serve_forever_until(sandbox, stop, sys.stdout)
    finally:
        sandbox.stop()
    return EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    from studio_watch.cli.demo import run_demo

    return run_demo(files=args.files, once=args.once, tls=args.tls)


def cmd_import_url(args: argparse.Namespace) -> int:
    from studio_watch.studio.imports import cmd_import_url as run

    return run(args)


def cmd_check(args: argparse.Namespace) -> int:
    from studio_watch.daemon.checks import cmd_check as run

    return run(args)


def cmd_explain(args: argparse.Namespace) -> int:
    from studio_watch.daemon.checks import cmd_explain as run

    return run(args)


def cmd_auth(args: argparse.Namespace) -> int:
    from studio_watch.studio.auth import cmd_auth as run

    return run(args)


def cmd_health(args: argparse.Namespace) -> int:
    from studio_watch.daemon.health import cmd_health as run

    return run(args)


def cmd_migrate(args: argparse.Namespace) -> int:
    from studio_watch.cli.migrate import cmd_migrate as run

    return run(args)
