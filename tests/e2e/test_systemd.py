"""The systemd units (verify, security exposure) and the sd_notify protocol spoken by the real daemon.

systemd is not PID 1 on every machine that runs these tests, so nothing here starts a unit: the notify tests
play systemd's part (a datagram socket in $NOTIFY_SOCKET, $WATCHDOG_USEC), and the hardening test applies
the unit's kernel-level restrictions to the daemon itself (seccomp allow-list, empty capability bounding set,
no_new_privs, W^X, a read-only root and a pid-only /proc).
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from pathlib import Path
from typing import Iterator

import pytest

from studio_watch import config as cfg
from studio_watch.daemon.app import Daemon
from studio_watch.cli.demo import write_demo_config
from studio_watch.sandbox.server import Sandbox
from studio_watch.files.watcher import Watcher

from ..conftest import TOKEN, wait_until, write_media

REPO = Path(__file__).resolve().parents[2]
UNITS = REPO / "systemd"
MAX_EXPOSURE = 2.0
needs_analyze = pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not on PATH")


# -- reading the unit files ---------------------------------------------------------------------------------

def unit_settings(path: Path) -> dict[str, list[str]]:
    """`Key` → every value it is given (systemd allows repeats), across all sections; comments dropped."""
    settings: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        key, _, value = line.partition("=")
        settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def seconds(value: str) -> float:
    """A systemd time span such as "45", "45s", "10min" in seconds."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*(s|sec|min|m)?", value)
    assert match, value
    number = float(match.group(1))
    return number * 60 if match.group(2) in ("min", "m") else number


def runnable_copy(unit: Path, dest: Path) -> Path:
    """A copy of `unit` in `dest` whose ExecStart binary exists here (verify checks that it is executable)."""
    binary = shutil.which("studio-watch") or str(Path(sys.executable).parent / "studio-watch")
    if not os.access(binary, os.X_OK):
        binary = sys.executable
    text = unit.read_text().replace("/opt/studio-watch/venv/bin/studio-watch", binary)
    copy = dest / unit.name
    copy.write_text(text)
    return copy


@pytest.mark.parametrize("unit", ["studio-watch.service", "studio-watch@.service"])
def test_unit_declares_the_notify_protocol_and_hardening(unit: str) -> None:
    s = unit_settings(UNITS / unit)
    assert s["Type"] == ["notify"] and s["NotifyAccess"] == ["main"]
    assert s["Restart"] == ["on-failure"] and s["RestartPreventExitStatus"] == ["2"]
    assert seconds(s["WatchdogSec"][0]) >= 10
    assert seconds(s["TimeoutStopSec"][0]) >= 45  # the daemon joins its threads for up to 30 s
    config = "/etc/studio-watch/config.yaml" if unit == "studio-watch.service" else "/etc/studio-watch/%i.yaml"
    # synchronous: the command waits for the daemon's answer (not a bare kill -HUP, which returns at once)
    assert s["ExecReload"] == [f"/opt/studio-watch/venv/bin/studio-watch reload -c {config} --pid $MAINPID"]
    assert s["User"] == ["studio-watch"] and s["Group"] == ["studio-watch"]
    assert s["ProtectSystem"] == ["strict"] and s["ReadWritePaths"] == ["/srv/capture"]
    assert s["CapabilityBoundingSet"] == [""] and s["AmbientCapabilities"] == [""]
    assert s["RestrictAddressFamilies"] == ["AF_UNIX AF_INET AF_INET6"]
    assert s["SystemCallFilter"] == ["@system-service", "~@privileged @resources"]
    assert s["ProtectProc"] == ["invisible"] and s["ProcSubset"] == ["pid"] and s["UMask"] == ["0077"]
    for flag in ("NoNewPrivileges", "PrivateTmp", "PrivateDevices", "ProtectKernelTunables", "ProtectKernelModules",
                 "ProtectKernelLogs", "ProtectControlGroups", "ProtectClock", "ProtectHostname", "ProtectHome",
                 "RestrictNamespaces", "RestrictRealtime", "RestrictSUIDSGID", "LockPersonality", "PrivateUsers",
                 "RemoveIPC", "MemoryDenyWriteExecute"):
        assert s[flag] == ["yes"], flag
    assert "IPAddressDeny" not in s and "IPAddressAllow" not in s  # Studio is remote: see the comment
    if unit == "studio-watch.service":
        assert s["ExecStart"] == ["/opt/studio-watch/venv/bin/studio-watch run -c /etc/studio-watch/config.yaml"]
        assert s["StateDirectory"] == ["studio-watch"] and s["LoadCredential"] == ["token:/etc/studio-watch/token"]
    else:
        assert s["ExecStart"] == ["/opt/studio-watch/venv/bin/studio-watch run -c /etc/studio-watch/%i.yaml"]
        assert s["StateDirectory"] == ["studio-watch/%i"]
        assert s["LoadCredential"] == ["token:/etc/studio-watch/%i.token"]


