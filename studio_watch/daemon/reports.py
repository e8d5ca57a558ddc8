"""What the running daemon says about itself: health (for /healthz and systemd's watchdog), the status line,
the status page's data and the snapshot `status` reads from another process. A mixin of `Daemon` (daemon/app.py):
it reads the daemon's parts, changes none of them."""

from __future__ import annotations

import os
import threading
import time
from dataclasses import asdict
from typing import Any

from studio_watch import config as cfg
from studio_watch.daemon.activity import Activity
from studio_watch.daemon.pause import PauseSwitch
from studio_watch.daemon.snapshot import DaemonSnapshot, FolderStatus, TransferStatus
from studio_watch.daemon.statuspage import collect
from studio_watch.daemon.storage import StorageGuard
from studio_watch.queue import JobQueue
from studio_watch.schedule import Schedule
from studio_watch.studio.retry import MAX_CLIENT_WAIT


class DaemonReports:
    """Reports over the daemon's parts (set by `Daemon.__init__` and `Daemon.run`)."""

    config: cfg.Config
    queue: JobQueue | None
    watcher: Any  # files.watcher.Watcher, once started
    storage: StorageGuard | None
    pause: PauseSwitch
    schedule: Schedule
    activity: Activity
    expectations: Any
    threads: list[threading.Thread]
    beats: dict[str, float]
    busy: dict[str, int | None]

    def _degraded(self) -> list[str]:
        """What is wrong without being fatal, one line each (for /healthz and `status`)."""
        lines = self.watcher.degraded() if getattr(self, "watcher", None) is not None else []
        if self.storage is not None and self.storage.paused:
            lines.append(f"queue paused: {self.storage.reason}")
        return lines

    def _folder_states(self) -> list[dict[str, Any]]:
        watcher = getattr(self, "watcher", None)  # the metrics listener starts before the watcher
        return watcher.folder_status() if watcher is not None else []

    def healthy(self) -> bool:
        """Observers and rescanner alive, every thread alive, and no worker stuck (no heartbeat for too long)."""
        if not (self.watcher.alive() and all(t.is_alive() for t in self.threads)):
            return False
        # A worker shows life at every step and every progress report; silent for longer than one request with
        # all its client-side retries can take, it is stuck.
        hung_after = self.config.retry.request_tries * (self.config.studio.timeout_seconds + MAX_CLIENT_WAIT) + 60
        now = time.monotonic()
        return all(now - beat < hung_after for beat in list(self.beats.values()))

    def status_line(self) -> str:
        assert self.queue is not None
        counts = self.queue.counts()
        waiting = counts["settling"] + counts["ready"]
        busy = sum(1 for job in self.busy.values() if job is not None)
        paused = f"paused: {self.pause.reason}; " if self.pause.paused else ""
        if self.storage is not None and self.storage.paused:
            paused += f"paused: {self.storage.reason}; "
        closed = "" if self.schedule.open() else "outside upload hours; "
        degraded = "".join(f"; {line}" for line in self.watcher.degraded())
        return (f"{paused}{closed}uploading {busy}, {waiting} waiting, {counts['completed']} completed, "
                f"{counts['failed']} failed{degraded}")

    def page_data(self) -> dict[str, Any]:
        """What the status page shows (read on the metrics reader thread)."""
        assert self.queue is not None
        return collect(self.queue, self.activity, self.pause, self._folder_states(), self.config.folders,
                       healthy=getattr(self, "watcher", None) is not None and self.healthy(),
                       window_open=self.schedule.open(),
                       storage_paused=self.storage.reason if self.storage is not None and self.storage.paused else None,
                       timetables=self._timetables_shown())

    def _timetables_shown(self) -> list[dict[str, Any]] | None:
        """What `status` says of the folders with a timetable, for the status page (None: no folder has one)."""
        if self.expectations is None:
            return None
        from studio_watch.daemon.timetable_report import status_timetables  # start-up cost: only with a timetable

        assert self.queue is not None
        return status_timetables(self.config, self.queue, time.time(), self.expectations.snapshot())

    def _publish(self) -> None:
        """A snapshot for `status` (another process): folders, live transfers, schedule."""
        assert self.queue is not None
        with self.activity.lock:
            transfers = tuple(TransferStatus(t.job_id, t.sent, t.total, round(time.monotonic() - t.started, 1))
                              for t in self.activity.transfers.values())
        snapshot = DaemonSnapshot(
            pid=os.getpid(), at=time.time(), healthy=self.healthy(), upload_window_open=self.schedule.open(),
            uploaded_bytes=self.activity.uploaded_bytes,
            folders=tuple(FolderStatus(**{**f, "polled_mounts": tuple(f["polled_mounts"])})
                          for f in self.watcher.folder_status()), transfers=transfers,
            timetables=self.expectations.snapshot() if self.expectations is not None else None,
            node=self.config.node_name, storage_paused=self.storage.reason if self.storage is not None else None)
        snapshot.save(self.queue, self._node)
        self.queue.node_seen(asdict(snapshot))

    @property
    def _node(self) -> str | None:
        """The node whose snapshot key this daemon writes: its name in a cluster, none on a single machine."""
        return self.config.node_name if self.queue is not None and self.queue.shared else None
