"""`studio-watch status`, `jobs` and `retry`: reading the queue and putting failed jobs back."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

from studio_watch import config as cfg
from studio_watch import logs
from studio_watch.cli.output import (EXIT_FAILURE, EXIT_OK, config_error, human_age, human_bytes, load_config,
                                     print_json)
from studio_watch.daemon.lock import DaemonLock
from studio_watch.daemon.snapshot import DaemonSnapshot, FolderStatus, PauseRecord
from studio_watch.daemon.statedb import queue_for
from studio_watch.files.writers import unseen_message
from studio_watch.queue import STATE_WORDS, STATES, Job, JobQueue, State


def status_data(config: cfg.Config) -> dict[str, Any]:
    """Everything `status` shows, as one JSON-able object."""
    queue = queue_for(config)
    try:
        oldest = queue.oldest_waiting()
        pause = PauseRecord.load(queue)
        nodes = queue.nodes()
        if queue.shared:  # a cluster: this node's daemon is the one `status` reports on, beside the list of all
            mine = next((n for n in nodes if n["name"] == config.node_name and n["live"]), None)
            held = (mine["pid"], "daemon") if mine else None
        else:
            held = DaemonLock(Path(config.state_db)).holding()
        pid = held[0] if held and held[1] == "daemon" else None
        upload = held[0] if held and held[1] == "upload" else None
        snapshot = DaemonSnapshot.load(queue, config.node_name if queue.shared else None) if pid else None
        watched = {f.path: f for f in (snapshot.folders if snapshot else ())}
        return {
            "jobs": queue.counts(),
            # Read from the jobs table itself (its b-tree's root and rightmost pages): every other query here
            # reaches it through an index only, and a damaged table must not show as a healthy queue.
            "newest_job_id": queue.newest_job_id(),
            "paused": pause is not None,
            "pause_reason": pause.reason if pause else None,
            "paused_since": pause.since if pause else None,
            "daemon": {"running": pid is not None, "pid": pid if pid and pid > 0 else None,
                       "healthy": snapshot.healthy if snapshot else None,
                       "upload_window_open": snapshot.upload_window_open if snapshot else None},
            "upload_by_hand_pid": upload,  # an `upload` working alone holds the database
            "oldest_waiting": _summary(oldest) if oldest else None,
            "oldest_waiting_seconds": waited(oldest.created_at) if oldest else None,
            "transfers": [_transfer(j) for j in queue.in_flight() if j.state is State.URL_ISSUED],
            "recent_failures": [_summary(j) for j in queue.recent_failures()],
            "storage_paused": snapshot.storage_paused if snapshot else None,
            "folders": [_folder(f, watched.get(str(f.path))) for f in config.folders],
            "state_db": queue.where,
            "node": config.node_name,
            "nodes": nodes,  # a cluster's members: name, host, pid, last_seen, live, sending (job ids)
            "timetables": _timetables(config, queue, snapshot.timetables if snapshot else None),
        }
    finally:
        queue.close()


def waited(since: float, now: float | None = None) -> float:
    """How long a job has waited: never negative, never zero (a time from a clock that ran fast counts as now)."""
    return max(1.0, round((time.time() if now is None else now) - since, 1))


def _folder(rule: cfg.FolderRule, seen: FolderStatus | None) -> dict[str, Any]:
    """A folder for `status`: from the daemon's snapshot when one runs, else from what is on disk now."""
    available = seen.available if seen else os.path.isdir(rule.path)
    reason = seen.unavailable_reason if seen else (None if available else "missing")
    return {"path": str(rule.path), "collection_id": rule.collection_id, "user_id": rule.user_id,
            "observer": seen.observer if seen else None, "watching": seen.alive if seen else None,
            "last_scan": seen.last_scan if seen else None, "available": available, "unavailable_reason": reason,
            "unavailable_since": seen.unavailable_since if seen else None,
            "polling_reason": seen.polling_reason if seen else None,
            "polled_mounts": list(seen.polled_mounts) if seen else [], "warning": seen.warning if seen else None,
            "settle_seconds": rule.settle_seconds,
            # False: polled, a writer holding a file open cannot be seen (None: not watched now)
            "open_writers_seen": seen.open_writers_seen if seen else None}


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
    from studio_watch.daemon.timetable_report import status_timetables  # start-up cost: only when a folder has a timetable

    return status_timetables(config, queue, time.time(), snapshot)


def _transfer(job: Job) -> dict[str, Any]:
    sent, total = job.bytes_sent or 0, job.size or 0
    elapsed = max((job.progress_at or time.time()) - (job.claimed_at or time.time()), 1e-6)
    rate = sent / elapsed
    return {"id": job.id, "path": job.display_path, "bytes_sent": sent, "size": total,
            "percent": round(100 * sent / total, 1) if total else None, "bytes_per_second": round(rate),
            "eta_seconds": round((total - sent) / rate, 1) if rate > 0 else None}


EXIT_ATTENTION = 3  # `status`: something needs a person (see attention())


