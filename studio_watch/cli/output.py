"""What every command shares: exit codes, loading the config, signals, and human or JSON output."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time
from typing import Any, Callable

from studio_watch import config as cfg
from studio_watch.errors import ConfigError

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2


def load_config(args: argparse.Namespace) -> cfg.Config:
    return cfg.load(cfg.config_path(getattr(args, "config", None)))


def quiet_level(config: cfg.Config) -> str:
    """A command run by hand logs warnings and worse unless the config asks for more detail than info."""
    return "warning" if config.log.level == "info" else config.log.level


def config_error(option: str, problem: str) -> ConfigError:
    return ConfigError(f"command line: {option}: {problem}")


def stop_on_signals(stop: threading.Event, on_hup: Callable[[], None] | None = None) -> None:
    """Signal handlers only set events."""

    def handler(signum: int, frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    if on_hup is not None:
        signal.signal(signal.SIGHUP, lambda signum, frame: on_hup())


def print_json(data: Any) -> None:
    json.dump(data, sys.stdout, indent=2, default=str)
    sys.stdout.write("\n")


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def human_age(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    if seconds < 172800:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 86400}d"


def human_when(epoch: float) -> str:
    """A local date and time, and how far away it is."""
    delta = epoch - time.time()
    relative = f"in {human_age(delta)}" if delta >= 0 else f"{human_age(-delta)} ago"
    return f"{time.strftime('%Y-%m-%d %H:%M:%S %Z', time.localtime(epoch))} ({relative})"


class ProgressBar:
    """A one-line progress bar on a terminal; silent elsewhere."""

    def __init__(self, total: int, stream: Any = None) -> None:
        self.total, self.stream = max(total, 1), stream or sys.stderr
        self.enabled = self.stream.isatty()
        self.started = time.monotonic()

    def update(self, sent: int, label: str = "") -> None:
        if not self.enabled:
            return
        fraction = min(1.0, sent / self.total)
        elapsed = max(time.monotonic() - self.started, 1e-6)
        rate = sent / elapsed
        eta = (self.total - sent) / rate if rate > 0 else 0
        bar = "#" * int(fraction * 30)
        self.stream.write(f"\r[{bar:<30}] {fraction * 100:5.1f}% {human_bytes(rate)}/s ETA {human_age(eta)} {label:<12}")
        self.stream.flush()

    def done(self) -> None:
        if self.enabled:
            self.stream.write("\n")
            self.stream.flush()
