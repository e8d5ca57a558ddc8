"""The command line against a cluster's PostgreSQL queue: every command from any node, `migrate` from SQLite,
and a password that never shows."""

from __future__ import annotations

import json
import os
from pathlib import Path

from studio_watch.queue import State, open_queue

from ..conftest import drive, run_cli, write_config
from ..unit.test_jobqueue import seen


def cluster_config(root: Path, url: str, uri: str, node: str) -> Path:
    home = root / node
    home.mkdir(exist_ok=True)
    return write_config(home, url, [{"path": str(root / "share")}], state_db=uri, node_name=node, observer="polling")


def test_migrate_moves_a_sqlite_queue_into_postgresql(tmp_path: Path, sandbox, pg_uri: str) -> None:
    old_db = tmp_path / "old" / "state.db"
    old = open_queue(old_db)
    done = old.add(seen("/share/a.mp4"), State.COMPLETED, media_id=11, after_done=True, title="A")
    failed = old.add(seen(os.fsdecode(b"/share/caf\xe9.mp4")), State.FAILED, last_error="boom", upload_url="https://u")
    held = old.add(seen("/share/c.mp4"), State.READY)
    assert old.claim_id(held, "dead-worker") is not None  # a claim left by a daemon that died
    old.set_meta("import-attempt:x", '{"started": 1}')
    old.close()
    config = cluster_config(tmp_path, sandbox.url, pg_uri, "n1")
    result = run_cli("migrate", "--from", str(old_db), "-c", str(config))
    assert result.returncode == 0, result.stderr
    assert "moved 3 job(s)" in result.stdout
    jobs = {j["id"]: j for j in json.loads(run_cli("jobs", "--json", "-c", str(config)).stdout)}
    assert {i: jobs[i]["state"] for i in jobs} == {done: "completed", failed: "failed", held: "ready"}
    assert jobs[failed]["path"] == "/share/caf\\xe9.mp4" and jobs[done]["title"] == "A"
    q = open_queue(pg_uri, node="n1")
    try:
        assert q.get(held).claimed_by is None  # type: ignore[union-attr]
        assert q.meta("import-attempt:x") == '{"started": 1}'
        assert q.add(seen("/share/new.mp4"), State.READY) > max(jobs)  # new ids continue after the moved ones
    finally:
        q.close()
    again = run_cli("migrate", "--from", str(old_db), "-c", str(config))
    assert again.returncode == 1 and "already holds jobs" in again.stderr
    plain = write_config(tmp_path / "old", sandbox.url, [{"path": str(tmp_path / "share")}])
    refused = run_cli("migrate", "--from", str(old_db), "-c", str(plain))
    assert refused.returncode == 2 and "postgresql://" in refused.stderr


def test_every_command_works_from_any_node(tmp_path: Path, sandbox, pg_uri: str) -> None:
    q = open_queue(pg_uri, node="n1")
    try:
        failed = q.add(seen("/share/a.mp4"), State.READY)
        drive(q, failed, State.FAILED, last_error="HTTP 503")
    finally:
        q.close()
    n2 = cluster_config(tmp_path, sandbox.url, pg_uri, "n2")
    status = json.loads(run_cli("status", "--json", "-c", str(n2)).stdout)
    assert status["jobs"]["failed"] == 1 and status["node"] == "n2" and status["nodes"] == []
    assert status["recent_failures"][0]["last_error"] == "HTTP 503"
    assert run_cli("retry", "--failed", "-c", str(n2)).returncode == 0
    [job] = json.loads(run_cli("jobs", "--json", "-c", str(n2)).stdout)
    assert (job["id"], job["state"]) == (failed, "ready")
    assert "node" in run_cli("check", "-c", str(n2)).stdout


def test_a_password_in_the_uri_never_shows(tmp_path: Path, sandbox, daemons, pg_uri: str) -> None:
    uri = pg_uri.replace("postgres@", "postgres:pw-7f3a9@")  # trust authentication: accepted, never checked
    config = cluster_config(tmp_path, sandbox.url, uri, "n1")
    daemon = daemons(config)
    daemon.wait_ready()
    status = run_cli("status", "--json", "-c", str(config))
    text = run_cli("status", "-c", str(config))
    assert daemon.stop() == 0
    assert status.returncode == 0 and json.loads(status.stdout)["state_db"].count("***") == 1
    assert "daemon_started" in daemon.output() and "node:    n1" in text.stdout
    for output in (daemon.output(), status.stdout, status.stderr, text.stdout, text.stderr):
        assert "pw-7f3a9" not in output


def test_upload_by_hand_on_a_cluster(tmp_path: Path, sandbox, daemons, pg_uri: str) -> None:
    from ..conftest import write_media

    config = cluster_config(tmp_path, sandbox.url, pg_uri, "n1")
    alone = write_media(tmp_path / "alone.mp4", 200_000, seed=1)
    result = run_cli("upload", str(alone), "-c", str(config))  # no node is up: the command does it itself
    assert result.returncode == 0 and "uploaded" in result.stdout, result.stderr
    daemon = daemons(cluster_config(tmp_path, sandbox.url, pg_uri, "n2"))
    daemon.wait_ready()
    beside = write_media(tmp_path / "beside.mp4", 300_000, seed=2)
    result = run_cli("upload", str(beside), "-c", str(config))  # a live node uploads it; the command follows
    assert result.returncode == 0 and "uploaded" in result.stdout, result.stderr
    assert "a node of the cluster uploads it" in result.stderr
    assert daemon.stop() == 0
    assert len(sandbox.completed()) == 2 and sandbox.violations() == []
