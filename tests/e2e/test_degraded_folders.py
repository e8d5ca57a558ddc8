"""A missing, vanishing or unmounted watched folder, and two daemons on one folder: the rest keeps uploading,
the folder is reported everywhere, and it is picked up again by itself."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from ..conftest import run_cli, wait_until, write_config, write_media


def status_json(config: Path) -> dict:
    done = run_cli("status", "--json", "-c", str(config))
    data = json.loads(done.stdout)
    assert done.returncode == (3 if data["attention"] else 0), done.stderr  # 3: something needs a person
    return data


def folder_entry(config: Path, path: Path) -> dict:
    return next(f for f in status_json(config)["folders"] if f["path"] == str(path))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url: str) -> tuple[int, str]:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


class NotifySocket:
    """A stand-in for systemd's $NOTIFY_SOCKET: collects the daemon's datagrams."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        os.chmod(path, 0o777)
        self.sock.settimeout(0.2)
        self.messages: list[str] = []

    def drain(self) -> list[str]:
        while True:
            try:
                self.messages.append(self.sock.recv(65536).decode())
            except (socket.timeout, BlockingIOError):
                return self.messages

    def has(self, text: str) -> bool:
        return any(text in m for m in self.drain())


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_missing_folder_degrades_then_is_picked_up(tmp_path, sandbox, daemons):
    port = free_port()
    alerts = tmp_path / "alerts.jsonl"
    hook = tmp_path / "hook.sh"
    hook.write_text(f"#!/bin/sh\ncat >> {alerts}\necho >> {alerts}\n")
    hook.chmod(0o755)
    config = write_config(tmp_path, sandbox.url, [{"path": "present", "settle_seconds": 0.05},
                                                  {"path": "late", "settle_seconds": 0.05}],
                          metrics={"listen": f"127.0.0.1:{port}"},
                          notify={"command": str(hook), "folder_missing_after_seconds": 1})
    late = tmp_path / "late"
    late.rmdir()  # a network mount that is not there yet
    notify = NotifySocket(tmp_path / "notify.sock")
    write_media(tmp_path / "present" / "a.mp4", 3000, seed=1)
    daemon = daemons(config, env={"NOTIFY_SOCKET": str(notify.path)})
    daemon.wait_ready()
    assert daemon.wait_event("folder_missing"), daemon.output()
    assert sandbox.wait_for(lambda: len(sandbox.completed()) == 1, 20), daemon.output()

    # Reported everywhere: status (JSON and human), /healthz detail, metrics, the STATUS= line, an alert.
    assert wait_until(lambda: folder_entry(config, late)["available"] is False, 15)
    entry = folder_entry(config, late)
    assert entry["unavailable_reason"] == "missing"
    human = run_cli("status", "-c", str(config))
    assert human.returncode == 3 and f"{late}" in human.stdout and "UNAVAILABLE" in human.stdout, human.stdout
    assert f"NEEDS ATTENTION: folder unavailable (missing): {late}" in human.stdout, human.stdout
    code, body = get(f"http://127.0.0.1:{port}/healthz")
    assert code == 200 and f"degraded: folder {late} missing" in body, body
    _, metrics = get(f"http://127.0.0.1:{port}/metrics")
    assert f'studio_watch_folder_available{{folder="{late}"}} 0.0' in metrics
    assert f'studio_watch_folder_available{{folder="{tmp_path / "present"}"}} 1.0' in metrics
    assert wait_until(lambda: notify.has(f"folder {late} missing"), 15), notify.messages
    assert wait_until(lambda: alerts.exists() and "folder_unavailable" in alerts.read_text(), 15)

    # Nothing else refuses because of it; `check` does, naming the folder.
    for args in (("jobs",), ("retry", "--failed"), ("health",)):
        done = run_cli(*args, "-c", str(config))
        assert done.returncode == 0, (args, done.stderr)
    health = run_cli("health", "-c", str(config))
    assert f"folder {late} missing" in health.stderr
    check = run_cli("check", "-c", str(config))
    assert check.returncode == 1 and f"{late} does not exist" in check.stdout, check.stdout

    # The mount arrives: watched and scanned at once, no restart.
    late.mkdir()
    write_media(late / "b.mp4", 4000, seed=2)
    assert daemon.wait_event("folder_available", 10), daemon.output()
    assert sandbox.wait_for(lambda: len(sandbox.completed()) == 2, 20), daemon.output()
    assert wait_until(lambda: alerts.exists() and "folder_available" in alerts.read_text(), 15)
    assert wait_until(lambda: folder_entry(config, late)["available"] is True, 15)
    assert daemon.stop() == 0
    assert "Traceback" not in daemon.output()


def test_no_folders_or_a_file_as_folder_are_config_errors(tmp_path, sandbox):
    config = write_config(tmp_path, sandbox.url, [])
    done = run_cli("run", "-c", str(config))
    assert done.returncode == 2 and "folders" in done.stderr and "Traceback" not in done.stderr
    (tmp_path / "file").write_text("x")
    config = write_config(tmp_path, sandbox.url, [{"path": "in"}])
    text = config.read_text().replace("path: in", f"path: {tmp_path / 'file'}")
    config.write_text(text)
    done = run_cli("status", "-c", str(config))
    assert done.returncode == 2 and "folders[0].path: not a directory" in done.stderr


