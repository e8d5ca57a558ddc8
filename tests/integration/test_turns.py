"""Workers' turn taking: a second job starts beside another only once that one has been running a while."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from studio_watch.daemon.turns import TurnTaking
from studio_watch.sandbox.server import Faults, Sandbox

from ..conftest import DaemonProcess, write_config, write_media


def begin_in_thread(turns: TurnTaking, worker: str, stop: threading.Event) -> tuple[threading.Thread, dict[str, object]]:
    """Start `turns.begin(worker)` on a thread; the result dict gets "ok" and "at" (monotonic) when it returns."""
    result: dict[str, object] = {}

    def run() -> None:
        result["ok"] = turns.begin(worker, stop)
        result["at"] = time.monotonic()

    thread = threading.Thread(target=run)
    thread.start()
    return thread, result


def test_a_lone_worker_never_waits() -> None:
    turns, stop = TurnTaking(join_after=5.0), threading.Event()
    started = time.monotonic()
    for _ in range(100):
        assert turns.begin("w1", stop)
        turns.end("w1")
    assert time.monotonic() - started < 1.0


def test_a_second_job_waits_until_the_first_has_run_join_after() -> None:
    turns, stop = TurnTaking(join_after=0.3), threading.Event()
    assert turns.begin("w1", stop)
    first_began = time.monotonic()
    thread, result = begin_in_thread(turns, "w2", stop)
    thread.join(timeout=5)
    assert result["ok"] is True
    assert float(result["at"]) - first_began >= 0.29  # type: ignore[arg-type]
    turns.end("w1")
    turns.end("w2")


def test_a_worker_starts_at_once_when_the_others_are_idle() -> None:
    turns, stop = TurnTaking(join_after=5.0), threading.Event()
    assert turns.begin("w1", stop)
    turns.end("w1")  # w1's job is over: nothing for w2 to wait for
    thread, result = begin_in_thread(turns, "w2", stop)
    thread.join(timeout=1.0)
    assert not thread.is_alive() and result["ok"] is True


def test_stop_ends_the_wait() -> None:
    turns, stop = TurnTaking(join_after=60.0), threading.Event()
    assert turns.begin("w1", stop)
    thread, result = begin_in_thread(turns, "w2", stop)
    time.sleep(0.05)  # let it block (if it did not, the next assertion fails)
    assert thread.is_alive()
    stop.set()
    thread.join(timeout=2.0)
    assert not thread.is_alive() and result["ok"] is False


def test_slow_jobs_still_run_side_by_side(tmp_path: Path) -> None:
    """Against a slow server every job outlives join_after, so both workers upload at once."""
    latency = 0.25
    with Sandbox(faults=Faults(latency_seconds=latency)) as sb:
        config = write_config(tmp_path, sb.url, [{"path": "in", "settle_seconds": 0}], workers=2)
        for i in range(4):
            write_media(tmp_path / "in" / f"clip{i}.mp4", 1000 + i)
        daemon = DaemonProcess(config)
        try:
            assert daemon.wait_event("upload_completed", count=4, timeout=30)
        finally:
            daemon.stop()
        generates = sorted(e["t"] for e in sb.events() if e["endpoint"] == "generate")
    # One worker at a time would space the answers at least `latency` apart; two at once answer close together.
    assert len(generates) == 4
    assert min(b - a for a, b in zip(generates, generates[1:])) < latency * 0.6
