"""Prometheus metrics, the /metrics, /healthz, /readyz HTTP endpoints, and the status page at /.

`Metrics` owns a private `CollectorRegistry` (never the process-global one, so two daemons in one test
process do not collide). Counters and the upload-time histogram are fed by `Metrics.on_event`, a listener
for `daemon.activity` events; the queue gauges are read from the state database at scrape time.

Scrape-time reads run on one reader thread and are waited for at most READ_TIMEOUT_SECONDS: a scrape that meets
a busy database answers 500 instead of holding one more of `ThreadingHTTPServer`'s request threads.
"""

from __future__ import annotations

import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Iterable, Iterator

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from studio_watch.config import parse_listen
from studio_watch.daemon.activity import Event, Failure, PutDone, RecordingMissing
from studio_watch.daemon.statuspage import render
from studio_watch.errors import StudioWatchError
from studio_watch.queue import STATES, JobQueue

# PUT durations: a few seconds for a short clip on a campus link, hours for a 10 GB lecture on a slow uplink.
UPLOAD_BUCKETS = (1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0, 7200.0, 14400.0,
                  float("inf"))
READ_TIMEOUT_SECONDS = 10.0


class QueueCollector(Collector):
    """Reads the job counts, the pause flag and the oldest waiting job when Prometheus scrapes."""

    def __init__(self, queue: JobQueue, paused: Callable[[], bool], node: str | None = None,
                 folders: Callable[[], list[dict[str, Any]]] | None = None) -> None:
        """Remember where to read from; start the single reader thread lazily."""
        self.queue, self.paused, self.folders = queue, paused, folders
        self.labels, self.values = (["node"], [node]) if node else ([], [])
        self._reader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="metrics-reader")

    def collect(self) -> Iterator[Metric]:
        """One family per gauge; every state is present (0 when no job is in it)."""
        counts, oldest_age, last_upload = self._reader.submit(self._read).result(timeout=READ_TIMEOUT_SECONDS)
        jobs = GaugeMetricFamily("studio_watch_jobs", "Jobs in the state database, by state.",
                                 labels=["state", *self.labels])
        for state in STATES:
            jobs.add_metric([state, *self.values], counts.get(state, 0))
        yield jobs
        for name, text, value in (
                ("studio_watch_queue_paused", "1 while the whole queue is paused (outage or refused token), else 0.",
                 1.0 if self.paused() else 0.0),
                ("studio_watch_oldest_waiting_seconds", "Age of the oldest job not yet completed, failed or "
                 "skipped (0 when none waits).", oldest_age),
                ("studio_watch_last_upload_timestamp_seconds", "When the last upload completed (Unix time, from the "
                 "state database; 0 before the first).", last_upload)):
            family = GaugeMetricFamily(name, text, labels=self.labels)
            family.add_metric(self.values, value)
            yield family
        if self.folders is not None:
            available = GaugeMetricFamily("studio_watch_folder_available", "1 while the watched folder is there "
                                          "and watched by this daemon; 0 while it is missing or held by another "
                                          "daemon.", labels=["folder", *self.labels])
            polled = GaugeMetricFamily("studio_watch_folder_polling_fallback", "1 while the folder is polled "
                                       "because inotify could not watch it (watch limit, probe failed).",
                                       labels=["folder", *self.labels])
            for folder in self.folders():
                available.add_metric([folder["path"], *self.values], 1.0 if folder["available"] else 0.0)
                polled.add_metric([folder["path"], *self.values], 1.0 if folder.get("polling_reason") else 0.0)
            yield available
            yield polled

    def _read(self) -> tuple[dict[str, int], float, float]:
        """Counts per state, the oldest waiting job's age, the last completion (runs on the reader thread)."""
        counts = self.queue.counts()
        oldest = self.queue.oldest_waiting()
        age = max(1.0, time.time() - oldest.created_at) if oldest is not None else 0.0  # a waiting job waits
        return counts, age, self.queue.last_completed_at() or 0.0

    def read(self, fn: Callable[[], Any]) -> Any:
        """Run `fn` (which reads the queue) on the reader thread and return what it returns."""
        return self._reader.submit(fn).result(timeout=READ_TIMEOUT_SECONDS)

    def close(self) -> None:
        """Stop the reader thread."""
        self._reader.shutdown(wait=True)


class Metrics:
    """Every metric studio-watch exports, in its own registry."""

    def __init__(self, queue: JobQueue, paused: Callable[[], bool], expect_folders: Iterable[str] = (),
                 node: str | None = None, folders: Callable[[], list[dict[str, Any]]] | None = None) -> None:
        """Create the registry, the counters and histogram, and the scrape-time queue collector. `node`: a
        cluster member's name, carried as a `node` label by every series (none on a single machine)."""
        self.registry = CollectorRegistry(auto_describe=False)
        self._node = {"node": node} if node else {}
        labels = list(self._node)
        uploaded = Counter("studio_watch_uploaded_bytes", "Bytes sent to Studio in completed PUTs.", labels,
                           registry=self.registry)
        seconds = Histogram("studio_watch_upload_seconds", "Duration of each completed upload PUT.", labels,
                            buckets=UPLOAD_BUCKETS, registry=self.registry)
        self.uploaded_bytes = uploaded.labels(**self._node) if node else uploaded
        self.upload_seconds = seconds.labels(**self._node) if node else seconds
        self.failures = Counter("studio_watch_failures", "Failures, by reason (transient ones included).",
                                ["reason", *labels], registry=self.registry)
        self.recordings_missing = Counter("studio_watch_recordings_missing", "Lectures of a folder's timetable "
                                          "that brought no recording by their end + grace.", ["folder", *labels],
                                          registry=self.registry)
        for folder in expect_folders:  # a series from the start, so a rate() sees the first one
            self.recordings_missing.labels(folder=folder, **self._node)
        self.queue_collector = QueueCollector(queue, paused, node, folders)
        self.registry.register(self.queue_collector)

    def on_event(self, event: Event) -> None:
        """An `Activity` listener: counts PutDone, Failure and RecordingMissing events."""
        if isinstance(event, PutDone):
            self.uploaded_bytes.inc(event.bytes)
            self.upload_seconds.observe(event.seconds)
        elif isinstance(event, Failure):
            self.failures.labels(reason=event.reason, **self._node).inc()
        elif isinstance(event, RecordingMissing):
            self.recordings_missing.labels(folder=event.folder, **self._node).inc()

    def exposition(self) -> bytes:
        """The Prometheus text format of everything in the registry."""
        return generate_latest(self.registry)

    def close(self) -> None:
        """Release the reader thread."""
        self.queue_collector.close()


