"""End-to-end: the installed `studio-watch` command, a real sandbox on loopback, real files, real signals."""

from __future__ import annotations

import json
import os
import random
import time
from collections import Counter
from pathlib import Path

import pytest

from studio_watch.queue import open_queue
from studio_watch.sandbox.server import Faults

from ..conftest import run_cli, sha256_of, wait_until, write_config, write_media


def completed_by_hash(sandbox) -> Counter:
    return Counter(m["content_sha256"] for m in sandbox.completed())


def status_json(config: Path) -> dict:
    result = run_cli("status", "--json", "-c", str(config))
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_watch_two_folders_titles_move_and_status(tmp_path, sandbox, daemons):
    """Files present at startup and dropped later, junk ignored, two targets, templates, move, status."""
    config = write_config(tmp_path, sandbox.url, [
        {"path": "room-101", "collection_id": 2, "settle_seconds": 0.3, "after_upload": "move",
         "move_to": "room-101-done", "description": "Recorded in {folder}: {name} ({size} bytes)"},
        {"path": "ada", "user_id": 42, "settle_seconds": 0.3, "title": "Ada {stem} {mtime:%Y}"},
    ])
    early = write_media(tmp_path / "room-101" / "early lecture.mp4", 200_000, seed=1)
    early_hash = sha256_of(early)
    for junk in (".hidden.mp4", "~lock.mp4", "notes.txt", "clip.mp4.part", "x.tmp", "dl.mp4.crdownload"):
        (tmp_path / "room-101" / junk).write_bytes(b"junk" * 100)
    daemon = daemons(config)
    daemon.wait_ready()
    assert sandbox.wait_for(lambda: len(sandbox.completed()) == 1, timeout=20), daemon.output()

    later = write_media(tmp_path / "ada" / "week 2.MP4", 300_000, seed=2)
    later_hash = sha256_of(later)
    # A recording written slowly, over more than the settle time, must only go up whole.
    slow = tmp_path / "room-101" / "slow.mov"
    with open(slow, "wb") as f:
        for _ in range(8):
            f.write(os.urandom(50_000))
            f.flush()
            time.sleep(0.15)  # the writer's pace, not synchronisation
    slow_hash = sha256_of(slow)
    assert sandbox.wait_for(lambda: len(sandbox.completed()) == 3, timeout=20), daemon.output()

    media = {m["content_sha256"]: m for m in sandbox.completed()}
    assert set(media) == {early_hash, later_hash, slow_hash}
    assert media[early_hash]["collection_id"] == 2 and media[early_hash]["title"] == "early lecture"
    assert media[early_hash]["description"] == "Recorded in room-101: early lecture.mp4 (200000 bytes)"
    assert media[later_hash]["user_id"] == 42 and media[later_hash]["title"] == f"Ada week 2 {time.strftime('%Y')}"
    assert media[slow_hash]["bytes_received"] == 400_000
    assert sandbox.violations() == []
    assert wait_until(lambda: (tmp_path / "room-101-done" / "early lecture.mp4").exists(), 10)
    assert not early.exists() and later.exists()  # moved after upload / kept
    for junk in ("notes.txt", "clip.mp4.part", ".hidden.mp4"):
        assert (tmp_path / "room-101" / junk).exists()

    assert wait_until(lambda: status_json(config)["jobs"]["completed"] == 3, 10)
    status = status_json(config)
    assert set(status["jobs"]) == {"settling", "ready", "url_issued", "uploaded", "completed", "failed", "skipped"}
    assert status["jobs"]["failed"] == 0 and status["daemon"]["running"] is True
    assert daemon.stop() == 0


def test_second_daemon_on_same_database_is_refused(tmp_path, sandbox, daemons):
    config = write_config(tmp_path, sandbox.url, [{"path": "in", "settle_seconds": 0.2}])
    first = daemons(config)
    first.wait_ready()
    second = run_cli("run", "-c", str(config), timeout=30)
    assert second.returncode == 1
    assert f"pid {first.proc.pid}" in second.stderr
    # Other commands work beside the running daemon.
    assert run_cli("jobs", "-c", str(config)).returncode == 0
    assert first.stop() == 0


