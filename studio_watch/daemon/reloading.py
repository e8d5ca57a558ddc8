"""A running daemon taking a new config (SIGHUP, `studio-watch reload`, systemd's ExecReload=): folders,
schedule, alerts and timetables follow it; what only a restart can change is named; an invalid config is
rejected and the running one kept. A mixin of `Daemon` (daemon/app.py); the outcome is stored for `reload`."""

from __future__ import annotations

import json
import os
import threading
import time
from typing import Any, Callable

from studio_watch import config as cfg
from studio_watch.daemon.activity import Activity
from studio_watch.daemon.alerts import Alerts
from studio_watch.daemon.snapshot import RELOAD_KEY
from studio_watch.daemon.systemd import sd_notify
from studio_watch.errors import ConfigError
from studio_watch.logs import get_logger
from studio_watch.queue import JobQueue
from studio_watch.schedule import RateLimiter, Schedule

log = get_logger(__name__)


def schedule_of(config: cfg.Config) -> Schedule:
    zone = cfg.zone_of(config.schedule.timezone) if config.schedule.timezone else None
    return Schedule(config.schedule.windows, config.schedule.max_upload_rate, zone)


class ConfigReload:
    """Reloading over the daemon's parts (set by `Daemon.__init__` and `Daemon.run`)."""

    config: cfg.Config
    queue: JobQueue | None
    watcher: Any  # files.watcher.Watcher, once started
    schedule: Schedule
    limiter: RateLimiter
    alerts: Alerts
    activity: Activity
    expectations: Any
    stop: threading.Event
    status_line: Callable[[], str]
    _start_thread: Callable[[str, Callable[[], None]], None]

    def reload(self) -> None:
        """SIGHUP: apply a new config to folders, schedule and alerts; keep the old one if the new is invalid.
        systemd hears RELOADING=1 before and READY=1 after; the outcome is stored for `studio-watch reload`."""
        started = time.time()
        sd_notify(f"RELOADING=1\nMONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}")
        try:
            self._apply_new_config(started)
        finally:
            sd_notify(f"READY=1\nSTATUS={self.status_line()}")

    def _answer_reload(self, started: float, ok: bool, **fields: Any) -> None:
        assert self.queue is not None
        self.queue.set_meta(RELOAD_KEY, json.dumps({"started": started, "finished": time.time(), "ok": ok,
                                                    "pid": os.getpid(), **fields}))

    def _apply_new_config(self, started: float) -> None:
        try:
            new = cfg.load(self.config.source)
        except ConfigError as exc:
            log.error("config_reload_rejected", error=str(exc), kept="the running configuration")
            self._answer_reload(started, False, error=str(exc))
            return
        fixed = [key for key in ("state_db", "workers", "studio", "metrics", "observer")
                 if getattr(new, key) != getattr(self.config, key)]
        self.config = new
        self.schedule = schedule_of(new)
        self.limiter.rate = self.schedule.rate()
        self.alerts.command, self.alerts.webhook = new.notify.command, new.notify.webhook
        self.watcher.rescan_seconds = new.rescan_seconds
        self.watcher.update_rules(new.folders)
        if self.queue is not None:
            self._start_expectations(self.queue)
        log.info("config_reloaded", folders=len(new.folders), needs_restart=fixed or None)
        self._answer_reload(started, True, folders=len(new.folders), needs_restart=fixed)

    def _start_expectations(self, queue: JobQueue) -> None:
        """The timetable check, only when some folder has `expect:` (quiet by default)."""
        if self.expectations is None and not any(f.expect is not None for f in self.config.folders):
            return
        if self.expectations is None:
            from studio_watch.daemon.expectations import Expectations  # start-up cost: only when a folder has a timetable
            from studio_watch.studio.fetch import fetch_document  # start-up cost: only when a folder has a timetable

            studio = self.config.studio
            self.expectations = Expectations(
                queue, self.alerts, self.config.local_state,
                lambda url: fetch_document(url, studio.ca_bundle, studio.timeout_seconds, studio),
                on_missing=self.activity.recording_missing)
            self.expectations.update_rules(self.config.folders)
            self._start_thread("timetable", lambda: self.expectations.run(self.stop))
        else:
            self.expectations.update_rules(self.config.folders)
