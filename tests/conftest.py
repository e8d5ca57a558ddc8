"""Shared fixtures: a real sandbox Studio on loopback, config files, and the real `studio-watch` process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
import yaml

from studio_watch.sandbox.server import Faults, Sandbox

TOKEN = "sandbox-token"


@pytest.fixture
def sandbox() -> Iterator[Sandbox]:
    with Sandbox(faults=Faults()) as sb:
        yield sb


def write_config(root: Path, studio_url: str, folders: list[dict[str, Any]], **top: Any) -> Path:
    """A config file in `root` with a 0600 token file; folder paths relative to root are created."""
    token = root / "token"
    if not token.exists():
        token.write_text(TOKEN)
        token.chmod(0o600)
    for folder in folders:
        (root / folder["path"]).mkdir(parents=True, exist_ok=True)
        if folder.get("move_to"):
            (root / folder["move_to"]).mkdir(parents=True, exist_ok=True)
    data: dict[str, Any] = {
        "studio": {"url": studio_url, "token_file": "token", "timeout_seconds": 10},
        "state_db": "state.db",
        "workers": 2,
        "rescan_seconds": 30,
        "retry": {"initial_seconds": 0.05, "max_seconds": 0.5, "max_attempts": 30, "request_tries": 3},
        "log": {"format": "json", "level": "info"},
        "folders": folders,
    }
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    path = root / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    """A bounded poll (for conditions that have no event to wait on, such as another process's state)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


class DaemonProcess:
    """`studio-watch run` as a real child process, its JSON log lines collected as they come."""

    def __init__(self, config: Path, env: dict[str, str] | None = None) -> None:
        self.config = config
        self.lines: list[str] = []
        self.events: list[dict[str, Any]] = []
        self._cond = threading.Condition()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "studio_watch", "run", "-c", str(config)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            with self._cond:
                self.lines.append(line)
                try:
                    self.events.append(json.loads(line))
                except ValueError:
                    pass
                self._cond.notify_all()

    def wait_event(self, name: str, timeout: float = 20.0, count: int = 1) -> bool:
        with self._cond:
            return self._cond.wait_for(
                lambda: sum(1 for e in self.events if e.get("event") == name) >= count or self.proc.poll() is not None,
                timeout) and sum(1 for e in self.events if e.get("event") == name) >= count

    def wait_ready(self, timeout: float = 20.0) -> None:
        assert self.wait_event("daemon_ready", timeout), f"daemon not ready:\n{self.output()}"

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=timeout)
        self._reader.join(timeout=5)
        return code

    def output(self) -> str:
        with self._cond:
            return "\n".join(self.lines)


@pytest.fixture
def daemons() -> Iterator[Callable[..., DaemonProcess]]:
    """Start daemons; any still running at the end of the test are killed."""
    started: list[DaemonProcess] = []

    def start(config: Path, env: dict[str, str] | None = None) -> DaemonProcess:
        d = DaemonProcess(config, env)
        started.append(d)
        return d

    yield start
    for d in started:
        if d.proc.poll() is None:
            d.proc.kill()
            d.proc.wait(timeout=10)


def run_cli(*args: str, input: str | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run the real command line and capture what it printed."""
    return subprocess.run([sys.executable, "-m", "studio_watch", *args], capture_output=True, text=True,
                          input=input, timeout=timeout)


def write_media(path: Path, size: int, seed: int = 0) -> Path:
    """Write `size` pseudo-random bytes via a .part name and a rename (as a careful recorder would)."""
    part = path.with_name(path.name + ".part")
    rnd = __import__("random").Random(seed or hash(path.name))
    with open(part, "wb") as f:
        remaining = size
        while remaining:
            n = min(remaining, 1 << 20)
            f.write(rnd.randbytes(n))
            remaining -= n
    part.rename(path)
    return path


def sha256_of(path: Path) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()
