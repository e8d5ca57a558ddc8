"""`upload FILE...` (one process, one connection, one line per file) and `jobs` over a long history (newest
first, a default limit on the listing, everything streamed)."""

from __future__ import annotations

import json
from pathlib import Path

from studio_watch.cli.manage import JOBS_LIMIT
from studio_watch.queue import Seen
from studio_watch.queue.sqlite import SqliteQueue as JobQueue

from ..conftest import run_cli, write_config, write_media


def test_upload_several_files_in_one_command_over_one_connection(tmp_path: Path, sandbox) -> None:
    config = write_config(tmp_path, sandbox.url, [{"path": "in"}])
    files = [write_media(tmp_path / f"lecture {n}.mp4", 20_000 + n, seed=n) for n in range(1, 4)]
    result = run_cli("upload", *map(str, files), "--collection", "3", "-c", str(config))
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stdout.splitlines() if line.startswith("uploaded ")]
    assert [line.split(" as media")[0] for line in lines] == [f"uploaded {f}" for f in files]  # one per file, in order
    completed = sandbox.completed()
    assert sorted(m["title"] for m in completed) == ["lecture 1", "lecture 2", "lecture 3"]
    assert {m["collection_id"] for m in completed} == {3} and sandbox.connections_accepted == 1
    jobs = json.loads(run_cli("jobs", "--json", "-c", str(config)).stdout)
    assert [j["state"] for j in jobs] == ["completed"] * 3  # each went through the queue


def test_upload_checks_every_file_before_queueing_any(tmp_path: Path, sandbox) -> None:
    config = write_config(tmp_path, sandbox.url, [{"path": "in"}])
    good = write_media(tmp_path / "good.mp4", 1000, seed=5)
    result = run_cli("upload", str(good), str(tmp_path / "missing.mp4"), "-c", str(config))
    assert result.returncode == 2 and "missing.mp4" in result.stderr and "Traceback" not in result.stderr
    assert json.loads(run_cli("jobs", "--json", "-c", str(config)).stdout) == [] and sandbox.completed() == []
    titled = run_cli("upload", str(good), str(good), "--title", "One", "-c", str(config))
    assert titled.returncode == 2 and "--title" in titled.stderr


def test_upload_several_files_through_a_running_daemon(tmp_path: Path, sandbox, daemons) -> None:
    config = write_config(tmp_path, sandbox.url, [{"path": "in"}])
    daemon = daemons(config)
    daemon.wait_ready()
    files = [write_media(tmp_path / f"take {n}.mp4", 30_000 + n, seed=10 + n) for n in range(2)]
    result = run_cli("upload", *map(str, files), "-c", str(config))
    assert result.returncode == 0, result.stderr
    assert "daemon" in result.stderr and result.stdout.count("uploaded ") == 2
    assert len(sandbox.completed()) == 2
    assert daemon.stop() == 0


def _history(db: Path, n: int) -> None:
    queue = JobQueue(db)
    try:
        queue.observe([Seen(path=f"/watch/{i}.mp4", folder="/watch", size=10, mtime_ns=1, inode=i, device=1,
                            collection_id=1, user_id=None, auto_caption=False, after_upload="keep", move_to=None,
                            duplicates="skip", settle_seconds=0) for i in range(n)], now=1.0)
    finally:
        queue.close()


def test_jobs_lists_the_newest_first_with_a_default_limit(tmp_path: Path, sandbox) -> None:
    config = write_config(tmp_path, sandbox.url, [{"path": "in"}])
    total = JOBS_LIMIT + 30
    _history(tmp_path / "state.db", total)
    listed = run_cli("jobs", "-c", str(config))
    assert listed.returncode == 0, listed.stderr
    rows = listed.stdout.splitlines()[1:]
    assert len(rows) == JOBS_LIMIT and [int(r.split()[0]) for r in rows[:3]] == [total, total - 1, total - 2]
    assert f"newest {JOBS_LIMIT}" in listed.stderr and "--limit" in listed.stderr
    everything = run_cli("jobs", "--limit", "0", "-c", str(config))
    assert len(everything.stdout.splitlines()) == total + 1 and everything.stderr == ""
    assert len(run_cli("jobs", "--limit", "7", "-c", str(config)).stdout.splitlines()) == 8
    as_json = json.loads(run_cli("jobs", "--json", "-c", str(config)).stdout)  # scripts get every job
    assert [j["id"] for j in as_json] == list(range(total, 0, -1))
    assert [j["id"] for j in json.loads(run_cli("jobs", "--json", "--limit", "2", "-c", str(config)).stdout)] == \
        [total, total - 1]
    assert run_cli("jobs", "--limit", "-1", "-c", str(config)).returncode == 2