def attention(data: dict[str, Any]) -> list[str]:
    """What in a `status_data` needs a person: a paused queue, failed jobs, an unavailable folder, a dead watcher
    or an unhealthy daemon. (A daemon not running is not among them: `run --once` from cron is a way to run.)"""
    needs: list[str] = []
    running = data["daemon"]["running"] or data["upload_by_hand_pid"]
    if running and data["paused"]:
        needs.append(f"queue paused: {data['pause_reason']}")
    if running and data["storage_paused"]:
        needs.append(f"queue paused: {data['storage_paused']}")
    if data["jobs"]["failed"]:
        needs.append(f"{data['jobs']['failed']} failed job(s): `studio-watch jobs --state failed`, then retry")
    for f in data["folders"]:
        if not f["available"]:
            needs.append(f"folder unavailable ({f['unavailable_reason']}): {f['path']}")
        elif f["watching"] is False:
            needs.append(f"folder not watched (its observer is dead): {f['path']}")
    if data["daemon"]["running"] and data["daemon"]["healthy"] is False:
        needs.append("daemon unhealthy: a watcher or worker is dead or stuck")
    return needs


def cmd_status(args: argparse.Namespace) -> int:
    """Exit 0 when nothing needs a person, 3 when something does (the reasons: `attention` in --json)."""
    data = status_data(load_config(args))
    data["attention"] = attention(data)
    code = EXIT_ATTENTION if data["attention"] else EXIT_OK
    if args.json:
        print_json(data)
        return code
    daemon = data["daemon"]
    state = f"running (pid {daemon['pid']})" if daemon["running"] else "not running"
    if daemon["running"] and daemon["healthy"] is False:
        state += ", UNHEALTHY (a watcher or worker is dead or stuck)"
    if daemon["upload_window_open"] is False:
        state += ", outside upload hours"
    if data["upload_by_hand_pid"]:
        state += f"; an upload by hand (pid {data['upload_by_hand_pid']}) is working on the queue"
    print(f"daemon:  {state}")
    if not daemon["running"] and not data["upload_by_hand_pid"]:
        print("queue:   not being worked on (no daemon running)")
    elif data["storage_paused"]:
        print(f"queue:   PAUSED: {logs.shown(data['storage_paused'])}")
    elif data["paused"]:
        print(f"queue:   PAUSED since {human_age(time.time() - data['paused_since'])} ago: "
              f"{logs.shown(data['pause_reason'])}")
    else:
        print("queue:   running")
    print("jobs:    " + ", ".join(f"{STATE_WORDS[state]} {data['jobs'][state]}" for state in STATES))
    for n in data["nodes"]:
        seen = f"last seen {human_age(max(0.0, time.time() - n['last_seen']))} ago" if n["last_seen"] else "never seen"
        sending = ", ".join(f"job {i}" for i in n["sending"]) or "nothing"
        print(f"node:    {n['name']} ({n['host']}, pid {n['pid']}) {'up' if n['live'] else 'DOWN'}, {seen}, "
              f"sending {sending}")
    if data["oldest_waiting"]:
        o = data["oldest_waiting"]
        print(f"oldest waiting: job {o['id']} ({STATE_WORDS[o['state']]}) "
              f"{human_age(data['oldest_waiting_seconds'])}: {logs.shown(o['path'])}")
    for t in data["transfers"]:
        eta = human_age(t["eta_seconds"]) if t["eta_seconds"] is not None else "?"
        print(f"uploading: job {t['id']} {t['percent']}% of {human_bytes(t['size'])} at "
              f"{human_bytes(t['bytes_per_second'])}/s, ETA {eta}: {logs.shown(t['path'])}")
    for f in data["recent_failures"]:
        print(f"failed:  job {f['id']}: {logs.shown(f['path'])}: {logs.shown(f['last_error'])}")
    for f in data["folders"]:
        target = cfg.Target(f["collection_id"], f["user_id"]).describe()
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
    for need in data["attention"]:
        print(f"NEEDS ATTENTION: {logs.shown(need)}")
    return code


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


def cmd_retry(args: argparse.Namespace) -> int:
    if not args.ids and not args.failed:
        raise config_error("retry", "give JOB_ID... or --failed")
    if args.ids and args.failed:
        raise config_error("retry", "give JOB_ID... or --failed, not both")
    config = load_config(args)
    queue = queue_for(config)
    try:
        moved, refused = queue.retry(None if args.failed else args.ids)
    finally:
        queue.close()
    missing = sorted(set(args.ids or []) - set(moved) - set(refused))
    print(f"requeued {len(moved)} job(s)" + (f": {', '.join(map(str, moved))}" if moved else ""))
    for job_id, why in refused.items():
        print(f"job {job_id} is not retried: {why}", file=sys.stderr)
    if missing:
        print(f"not failed or not found: {', '.join(map(str, missing))}", file=sys.stderr)
    return EXIT_FAILURE if missing or refused else EXIT_OK
