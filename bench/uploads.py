"""Rows about one `studio-watch upload`: sink drain speed, PUT goodput against curl, peak RSS, disk reads.

Files come from tmpfs (/dev/shm), so the disk never limits a transfer; each `upload` gets a fresh config
directory whose state DB is on disk (the duplicate check then never needs a pre-hash: the default path).
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

import xxhash

from .harness import (TMPFS, ChildRun, Sink, median, remove, run_child, scratch, stop_process, upload_argv,
                      write_big_file, write_config)
from .report import Result, mib

GIB = 1 << 30
MIB = 1 << 20


def _last_put(sink: Sink) -> tuple[float, int]:
    """(seconds, bytes) of the newest PUT body as the sink saw it: headers parsed to last byte drained."""
    started, done, nbytes = sink.stats()["puts"][-1]
    return done - started, int(nbytes)


def curl_put(sink: Sink, path: Path, url: str | None = None) -> tuple[float, int, ChildRun]:
    """`curl -T` (Expect: disabled) to a fresh upload URL; the sink's timing of the body."""
    trust = ["--cacert", str(sink.tls.ca)] if sink.tls else []
    run = run_child(["curl", "-sS", *trust, "-o", "/dev/null", "-w", "%{http_code}", "-H", "Expect:", "-T", str(path),
                     url or sink.generate()])
    if run.returncode != 0 or not run.output.strip().endswith("200"):
        raise RuntimeError(f"curl failed: {run.output[-300:]}")
    seconds, nbytes = _last_put(sink)
    return seconds, nbytes, run


def studio_watch_put(sink: Sink, path: Path, check_hash: bool = False) -> tuple[float, int, ChildRun]:
    """`studio-watch upload` with a fresh on-disk state DB; the sink's timing of its PUT body."""
    root = scratch("upload")
    try:
        config = write_config(root, sink.url, ca_bundle=sink.tls.ca if sink.tls else None)
        run = run_child(upload_argv(path, config))
        if run.returncode != 0:
            raise RuntimeError(f"studio-watch upload failed ({run.returncode}): {run.output[-500:]}")
        if check_hash:
            _check_hash(root / "state.db", path)
        seconds, nbytes = _last_put(sink)
        return seconds, nbytes, run
    finally:
        remove(root)


def _check_hash(db: Path, path: Path) -> None:
    """The job's stored content hash must be the file's xxh3_64 (computed during the upload pass)."""
    with sqlite3.connect(db) as conn:
        stored = conn.execute("SELECT content_hash FROM jobs ORDER BY id DESC LIMIT 1").fetchone()[0]
    hasher = xxhash.xxh3_64()
    with open(path, "rb") as f:
        while chunk := f.read(8 * MIB):
            hasher.update(chunk)
    if stored != hasher.hexdigest():
        raise RuntimeError(f"content hash mismatch: stored {stored!r}, file {hasher.hexdigest()!r}")


