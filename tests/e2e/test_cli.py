"""The command line as users and scripts see it: exit codes, messages, `upload`, `retry`, `jobs`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from ..conftest import run_cli, wait_until, write_config, write_media


def broken(tmp_path: Path, sandbox_url: str, mutate) -> Path:
    path = write_config(tmp_path, sandbox_url, [{"path": "in"}])
    data = yaml.safe_load(path.read_text())
    mutate(data)
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize("mutate, key, words", [
    (lambda d: d.update(wrokers=3), "wrokers", "unknown key"),
    (lambda d: d["studio"].update(proxy="http://u:pw@proxy.example:3128"), "studio.proxy", "proxy_auth_file"),
    (lambda d: d["studio"].update(proxy_auth_file="nope"), "studio.proxy_auth_file", "studio.proxy"),
    (lambda d: d["folders"][0].update(collection_id="abc"), "folders[0].collection_id", "integer"),
    (lambda d: d["folders"][0].update(path="token"), "folders[0].path", "not a directory"),  # missing: not an error
    (lambda d: d["folders"][0].update(after_upload="move"), "folders[0].move_to", "required"),
    (lambda d: d["studio"].update(token_file=None, token_env="STUDIO_WATCH_TEST_UNSET"), "studio.token_env", "not set"),
    (lambda d: d["studio"].update(url="http://studio.example.edu"), "studio.url", "loopback"),
    (lambda d: d.update(workers=0), "workers", "greater than zero"),
])
def test_bad_config_exits_2_naming_file_and_key(tmp_path, sandbox, mutate, key, words):
    path = broken(tmp_path, sandbox.url, mutate)
    result = run_cli("run", "-c", str(path), timeout=30)
    assert result.returncode == 2, result.stderr
    assert str(path) in result.stderr and key in result.stderr and words in result.stderr
    assert "Traceback" not in result.stderr


def test_yaml_syntax_error_names_the_line(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("studio:\n  url: http://127.0.0.1:1\nfolders: [\n  - path: x\n")
    result = run_cli("run", "-c", str(path))
    assert result.returncode == 2 and "line" in result.stderr and str(path) in result.stderr


def test_loose_token_file_is_refused(tmp_path, sandbox):
    path = write_config(tmp_path, sandbox.url, [{"path": "in"}])
    (tmp_path / "token").chmod(0o644)
    result = run_cli("run", "-c", str(path))
    assert result.returncode == 2 and "chmod 600" in result.stderr


def test_missing_config_file_exits_2(tmp_path):
    result = run_cli("status", "-c", str(tmp_path / "nope.yaml"))
    assert result.returncode == 2 and "not found" in result.stderr


def test_config_from_environment_variable(tmp_path, sandbox):
    import os
    import subprocess
    import sys

    path = write_config(tmp_path, sandbox.url, [{"path": "in"}])
    result = subprocess.run([sys.executable, "-m", "studio_watch", "status", "--json"], capture_output=True,
                            text=True, env={**os.environ, "STUDIO_WATCH_CONFIG": str(path)})
    assert result.returncode == 0 and json.loads(result.stdout)["jobs"]["completed"] == 0


def test_upload_by_hand_without_daemon(tmp_path, sandbox):
    path = write_config(tmp_path, sandbox.url, [{"path": "in"}])
    f = write_media(tmp_path / "talk.mp4", 250_000, seed=1)
    result = run_cli("upload", str(f), "--collection", "3", "--title", "Guest talk", "-c", str(path))
    assert result.returncode == 0, result.stderr
    assert "as media" in result.stdout
    [media] = sandbox.completed()
    assert media["title"] == "Guest talk" and media["collection_id"] == 3 and media["bytes_received"] == 250_000
    again = run_cli("upload", str(f), "--collection", "3", "-c", str(path))
    assert again.returncode == 0 and "already uploaded" in again.stdout
    assert len(sandbox.completed()) == 1
    jobs = json.loads(run_cli("jobs", "--json", "--state", "completed", "-c", str(path)).stdout)
    assert [j["media_id"] for j in jobs] == [media["id"]]


def test_upload_by_hand_goes_through_a_running_daemon(tmp_path, sandbox, daemons):
    path = write_config(tmp_path, sandbox.url, [{"path": "in"}])
    daemon = daemons(path)
    daemon.wait_ready()
    f = write_media(tmp_path / "talk.mp4", 100_000, seed=2)
    result = run_cli("upload", str(f), "--user", "42", "-c", str(path))
    assert result.returncode == 0, result.stderr
    assert "daemon" in result.stderr
    assert any(e.get("event") == "upload_completed" for e in daemon.events)
    assert sandbox.completed()[0]["user_id"] == 42
    assert daemon.stop() == 0


def test_two_uploads_by_hand_at_once_both_finish(tmp_path):
    """The second waits for the first to let go of the queue, then uploads its own file (it used to wait for
    the first to upload it, as a daemon would, for ever)."""
    import subprocess
    import sys

    from studio_watch.daemon.lock import DaemonLock
    from studio_watch.sandbox.server import Faults, Sandbox

    with Sandbox(faults=Faults(put_bytes_per_second=1_000_000)) as slow:
        path = write_config(tmp_path, slow.url, [{"path": "in"}])
        first = write_media(tmp_path / "first.mp4", 1_500_000, seed=4)
        second = write_media(tmp_path / "second.mp4", 2000, seed=5)
        busy = subprocess.Popen([sys.executable, "-m", "studio_watch", "upload", str(first), "-c", str(path)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            assert wait_until(lambda: DaemonLock(tmp_path / "state.db").held_by_other() is not None, 20)
            result = run_cli("upload", str(second), "-c", str(path), timeout=60)
            assert result.returncode == 0, result.stderr
            assert "holds the queue" in result.stderr and "as media" in result.stdout
            assert busy.wait(timeout=30) == 0
        finally:
            if busy.poll() is None:
                busy.kill()
            busy.communicate()
        assert sorted(m["bytes_received"] for m in slow.completed()) == [2000, 1_500_000]


def test_run_waits_for_a_lone_upload_instead_of_exiting(tmp_path):
    """`run` exiting 1 while a hand upload works would, under systemd, restart it into its start limit."""
    import subprocess
    import sys

    from studio_watch.daemon.lock import DaemonLock
    from studio_watch.sandbox.server import Faults, Sandbox

    from ..conftest import DaemonProcess

    with Sandbox(faults=Faults(put_bytes_per_second=500_000)) as slow:
        path = write_config(tmp_path, slow.url, [{"path": "in", "settle_seconds": 0.05}])
        by_hand = write_media(tmp_path / "by-hand.mp4", 1_000_000, seed=7)
        upload = subprocess.Popen([sys.executable, "-m", "studio_watch", "upload", str(by_hand), "-c", str(path)],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        daemon = None
        try:
            assert wait_until(lambda: DaemonLock(tmp_path / "state.db").held_by_other() is not None, 20)
            status = json.loads(run_cli("status", "--json", "-c", str(path)).stdout)
            assert status["daemon"]["running"] is False and status["upload_by_hand_pid"] == upload.pid
            daemon = DaemonProcess(path)
            assert daemon.wait_event("waiting_for_upload", timeout=20), daemon.output()
            assert daemon.proc.poll() is None  # waiting, not exited
            slow.faults.put_bytes_per_second = 0
            assert upload.wait(timeout=30) == 0
            assert daemon.wait_event("daemon_ready", timeout=20), daemon.output()
            write_media(tmp_path / "in" / "dropped.mp4", 2000, seed=8)
            assert daemon.wait_event("upload_completed", timeout=20), daemon.output()
            assert daemon.stop() == 0
        finally:
            for proc in (upload, daemon.proc if daemon else None):
                if proc is not None and proc.poll() is None:
                    proc.kill()
            upload.communicate()


def test_upload_of_a_file_that_changes_while_sent_stops_and_leaves_it_queued(tmp_path):
    """Nothing in a lone `upload` settles a changed file: it says so and exits 1 (it used to claim the job again
    and again, thousands of times a second, for ever)."""
    import subprocess
    import sys

    from studio_watch.queue import open_queue, State
    from studio_watch.sandbox.server import Faults, Sandbox

    with Sandbox(faults=Faults(put_bytes_per_second=300_000)) as slow:
        path = write_config(tmp_path, slow.url, [{"path": "in"}])
        f = write_media(tmp_path / "growing.mp4", 1_500_000, seed=6)
        upload = subprocess.Popen([sys.executable, "-m", "studio_watch", "upload", str(f), "-c", str(path)],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            def sending() -> bool:
                queue = open_queue(tmp_path / "state.db")
                try:
                    return any(j.state is State.URL_ISSUED for j in queue.jobs())
                finally:
                    queue.close()

            assert wait_until(sending, 20)
            with open(f, "ab") as out:
                out.write(b"the recorder was not done")
            slow.faults.put_bytes_per_second = 0
            _, err = upload.communicate(timeout=30)
        finally:
            if upload.poll() is None:
                upload.kill()
                upload.communicate()
        assert upload.returncode == 1 and "changed while it was being sent" in err
        queue = open_queue(tmp_path / "state.db")
        try:
            [job] = queue.jobs()
            assert job.state is State.SETTLING and job.claimed_by is None  # queued, for a daemon or a new upload
        finally:
            queue.close()


def test_upload_failure_exits_1_and_retry_brings_it_back(tmp_path, sandbox):
    path = write_config(tmp_path, sandbox.url, [{"path": "in"}])
    f = write_media(tmp_path / "talk.mp4", 1000, seed=3)
    result = run_cli("upload", str(f), "--collection", "999", "-c", str(path))
    assert result.returncode == 1 and "not found" in result.stderr
    failed = json.loads(run_cli("jobs", "--json", "--state", "failed", "-c", str(path)).stdout)
    assert len(failed) == 1
    retried = run_cli("retry", str(failed[0]["id"]), "-c", str(path))
    assert retried.returncode == 0 and "requeued 1" in retried.stdout
    assert json.loads(run_cli("status", "--json", "-c", str(path)).stdout)["jobs"]["ready"] == 1


def test_retry_refuses_a_failed_job_whose_file_is_queued_again(tmp_path, sandbox):
    from studio_watch.queue import Seen, State, open_queue

    path = write_config(tmp_path, sandbox.url, [{"path": "in"}])
    queue = open_queue(tmp_path / "state.db")
    try:
        found = Seen(path=str(tmp_path / "in" / "talk.mp4"), folder=str(tmp_path / "in"), size=10, mtime_ns=1,
                     inode=1, device=1, collection_id=7, user_id=None, auto_caption=False, after_upload="keep",
                     move_to=None, duplicates="skip", settle_seconds=0)
        failed = queue.add(found, State.FAILED, failed_state="ready")
        live = queue.add(found, State.READY)
    finally:
        queue.close()
    retried = run_cli("retry", str(failed), "-c", str(path))
    assert retried.returncode == 1 and "requeued 0 job(s)" in retried.stdout
    assert f"job {failed} is not retried: job {live} for the same file is already queued (waiting)" in retried.stderr
    assert "not failed or not found" not in retried.stderr


def test_usage_errors_exit_2(tmp_path, sandbox):
    path = write_config(tmp_path, sandbox.url, [{"path": "in"}])
    assert run_cli("retry", "-c", str(path)).returncode == 2
    assert run_cli("upload", "nope.mp4", "-c", str(path)).returncode == 2
    assert run_cli("upload", "x.mp4", "--collection", "1", "--user", "2", "-c", str(path)).returncode == 2
    assert run_cli("frobnicate").returncode == 2
    assert run_cli("--help").returncode == 0


@pytest.mark.parametrize("tls", [False, True], ids=["http", "https"])
def test_demo_once_uploads_its_samples_and_exits_0(tls):
    result = run_cli("demo", "--once", "--files", "2", *(["--tls"] if tls else []), timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert ("sandbox Studio:  https://" in result.stdout) == tls
    assert "now holds 2 completed media" in result.stdout
    assert result.stdout.count("done ") == 2
