"""Shared fixtures: a real sandbox Studio on loopback, config files, and the real `studio-watch` process."""

from __future__ import annotations

import json
import os
import pwd
import random
import signal
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import pytest
import yaml

from studio_watch.sandbox.server import Faults, Sandbox

TOKEN = "sandbox-token"


@pytest.fixture
def sandbox() -> Iterator[Sandbox]:
    with Sandbox(faults=Faults()) as sb:
        yield sb


@pytest.fixture
def sandbox_api(sandbox: Sandbox) -> Iterator[Any]:
    """An httpx client on the sandbox's API root, with the sandbox's bearer token; no sandbox bug at the end."""
    import httpx

    with httpx.Client(base_url=sandbox.api_url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=5) as client:
        yield client
    assert sandbox.errors() == []


def at_once(*calls: Callable[[], Any]) -> list[Any]:
    """Run each call in a thread of its own, all released together; what each returned, or the exception it raised."""
    barrier, outcomes = threading.Barrier(len(calls)), []

    def run(call: Callable[[], Any]) -> None:
        barrier.wait()
        try:
            outcomes.append(call())
        except Exception as exc:  # noqa: BLE001 - returned to the test, which asserts on it
            outcomes.append(exc)

    threads = [threading.Thread(target=run, args=(call,)) for call in calls]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    return outcomes


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


@dataclass(frozen=True)
class Account:
    """A local user the tests run a process as (the daemon's service user, a recorder that owns the files)."""

    name: str
    uid: int
    gid: int

    def popen_args(self) -> dict[str, Any]:
        """Keyword arguments for subprocess that run the child as this user, with no supplementary groups."""
        if self.uid == os.getuid():
            return {}
        return {"user": self.uid, "group": self.gid, "extra_groups": []}

    def chown(self, *paths: Path) -> None:
        for path in paths:
            os.chown(path, self.uid, self.gid)


def _account(name: str) -> Account:
    """The local user `name`, created (system user, no home, no login) when the suite runs as root."""
    if os.geteuid() != 0:
        pytest.skip(f"creating the test user {name!r} needs root (run as root, as CI is, to test as other users)")
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "--user-group", "--shell", "/usr/sbin/nologin",
                        name], check=True, capture_output=True)
        entry = pwd.getpwnam(name)
    account = Account(name, entry.pw_uid, entry.pw_gid)
    _let_reach(account, Path(sys.executable))  # the venv's own bin/python (a checkout in a 0700 mkdtemp folder)
    _let_reach(account, Path(sys.executable).resolve())  # the interpreter it links to
    _let_reach(account, Path(__file__).resolve())  # the checkout itself, not only the folders above it
    return account


def _let_reach(account: Account, path: Path) -> None:
    """Let `account` traverse to `path` (the interpreter may live under root's 0700 home): an ACL entry that
    grants that one user search permission on each closed ancestor, nothing more."""
    for parent in reversed(path.parents):
        mode = parent.stat().st_mode
        if mode & 0o001:
            continue
        if subprocess.run(["setfacl", "-m", f"u:{account.name}:x", str(parent)], capture_output=True).returncode:
            pytest.skip(f"{account.name} cannot reach {path} and setfacl (Debian's acl package) is missing")


@pytest.fixture(scope="session")
def service_account() -> Account:
    """The unprivileged user the daemon runs as in production (`User=studio-watch`): owns no recording."""
    return _account("sw-test-daemon")


@pytest.fixture(scope="session")
def recorder_account() -> Account:
    """Another unprivileged user: the recorder (or share) that writes and owns the recordings."""
    return _account("sw-test-recorder")


@pytest.fixture
def open_tmp() -> Iterator[Path]:
    """A temporary folder other users can reach (0711 under the system's temp dir), removed afterwards.

    Not under pytest's own base: pytest makes `/tmp/pytest-of-<user>` 0700 again whenever a session starts, which
    would cut a daemon running as the service user off its files in the middle of a test."""
    import shutil
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix="studio-watch-test-"))
    folder.chmod(0o711)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


