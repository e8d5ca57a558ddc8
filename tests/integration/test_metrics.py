"""Prometheus metrics, /healthz and /readyz: unit tests over real HTTP, and the daemon end to end."""

from __future__ import annotations

import socket
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Iterator

import pytest
from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.parser import text_string_to_metric_families

from studio_watch.errors import StudioWatchError
from studio_watch.queue import STATES, JobQueue, Seen, State, open_queue
from ..conftest import drive
from studio_watch.daemon.activity import Failure, JobFailed, PutDone
from studio_watch.config import parse_listen
from studio_watch.daemon.metrics import Metrics, MetricsServer

from ..conftest import DaemonProcess, wait_until, write_config, write_media


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """(sample name, sorted labels) → value, for every sample in an exposition."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def get(url: str, timeout: float = 5.0) -> tuple[int, str, str]:
    """(status, content type, body) of a GET, error statuses included."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.headers.get("Content-Type", ""), response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers.get("Content-Type", ""), exc.read().decode()


def seen(path: Path, n: int) -> Seen:
    """A minimal observation of a file that need not exist."""
    return Seen(path=str(path / f"f{n}.mp4"), folder=str(path), size=100 + n, mtime_ns=n, inode=n, device=1,
                collection_id=1, user_id=None, auto_caption=False, after_upload="keep", move_to=None,
                duplicates="skip", settle_seconds=1.0)


@pytest.fixture
def queue(tmp_path: Path) -> Iterator[JobQueue]:
    q = open_queue(tmp_path / "state.db")
    yield q
    q.close()


class Flag:
    """A switchable boolean for the probes and the pause gauge."""

    def __init__(self, value: bool) -> None:
        self.value = value

    def __call__(self) -> bool:
        return self.value


def test_put_done_events_become_bytes_counter_and_histogram(queue: JobQueue) -> None:
    metrics = Metrics(queue, paused=lambda: False)
    try:
        for nbytes, secs in ((1_000_003, 0.4), (52_428_800, 7.5), (7, 4000.0)):
            metrics.on_event(PutDone(nbytes, secs))
        metrics.on_event(Failure("transient"))
        metrics.on_event(Failure("transient"))
        metrics.on_event(Failure("too_large"))
        metrics.on_event(JobFailed({"id": 1}))  # not counted here (alerts take it)
        text = metrics.exposition().decode()
    finally:
        metrics.close()
    values = samples(text)
    assert values[("studio_watch_uploaded_bytes_total", ())] == 1_000_003 + 52_428_800 + 7
    assert "studio_watch_uploaded_bytes_total 5.342881e+07" in text  # all digits kept: the exact count
    assert values[("studio_watch_upload_seconds_count", ())] == 3
    assert values[("studio_watch_upload_seconds_sum", ())] == pytest.approx(4007.9)
    assert values[("studio_watch_upload_seconds_bucket", (("le", "1.0"),))] == 1
    assert values[("studio_watch_upload_seconds_bucket", (("le", "3600.0"),))] == 2
    assert values[("studio_watch_upload_seconds_bucket", (("le", "7200.0"),))] == 3
    assert values[("studio_watch_failures_total", (("reason", "transient"),))] == 2
    assert values[("studio_watch_failures_total", (("reason", "too_large"),))] == 1


def test_queue_gauges_read_a_real_queue_at_scrape_time(queue: JobQueue, tmp_path: Path) -> None:
    paused = Flag(False)
    metrics = Metrics(queue, paused=paused)
    try:
        empty = samples(metrics.exposition().decode())
        assert {empty[("studio_watch_jobs", (("state", s),))] for s in STATES} == {0.0}
        assert empty[("studio_watch_oldest_waiting_seconds", ())] == 0.0
        assert empty[("studio_watch_queue_paused", ())] == 0.0

        created = queue.observe([seen(tmp_path, n) for n in range(6)], now=time.time() - 120)
        ids = [job_id for job_id, _ in created]
        for job_id, state in zip(ids, (State.READY, State.COMPLETED, State.COMPLETED, State.FAILED, State.SKIPPED)):
            drive(queue, job_id, state)
        paused.value = True
        values = samples(metrics.exposition().decode())
    finally:
        metrics.close()
    jobs = {s: values[("studio_watch_jobs", (("state", s),))] for s in STATES}
    assert jobs == {"settling": 1, "ready": 1, "url_issued": 0, "uploaded": 0, "completed": 2, "failed": 1,
                    "skipped": 1}
    assert values[("studio_watch_queue_paused", ())] == 1.0
    assert 119 <= values[("studio_watch_oldest_waiting_seconds", ())] < 200


