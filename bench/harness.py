"""Shared machinery for the benchmark rows: the sink process, configs, daemons, and process measurements.

Every process measured here is a real child: `studio-watch upload` is reaped with `os.wait4` (its own peak RSS
and CPU), and because Linux folds a reaped child's I/O counters into its parent's, the delta of this process's
`/proc/self/io` around that wait is the child's `rchar`. Daemons are polled through `/proc/PID/status|stat`.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from studio_watch.files.marks import XATTR
from studio_watch.sandbox.tls import TlsFiles, make_certificates

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
STUDIO_WATCH = str(BIN / "studio-watch")
TOKEN = "bench-token"
SCRATCH_DISK = Path(tempfile.gettempdir())  # state DBs live here: on disk, not tmpfs (see scratch_is_disk)
TMPFS = Path("/dev/shm")
TIME = "/usr/bin/time"  # GNU time: the peak RSS of exactly the process it runs


# -- the sink -------------------------------------------------------------------------------------------------

class Sink:
    """`python -m bench.sink` as a separate process, and a tiny client for its control endpoints."""

    def __init__(self, tls: TlsFiles | None = None, host: str = "127.0.0.1") -> None:
        """With `tls`, the sink speaks https with tls.cert; clients trust tls.ca. `host`: where it listens."""
        self.tls = tls
        extra = ["--tls", str(tls.cert), str(tls.key)] if tls else []
        self.proc = subprocess.Popen([sys.executable, "-m", "bench.sink", "--port", "0", "--host", host, *extra],
                                     cwd=REPO,
                                     stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().split()
        if len(line) != 2 or line[0] != "listening":
            raise RuntimeError(f"sink did not start: {line!r}")
        self.port = int(line[1])
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.port}"
        self._context = ssl.create_default_context(cafile=str(tls.ca)) if tls else None

    def _call(self, method: str, path: str, timeout: float = 10.0) -> dict[str, Any]:
        request = urllib.request.Request(self.url + path, method=method)
        with urllib.request.urlopen(request, timeout=timeout, context=self._context) as response:
            return dict(json.loads(response.read() or b"{}"))

    def stats(self) -> dict[str, Any]:
        return self._call("GET", "/_stats")

    def reset(self) -> None:
        self._call("POST", "/_reset")

    def wait(self, kind: str, count: int, timeout: float) -> dict[str, Any]:
        """Block until the sink has seen `count` events of `kind`; returns {"ok", "count", "t"}."""
        return self._call("GET", f"/_wait?kind={kind}&count={count}&timeout={timeout}", timeout=timeout + 10)

    def generate(self) -> str:
        """An upload URL issued by the sink (for the curl baseline)."""
        return str(self._call("POST", "/api/public/v1/media/uploads?collection_id=1")["upload"]["url"])

    def close(self) -> None:
        stop_process(self.proc)


def stop_process(proc: subprocess.Popen[Any], timeout: float = 30.0) -> int | None:
    """SIGTERM one child we started, then SIGKILL it if it lingers."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
    return proc.returncode


def start_afresh(state_db: Path, *folders: Path) -> None:
    """The next run as a first one: the state database gone with its companions (a lost database with its lock
    left behind is refused by design), and the uploaded marks (files/marks.py) taken off the files in `folders`,
    so the same bytes are new jobs again."""
    for suffix in ("", "-wal", "-shm", ".lock"):
        Path(f"{state_db}{suffix}").unlink(missing_ok=True)
    for folder in folders:
        for path in folder.rglob("*"):
            try:
                os.removexattr(path, XATTR, follow_symlinks=False)
            except OSError:  # never marked (or no xattrs here)
                pass


def make_tls(folder: Path) -> TlsFiles:
    """A private CA and a certificate for 127.0.0.1 it signed (EC P-256): the sandbox's `--tls` maker, one for all."""
    folder.mkdir(parents=True, exist_ok=True)
    return make_certificates(folder, ["127.0.0.1"])


# -- configs and files ----------------------------------------------------------------------------------------

def write_config(root: Path, url: str, folders: list[dict[str, Any]] | None = None, ca_bundle: Path | None = None,
                 **top: Any) -> Path:
    """A config in `root` (state_db on disk beside it) with a 0600 token file."""
    token = root / "token"
    token.write_text(TOKEN)
    token.chmod(0o600)
    data: dict[str, Any] = {
        "studio": {"url": url, "token_file": "token", "timeout_seconds": 60,
                   **({"ca_bundle": str(ca_bundle)} if ca_bundle else {})},
        "state_db": "state.db",
        "workers": 2,
        "log": {"format": "json", "level": "info"},
        "folders": folders or [],
        **top,
    }
    path = root / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def scratch(prefix: str, base: Path = SCRATCH_DISK) -> Path:
    return Path(tempfile.mkdtemp(prefix=f"sw-bench-{prefix}-", dir=base))