@needs_analyze
@pytest.mark.parametrize("unit,name", [("studio-watch.service", "studio-watch.service"),
                                       ("studio-watch@.service", "studio-watch@room101.service")])
def test_units_verify_clean(tmp_path: Path, unit: str, name: str) -> None:
    runnable_copy(UNITS / unit, tmp_path)
    result = subprocess.run(["systemd-analyze", "verify", name], cwd=tmp_path, capture_output=True, text=True,
                            timeout=60)
    ours = [line for line in (result.stdout + result.stderr).splitlines() if "studio-watch" in line]
    assert ours == [], "\n".join(ours)
    assert result.returncode == 0, result.stderr


@needs_analyze
@pytest.mark.parametrize("unit,name", [("studio-watch.service", "studio-watch.service"),
                                       ("studio-watch@.service", "studio-watch@room101.service")])
def test_units_security_exposure(tmp_path: Path, unit: str, name: str) -> None:
    shutil.copy(UNITS / unit, tmp_path / unit)
    result = subprocess.run(["systemd-analyze", "security", "--offline=true", "--no-pager", name], cwd=tmp_path,
                            capture_output=True, text=True, timeout=60)
    match = re.search(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)", result.stdout)
    assert match, result.stdout + result.stderr
    assert float(match.group(1)) <= MAX_EXPOSURE, result.stdout


# -- playing systemd's part ---------------------------------------------------------------------------------

class NotifySocket:
    """A bound AF_UNIX datagram socket collecting sd_notify messages, as systemd's notify socket does."""

    def __init__(self, address: str) -> None:
        """Bind `address` (a path, or "@name" for the abstract namespace) and start collecting."""
        self.address = address
        self.messages: list[tuple[float, str]] = []
        self._cond = threading.Condition()
        self._closed = threading.Event()
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind("\0" + address[1:] if address.startswith("@") else address)
        self.sock.settimeout(0.2)
        self._thread = threading.Thread(target=self._receive, daemon=True)
        self._thread.start()

    def _receive(self) -> None:
        """One datagram may hold several newline-separated assignments."""
        while not self._closed.is_set():
            try:
                data = self.sock.recv(4096)
            except socket.timeout:
                continue
            except OSError:
                return
            with self._cond:
                now = time.monotonic()
                self.messages.extend((now, line) for line in data.decode().splitlines() if line)
                self._cond.notify_all()

    def wait_for(self, message: str, timeout: float) -> float | None:
        """The monotonic time `message` first arrived, waiting up to `timeout` seconds for it."""
        def first() -> float | None:
            return next((t for t, m in self.messages if m == message), None)

        with self._cond:
            self._cond.wait_for(lambda: first() is not None, timeout)
            return first()

    def count(self, message: str, since: float, until: float) -> int:
        """How many times `message` arrived in [since, until]."""
        with self._cond:
            return sum(1 for t, m in self.messages if m == message and since <= t <= until)

    def close(self) -> None:
        """Stop collecting and unbind."""
        self._closed.set()
        self._thread.join(timeout=2)
        self.sock.close()


@pytest.fixture
def sandbox_studio() -> Iterator[Sandbox]:
    with Sandbox() as sb:
        yield sb


def notify_address(kind: str, tmp_path: Path) -> str:
    """A socket path (short: sun_path holds 108 bytes) or an abstract name."""
    if kind == "abstract":
        return f"@studio-watch-test-{uuid.uuid4().hex}"
    return str(tmp_path / "notify.sock")


