"""What every command shares: exit codes, loading the config, signals, and human or JSON output."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
from typing import TYPE_CHECKING, Any, Callable, Iterable

from studio_watch.errors import ConfigError

if TYPE_CHECKING:  # loaded by load_config: `--version` and the parser need no YAML
    from studio_watch import config as cfg

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2


def load_config(args: argparse.Namespace) -> cfg.Config:
    from studio_watch import config as cfg  # start-up cost: `--version` loads no YAML

    return cfg.load(cfg.config_path(getattr(args, "config", None)))


def quiet_level(config: cfg.Config) -> str:
    """A command run by hand logs warnings and worse unless the config asks for more detail than info."""
    return "warning" if config.log.level == "info" else config.log.level


def resolve_cli_path(text: str) -> str:
    return os.path.abspath(os.fsdecode(os.fsencode(text)))


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


def print_json_stream(items: Iterable[Any]) -> int:
    """A JSON array on stdout, written one item at a time (as `print_json` would lay it out); returns the count."""
    out, n = sys.stdout, 0
    out.write("[")
    for item in items:
        body = json.dumps(item, indent=2, default=str).replace("\n", "\n  ")
        out.write(("," if n else "") + "\n  " + body)
        n += 1
    out.write("\n]\n" if n else "]\n")
    return n


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


CONFIRMING = "Studio confirming"  # the label once every byte is sent: the PUT's answer, then the complete call


class ProgressBar:
    """A one-line progress bar on a terminal; silent elsewhere. Anything else written to the same terminal goes
    through `interrupt()` first (or the `stream` wrapper), so it gets a line of its own, never the bar's."""

    def __init__(self, total: int, stream: Any = None) -> None:
        self.total, self.stream = max(total, 1), stream or sys.stderr
        self.enabled = self.stream.isatty()
        self.started = time.monotonic()
        self.drawn = False  # the cursor is at the end of the bar's line
        self._lock = threading.Lock()

    def update(self, sent: int, label: str = "") -> None:
        if not self.enabled:
            return
        if sent >= self.total and label in ("", "sending", "uploading"):
            label = CONFIRMING
        fraction = min(1.0, sent / self.total)
        elapsed = max(time.monotonic() - self.started, 1e-6)
        rate = sent / elapsed
        eta = "" if sent >= self.total else f" ETA {human_age((self.total - sent) / rate) if rate > 0 else '?'}"
        bar = "#" * int(fraction * 30)
        with self._lock:
            self.stream.write(f"\r[{bar:<30}] {fraction * 100:5.1f}% {human_bytes(rate)}/s{eta} {label:<18}\x1b[K")
            self.stream.flush()
            self.drawn = True

    def interrupt(self) -> None:
        """End the bar's line, so what comes next starts on a fresh one (the next update draws the bar again)."""
        with self._lock:
            if self.drawn:
                self.stream.write("\n")
                self.stream.flush()
                self.drawn = False

    def done(self) -> None:
        self.interrupt()


class AroundBar:
    """A text stream (for log lines) that ends a progress bar's line before writing on the same terminal."""

    def __init__(self, stream: Any) -> None:
        self.stream, self.bar = stream, None  # type: Any, ProgressBar | None

    def write(self, text: str) -> int:
        if self.bar is not None:
            self.bar.interrupt()
        return self.stream.write(text)

    def flush(self) -> None:
        self.stream.flush()

    def isatty(self) -> bool:
        return self.stream.isatty()

    def fileno(self) -> int:
        return self.stream.fileno()
