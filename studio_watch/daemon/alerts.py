"""Alerting hooks: a command (the alert as JSON on stdin) and/or a webhook (HTTP POST of the same JSON).

Alerts fire when a job fails permanently, when the queue has been paused longer than a threshold, when a
watched folder goes missing, and when a lecture of a folder's timetable brought no recording. Each has an end,
and its end is sent too, so nobody is left with an open page: `job_failed_resolved` (the job was retried,
forgotten or cancelled), `queue_resumed`, `folder_available` (`fire()`/`end()`: keyed, the open ones kept in the
state database, so an end still comes after a restart), and `recording_missing` again with `"resolved": true`
when the file turns up late (`resolve()`). Every alert says `"resolved": false` or `true`; the keyed ones also
`"status": "firing"` or `"resolved"` and an `alert_key` naming what they are about. Hooks run on a background
thread so a slow hook never holds up an upload; a failing hook is logged, never fatal.
"""

from __future__ import annotations

import json
import queue
import shlex
import socket
import subprocess
import threading
import time
from typing import TYPE_CHECKING, Any, Protocol

from studio_watch.logs import get_logger
from studio_watch import logs
from studio_watch.config import StudioConfig
from studio_watch.errors import ConfigError, StudioError
from studio_watch.studio.connections import http_pool

if TYPE_CHECKING:
    from studio_watch.studio.transport import Pool

log = get_logger(__name__)

HOOK_TIMEOUT = 30.0
OPEN_KEY = "open_alerts"  # the meta row holding the alerts fired and not yet resolved


class MetaStore(Protocol):
    def meta(self, key: str) -> str | None: ...

    def set_meta(self, key: str, value: str | None) -> None: ...


class Alerts:
    def __init__(self, command: str | None, webhook: str | None, studio: StudioConfig | None = None) -> None:
        """`studio` gives the webhook the API's TLS trust (ca_bundle) and proxy settings."""
        self.command, self.webhook, self.studio = command, webhook, studio
        self._pool: Pool | None = None
        self._queue: queue.Queue[dict[str, Any] | None] = queue.Queue(maxsize=1000)
        self._thread: threading.Thread | None = None
        self._store: MetaStore | None = None
        self._open: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()

    def bind(self, store: MetaStore) -> None:
        """Keep the open alerts in `store` (the queue's meta table), and pick up those a previous run left."""
        self._store = store
        try:
            self._open = json.loads(store.meta(OPEN_KEY) or "{}")
        except ValueError:
            self._open = {}

    def open_keys(self, prefix: str = "") -> list[str]:
        with self._lock:
            return [key for key in self._open if key.startswith(prefix)]

    def fire(self, key: str, kind: str, **data: Any) -> None:
        """Send `kind` about `key`, once until it is resolved."""
        with self._lock:
            if key in self._open or not self.enabled:
                return
            self._open[key] = {"event": kind, "fired_at": time.time()}
            self._save()
        self.send(kind, status="firing", resolved=False, alert_key=key, **data)

    def end(self, key: str, kind: str, **data: Any) -> None:
        """Send the end of the alert about `key` as `kind` (its own event name), if one was fired."""
        with self._lock:
            opened = self._open.pop(key, None)
            if opened is None:
                return
            self._save()
        self.send(kind, status="resolved", resolved=True, alert_key=key, resolves=opened["event"],
                  fired_at=opened["fired_at"], **data)

    def _save(self) -> None:
        if self._store is not None:
            self._store.set_meta(OPEN_KEY, json.dumps(self._open) if self._open else None)

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
