"""`python -m bench [--quick] [--only ROW,...]`: run the benchmark rows, print the table, write RESULTS.md.

Rows: sink, goodput, memory, tls, rtt, overhead, detection, scan, idle, reads (goodput and memory share their runs),
cluster, history (a 1,000,000-job state DB against an empty one), coldstart (command start-up, -X importtime),
latency (workers 1/2/4/8 at 50 ms RTT through bench/delay.py). Everything talks to 127.0.0.1 only, except the
cluster row, which talks to network namespaces it creates; the baselines run in the same invocation as what they
are compared with.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Callable

from . import cluster, coldstart, daemons, history_rows, latency, tls, uploads
from .harness import SCRATCH_DISK, Sink, filesystem_of
from .report import Result, render

RowFn = Callable[[Sink, bool], list[Result]]

# (names it answers to, function): the order here is the order of the table.
ROWS: list[tuple[tuple[str, ...], RowFn]] = [
    (("sink",), uploads.sink_rows),
    (("goodput", "memory"), uploads.goodput_memory_rows),
    (("reads",), uploads.disk_read_rows),
    (("tls",), tls.tls_rows),
    (("rtt",), tls.rtt_rows),
    (("overhead",), daemons.overhead_rows),
    (("detection",), daemons.detection_rows),
    (("scan",), daemons.scan_rows),
    (("idle",), daemons.idle_rows),
    (("cluster",), cluster.cluster_rows),
    (("history",), history_rows.history_rows),
    (("coldstart",), coldstart.coldstart_rows),
    (("latency",), latency.latency_rows),
]
NAMES = [name for names, _ in ROWS for name in names]
RESULTS = Path(__file__).resolve().parent / "RESULTS.md"


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions and a shorter idle window")
    parser.add_argument("--only", default="", help=f"comma-separated rows: {','.join(NAMES)}")
    parser.add_argument("--output", type=Path, default=RESULTS, help="where to write the Markdown report")
    args = parser.parse_args(argv)
    args.rows = [n.strip() for n in args.only.split(",") if n.strip()] or NAMES
    unknown = set(args.rows) - set(NAMES)
    if unknown:
        parser.error(f"unknown row(s) {', '.join(sorted(unknown))}; choose from {', '.join(NAMES)}")
    return args


def run_row(fn: RowFn, sink: Sink, quick: bool) -> list[Result]:
    """One row group; a crash becomes a failed line instead of ending the run."""
    started = time.monotonic()
    name = fn.__name__.removesuffix("_rows")
    print(f"[bench] {name} ...", file=sys.stderr, flush=True)
    try:
        results = fn(sink, quick)
    except Exception as exc:
        traceback.print_exc()
        results = [Result(name, f"error: {exc}"[:200], met=False)]
    print(f"[bench] {name} done in {time.monotonic() - started:.1f} s", file=sys.stderr, flush=True)
    return results


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    started = time.monotonic()
    load_before = os.getloadavg()[0]
    results: list[Result] = []
    sink = Sink()
    try:
        for names, fn in ROWS:
            if set(names) & set(args.rows):
                results += [r for r in run_row(fn, sink, args.quick) if _wanted(r, names, args.rows)]
    finally:
        sink.close()
    extra = [f"State DBs and watched trees under {SCRATCH_DISK} ({filesystem_of(SCRATCH_DISK)}, on disk); "
             f"uploaded files on /dev/shm ({filesystem_of(Path('/dev/shm'))}). Sink: bench/sink.py, its own process.",
             f"1-minute load average {load_before:.2f} at the start, {os.getloadavg()[0]:.2f} at the end "
             "(other work on this machine adds noise; alternating runs and medians are the defence)."]
    text = render(results, "quick" if args.quick else "full", extra, time.monotonic() - started)
    print(text)
    args.output.write_text(text)
    return 1 if any(r.measured.startswith("error") for r in results) else 0  # a missed target is not an error


def _wanted(result: Result, names: tuple[str, ...], chosen: list[str]) -> bool:
    """goodput and memory come from one function; keep only the lines asked for."""
    if names != ("goodput", "memory") or {"goodput", "memory"} <= set(chosen):
        return True
    return ("RSS" in result.row) == ("memory" in chosen)


if __name__ == "__main__":
    raise SystemExit(main())
