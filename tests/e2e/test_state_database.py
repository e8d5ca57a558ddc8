"""The state database lost, emptied, damaged, unreadable or on a full disk: one clear line, never a traceback,
never a second upload of a kept file, and a full disk waited out with the process up."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
from pathlib import Path

import pytest

from ..conftest import run_cli, wait_until, write_config, write_media


def one_line_error(done: subprocess.CompletedProcess[str], *words: str) -> str:
    err = done.stderr.strip()
    assert done.returncode == 1, (done.returncode, done.stdout, err)
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    for word in words:
        assert word in err, err
    return err


def service_setup(open_tmp: Path, sandbox, service_account, recorder_account, **top) -> Path:
    """A config whose state directory and token belong to the daemon's user; recordings belong to the
    recorder, with an ACL granting the daemon read and write (as docs/operations.md sets it up)."""
    config = write_config(open_tmp, sandbox.url, [{"path": "in", "settle_seconds": 0.05}],
                          state_db="state/state.db", **top)
    state = open_tmp / "state"
    state.mkdir(mode=0o700)
    service_account.chown(state, open_tmp / "token", config)
    inbox = open_tmp / "in"
    recorder_account.chown(inbox)
    subprocess.run(["setfacl", "-m", f"u:{service_account.name}:rwx", "-m", f"d:u:{service_account.name}:rw",
                    str(inbox)], check=True)
    return config


def recording(inbox: Path, name: str, size: int, seed: int, recorder) -> Path:
    path = write_media(inbox / name, size, seed=seed)
    recorder.chown(path)
    return path


def test_database_deleted_while_running_stops_the_daemon_and_is_not_taken_for_a_first_start(
        open_tmp, sandbox, daemons, service_account, recorder_account):
    config = service_setup(open_tmp, sandbox, service_account, recorder_account)
    inbox, db = open_tmp / "in", open_tmp / "state" / "state.db"
    for n in range(8):
        recording(inbox, f"talk{n}.mp4", 2000 + n, 50 + n, recorder_account)
    subprocess.run(["setfacl", "-m", f"u:{service_account.name}:rw", *map(str, inbox.iterdir())], check=True)
    readonly = recording(inbox, "readonly.mp4", 3333, 70, recorder_account)
    readonly.chmod(0o644)  # the daemon may read but not write this one: no mark can be set on it
    daemon = daemons(config, user=service_account)
    daemon.wait_ready()
    assert sandbox.wait_for(lambda: len(sandbox.completed()) == 9, 30), daemon.output()
    assert daemon.wait_event("upload_mark_skipped", 10), daemon.output()

    db.unlink()  # a botched cleanup, a lost volume
    assert daemon.proc.wait(timeout=15) == 1, daemon.output()
    assert daemon.wait_event("state_db_replaced", 1)
    assert "Traceback" not in daemon.output()

    # Restarted (as systemd would): refused with one line, and so is `status`, until the operator decides.
    again = run_cli("run", "-c", str(config), user=service_account)
    one_line_error(again, str(db), "--new-database")
    one_line_error(run_cli("status", "-c", str(config), user=service_account), "--new-database")
    assert not db.exists() or db.stat().st_size == 0

    # A new database on purpose: the kept files carry their marks, so none is uploaded again; the one that
    # could not be marked is (the documented residual risk).
    fresh = daemons(config, user=service_account, args=("--new-database",))
    fresh.wait_ready()
    assert fresh.wait_event("job_skipped", 20, count=8), fresh.output()
    skipped = [e for e in fresh.events if e.get("event") == "job_skipped"]
    assert {e["reason"] for e in skipped} == {"already_uploaded"}
    assert sandbox.wait_for(lambda: len(sandbox.completed()) == 10, 20), fresh.output()
    assert sorted(m["title"] for m in sandbox.completed()).count("readonly") == 2
    status = json.loads(run_cli("status", "--json", "-c", str(config), user=service_account).stdout)
    assert status["jobs"]["skipped"] == 8 and status["jobs"]["completed"] == 1
    assert fresh.stop() == 0


@pytest.mark.parametrize("emptied", ["truncated", "deleted"])
def test_blank_database_with_traces_of_an_earlier_one_is_refused(tmp_path, sandbox, daemons, emptied):
    config = write_config(tmp_path, sandbox.url, [{"path": "in", "settle_seconds": 0.05}])
    write_media(tmp_path / "in" / "kept.mp4", 2000, seed=1)
    daemon = daemons(config)
    daemon.wait_ready()
    assert sandbox.wait_for(lambda: len(sandbox.completed()) == 1, 20)
    daemon.kill()  # leaves its -wal and -shm
    db = tmp_path / "state.db"
    assert Path(str(db) + "-wal").exists()
    if emptied == "truncated":
        db.write_bytes(b"")
    else:
        db.unlink()
    for args in (("run",), ("status",), ("jobs",)):
        one_line_error(run_cli(*args, "-c", str(config)), str(db), "--new-database")
    assert len(sandbox.completed()) == 1


def test_state_directory_that_does_not_exist_is_created_0700(tmp_path, sandbox, daemons):
    config = write_config(tmp_path, sandbox.url, [{"path": "in", "settle_seconds": 0.05}],
                          state_db="var/lib/studio-watch/state.db")
    daemon = daemons(config)
    daemon.wait_ready()
    state = tmp_path / "var" / "lib" / "studio-watch"
    assert state.stat().st_mode & 0o777 == 0o700
    assert daemon.stop() == 0


def _corrupt_header(db: Path) -> None:
    with open(db, "r+b") as f:
        f.write(b"this is not sqlite at all")


def _corrupt_page(db: Path) -> None:
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    page = conn.execute("PRAGMA page_size").fetchone()[0]
    root = conn.execute("SELECT rootpage FROM sqlite_master WHERE name = 'jobs'").fetchone()[0]
    conn.close()
    with open(db, "r+b") as f:
        f.seek((root - 1) * page)
        f.write(os.urandom(page))


@pytest.mark.parametrize("damage", [_corrupt_header, _corrupt_page], ids=["bad header", "garbage page"])
def test_damaged_database_is_refused_with_one_line(tmp_path, sandbox, daemons, damage):
    config = write_config(tmp_path, sandbox.url, [{"path": "in", "settle_seconds": 0.05}])
    for n in range(20):
        write_media(tmp_path / "in" / f"f{n}.mp4", 1000 + n, seed=n + 1)
    daemon = daemons(config)
    daemon.wait_ready()
    assert sandbox.wait_for(lambda: len(sandbox.completed()) == 20, 30)
    assert daemon.stop() == 0
    db = tmp_path / "state.db"
    damage(db)
    one_line_error(run_cli("run", "-c", str(config)), str(db), "restore")
    status = run_cli("status", "-c", str(config))
    assert status.returncode == 1 and "Traceback" not in status.stderr and str(db) in status.stderr, status.stderr


def test_unreadable_database_and_state_directory_are_one_line(open_tmp, sandbox, daemons, service_account):
    config = write_config(open_tmp, sandbox.url, [{"path": "in", "settle_seconds": 0.05}], state_db="state/state.db")
    daemon = daemons(config)
    daemon.wait_ready()
    assert daemon.stop() == 0
    state, db = open_tmp / "state", open_tmp / "state" / "state.db"
    os.chmod(config, 0o644)
    os.chmod(open_tmp / "token", 0o600)
    service_account.chown(open_tmp / "token")
    state.chmod(0o700)  # root's: `status` by another user cannot look inside
    one_line_error(run_cli("status", "-c", str(config), user=service_account), str(db))
    state.chmod(0o755)
    db.chmod(0o000)
    one_line_error(run_cli("status", "-c", str(config), user=service_account), str(db), "0600")
    one_line_error(run_cli("run", "-c", str(config), user=service_account), str(db))


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")
def test_full_disk_under_the_database_pauses_the_queue_and_resumes(open_tmp, sandbox, daemons, service_account):
    state = open_tmp / "state"
    state.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m,mode=0700", "tmpfs", str(state)], check=True)
    daemon = None
    try:
        service_account.chown(state)
        config = write_config(open_tmp, sandbox.url, [{"path": "in", "settle_seconds": 0.05}],
                              state_db="state/state.db")
        service_account.chown(open_tmp / "token", open_tmp / "in")
        daemon = daemons(config, user=service_account)
        daemon.wait_ready()
        filler = state / "filler"
        with open(filler, "wb", buffering=0) as f:  # fill the disk to the last byte
            for block in (65536, 512):
                try:
                    while True:
                        f.write(b"\0" * block)
                except OSError:
                    pass
        for n in range(8):
            write_media(open_tmp / "in" / f"r{n}.mp4", 1500 + n, seed=90 + n)
        assert daemon.wait_event("queue_paused", 30), daemon.output()
        paused = next(e for e in daemon.events if e.get("event") == "queue_paused")
        assert paused.get("cause") == "state_db_full" and "state.db" in paused["reason"]
        assert wait_until(lambda: False, 3.0) is False
        assert daemon.proc.poll() is None, daemon.output()  # still up, waiting for space
        filler.unlink()
        assert daemon.wait_event("queue_resumed", 60), daemon.output()
        assert sandbox.wait_for(lambda: len(sandbox.completed()) == 8, 60), daemon.output()
        hashes = [m["content_sha256"] for m in sandbox.completed()]
        assert len(set(hashes)) == 8  # each once
        assert daemon.stop() == 0
        assert "Traceback" not in daemon.output()
    finally:
        if daemon is not None and daemon.proc.poll() is None:
            daemon.kill()  # before the unmount: its open database keeps the mount busy
        subprocess.run(["umount", str(state)], capture_output=True)
        shutil.rmtree(state, ignore_errors=True)