class _Handler(BaseHTTPRequestHandler):
    """GET / (the status page, when the daemon gives one), /metrics, /healthz, /readyz; anything else is 404."""

    server: _Server
    timeout = 10  # a client that stalls mid-request is dropped instead of holding a thread

    def do_GET(self) -> None:  # noqa: N802 (the http.server naming)
        """Route one request."""
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            self._metrics()
        elif path == "/healthz":
            self._probe(self.server.healthy, self.server.detail)
        elif path == "/readyz":
            self._probe(self.server.ready)
        elif path in ("/", "/status") and self.server.page is not None:
            self._page()
        else:
            self._send(HTTPStatus.NOT_FOUND, b"not found\n", "text/plain; charset=utf-8")

    def _metrics(self) -> None:
        """The exposition, or 500 when the state database cannot be read right now."""
        try:
            body = self.server.metrics.exposition()
        except Exception as exc:  # a locked or vanished database must not kill the server thread
            self._send(HTTPStatus.INTERNAL_SERVER_ERROR, f"metrics unavailable: {exc}\n".encode(),
                       "text/plain; charset=utf-8")
            return
        self._send(HTTPStatus.OK, body, CONTENT_TYPE_LATEST)

    def _page(self) -> None:
        """The status page; 500 when the state database cannot be read right now."""
        assert self.server.page is not None
        try:
            body = render(self.server.metrics.queue_collector.read(self.server.page)).encode()
        except Exception as exc:
            self._send(HTTPStatus.INTERNAL_SERVER_ERROR, f"status unavailable: {exc}\\n".encode(),
                       "text/plain; charset=utf-8")
            return
        self._send(HTTPStatus.OK, body, "text/html; charset=utf-8")

    def _probe(self, check: Callable[[], bool], detail: Callable[[], list[str]] | None = None) -> None:
        """200 "ok" when `check()` is true, 503 otherwise (also when it raises); then one line per thing that is
        degraded without being fatal (a missing folder, a folder polled past the inotify limit)."""
        try:
            good = bool(check())
        except Exception:
            good = False
        try:
            lines = "".join(f"degraded: {line}\n" for line in (detail() if detail else []))
        except Exception:
            lines = ""
        if good:
            self._send(HTTPStatus.OK, f"ok\n{lines}".encode(), "text/plain; charset=utf-8")
        else:
            self._send(HTTPStatus.SERVICE_UNAVAILABLE, f"unavailable\n{lines}".encode(), "text/plain; charset=utf-8")

    def _send(self, status: HTTPStatus, body: bytes, content_type: str) -> None:
        """One complete response with a Content-Length."""
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        if content_type.startswith("text/html"):  # read only, and nothing for a browser to run or frame
            self.send_header("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'; "
                             "frame-ancestors 'none'")
            self.send_header("X-Content-Type-Options", "nosniff")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (the http.server signature)
        """Scrapes every few seconds are not worth a log line."""


class _Server(ThreadingHTTPServer):
    """A ThreadingHTTPServer that carries what the handler needs."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], metrics: Metrics, healthy: Callable[[], bool],
                 ready: Callable[[], bool], family: int, detail: Callable[[], list[str]] | None = None,
                 page: Callable[[], dict[str, Any]] | None = None) -> None:
        """Bind with the right address family (IPv6 for a host with a colon)."""
        self.address_family = family
        self.metrics, self.healthy, self.ready, self.detail, self.page = metrics, healthy, ready, detail, page
        super().__init__(address, _Handler)


class MetricsServer:
    """Serves `metrics` and the two probes on `listen` ("HOST:PORT", port 0 picks a free one)."""

    def __init__(self, listen: str, metrics: Metrics, healthy: Callable[[], bool],
                 ready: Callable[[], bool], detail: Callable[[], list[str]] | None = None,
                 page: Callable[[], dict[str, Any]] | None = None) -> None:
        """Bind now, so a taken port fails at startup (StudioWatchError, exit 1); serve after start()."""

        host, port = parse_listen(listen)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.metrics = metrics
        try:
            self._server = _Server((host, port), metrics, healthy, ready, family, detail, page)
        except OSError as exc:
            raise StudioWatchError(f"metrics.listen: cannot listen on {listen}: {exc.strerror or exc}") from exc
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        """The port actually bound."""
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        """http://HOST:PORT of this server."""
        host = str(self._server.server_address[0])
        return f"http://[{host}]:{self.port}" if ":" in host else f"http://{host}:{self.port}"

    def start(self) -> MetricsServer:
        """Serve in a daemon thread; returns self."""
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.5},
                                        name="metrics-http", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, close the socket and the metrics' reader thread."""
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(timeout=5)
            self._thread = None
        self._server.server_close()
        self.metrics.close()