@pytest.mark.parametrize("kind", ["path", "abstract"])
def test_real_daemon_speaks_sd_notify(tmp_path: Path, sandbox_studio: Sandbox, kind: str) -> None:
    """READY=1 after startup, WATCHDOG=1 every WATCHDOG_USEC/2, STOPPING=1 on SIGTERM, then exit 0."""
    config = write_demo_config(tmp_path, sandbox_studio.url, TOKEN)
    notify = NotifySocket(notify_address(kind, tmp_path))
    env = {**os.environ, "NOTIFY_SOCKET": notify.address, "WATCHDOG_USEC": "400000"}  # a ping every 0.2 s
    env.pop("WATCHDOG_PID", None)
    proc = subprocess.Popen([sys.executable, "-m", "studio_watch", "run", "-c", str(config)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        ready = notify.wait_for("READY=1", timeout=20)
        assert ready is not None, f"no READY=1; got {notify.messages}"
        assert wait_until(lambda: notify.count("WATCHDOG=1", ready, time.monotonic()) >= 6, 10), notify.messages
        assert any(m.startswith("STATUS=") for _, m in notify.messages)
        proc.send_signal(signal.SIGTERM)
        assert notify.wait_for("STOPPING=1", timeout=10) is not None, notify.messages
        out, _ = proc.communicate(timeout=45)
        assert proc.returncode == 0, out.decode(errors="replace")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        notify.close()


# -- health and the watchdog --------------------------------------------------------------------------------

def _daemon_with_threads(tmp_path: Path, sandbox_url: str) -> Daemon:
    """A Daemon that has not run: a real (unstarted) Watcher and no worker threads yet."""
    config = cfg.load(write_demo_config(tmp_path, sandbox_url, TOKEN))
    daemon = Daemon(config)
    daemon.watcher = Watcher(config.folders, config.observer, config.rescan_seconds, lambda found, scan: None,
                             daemon.stop)
    return daemon


def test_healthy_is_false_when_a_worker_thread_is_dead(tmp_path: Path) -> None:
    daemon = _daemon_with_threads(tmp_path, "http://127.0.0.1:9")
    release = threading.Event()
    alive = threading.Thread(target=release.wait, daemon=True)
    alive.start()
    daemon.threads.append(alive)
    assert daemon.healthy() is True
    dead = threading.Thread(target=lambda: None)
    dead.start()
    dead.join()
    daemon.threads.append(dead)
    assert daemon.healthy() is False
    release.set()


def test_watchdog_pings_stop_when_a_worker_dies(tmp_path: Path, sandbox_studio: Sandbox,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """The daemon in-process: once a thread it watches is dead it stops WATCHDOG=1, so systemd restarts it."""
    notify = NotifySocket(notify_address("abstract", tmp_path))
    monkeypatch.setenv("NOTIFY_SOCKET", notify.address)
    monkeypatch.setenv("WATCHDOG_USEC", "400000")  # a ping every 0.2 s
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    daemon = Daemon(cfg.load(write_demo_config(tmp_path, sandbox_studio.url, TOKEN)))
    runner = threading.Thread(target=daemon.run, daemon=True)
    runner.start()
    try:
        assert notify.wait_for("READY=1", timeout=20) is not None
        assert notify.wait_for("WATCHDOG=1", timeout=5) is not None
        dead = threading.Thread(target=lambda: None, name="worker-crashed")
        dead.start()
        dead.join()
        daemon.threads.append(dead)  # as if a worker had died of an unexpected exception
        settled = notify.wait_for("never sent", timeout=0.5) or time.monotonic()  # one in-flight ping may land
        quiet_until = notify.wait_for("never sent", timeout=1.5) or time.monotonic()
        assert notify.count("WATCHDOG=1", settled, quiet_until) == 0
    finally:
        daemon.stop.set()
        runner.join(timeout=45)
        notify.close()
    assert not runner.is_alive()


# -- the unit's kernel restrictions, applied by hand --------------------------------------------------------

HARDEN = textwrap.dedent('''
    """Apply what studio-watch.service asks the kernel for, then exec the daemon (argv[2:]) as it would run."""
    import ctypes, errno, os, subprocess, sys

    rw, argv = sys.argv[1], sys.argv[2:]
    libc = ctypes.CDLL(None, use_errno=True)
    CLONE_NEWNS = 0x00020000
    if libc.unshare(CLONE_NEWNS) != 0:
        sys.exit(f"unshare: {os.strerror(ctypes.get_errno())}")
    def mount(*args):
        subprocess.run(["mount", *args], check=True)
    mount("--make-rprivate", "/")
    mount("-t", "proc", "-o", "hidepid=invisible,subset=pid", "proc", "/proc")  # ProtectProc=, ProcSubset=
    mount("--bind", rw, rw)                                                       # ReadWritePaths=
    mount("-o", "remount,bind,ro", "/")                                           # ProtectSystem=strict
    PR_CAPBSET_DROP, PR_SET_NO_NEW_PRIVS, PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN = 24, 38, 65, 1
    last_cap = 40
    while last_cap < 63 and libc.prctl(PR_CAPBSET_DROP, last_cap + 1, 0, 0, 0) == 0:
        last_cap += 1
    for cap in range(last_cap + 1):                                               # CapabilityBoundingSet=
        libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0)
    assert libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0                       # NoNewPrivileges=
    if libc.prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0) != 0:           # MemoryDenyWriteExecute=
        sys.exit(f"PR_SET_MDWE: {os.strerror(ctypes.get_errno())}")
    seccomp = ctypes.CDLL("libseccomp.so.2", use_errno=True)                      # SystemCallFilter=
    seccomp.seccomp_init.restype = ctypes.c_void_p
    seccomp.seccomp_rule_add.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint]
    seccomp.seccomp_load.argtypes = [ctypes.c_void_p]
    SCMP_ACT_ALLOW, SCMP_ACT_ERRNO_EPERM = 0x7FFF0000, 0x00050000 | errno.EPERM  # SystemCallErrorNumber=EPERM
    ctx = seccomp.seccomp_init(SCMP_ACT_ERRNO_EPERM)
    allowed = 0
    for name in os.environ.pop("HARDEN_SYSCALLS").split():
        number = seccomp.seccomp_syscall_resolve_name(name.encode())
        if number >= 0 and seccomp.seccomp_rule_add(ctx, SCMP_ACT_ALLOW, number, 0) == 0:
            allowed += 1
    assert allowed > 100, allowed
    if seccomp.seccomp_load(ctx) != 0:                                            # native arch only
        sys.exit("seccomp_load failed")
    os.execv(argv[0], argv)
''')


def syscall_set(group: str, seen: set[str] | None = None) -> set[str]:
    """The system calls in a systemd syscall group, nested groups expanded (systemd-analyze syscall-filter)."""
    seen = set() if seen is None else seen
    out = subprocess.run(["systemd-analyze", "syscall-filter", "--no-pager", group], capture_output=True, text=True,
                         check=True).stdout
    names: set[str] = set()
    for line in out.splitlines()[1:]:
        word = line.strip().split("#", 1)[0].strip()
        if not word:
            continue
        if word.startswith("@"):
            if word not in seen:
                seen.add(word)
                names |= syscall_set(word, seen)
        else:
            names.add(word)
    return names


@functools.lru_cache(maxsize=None)
def _can_harden() -> str | None:
    """Why the hardened run cannot happen here (None when it can)."""
    if os.geteuid() != 0:
        return "needs root (a mount namespace and a fresh /proc)"
    if shutil.which("systemd-analyze") is None or shutil.which("mount") is None:
        return "needs systemd-analyze and mount"
    if subprocess.run(["unshare", "--mount", "true"], capture_output=True).returncode != 0:
        return "cannot create a mount namespace here"
    try:
        import ctypes

        ctypes.CDLL("libseccomp.so.2")
    except OSError:
        return "libseccomp.so.2 not installed"
    probe = ("import ctypes,mmap,sys; libc=ctypes.CDLL(None); "
             "sys.exit(3) if libc.prctl(65, 1, 0, 0, 0) else None; "
             "mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)")
    if subprocess.run([sys.executable, "-c", probe], capture_output=True).returncode != 1:
        return "the kernel has no PR_SET_MDWE (Linux 6.3+) or it does not refuse W+X mappings"
    return None


@pytest.mark.slow
@pytest.mark.skipif(_can_harden() is not None, reason=str(_can_harden()))
def test_daemon_uploads_under_the_units_kernel_restrictions(tmp_path: Path, sandbox_studio: Sandbox) -> None:
    """seccomp @system-service minus @privileged @resources, no capabilities, no_new_privs, W^X, read-only
    root except the data folder, /proc with only pids: the daemon still starts, uploads, moves and stops."""
    allowed = syscall_set("@system-service") - syscall_set("@privileged") - syscall_set("@resources")
    harden = tmp_path / "harden.py"
    harden.write_text(HARDEN)
    root = tmp_path / "data"
    root.mkdir()
    config = write_demo_config(root, sandbox_studio.url, TOKEN)
    notify = NotifySocket(notify_address("abstract", tmp_path))
    env = {**os.environ, "NOTIFY_SOCKET": notify.address, "WATCHDOG_USEC": "1000000",
           "HARDEN_SYSCALLS": " ".join(sorted(allowed)), "PYTHONDONTWRITEBYTECODE": "1"}
    proc = subprocess.Popen([sys.executable, str(harden), str(root), sys.executable, "-m", "studio_watch", "run",
                             "-c", str(config)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        assert notify.wait_for("READY=1", timeout=30) is not None, _output(proc)
        write_media(root / "drop" / "hardened.mp4", 300_000, seed=7)
        assert sandbox_studio.wait_for(lambda: len(sandbox_studio.completed()) == 1, timeout=30), _output(proc)
        assert notify.wait_for("WATCHDOG=1", timeout=5) is not None
        # after_upload: move, inside the read-write path (Studio's confirmation comes first: wait for the move)
        assert wait_until(lambda: (root / "uploaded" / "hardened.mp4").exists(), 30), _output(proc)
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=45)
        assert proc.returncode == 0, out.decode(errors="replace")
        assert sandbox_studio.completed()[0]["bytes_received"] == 300_000
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        notify.close()


def _output(proc: subprocess.Popen[bytes]) -> str:
    """What a failed child printed (it is killed first)."""
    if proc.poll() is None:
        proc.kill()
    out, _ = proc.communicate(timeout=10)
    return out.decode(errors="replace")
