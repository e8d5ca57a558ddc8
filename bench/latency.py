"""Rows about a distant Studio: per-file time at 50 ms RTT for 1, 2, 4 and 8 workers, against the sequential floor.

bench/delay.py sits in front of the sink and holds every byte 25 ms each way (the sink hands out upload URLs
through the same proxy, so the PUT pays the latency too). The floor is the bare keep-alive loop
(bench/bareloop.py: generate → PUT → complete per file, one after the other) through the same proxy, measured
in this invocation, next to its theoretical value: 3 round trips + the transfer.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from .delay import DelayProxy
from .harness import Daemon, Sink, remove, run_child, scratch, start_afresh, write_config, write_small_files
from .report import Result

DELAY = 0.025  # seconds each way: 50 ms RTT
SIZE = 1 << 20
WORKERS = (1, 2, 4, 8)


def _bare(sink: Sink, url: str, folder: Path, count: int) -> float:
    """Seconds per file of the bare keep-alive loop through the proxy (its own process start excluded)."""
    sink.reset()
    run = run_child([sys.executable, "-m", "bench.bareloop", url, str(folder)])
    if run.returncode != 0:
        raise RuntimeError(f"bare loop failed: {run.output[-300:]}")
    done = sink.wait("completes", count, 5)
    if not done["ok"]:
        raise RuntimeError(f"bare loop: {done['count']} of {count} completes")
    return (float(done["t"]) - min(sink.stats()["generates"])) / count


def _daemon(sink: Sink, url: str, root: Path, stage: list[Path], workers: int) -> float:
    """Seconds per file with `workers`: the files are moved into the watched folder at once after daemon_ready."""
    folder = root / f"in-{workers}"
    folder.mkdir()
    config = write_config(root, url, [{"path": str(folder), "settle_seconds": 0, "collection_id": 1}],
                          workers=workers, observer="inotify")
    sink.reset()
    daemon = Daemon(config)
    try:
        daemon.wait_event("daemon_ready", timeout=60)
        time.sleep(0.5)
        started = time.monotonic()
        for path in stage:
            os.rename(path, folder / path.name)
        done = sink.wait("completes", len(stage), 300)
    finally:
        daemon.stop()
    if not done["ok"]:
        raise RuntimeError(f"workers={workers}: {done['count']} of {len(stage)} completes")
    for path in folder.iterdir():  # back to the stage for the next run (same bytes, new job: a fresh state DB)
        os.rename(path, stage[0].parent / path.name)
    start_afresh(root / "state.db", stage[0].parent)
    return (float(done["t"]) - started) / len(stage)


def latency_rows(sink: Sink, quick: bool) -> list[Result]:
    count = 16 if quick else 40
    root = scratch("latency")
    proxy = DelayProxy(sink.port, DELAY)
    try:
        stage = write_small_files(root / "stage", count, SIZE, seed=31)
        bare = _bare(sink, proxy.url, root / "stage", count)
        per = {w: _daemon(sink, proxy.url, root, stage, w) for w in WORKERS}
    finally:
        proxy.close()
        remove(root)
    rtt = 2 * DELAY
    floor = 3 * rtt
    shown = ", ".join(f"{w}: {per[w] * 1000:.0f} ms ({per[w] / bare:.2f}×)" for w in WORKERS)
    return [Result(f"per-file time at 50 ms RTT ({count} × 1 MiB)", f"workers=2 {per[2] * 1000:.0f} ms, "
                   f"workers=4 {per[4] * 1000:.0f} ms", f"sequential floor (bare loop) {bare * 1000:.0f} ms",
                   f"{per[2] / bare:.2f}× / {per[4] / bare:.2f}×", "decide the default from it", None,
                   [f"Through bench/delay.py ({DELAY * 1000:.0f} ms each way). Files moved into the watched "
                    f"folder at once after daemon_ready; seconds from the first move to the sink's {count}th "
                    f"complete, divided by {count}. Per worker count (× the floor): {shown}. The floor is the "
                    f"bare keep-alive loop through the same proxy, generate to last complete per file; in theory "
                    f"3 round trips + the transfer = {floor * 1000:.0f} ms + ~1 ms. Each worker's first "
                    "connection pays no handshake round trip here (the proxy accepts at once)."])]