def open_files(path: Path) -> int:
    """How many of this process's file descriptors point at `path` (Linux /proc)."""
    fds = Path("/proc/self/fd")
    if not fds.is_dir():
        pytest.skip("needs /proc/self/fd")
    count = 0
    for fd in fds.iterdir():
        try:
            count += Path(fd.readlink()) == path.resolve()
        except OSError:
            pass
    return count


def test_scrapes_do_not_leave_sqlite_connections_behind(queue: JobQueue) -> None:
    """Each HTTP request runs in a new thread; the queue is read from one reader thread only."""
    metrics = Metrics(queue, paused=lambda: False)
    server = MetricsServer("127.0.0.1:0", metrics, healthy=lambda: True, ready=lambda: True).start()
    try:
        assert get(f"{server.url}/metrics")[0] == 200
        after_one = open_files(queue.path)
        for _ in range(10):
            assert get(f"{server.url}/metrics")[0] == 200
        assert open_files(queue.path) == after_one
    finally:
        server.stop()


def test_server_endpoints_and_probes_flip(queue: JobQueue) -> None:
    healthy, ready = Flag(True), Flag(False)
    metrics = Metrics(queue, paused=lambda: False)
    metrics.on_event(PutDone(42, 1.5))
    server = MetricsServer("127.0.0.1:0", metrics, healthy=healthy, ready=ready).start()
    try:
        assert server.port > 0 and server.url == f"http://127.0.0.1:{server.port}"
        status, ctype, body = get(f"{server.url}/metrics")
        assert status == 200 and ctype == CONTENT_TYPE_LATEST and ctype.startswith("text/plain")
        assert "studio_watch_uploaded_bytes_total 42.0" in body
        assert 'studio_watch_jobs{state="completed"} 0.0' in body
        assert get(f"{server.url}/healthz")[:3:2] == (200, "ok\n")
        assert get(f"{server.url}/readyz")[0] == 503
        healthy.value, ready.value = False, True
        assert get(f"{server.url}/healthz")[0] == 503
        assert get(f"{server.url}/readyz")[0] == 200
        assert get(f"{server.url}/nope")[0] == 404
    finally:
        server.stop()
    with pytest.raises(OSError):
        get(f"http://127.0.0.1:{server.port}/healthz", timeout=1)


def test_probe_that_raises_is_unhealthy(queue: JobQueue) -> None:
    def broken() -> bool:
        raise RuntimeError("watcher gone")

    server = MetricsServer("127.0.0.1:0", Metrics(queue, lambda: False), healthy=broken, ready=broken).start()
    try:
        assert get(f"{server.url}/healthz")[0] == 503
        assert get(f"{server.url}/readyz")[0] == 503
    finally:
        server.stop()


def test_ipv6_loopback_and_listen_parsing(queue: JobQueue) -> None:
    assert parse_listen("127.0.0.1:9464") == ("127.0.0.1", 9464)
    assert parse_listen("[::1]:9464") == ("::1", 9464)
    assert parse_listen("0.0.0.0:0") == ("0.0.0.0", 0)
    for bad in ("9464", ":9464", "host:", "host:99999", "host:x"):
        with pytest.raises(ValueError):
            parse_listen(bad)
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    try:
        server = MetricsServer("[::1]:0", Metrics(queue, lambda: False), lambda: True, lambda: True).start()
    except StudioWatchError:
        pytest.skip("no IPv6 loopback here")
    try:
        assert get(f"{server.url}/healthz")[0] == 200
    finally:
        server.stop()


