"""Rows about the network path: `studio-watch upload` against `curl -T` to the same loopback TLS sink, the HTTP stack
alone, and per-file time at a 50 ms round trip.

The sink (bench/sink.py --tls) ends TLS in its own process, with a certificate from a private CA made here with
the openssl command; the clients verify it (curl --cacert, studio.ca_bundle). Targets from issue 14: goodput
≥ 1.0× curl for the whole command, CPU per GiB ≤ 0.8× curl's.
"""

from __future__ import annotations

import sys
from pathlib import Path

from studio_watch.config import DEFAULT_WORKERS

from .daemons import _bare_loop, _daemon_batch
from .delay import DelayProxy
from .harness import TMPFS, Sink, make_tls, median, remove, run_child, scratch, write_big_file, write_small_files
from .report import Result
from .uploads import GIB, MIB, _last_put, curl_put, studio_watch_put


def _stack_put(sink: Sink, stack: str, path: Path) -> tuple[float, int, float]:
    """(seconds, bytes, CPU seconds of the PUT itself, imports and start-up excluded) of one bench/tlsput.py run."""
    assert sink.tls is not None
    run = run_child([sys.executable, "-m", "bench.tlsput", stack, sink.generate(), str(path), str(sink.tls.ca)])
    if run.returncode != 0:
        raise RuntimeError(f"tlsput {stack} failed: {run.output[-500:]}")
    seconds, nbytes = _last_put(sink)
    return seconds, nbytes, float(run.output.split("put_cpu ")[1].split()[0])


def tls_rows(_: Sink, quick: bool) -> list[Result]:
    folder = scratch("tls")
    big = write_big_file(TMPFS / "sw-bench-tls-1g.bin", GIB)
    tiny = write_big_file(TMPFS / "sw-bench-tls-4k.bin", 4096, seed=9)
    sink = Sink(make_tls(folder))
    rate: dict[str, list[float]] = {k: [] for k in ("curl", "sw", "pool", "httpx")}
    cpu: dict[str, list[float]] = {k: [] for k in ("curl", "sw", "pool", "httpx", "start")}
    try:
        contenders = ["curl", "sw", "pool", "httpx"]
        for i in range(1 if quick else 3):
            for who in contenders if i % 2 == 0 else contenders[::-1]:  # alternate the order
                if who == "curl":
                    seconds, nbytes, run = curl_put(sink, big)
                    spent = run.cpu_seconds
                elif who == "sw":
                    seconds, nbytes, run = studio_watch_put(sink, big)
                    spent = run.cpu_seconds
                else:
                    seconds, nbytes, spent = _stack_put(sink, who, big)
                rate[who].append(nbytes / seconds)
                cpu[who].append(spent)
            cpu["start"].append(studio_watch_put(sink, tiny)[2].cpu_seconds)  # start, imports, 3 calls, SQLite
    finally:
        sink.close()
        big.unlink(missing_ok=True)
        tiny.unlink(missing_ok=True)
        remove(folder)
    per_gib = {k: median(v) for k, v in cpu.items()}
    goodput = median(rate["sw"]) / median(rate["curl"])
    cpu_ratio = per_gib["sw"] / per_gib["curl"]
    rounds = lambda k: ", ".join(f"{c:.2f}" for c in cpu[k])  # noqa: E731
    notes = [f"1 GiB from tmpfs, https to bench/sink.py --tls (TLS ended in the sink's own process), verified "
             f"against a private CA; median of {len(cpu['curl'])} alternating rounds. CPU = user+sys of the whole "
             f"client process. Per round, s/GiB: curl {rounds('curl')}; studio-watch upload {rounds('sw')}; "
             f"its start-up alone (a 4 KiB upload) {rounds('start')}."]
    return [
        Result("TLS PUT goodput (1 GiB, https loopback sink)", f"{median(rate['sw']) / 1e9:.2f} GB/s",
               f"curl -T --cacert {median(rate['curl']) / 1e9:.2f} GB/s", f"{goodput:.2f}×", "≥ 1.0× curl",
               goodput >= 1.0, notes),
        Result("TLS client CPU per GiB, whole `upload` command", f"{per_gib['sw']:.2f} s",
               f"curl {per_gib['curl']:.2f} s", f"{cpu_ratio:.2f}×", "≤ 0.8× curl", cpu_ratio <= 0.8,
               [f"Without start-up (minus the 4 KiB upload's {per_gib['start']:.2f} s): "
                f"{(per_gib['sw'] - per_gib['start']) / per_gib['curl']:.2f}× curl."]),
        Result("TLS CPU per GiB, HTTP stack alone (bench/tlsput.py)",
               f"studio-watch transport {per_gib['pool']:.2f} s", f"plain httpx {per_gib['httpx']:.2f} s",
               f"{per_gib['pool'] / per_gib['httpx']:.2f}×", "informs the stack choice", None,
               [f"The same reused 1 MiB buffer body, one PUT per process in a worker thread; CPU of the PUT alone "
                f"(no interpreter start, no imports), the allocator tuned for both. Against curl's whole process: "
                f"transport {per_gib['pool'] / per_gib['curl']:.2f}×, plain httpx "
                f"{per_gib['httpx'] / per_gib['curl']:.2f}×. Goodput: transport "
                f"{median(rate['pool']) / 1e9:.2f} GB/s, plain httpx {median(rate['httpx']) / 1e9:.2f} GB/s. "
                f"Per round: transport {rounds('pool')}; httpx {rounds('httpx')}."]),
    ]