class DaemonProcess:
    """`studio-watch run` as a real child process, its JSON log lines collected as they come.

    With `user`, the daemon runs as that account (as under the systemd unit), not as the test's root. `prefix`
    runs it under a wrapper command (e.g. `unshare` for a user namespace with its own limits)."""

    def __init__(self, config: Path, env: dict[str, str] | None = None, user: Account | None = None,
                 args: tuple[str, ...] = (), prefix: tuple[str, ...] = ()) -> None:
        self.config = config
        self.lines: list[str] = []
        self.events: list[dict[str, Any]] = []
        self._cond = threading.Condition()
        self.proc = subprocess.Popen(
            [*prefix, sys.executable, "-m", "studio_watch", "run", "-c", str(config), *args],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})},
            **(user.popen_args() if user else {}))
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

    def start(config: Path, env: dict[str, str] | None = None, user: Account | None = None,
              args: tuple[str, ...] = (), prefix: tuple[str, ...] = ()) -> DaemonProcess:
        d = DaemonProcess(config, env, user, args, prefix)
        started.append(d)
        return d

    yield start
    for d in started:
        if d.proc.poll() is None:
            d.proc.kill()
            d.proc.wait(timeout=10)


def run_cli(*args: str, input: str | None = None, timeout: float = 60,
            user: Account | None = None) -> subprocess.CompletedProcess[str]:
    """Run the real command line (as `user`, if given) and capture what it printed."""
    return subprocess.run([sys.executable, "-m", "studio_watch", *args], capture_output=True, text=True,
                          input=input, timeout=timeout, **(user.popen_args() if user else {}))


def write_media(path: Path, size: int, seed: int = 0) -> Path:
    """Write `size` pseudo-random bytes via a .part name and a rename (as a careful recorder would)."""
    part = path.with_name(path.name + ".part")
    rnd = random.Random(seed or zlib.crc32(path.name.encode()))  # the same bytes whatever PYTHONHASHSEED is
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


@pytest.fixture
def full_filesystem(tmp_path: Path) -> Iterator[Path]:
    """A folder on a tiny tmpfs of its own, filled to the last byte (ENOSPC for any write), or skip."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs (to fill a filesystem) needs root")
    mount = tmp_path / "full"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k,mode=0777", "tmpfs", str(mount)],
                      capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        fd = os.open(mount / "filler", os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            while os.write(fd, b"\0" * 4096):
                pass
        except OSError:
            pass
        finally:
            os.close(fd)
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def ical_event(uid: str, summary: str, start: Any, end: Any, rrule: str | None = None,
               exdates: tuple[Any, ...] = (), tzid: str | None = None) -> str:
    """One VEVENT: `start`/`end` are datetimes (aware ones in UTC are written with Z) or, with `tzid`, naive
    local times written as TZID=... (the way calendar servers export a room's timetable)."""
    def stamp(value: Any) -> str:
        if tzid:
            return f";TZID={tzid}:{value:%Y%m%dT%H%M%S}"
        if value.tzinfo is not None:
            value = value.astimezone(__import__("datetime").timezone.utc)
            return f":{value:%Y%m%dT%H%M%SZ}"
        return f":{value:%Y%m%dT%H%M%S}"

    lines = ["BEGIN:VEVENT", f"UID:{uid}", "DTSTAMP:20260101T000000Z", f"SUMMARY:{summary}",
             f"DTSTART{stamp(start)}", f"DTEND{stamp(end)}"]
    if rrule:
        lines.append(f"RRULE:{rrule}")
    lines += [f"EXDATE{stamp(x)}" for x in exdates]
    return "\r\n".join(lines + ["END:VEVENT"])


def write_calendar(path: Path, *events: str) -> Path:
    """An iCalendar file holding `events` (from ical_event), written whole by a rename."""
    text = "\r\n".join(["BEGIN:VCALENDAR", "VERSION:2.0", "PRODID:-//studio-watch tests//EN", *events,
                        "END:VCALENDAR"]) + "\r\n"
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.rename(path)
    return path


# -- a real PostgreSQL server, started by the suite ------------------------------------------------------------

def _pg_bin(name: str) -> str | None:
    import glob
    import shutil

    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)
    return candidates[0] if candidates else None


