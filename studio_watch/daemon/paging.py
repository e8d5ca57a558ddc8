"""When to page and when to say it is over: the daemon's decisions about alerts (daemon/alerts.py sends them).

`job_failed` fires when a job fails permanently and ends (`job_failed_resolved`) once that job is no longer
failed: retried, cancelled, or forgotten. `queue_paused` fires once the queue has been paused for
`notify.paused_after_seconds` and ends with `queue_resumed`. `folder_unavailable` fires once a watched folder
has been unavailable (missing, not mounted, held by another daemon) for `notify.folder_missing_after_seconds`
and ends with `folder_available` (or when a reload drops the folder). The open ones live in the state database
(Alerts.bind), so an end is still sent by the next run of the daemon.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Iterable, Mapping

from studio_watch import config as cfg
from studio_watch.daemon.alerts import Alerts
from studio_watch.daemon.activity import Event, JobFailed
from studio_watch.daemon.pause import PauseSwitch
from studio_watch.queue import JobQueue, State


def on_activity(alerts: Alerts, event: Event) -> None:
    """An Activity listener: a permanent failure pages."""
    if isinstance(event, JobFailed):
        alerts.fire(f"job_failed:{event.job['id']}", "job_failed", job=event.job)


def watch_pause(alerts: Alerts, pause: PauseSwitch, paused_after: float) -> None:
    since = pause.since if pause.paused else None
    if since is None:
        alerts.end("queue_paused", "queue_resumed")
    elif time.time() - since >= paused_after:
        alerts.fire("queue_paused", "queue_paused", reason=pause.reason, since=since)


def review(alerts: Alerts, queue: JobQueue) -> None:
    """End the job alerts a look at the queue says are over (every few seconds)."""
    for key in alerts.open_keys("job_failed:"):
        job_id = int(key.partition(":")[2])
        job = queue.get(job_id)
        if job is None:
            alerts.end(key, "job_failed_resolved", resolution="forgotten", job={"id": job_id})
        elif job.state is not State.FAILED:
            how = "cancelled" if job.state is State.SKIPPED else "retried"
            alerts.end(key, "job_failed_resolved", resolution=how, job=job.summary())


def watch_folders(alerts: Alerts, unavailable: Mapping[Path, Any], folders: Iterable[cfg.FolderRule],
                  missing_after: float) -> None:
    """Page for a folder unavailable past `missing_after` seconds (`unavailable`: the watcher's, path -> an
    entry with `reason` and `since`), and say so when it is back or no longer watched."""
    gone = {str(path): entry for path, entry in list(unavailable.items())}
    watched = {str(rule.path) for rule in folders}
    for key in alerts.open_keys("folder_unavailable:"):
        path = key.partition(":")[2]
        if path not in gone:
            how = {} if path in watched else {"resolution": "no longer watched"}  # dropped by a reload
            alerts.end(key, "folder_available", folder=path, **how)
    for path, entry in gone.items():
        if time.time() - entry.since >= missing_after:
            alerts.fire(f"folder_unavailable:{path}", "folder_unavailable", folder=path, reason=entry.reason,
                        since=entry.since)
