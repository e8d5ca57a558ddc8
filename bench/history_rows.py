"""Rows about a year of history: the same daemon and commands against a 1,000,000-job state DB and an empty one.

Both databases hold the same files kept in the 50 room folders (known, completed: nothing to upload); the year's
also holds the history written by bench/history.py. Each measurement runs on both, alternating, in this
invocation. `--quick` uses a 100,000-job history and shorter windows.
"""

from __future__ import annotations

import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from .harness import (STUDIO_WATCH, TIME, Daemon, Sink, median, remove, scratch, write_config, write_small_files)
from .history import ROOMS, make_history
from .report import Result, mib

KEPT_PER_ROOM = 20  # recordings kept in each room folder (after_upload: keep), known to both databases


class Pair:
    """Two state DBs side by side ("empty", "year") with the same room folders and configs."""

    def __init__(self, root: Path, total: int) -> None:
        self.root, self.total = root, total
        rooms = root / "rooms"
        present = []
        for room in range(ROOMS):
            folder = rooms / f"room-{room:02d}"
            folder.mkdir(parents=True)
            for n in range(KEPT_PER_ROOM):
                path = folder / f"kept-{n:02d}.mp4"
                path.write_bytes(b"kept")
                present.append((str(path), path.stat()))
        self.rooms = [rooms / f"room-{room:02d}" for room in range(ROOMS)]
        self.seconds: dict[str, float] = {}
        for name, size in (("empty", 0), ("year", total)):
            (root / name).mkdir()
            self.seconds[name] = make_history(root / name / "state.db", size, present, rooms_root=rooms)
        self.files = len(present)

    def config(self, name: str, sink_url: str, **top: Any) -> Path:
        folders = [{"path": str(p), "collection_id": 1, "after_upload": "keep"} for p in self.rooms]
        return write_config(self.root / name, sink_url, folders, **{"workers": 4, **top})  # the default


def history_rows(sink: Sink, quick: bool) -> list[Result]:
    total = 100_000 if quick else 1_000_000
    root = scratch("history")
    try:
        pair = Pair(root, total)
        label = f"{total:,} jobs"
        note = (f"Databases written by bench/history.py through the real schema (the {label} in "
                f"{pair.seconds['year']:.1f} s); both know the same {pair.files:,} files kept in 50 room folders.")
        results = [_idle(pair, sink, quick, label, note), *_start(pair, sink, quick, label),
                   *_commands(pair, sink, quick, label), _throughput(pair, sink, quick, label)]
        return results
    finally:
        remove(root)


# -- idle -----------------------------------------------------------------------------------------------------------

def _idle_cpu(config: Path, window: float) -> float:
    daemon = Daemon(config, capture=True)
    try:
        daemon.wait_event("daemon_ready", timeout=60)
        time.sleep(2.0)
        before, t0 = daemon.cpu_seconds(), time.monotonic()
        time.sleep(window)
        return 100 * (daemon.cpu_seconds() - before) / (time.monotonic() - t0)
    finally:
        daemon.stop()


def _idle(pair: Pair, sink: Sink, quick: bool, label: str, note: str) -> Result:
    window = 20.0 if quick else 60.0
    pct = {name: _idle_cpu(pair.config(name, sink.url, observer="inotify"), window) for name in ("empty", "year")}
    return Result(f"idle CPU, 50 folders, {label}", f"{pct['year']:.2f}% of one core",
                  f"empty DB {pct['empty']:.2f}%", f"{pct['year'] / max(pct['empty'], 1e-3):.2f}×",
                  "< 0.3% whatever the history", pct["year"] < 0.3,
                  [note, f"utime+stime over {window:.0f} s after daemon_ready + 2 s; default workers (4), "
                   "rescan_seconds 60, inotify. Idle workers poll next_due() once a second (an index probe; the poll "
                   "is also how they see jobs other processes add: `upload`, `retry`), the settler looks at settling "
                   "jobs, the main loop publishes a snapshot every 5 s (per-state counts recounted only after a job changed)."])


# -- start and rescan -----------------------------------------------------------------------------------------------

def _start_once(config: Path) -> tuple[float, int, float]:
    """(process start → daemon_ready, VmHWM after a periodic rescan, that rescan's seconds)."""
    daemon = Daemon(config, capture=True)
    try:
        ready = daemon.wait_event("daemon_ready", timeout=120)[0]["_t"] - daemon.started
        scans = daemon.wait_event("folders_scanned", count=2, timeout=60)
        return ready, daemon.rss_bytes("VmHWM"), float(scans[1]["seconds"])
    finally:
        daemon.stop()


def _start(pair: Pair, sink: Sink, quick: bool, label: str) -> list[Result]:
    reps = 1 if quick else 3
    runs: dict[str, list[tuple[float, int, float]]] = {"empty": [], "year": []}
    for _ in range(reps):
        for name in runs:
            config = pair.config(name, sink.url, rescan_seconds=2.0, log={"format": "json", "level": "debug"})
            runs[name].append(_start_once(config))
    ready = {n: median([r[0] for r in v]) for n, v in runs.items()}
    hwm = {n: max(r[1] for r in v) for n, v in runs.items()}
    rescan = {n: median([r[2] for r in v]) for n, v in runs.items()}
    return [
        Result(f"`run` start, {label}", f"ready {ready['year']:.2f} s, peak RSS {mib(hwm['year'])}",
               f"empty DB {ready['empty']:.2f} s, {mib(hwm['empty'])}", f"{ready['year'] / ready['empty']:.2f}×",
               "ready < 0.5 s, RSS < 60 MiB", ready["year"] < 0.5 and hwm["year"] < 60 * (1 << 20),
               [f"Process start → daemon_ready (recovery, first scan of {pair.files:,} kept files, first "
                f"snapshot), median of {reps}; peak RSS is VmHWM after the first periodic rescan. "
                f"Per run (year): {', '.join(f'{r[0]:.2f} s / {mib(r[1])}' for r in runs['year'])}."]),
        Result(f"rescan of 50 folders, nothing new, {label}", f"{rescan['year'] * 1000:.0f} ms",
               f"empty DB {rescan['empty'] * 1000:.0f} ms", f"{rescan['year'] / max(rescan['empty'], 1e-4):.2f}×",
               "O(files present), not O(jobs ever)", rescan["year"] <= 2 * rescan["empty"] + 0.005,
               [f"The daemon's own `folders_scanned` seconds for the second scan (rescan_seconds 2): listing "
                f"{pair.files:,} files, looking up their paths' latest jobs (latest_by_path, 500 a query), filtering."]),
    ]