def test_a_taken_port_is_a_clear_error(queue: JobQueue) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        listen = f"127.0.0.1:{taken.getsockname()[1]}"
        metrics = Metrics(queue, lambda: False)
        with pytest.raises(StudioWatchError, match=f"metrics.listen: cannot listen on {listen}"):
            MetricsServer(listen, metrics, lambda: True, lambda: True)
        metrics.close()


def test_two_metrics_in_one_process_do_not_collide(queue: JobQueue, tmp_path: Path) -> None:
    """Each Metrics has its own registry (the global one would refuse the second set of names)."""
    other = open_queue(tmp_path / "other.db")
    first, second = Metrics(queue, lambda: False), Metrics(other, lambda: True)
    try:
        first.on_event(PutDone(5, 1.0))
        assert samples(second.exposition().decode())[("studio_watch_uploaded_bytes_total", ())] == 0
        assert samples(first.exposition().decode())[("studio_watch_uploaded_bytes_total", ())] == 5
    finally:
        first.close()
        second.close()
        other.close()


def test_listener_is_safe_from_many_threads(queue: JobQueue) -> None:
    metrics = Metrics(queue, lambda: False)
    threads = [threading.Thread(target=lambda: [metrics.on_event(PutDone(3, 0.1))
                                                for _ in range(500)]) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        values = samples(metrics.exposition().decode())
    finally:
        metrics.close()
    assert values[("studio_watch_uploaded_bytes_total", ())] == 8 * 500 * 3
    assert values[("studio_watch_upload_seconds_count", ())] == 8 * 500


# -- end to end (needs the lead's wiring of metrics.listen into Daemon.run) ------------------------------

def free_port() -> int:
    """A port that was free a moment ago on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.slow
def test_metrics_after_three_uploads(tmp_path: Path, sandbox, daemons) -> None:
    port = free_port()
    config = write_config(tmp_path, sandbox.url, [{"path": "in", "collection_id": 1, "settle_seconds": 0.3}],
                          metrics={"listen": f"127.0.0.1:{port}"})
    daemon: DaemonProcess = daemons(config)
    daemon.wait_ready()
    base = f"http://127.0.0.1:{port}"
    sizes = (150_000, 230_001, 77_777)
    for n, size in enumerate(sizes):
        write_media(tmp_path / "in" / f"lecture-{n}.mp4", size, seed=n + 1)
    assert sandbox.wait_for(lambda: len(sandbox.completed()) == 3, timeout=30), daemon.output()

    def scraped() -> str:
        try:
            return get(f"{base}/metrics")[2]
        except OSError:
            return ""

    assert wait_until(lambda: 'studio_watch_jobs{state="completed"} 3.0' in scraped(), 10), scraped()
    text = scraped()
    values = samples(text)
    assert values[("studio_watch_uploaded_bytes_total", ())] == sum(sizes)
    assert "studio_watch_upload_seconds_count 3.0" in text
    assert values[("studio_watch_queue_paused", ())] == 0.0
    assert values[("studio_watch_oldest_waiting_seconds", ())] == 0.0
    assert get(f"{base}/healthz")[0] == 200
    assert get(f"{base}/readyz")[0] == 200
    assert daemon.stop() == 0


def test_a_cluster_nodes_series_carry_its_name(queue: JobQueue) -> None:
    metrics = Metrics(queue, paused=lambda: False, node="room-101")
    try:
        metrics.on_event(PutDone(5, 0.5))
        metrics.on_event(Failure("transient"))
        values = samples(metrics.exposition().decode())
    finally:
        metrics.close()
    node = ("node", "room-101")
    assert values[("studio_watch_uploaded_bytes_total", (node,))] == 5
    assert values[("studio_watch_upload_seconds_count", (node,))] == 1
    assert values[("studio_watch_failures_total", (node, ("reason", "transient")))] == 1
    assert values[("studio_watch_jobs", (node, ("state", "ready")))] == 0
    assert values[("studio_watch_queue_paused", (node,))] == 0
    assert all(dict(labels).get("node") == "room-101" for (name, labels) in values if name.startswith("studio_watch"))