def sandbox_drain(path: Path) -> float:
    """curl -T into the project's own sandbox (a separate process): its raw drain speed in bytes/s."""
    proc = subprocess.Popen([str(Path(sys.executable).parent / "studio-watch"), "sandbox", "--port", "0"],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().split(" on ", 1)[1].split()[0]
        run = run_child(["curl", "-sS", "-X", "POST", "-H", "Authorization: Bearer sandbox-token",
                         f"{url}/api/public/v1/media/uploads?collection_id=1"])
        upload_url = run.output.split('"url": "', 1)[1].split('"', 1)[0]
        put = run_child(["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code} %{speed_upload}", "-H", "Expect:",
                         "-T", str(path), upload_url])
        return float(put.output.split()[-1])
    finally:
        stop_process(proc)


def sink_rows(sink: Sink, quick: bool) -> list[Result]:
    """How fast each candidate sink drains a curl upload (why the bench has its own sink)."""
    path = write_big_file(TMPFS / "sw-bench-sink.bin", GIB)
    try:
        ours = [curl_put(sink, path)[:2] for _ in range(1 if quick else 3)]
        bench_rate = median([n / s for s, n in ours])
        sandbox_rate = sandbox_drain(path)
    finally:
        path.unlink(missing_ok=True)
    return [Result("sink drain (curl -T 1 GiB)", f"bench.sink {bench_rate / 1e9:.2f} GB/s",
                   f"project sandbox {sandbox_rate / 1e9:.2f} GB/s", f"{bench_rate / sandbox_rate:.1f}×",
                   notes=["The sandbox (ThreadingHTTPServer, sha256 of every body) would cap the goodput row, "
                          "so goodput and memory use bench/sink.py, a raw-socket keep-alive server in its own "
                          "process that drains with recv_into a 4 MiB buffer."])]


def goodput_memory_rows(sink: Sink, quick: bool) -> list[Result]:
    """2 GiB: studio-watch vs curl, alternating, median of 3; peak RSS for 2 GiB and 20 MiB."""
    big = write_big_file(TMPFS / "sw-bench-2g.bin", 2 * GIB)
    small = write_big_file(TMPFS / "sw-bench-20m.bin", 20 * MIB)
    try:
        curl_rates, sw_rates, sw_walls, curl_walls, big_rss, small_rss = [], [], [], [], [], []
        sw_cpu, curl_cpu = [], []
        for i in range(3):
            order = ("curl", "sw") if i % 2 == 0 else ("sw", "curl")
            for who in order:
                if who == "curl":
                    seconds, nbytes, run = curl_put(sink, big)
                    curl_rates.append(nbytes / seconds)
                    curl_walls.append(run.seconds)
                    curl_cpu.append(run.cpu_seconds)
                else:
                    seconds, nbytes, run = studio_watch_put(sink, big, check_hash=i == 0)
                    sw_rates.append(nbytes / seconds)
                    sw_walls.append(run.seconds)
                    sw_cpu.append(run.cpu_seconds)
                    big_rss.append(run.maxrss_bytes)
        for _ in range(3):
            small_rss.append(studio_watch_put(sink, small)[2].maxrss_bytes)
    finally:
        big.unlink(missing_ok=True)
        small.unlink(missing_ok=True)
    goodput = _goodput_result(sw_rates, curl_rates, sw_walls, curl_walls)
    goodput.notes.append(f"Client CPU (user+sys, whole process): studio-watch {median(sw_cpu):.2f} s "
                         f"(of which ~0.3 s is interpreter start and imports) vs curl {median(curl_cpu):.2f} s.")
    return [goodput, _memory_result(big_rss, small_rss)]


def _goodput_result(sw: list[float], curl: list[float], sw_walls: list[float], curl_walls: list[float]) -> Result:
    ratio = median(sw) / median(curl)
    return Result(
        "PUT goodput (2 GiB, tmpfs → loopback sink)", f"{median(sw) / 1e9:.2f} GB/s",
        f"curl -T -H 'Expect:' {median(curl) / 1e9:.2f} GB/s", f"{ratio:.2f}×", "≥ 1.0× curl, hash in same pass",
        ratio >= 1.0,
        [f"Median of 3, alternating (curl first in rounds 1 and 3). Rate = body bytes / (sink parsed the PUT "
         f"headers → drained the last byte). studio-watch per round: "
         f"{', '.join(f'{r / 1e9:.2f}' for r in sw)} GB/s; curl: {', '.join(f'{r / 1e9:.2f}' for r in curl)} GB/s. "
         f"Whole command wall time (process start, generate, PUT, complete, SQLite): studio-watch "
         f"{median(sw_walls):.2f} s vs curl {median(curl_walls):.2f} s (PUT only) = "
         f"{2 * GIB / median(sw_walls) / 1e9:.2f} vs {2 * GIB / median(curl_walls) / 1e9:.2f} GB/s end to end. "
         "The stored content_hash was checked equal to the file's xxh3_64 (one pass: see disk reads)."])


def _memory_result(big: list[int], small: list[int]) -> Result:
    hi, lo = max(big), max(small)
    met = hi < 100 * MIB and lo < 100 * MIB and abs(hi - lo) <= 10 * MIB
    return Result("peak RSS of `upload` (2 GiB vs 20 MiB)", f"{mib(hi)} vs {mib(lo)} (Δ {mib(hi - lo)})",
                  "-", "-", "< 100 MiB, Δ ≤ 10 MiB", met,
                  [f"Peak RSS from /usr/bin/time %M (not wait4's ru_maxrss, which a child spawned from the big "
                   "benchmark process inherits across exec), max of 3 runs each: 2 GiB "
                   f"{', '.join(mib(b) for b in big)}; 20 MiB {', '.join(mib(s) for s in small)}."])


def disk_read_rows(sink: Sink, quick: bool) -> list[Result]:
    """rchar of `upload` per byte uploaded (512 MiB): alone, and with a same-sized file already in the queue."""
    big = write_big_file(TMPFS / "sw-bench-512m.bin", 512 * MIB)
    tiny = write_big_file(TMPFS / "sw-bench-4k.bin", 4096, seed=3)
    sibling = write_big_file(TMPFS / "sw-bench-512m-b.bin", 512 * MIB, seed=5)
    try:
        run_big = studio_watch_put(sink, big)[2]
        run_tiny = studio_watch_put(sink, tiny)[2]
        run_sibling = _after_same_size(sink, big, sibling)
    finally:
        for path in (big, tiny, sibling):
            path.unlink(missing_ok=True)
    return [_reads_result(run_big, run_tiny), _sibling_result(run_sibling, run_tiny)]


def _after_same_size(sink: Sink, first: Path, second: Path) -> ChildRun:
    """Upload `first`, then `second` (same size, other bytes) into the same queue; the second's run."""
    root = scratch("sibling")
    try:
        config = write_config(root, sink.url)
        for path in (first, second):
            run = run_child(upload_argv(path, config))
            if run.returncode != 0:
                raise RuntimeError(f"studio-watch upload failed ({run.returncode}): {run.output[-500:]}")
        return run
    finally:
        remove(root)


def _reads_result(run_big: ChildRun, run_tiny: ChildRun) -> Result:
    size = 512 * MIB
    raw, net = run_big.rchar / size, (run_big.rchar - run_tiny.rchar + 4096) / size
    return Result("disk reads per byte uploaded (512 MiB)", f"{raw:.4f} (net {net:.4f})", "-", "-", "≤ 1.05",
                  raw <= 1.05,
                  [f"rchar (bytes through read(2)) of the reaped upload process: {run_big.rchar:,} for "
                   f"{size:,} bytes; a 4 KiB upload reads {run_tiny.rchar:,} (imports, config, SQLite), "
                   "subtracted for the net figure. read_bytes is useless here (page cache, tmpfs). "
                   "Fresh state DB: no same-sized job exists, so no duplicate pre-hash."])


def _sibling_result(run: ChildRun, run_tiny: ChildRun) -> Result:
    size = 512 * MIB
    raw, net = run.rchar / size, (run.rchar - run_tiny.rchar + 4096) / size
    return Result("disk reads, same-sized file already queued (512 MiB)", f"{raw:.4f} (net {net:.4f})", "-", "-",
                  "≤ 2.05 (design: one duplicate pre-hash)", raw <= 2.05,
                  ["Second of two 512 MiB uploads with different bytes and the same size into one state DB. "
                   "DESIGN allows one pre-hash read when a same-sized job exists (≈ 2.0); anything near 3.0 "
                   "means the file is hashed before the PUT twice."])