def test_sigterm_stops_cleanly_and_leaves_upload_resumable(tmp_path, daemons):
    from studio_watch.sandbox.server import Sandbox

    # Small enough to sit whole in loopback socket buffers: the client then waits for the answer, not in a send.
    with Sandbox(faults=Faults(put_bytes_per_second=150_000)) as sandbox:  # the PUT alone would take 10 s
        config = write_config(tmp_path, sandbox.url, [{"path": "in", "settle_seconds": 0.1}])
        write_media(tmp_path / "in" / "big.mp4", 1_500_000, seed=3)
        daemon = daemons(config)
        daemon.wait_ready()
        assert daemon.wait_event("upload_url_issued", 20), daemon.output()  # the PUT starts right after
        started = time.monotonic()
        assert daemon.stop() == 0
        # The stop shut the PUT's socket down: it did not wait for the body (10 s) or the socket timeout (30 s).
        assert time.monotonic() - started < 5
        assert sandbox.completed() == []
        jobs = json.loads(run_cli("jobs", "--json", "-c", str(config)).stdout)
        assert [j["state"] for j in jobs] == ["url_issued"]  # resumable at its exact step: the PUT again
        assert not [e for e in daemon.events if e.get("event") in ("job_crashed", "job_retry_scheduled")]
        queue = open_queue(tmp_path / "state.db")
        try:
            assert [j.claimed_by for j in queue.jobs()] == [None]  # unclaimed: any worker may take it
        finally:
            queue.close()
        # Started again, it finishes the same job, with one completed media.
        sandbox.faults.put_bytes_per_second = 0
        again = daemons(config)
        assert sandbox.wait_for(lambda: len(sandbox.completed()) == 1, timeout=20), again.output()
        assert again.stop() == 0
        assert sandbox.violations() == []


@pytest.mark.slow
def test_repeated_sigkill_during_slow_uploads_completes_every_file_exactly_once(tmp_path, daemons):
    """The acceptance test of the core: SIGKILL at random moments, restart, and nothing lost or doubled."""
    from studio_watch.sandbox.server import Sandbox

    rnd = random.Random(20261126)
    with Sandbox(faults=Faults(put_bytes_per_second=3_000_000, seed=7)) as sandbox:
        config = write_config(tmp_path, sandbox.url, [
            {"path": "in", "settle_seconds": 0.1, "after_upload": "move", "move_to": "done"}], workers=2)
        files = [write_media(tmp_path / "in" / f"lecture-{n:02d}.mp4", rnd.randint(300_000, 1_500_000), seed=n + 10)
                 for n in range(12)]
        hashes = {sha256_of(f) for f in files}
        kills = 0
        for _ in range(10):
            daemon = daemons(config)
            daemon.wait_ready()
            time.sleep(rnd.uniform(0.05, 0.8))  # kill at a random moment: the point of the test
            daemon.kill()
            kills += 1
            if len(sandbox.completed()) == len(files):
                break
        final = daemons(config)
        final.wait_ready()
        assert sandbox.wait_for(lambda: len(sandbox.completed()) >= len(files), timeout=60), final.output()
        assert wait_until(lambda: len(list((tmp_path / "done").iterdir())) == len(files), 20)
        assert final.stop() == 0

        by_hash = completed_by_hash(sandbox)
        assert set(by_hash) == hashes, "a file is missing or was uploaded with the wrong bytes"
        assert all(n == 1 for n in by_hash.values()), f"duplicates: {by_hash}"
        assert sandbox.violations() == [], "a complete came before its PUT, or a PUT was malformed"
        jobs = json.loads(run_cli("jobs", "--json", "-c", str(config)).stdout)
        assert Counter(j["state"] for j in jobs) == {"completed": len(files)}
        assert kills >= 3
        interrupted = [m for m in sandbox.media() if m["state"] != "completed"]
        assert interrupted, "no kill landed mid-upload: the test did not exercise what it claims"
