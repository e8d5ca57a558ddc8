"""Alerting hooks: a command (the alert as JSON on stdin) and/or a webhook (HTTP POST of the same JSON).

Alerts fire when a job fails permanently, when the queue has been paused longer than a threshold, and when a
lecture of a folder's timetable brought no recording (`recording_missing`; `resolve()` sends its resolution, the
same event with `"resolved": true`, when the file turns up late). They run
on a background thread so a slow hook never holds up an upload; a failing hook is logged, never fatal.
"""

from __future__ import annotations

import json
import queue
import shlex
import socket
import subprocess
import threading
from typing import TYPE_CHECKING, Any

import structlog

from studio_watch import logs
from studio_watch.config import StudioConfig
from studio_watch.errors import ConfigError, StudioError
from studio_watch.studio.client import http_pool

if TYPE_CHECKING:
    from studio_watch.studio.transport import Pool

log = structlog.get_logger(__name__)

HOOK_TIMEOUT = 30.0


class Alerts:
    def __init__(self, command: str | None, webhook: str | None, studio: StudioConfig | None = None) -> None:
        """`studio` gives the webhook the API's TLS trust (ca_bundle) and proxy settings."""
        self.command, self.webhook, self.studio = command, webhook, studio
        self._pool: Pool | None = None
        self._queue: queue.Queue[dict[str, Any] | None] = queue.Queue(maxsize=1000)
        self._thread: threading.Thread | None = None

    @property
    def enabled(self) -> bool:
        return bool(self.command or self.webhook)

    def start(self) -> None:
        if self.enabled:
            self._thread = threading.Thread(target=self._run, name="alerts", daemon=True)
            self._thread.start()

    def close(self) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout=HOOK_TIMEOUT + 5)
        if self._pool is not None:
            self._pool.close()

    def send(self, kind: str, **data: Any) -> None:
        """Queue one alert; dropped (with a log line) if hooks are hopelessly behind."""
        if not self.enabled:
            return
        alert = {"event": kind, "host": socket.gethostname(), **data}
        try:
            self._queue.put_nowait(alert)
        except queue.Full:
            log.warning("alert_dropped", alert=kind)

    def resolve(self, kind: str, **data: Any) -> None:
        """The condition an earlier alert of `kind` reported is over: the same event, with `resolved: true`."""
        self.send(kind, **{**data, "resolved": True})

    def _run(self) -> None:
        while (alert := self._queue.get()) is not None:
            body = json.dumps(logs.redact_data(alert), default=str)  # error text may quote a server's echo
            if self.command:
                self._run_command(body, alert["event"])
            if self.webhook:
                self._post(body, alert["event"])

    def _run_command(self, body: str, kind: str) -> None:
        try:
            result = subprocess.run(shlex.split(self.command or ""), input=body, text=True, capture_output=True,
                                    timeout=HOOK_TIMEOUT)
        except (OSError, subprocess.TimeoutExpired) as exc:
            log.warning("alert_command_failed", alert=kind, error=str(exc))
            return
        if result.returncode != 0:
            log.warning("alert_command_failed", alert=kind, exit_code=result.returncode,
                        stderr=logs.redact(result.stderr[-500:]))
        else:
            log.info("alert_sent", alert=kind, via="command")

    def _post(self, body: str, kind: str) -> None:
        try:
            if self._pool is None:  # in the alerts thread, at the first alert: most daemons never send one
                self._pool = http_pool(self.studio, timeout=HOOK_TIMEOUT)
            from studio_watch.studio.transport import post  # start-up cost: the HTTP stack (httpcore) is imported by the first request

            reply = post(self._pool, self.webhook or "", body.encode(), "application/json")
        except (StudioError, ConfigError) as exc:
            log.warning("alert_webhook_failed", alert=kind, error=str(exc))
            return
        if not 200 <= reply.status_code < 300:
            log.warning("alert_webhook_failed", alert=kind, error=f"HTTP {reply.status_code}")
            return
        log.info("alert_sent", alert=kind, via="webhook")