def remove(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def filesystem_of(path: Path) -> str:
    """The filesystem type holding `path` (for the report: the state DB must not be on tmpfs)."""
    from studio_watch.files.mounts import filesystem_type

    return filesystem_type(path) or "unknown"


def write_big_file(path: Path, size: int, seed: int = 1) -> Path:
    """`size` bytes made of a repeated 16 MiB random block (nothing on the path compresses or dedups)."""
    block = random.Random(seed).randbytes(16 << 20)
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(left, len(block))
            f.write(block[:n])
            left -= n
    return path


def write_small_files(folder: Path, count: int, size: int, seed: int = 7, suffix: str = ".mp4") -> list[Path]:
    """`count` files of `size` distinct random bytes (distinct, so duplicate detection never skips one)."""
    folder.mkdir(parents=True, exist_ok=True)
    rnd = random.Random(seed)
    paths = []
    for i in range(count):
        path = folder / f"lecture-{i:05d}{suffix}"
        path.write_bytes(rnd.randbytes(size))
        paths.append(path)
    return paths


# -- measuring one child ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ChildRun:
    """A finished child: wall seconds, peak RSS, CPU seconds, bytes it read through read(2), exit code."""

    seconds: float
    maxrss_bytes: int
    cpu_seconds: float
    rchar: int
    returncode: int
    output: str


def _own_rchar() -> int:
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    raise RuntimeError("no rchar in /proc/self/io")


def run_child(argv: list[str], timeout: float = 600.0) -> ChildRun:
    """Run a command to completion under /usr/bin/time (for its peak RSS) and reap it with wait4.

    Peak RSS comes from /usr/bin/time, not from wait4's ru_maxrss: a child spawned by (v)fork from this
    big Python process inherits this process's RSS high-water mark across exec, so ru_maxrss here would report
    the benchmark's own size. /usr/bin/time is a few hundred KiB, so its child's figure is the child's own.
    rchar is the delta of /proc/self/io around the reap (the kernel adds a reaped child's counters to ours).
    """
    out = tempfile.TemporaryFile()
    with tempfile.NamedTemporaryFile(prefix="sw-bench-time-") as rss_file:
        before = _own_rchar()
        started = time.monotonic()
        proc = subprocess.Popen([TIME, "-f", "%M", "-o", rss_file.name, *argv], stdout=out,
                                stderr=subprocess.STDOUT, cwd=REPO)
        timer = threading.Timer(timeout, proc.kill)
        timer.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        finally:
            timer.cancel()
        seconds = time.monotonic() - started
        rchar = _own_rchar() - before
        proc.returncode = os.waitstatus_to_exitcode(status)
        maxrss_kib = int(Path(rss_file.name).read_text().split()[-1])
    out.seek(0)
    text = out.read().decode("utf-8", "replace")
    out.close()
    return ChildRun(seconds, maxrss_kib * 1024, usage.ru_utime + usage.ru_stime, rchar, proc.returncode, text)


def upload_argv(path: Path, config: Path) -> list[str]:
    return [STUDIO_WATCH, "upload", str(path), "-c", str(config), "--collection", "1", "--force"]  # .bin names


# -- daemons ------------------------------------------------------------------------------------------------------

class Daemon:
    """`studio-watch run` as a child; JSON log lines (stderr) collected by a reader thread."""

    def __init__(self, config: Path, capture: bool = True) -> None:
        """With capture=False the log goes to `daemon.log` beside the config and nothing here parses it."""
        self.log_file = None if capture else open(config.parent / "daemon.log", "wb")
        self.started = time.monotonic()
        self.proc = subprocess.Popen([STUDIO_WATCH, "run", "-c", str(config)], cwd=REPO,
                                     stdout=subprocess.DEVNULL, stderr=self.log_file or subprocess.PIPE)
        self.events: list[dict[str, Any]] = []
        self.cond = threading.Condition()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        if self.proc.stderr is None:
            return
        for raw in self.proc.stderr:
            try:
                event = json.loads(raw)
            except ValueError:
                event = {"event": "raw", "line": raw.decode("utf-8", "replace").rstrip()}
            event["_t"] = time.monotonic()
            with self.cond:
                self.events.append(event)
                self.cond.notify_all()

    def wait_event(self, name: str | tuple[str, ...], count: int = 1, timeout: float = 60.0) -> list[dict[str, Any]]:
        """The first `count` events called `name` (or any of the names); raises if they do not come in time."""
        names = (name,) if isinstance(name, str) else name

        def seen() -> list[dict[str, Any]]:
            return [e for e in self.events if e.get("event") in names]

        with self.cond:
            self.cond.wait_for(lambda: len(seen()) >= count or self.proc.poll() is not None, timeout)
            found = seen()
        if len(found) < count:
            raise RuntimeError(f"daemon: {count}x {name} not seen in {timeout}s; last lines: {self.tail()}")
        return found[:count]

    def tail(self, n: int = 5) -> str:
        with self.cond:
            return " | ".join(json.dumps(e)[:300] for e in self.events[-n:])

    def status(self) -> dict[str, str]:
        """/proc/PID/status as a dict (VmHWM, VmRSS, Threads, ...)."""
        text = Path(f"/proc/{self.proc.pid}/status").read_text()
        return {k: v.strip() for k, _, v in (line.partition(":") for line in text.splitlines())}

    def rss_bytes(self, key: str = "VmHWM") -> int:
        return int(self.status()[key].split()[0]) * 1024

    def cpu_seconds(self) -> float:
        """utime + stime of the whole process, from /proc/PID/stat."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> int | None:
        code = stop_process(self.proc)
        self.reader.join(timeout=5)
        if self.log_file is not None:
            self.log_file.close()
        return code


def median(values: list[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100)."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), int(-(-p * len(ordered) // 100))))
    return ordered[rank - 1]