def rtt_rows(sink: Sink, quick: bool) -> list[Result]:
    """Per-file time at a 50 ms round trip (bench/delay.py in front of the sink): the daemon with 1 worker and with
    the default number against the bare keep-alive loop and the floor of 3 round trips per file."""
    count, rounds, rtt = (10, 1, 0.05) if quick else (20, 3, 0.05)
    root = scratch("rtt")
    proxy = DelayProxy(sink.port, rtt / 2)
    default = DEFAULT_WORKERS
    times: dict[str, list[float]] = {"bare": [], "w1": [], f"w{default}": []}
    try:
        folder = root / "in"
        write_small_files(folder, count, MIB)
        for _ in range(rounds):
            times["bare"].append(_bare_loop(sink, folder, count, proxy.url)[0] / count)
            for workers in (1, default):
                times[f"w{workers}"].append(
                    _daemon_batch(sink, folder, count, workers, 120, proxy.url)[0] / count)
    finally:
        proxy.close()
        remove(root)
    floor = 3 * rtt
    per = {k: median(v) for k, v in times.items()}
    ms = lambda v: f"{v * 1000:.0f} ms"  # noqa: E731
    note = (f"{count} × 1 MiB files, a fresh daemon each round (its start-up included, spread over the files), "
            f"median of {rounds}; 25 ms each way in bench/delay.py, no bandwidth limit. Floor: generate, PUT and "
            f"complete = 3 round trips = {ms(floor)} per file. Per round: bare loop "
            f"{', '.join(ms(v) for v in times['bare'])}; 1 worker {', '.join(ms(v) for v in times['w1'])}; "
            f"{default} workers {', '.join(ms(v) for v in times[f'w{default}'])}.")
    return [Result("per-file time at 50 ms RTT, 1 worker", ms(per["w1"]), f"bare keep-alive loop {ms(per['bare'])}",
                   f"{per['w1'] / per['bare']:.2f}×", "≤ 1.1× the bare loop", per["w1"] <= 1.1 * per["bare"],
                   [note, f"Against the floor: 1 worker {per['w1'] / floor:.2f}×, "
                          f"bare loop {per['bare'] / floor:.2f}×."]),
            Result(f"per-file time at 50 ms RTT, {default} workers (default)", ms(per[f"w{default}"]),
                   f"floor {ms(floor)}", f"{per[f'w{default}'] / floor:.2f}×", "-", None)]
