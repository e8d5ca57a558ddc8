"""Benchmark results and how they are shown: one Markdown table, the machine it ran on, and notes."""

from __future__ import annotations

import datetime
import os
import platform
from dataclasses import dataclass, field


@dataclass
class Result:
    """One line of the table. `met` is None for informational lines (no target)."""

    row: str
    measured: str
    baseline: str = "-"
    ratio: str = "-"
    target: str = "-"
    met: bool | None = None
    notes: list[str] = field(default_factory=list)


def mib(n: float) -> str:
    return f"{n / (1 << 20):.1f} MiB"


def verdict(met: bool | None) -> str:
    return {True: "met", False: "**MISSED**", None: "info"}[met]


def machine() -> str:
    """CPU count, CPU model, Python and kernel: the context every figure depends on."""
    model = "unknown CPU"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return (f"{os.cpu_count()} CPUs ({model}), Python {platform.python_version()} "
            f"({platform.python_implementation()}), Linux {platform.release()}")


def render(results: list[Result], mode: str, extra: list[str], seconds: float) -> str:
    """The whole report as Markdown (also what is printed)."""
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "# studio-watch benchmarks",
        "",
        f"`python -m bench{' --quick' if mode == 'quick' else ''}` — {when}, {mode} run, {seconds:.0f} s total.",
        f"Machine: {machine()}.",
        *[f"{line}" for line in extra],
        "",
        "Ratios are measured side by side in the same invocation against the baseline named; these are "
        "benchmarks, never CI gates.",
        "",
        "| row | studio-watch | baseline | ratio | target | verdict |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(f"| {r.row} | {r.measured} | {r.baseline} | {r.ratio} | {r.target} | {verdict(r.met)} |")
    noted = [r for r in results if r.notes]
    if noted:
        lines += ["", "## Notes", ""]
        for r in noted:
            lines += [f"- **{r.row}**: " + " ".join(r.notes)]
    return "\n".join(lines) + "\n"