class PostgresServer:
    """A throwaway PostgreSQL cluster: initdb + pg_ctl into a temporary folder, listening on a Unix socket
    only. initdb refuses to run as root, so the server runs as the `postgres` system user (or a test user)."""

    def __init__(self, root: Path, account: Account | None) -> None:
        self.root, self.account = root, account
        self.data, self.sockets = root / "data", root / "sockets"
        self.initdb, self.pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
        self._n = 0

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(list(args), capture_output=True, text=True, timeout=120, check=check,
                              cwd=self.root, **(self.account.popen_args() if self.account else {}))

    def start_cluster(self) -> None:
        assert self.initdb and self.pg_ctl
        self.sockets.mkdir(mode=0o777)
        self.sockets.chmod(0o777)
        self.data.mkdir(mode=0o700)
        if self.account:
            self.account.chown(self.root, self.data, self.sockets)
        self._run(self.initdb, "-D", str(self.data), "-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-sync")
        self.start()

    def start(self) -> None:
        opts = (f"-c listen_addresses='' -k {self.sockets} -c fsync=off -c full_page_writes=off "
                "-c max_connections=200 -c shared_buffers=32MB")
        self._run(str(self.pg_ctl), "-D", str(self.data), "-l", str(self.root / "log"), "-w", "-t", "60",
                  "-o", opts, "start")

    def stop(self, mode: str = "fast") -> None:
        done = self._run(str(self.pg_ctl), "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop", check=False)
        if done.returncode and "Is server running?" not in done.stderr:
            raise AssertionError(f"pg_ctl stop failed: {done.stderr.strip()}")

    def restart(self, mode: str = "fast") -> None:
        self.stop(mode)
        self.start()

    def uri(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@/{database}?host={self.sockets}"

    def new_database(self) -> str:
        """A fresh, empty database; its URI."""
        import psycopg

        self._n += 1
        name = f"t{os.getpid()}_{self._n}"
        with psycopg.connect(self.uri(), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return self.uri(name)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """The suite's own PostgreSQL (skipped, saying why, where it cannot run)."""
    try:
        import psycopg  # noqa: F401
    except ImportError:
        pytest.skip("psycopg is not installed (pip install -e '.[test]')")
    if not (_pg_bin("initdb") and _pg_bin("pg_ctl")):
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) not found: install Debian's postgresql package")
    account: Account | None = None
    if os.geteuid() == 0:
        try:
            entry = pwd.getpwnam("postgres")
            account = Account("postgres", entry.pw_uid, entry.pw_gid)
        except KeyError:
            account = _account("sw-test-postgres")
    import shutil
    import tempfile

    # Outside pytest's 0700 base folder, which the server's own user could not enter.
    root = Path(tempfile.mkdtemp(prefix="studio-watch-pg-"))
    root.chmod(0o711)
    server = PostgresServer(root, account)
    try:
        server.start_cluster()
    except subprocess.CalledProcessError as exc:
        pytest.skip(f"could not start a PostgreSQL server: {exc.stderr.strip()[-300:]}")
    try:
        yield server
    finally:
        server.stop("immediate")
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def pg_uri(postgres_server: PostgresServer) -> str:
    """The URI of a fresh database on the suite's PostgreSQL."""
    return postgres_server.new_database()


@pytest.fixture(params=["sqlite", "postgresql"])
def state_db(request: pytest.FixtureRequest, tmp_path: Path) -> str | Path:
    """The contract fixture: every queue test runs against a SQLite file and a PostgreSQL database."""
    if request.param == "sqlite":
        return tmp_path / "state" / "queue.db"
    return request.getfixturevalue("pg_uri")


def drive(queue: Any, job_id: int, to: Any, **facts: Any) -> Any:
    """Carry a job to state `to` through the queue's named transitions, as the pipeline would (for tests that
    need jobs in given states). facts: media_id, upload_url, content_hash, reason, last_error, after_done."""
    from studio_watch.queue import Settled, State

    job = queue.get(job_id)
    if job.state is State.SETTLING:
        target = to if to in (State.READY, State.SKIPPED, State.FAILED) else State.READY
        extra = {k: facts[k] for k in ("reason", "last_error") if k in facts and target is not State.READY}
        assert queue.settle([Settled(job.id, job.identity, target, {"next_attempt_at": 0.0, **extra})])
        if target is to:
            return queue.get(job_id)
    job = queue.claim_id(job_id, "test-driver")
    assert job is not None, f"job {job_id} is claimed by someone else"
    now = time.time()
    if to is State.SKIPPED:
        assert queue.skip(job, facts.get("reason", "test"), facts.get("media_id"))
    elif to is State.FAILED:
        assert queue.fail(job, facts.get("last_error", "test failure"))
    elif to is State.READY:
        assert queue.release(job)
    else:
        if job.state is State.READY:
            assert queue.issue_url(job, facts.get("media_id", job_id), facts.get("upload_url", f"https://up/{job_id}"),
                                   now)
            job = queue.get(job_id)
        if to is not State.URL_ISSUED and job.state is State.URL_ISSUED:
            assert queue.mark_uploaded(job, facts.get("content_hash", f"hash-{job_id}"))
            job = queue.get(job_id)
        if to is State.COMPLETED:
            keep = facts.get("after_done", True)
            assert queue.complete(job, transcoding_status=None, at=now, release=keep)
            job = queue.get(job_id)
        if job.claimed_by is not None:
            assert queue.release(job)
    job = queue.get(job_id)
    assert job.state is to, (job.state, to)
    return job