# -- commands -------------------------------------------------------------------------------------------------------

def _first_job_line(config: Path) -> tuple[float, float, int]:
    """`jobs`: (seconds to the first job line, seconds to exit, peak RSS)."""
    with tempfile.NamedTemporaryFile(prefix="sw-bench-time-") as rss:
        started = time.monotonic()
        proc = subprocess.Popen([TIME, "-f", "%M", "-o", rss.name, STUDIO_WATCH, "jobs", "-c", str(config)],
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        assert proc.stdout is not None
        proc.stdout.readline()  # the header
        first = proc.stdout.readline()
        at = time.monotonic() - started
        proc.stdout.read()
        proc.wait()
        if not first.strip():
            raise RuntimeError("jobs printed no job")
        return at, time.monotonic() - started, int(Path(rss.name).read_text().split()[-1]) * 1024


def _wall(argv: list[str]) -> float:
    started = time.monotonic()
    done = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    if done.returncode not in (0, 3):  # 3: `status` saying a person is needed (a year has failed jobs)
        raise RuntimeError(f"{' '.join(argv[1:3])} failed: {done.stderr[-300:]!r}")
    return time.monotonic() - started


def _commands(pair: Pair, sink: Sink, quick: bool, label: str) -> list[Result]:
    reps = 5 if quick else 11
    configs = {name: pair.config(name, sink.url) for name in ("empty", "year")}
    jobs: dict[str, list[tuple[float, float, int]]] = {"empty": [], "year": []}
    status: dict[str, list[float]] = {"empty": [], "year": []}
    for _ in range(reps):
        for name, config in configs.items():
            jobs[name].append(_first_job_line(config))
            status[name].append(_wall([STUDIO_WATCH, "status", "--json", "-c", str(config)]))
    first = {n: median([r[0] for r in v]) for n, v in jobs.items()}
    rss = {n: max(r[2] for r in v) for n, v in jobs.items()}
    st = {n: median(v) for n, v in status.items()}
    return [
        Result(f"`jobs` first line, {label}", f"{first['year'] * 1000:.0f} ms, peak RSS {mib(rss['year'])}",
               f"empty DB {first['empty'] * 1000:.0f} ms, {mib(rss['empty'])}",
               f"{first['year'] / first['empty']:.2f}×", "< 0.2 s, memory independent of history",
               first["year"] < 0.2 and rss["year"] <= rss["empty"] + (4 << 20),
               [f"Process start → the first job line (after the header), median of {reps}; the default listing "
                f"is the newest 100, streamed. Whole command: {median([r[1] for r in jobs['year']]) * 1000:.0f} ms "
                f"(empty DB {median([r[1] for r in jobs['empty']]) * 1000:.0f} ms)."]),
        Result(f"`status --json`, {label}", f"{st['year'] * 1000:.0f} ms", f"empty DB {st['empty'] * 1000:.0f} ms",
               f"{st['year'] / st['empty']:.2f}×", "< 0.2 s", st["year"] < 0.2,
               [f"Wall time of the whole command, median of {reps}, daemon not running."]),
    ]


# -- new files with the history -------------------------------------------------------------------------------------

def _batch(config: Path, sink: Sink, count: int) -> float:
    """Seconds from spawning `run` to the sink's `count`-th complete (files already in the folder)."""
    sink.reset()
    daemon = Daemon(config, capture=False)
    try:
        done = sink.wait("completes", count, 300)
    finally:
        daemon.stop()
    if not done["ok"]:
        raise RuntimeError(f"{done['count']} of {count} completes")
    return float(done["t"]) - daemon.started


def _throughput(pair: Pair, sink: Sink, quick: bool, label: str) -> Result:
    count, reps = (200, 3) if quick else (500, 5)
    walls: dict[str, list[float]] = {"empty": [], "year": []}
    for rep in range(reps):
        for name in walls:
            folder = pair.root / name / f"new-{rep}"
            write_small_files(folder, count, 4096, seed=100 * rep + len(name))
            config = write_config(pair.root / name, sink.url,
                                  [{"path": str(folder), "settle_seconds": 0, "collection_id": 1}])
            walls[name].append(_batch(config, sink, count))
            remove(folder)
    ratios = [y / e for y, e in zip(walls["year"], walls["empty"])]
    ratio = median(ratios)
    return Result(f"new files with the history ({count} × 4 KiB), {label}", f"{median(walls['year']):.2f} s",
                  f"empty DB {median(walls['empty']):.2f} s", f"{ratio:.2f}×", "≤ 1.1× empty", ratio <= 1.1,
                  [f"Process start → the sink's {count}th complete, a fresh folder of new files each round, "
                   f"alternating; median of {reps} per-round ratios ({', '.join(f'{r:.2f}' for r in ratios)}). "
                   "Every file is the same size, so each also takes the duplicate check over the history's "
                   "same-sized rows (none: the history's sizes are 50 MiB–4 GiB)."])