def test_folder_removed_while_running_is_reported_without_a_busy_loop(tmp_path, sandbox, daemons):
    config = write_config(tmp_path, sandbox.url, [{"path": "a", "settle_seconds": 0.05},
                                                  {"path": "b", "settle_seconds": 0.05, "recursive": True}])
    (tmp_path / "b" / "sub").mkdir()
    daemon = daemons(config)
    daemon.wait_ready()
    shutil.rmtree(tmp_path / "b")
    assert daemon.wait_event("folder_missing", 10), daemon.output()
    before = cpu_seconds(daemon.proc.pid)
    write_media(tmp_path / "a" / "still.mp4", 2000, seed=3)
    assert sandbox.wait_for(lambda: len(sandbox.completed()) == 1, 20), daemon.output()
    assert wait_until(lambda: False, 2.0) is False  # let it idle two seconds with the folder gone
    assert cpu_seconds(daemon.proc.pid) - before < 1.0, "busy loop while a folder is missing"
    (tmp_path / "b" / "deep").mkdir(parents=True)
    write_media(tmp_path / "b" / "deep" / "back.mp4", 2500, seed=4)
    assert sandbox.wait_for(lambda: len(sandbox.completed()) == 2, 20), daemon.output()
    assert daemon.stop() == 0
    assert "Traceback" not in daemon.output()


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")
def test_unmounted_share_is_unavailable_and_remount_is_picked_up(tmp_path, sandbox, daemons):
    config = write_config(tmp_path, sandbox.url, [{"path": "share", "settle_seconds": 0.05},
                                                  {"path": "local", "settle_seconds": 0.05}])
    share = tmp_path / "share"
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(share)], check=True)
    try:
        daemon = daemons(config)
        daemon.wait_ready()
        write_media(share / "one.mp4", 2000, seed=5)
        assert sandbox.wait_for(lambda: len(sandbox.completed()) == 1, 20), daemon.output()
        # The daemon holds nothing open in the share: it can be unmounted while the daemon runs.
        subprocess.run(["umount", str(share)], check=True)
        assert daemon.wait_event("folder_unavailable", 10), daemon.output()
        assert wait_until(lambda: "not mounted" in (folder_entry(config, share)["unavailable_reason"] or ""), 15)
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(share)], check=True)
        write_media(share / "two.mp4", 2100, seed=6)
        assert daemon.wait_event("folder_available", 10), daemon.output()
        assert sandbox.wait_for(lambda: len(sandbox.completed()) == 2, 20), daemon.output()
        assert daemon.stop() == 0
        assert "Traceback" not in daemon.output()
    finally:
        subprocess.run(["umount", str(share)], capture_output=True)


def two_daemons_on_one_folder(tmp_path: Path, sandbox, daemons, *own: dict[str, Any]) -> tuple[Path, Path, Any, Any]:
    """Daemon a watching tmp_path/shared (its state in one/), then daemon b (in two/, with `own` folders besides),
    which finds the folder held by a. Returns the shared folder, b's config, a and b."""
    shared = tmp_path / "shared"
    configs = []
    for name, more in (("one", ()), ("two", own)):
        (tmp_path / name).mkdir()
        configs.append(write_config(tmp_path / name, sandbox.url,
                                    [{"path": str(shared), "settle_seconds": 0.05}, *more]))
    a = daemons(configs[0])
    a.wait_ready()
    b = daemons(configs[1])
    b.wait_ready()
    assert b.wait_event("folder_held_elsewhere", 10), b.output()
    return shared, configs[1], a, b


def test_second_daemon_refuses_a_folder_held_by_the_first_and_takes_it_over(tmp_path, sandbox, daemons):
    shared, second, a, b = two_daemons_on_one_folder(tmp_path, sandbox, daemons,
                                                     {"path": "own", "settle_seconds": 0.05})
    first_dir, second_dir = tmp_path / "one", tmp_path / "two"
    held = next(e for e in b.events if e.get("event") == "folder_held_elsewhere")
    assert f"pid {a.proc.pid}" in held["reason"] and str(first_dir / "state.db") in held["reason"]
    for n in range(4):
        write_media(shared / f"s{n}.mp4", 1500 + n, seed=10 + n)
    write_media(second_dir / "own" / "mine.mp4", 1800, seed=20)
    assert sandbox.wait_for(lambda: len(sandbox.completed()) == 5, 20), a.output() + b.output()
    entry = next(f for f in status_json(second)["folders"] if f["path"] == str(shared))
    assert entry["available"] is False and f"pid {a.proc.pid}" in entry["unavailable_reason"]
    assert a.stop() == 0
    assert b.wait_event("folder_available", 10), b.output()
    write_media(shared / "after.mp4", 1700, seed=30)
    assert sandbox.wait_for(lambda: len(sandbox.completed()) == 6, 20), b.output()
    assert wait_until(lambda: False, 1.0) is False
    assert len(sandbox.completed()) == 6  # every file once: none of the four was uploaded by both
    assert b.stop() == 0


def test_killed_holder_on_this_host_is_taken_over_at_once(tmp_path, sandbox, daemons):
    shared, _, a, b = two_daemons_on_one_folder(tmp_path, sandbox, daemons)
    a.kill()
    assert b.wait_event("folder_taken_over", 10), b.output()
    write_media(shared / "x.mp4", 1600, seed=40)
    assert sandbox.wait_for(lambda: len(sandbox.completed()) == 1, 20), b.output()
    assert b.stop() == 0
