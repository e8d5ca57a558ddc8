"""cancel, forget and prune against a real SQLite queue and a real PostgreSQL one, and real files; rates,
timetables and ages."""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path
from typing import Iterator

import pytest

from studio_watch.daemon.housekeeping import forget, prune
from studio_watch.queue.admin import CANCELLED
from studio_watch.queue import JobQueue, Seen, State, open_queue
from studio_watch.schedule import parse_duration, parse_rate, parse_rate_table, rate_at


@pytest.fixture
def queue(state_db: str | Path) -> Iterator[JobQueue]:
    """Both backends (the contract fixture of tests/conftest.py): SQLite and a real PostgreSQL."""
    q = open_queue(state_db)
    try:
        yield q
    finally:
        q.close()


def real_file(path: Path, data: bytes = b"x" * 100) -> Seen:
    path.write_bytes(data)
    st = path.stat()
    return Seen(path=str(path), folder=str(path.parent), size=st.st_size, mtime_ns=st.st_mtime_ns, inode=st.st_ino,
                device=st.st_dev, collection_id=7, user_id=None, auto_caption=False, after_upload="keep",
                move_to=None, duplicates="skip", settle_seconds=0)


def test_cancel_a_waiting_job_and_ask_one_in_flight_to_stop(queue: JobQueue, tmp_path: Path) -> None:
    waiting = queue.add(real_file(tmp_path / "a.mp4"), State.READY)
    flying = queue.add(real_file(tmp_path / "b.mp4"), State.READY)
    done = queue.add(real_file(tmp_path / "c.mp4"), State.COMPLETED, after_done=True)
    assert queue.claim_id(flying, "1:worker-1") is not None
    out = queue.cancel([waiting, flying, done, 999])
    assert out[waiting] == "cancelled" and out[flying] == "requested"
    assert out[done].startswith("already completed") and out[999] == "no such job"
    job = queue.get(waiting)
    assert job is not None and job.state is State.SKIPPED and job.reason == CANCELLED
    assert queue.claim("1:worker-2") == []  # a cancelled job is never claimed
    flying_job = queue.get(flying)
    assert flying_job is not None and flying_job.state is State.READY  # its worker owns it until its next step
    assert queue.cancel_requested(flying) and not queue.cancel_requested(waiting)


def test_forget_refuses_what_would_upload_twice_or_lose_a_job_in_flight(queue: JobQueue, tmp_path: Path) -> None:
    kept = queue.add(real_file(tmp_path / "kept.mp4"), State.COMPLETED, media_id=5)
    gone = queue.add(real_file(tmp_path / "gone.mp4"), State.COMPLETED, media_id=6)
    (tmp_path / "gone.mp4").unlink()
    failed = queue.add(real_file(tmp_path / "failed.mp4"), State.FAILED)
    flying = queue.add(real_file(tmp_path / "flying.mp4"), State.READY)
    queue.claim_id(flying, "1:worker-1")
    out = forget(queue, [kept, gone, failed, flying, 12345])
    assert out[kept].startswith("uploaded as media 5 and its file is still there")
    assert out[gone] == out[failed] == "forgotten"
    assert out[flying].startswith("in flight") and out[12345] == "no such job"
    assert queue.get(kept) is not None and queue.get(flying) is not None
    assert queue.get(gone) is None and queue.get(failed) is None


def test_prune_drops_old_rows_whose_files_are_gone_and_keeps_the_memory_of_kept_files(
        queue: JobQueue, tmp_path: Path) -> None:
    kept = queue.add(real_file(tmp_path / "kept.mp4"), State.COMPLETED, media_id=1, after_done=True)
    moved = queue.add(real_file(tmp_path / "moved.mp4"), State.COMPLETED, media_id=2, after_done=True)
    os.rename(tmp_path / "moved.mp4", tmp_path / "elsewhere.mp4")
    replaced = queue.add(real_file(tmp_path / "replaced.mp4"), State.SKIPPED)
    real_file(tmp_path / "replaced.mp4", b"other bytes, other size")
    waiting = queue.add(real_file(tmp_path / "waiting.mp4"), State.READY)
    unfinished = queue.add(real_file(tmp_path / "unfinished.mp4"), State.COMPLETED, media_id=3)
    (tmp_path / "unfinished.mp4").unlink()
    assert prune(queue, 3600).deleted == []  # none is old enough yet
    later = queue.get(kept).updated_at + 7200  # type: ignore[union-attr]
    result = prune(queue, 3600, now=later)
    assert sorted(result.deleted) == sorted([moved, replaced])
    assert result.kept == [kept]
    # a waiting job and a completed one whose after-upload step is not done are never pruned
    assert queue.get(waiting) is not None and queue.get(unfinished) is not None
    # the kept file is still known: a rescan would not take it up again
    assert os.fsencode(str(tmp_path / "kept.mp4")) in queue.latest_by_path([str(tmp_path / "kept.mp4")])


def test_prune_never_deletes_a_row_a_worker_took_meanwhile(queue: JobQueue, tmp_path: Path) -> None:
    job_id = queue.add(real_file(tmp_path / "a.mp4"), State.FAILED)
    job = queue.get(job_id)
    assert job is not None
    assert queue.retry([job_id]).moved == [job_id]  # `retry` after the prune read the row
    assert queue.delete_unclaimed([job]) == []
    assert queue.get(job_id) is not None


def test_tries_counts_attempts_made(queue: JobQueue, tmp_path: Path) -> None:
    fresh = queue.add(real_file(tmp_path / "a.mp4"), State.READY)
    assert queue.get(fresh).tries == 0  # type: ignore[union-attr]
    done = queue.add(real_file(tmp_path / "c.mp4"), State.COMPLETED, after_done=True)
    assert queue.get(done).tries == 1  # type: ignore[union-attr]
    retried = queue.add(real_file(tmp_path / "b.mp4"), State.READY, attempts=2)
    assert queue.get(retried).tries == 2  # type: ignore[union-attr]
    queue.claim_id(retried, "1:w")
    assert queue.get(retried).tries == 3  # type: ignore[union-attr]


def test_jobs_newest_first_with_filters(queue: JobQueue, tmp_path: Path) -> None:
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    a = queue.add(real_file(tmp_path / "one" / "a.mp4"), State.COMPLETED)
    b = queue.add(real_file(tmp_path / "two" / "b.mp4"), State.READY)
    c = queue.add(real_file(tmp_path / "one" / "c.mp4"), State.READY)
    assert [j.id for j in queue.jobs(newest_first=True)] == [c, b, a]
    assert [j.id for j in queue.jobs(folder=str(tmp_path / "one"), newest_first=True)] == [c, a]
    assert [j.id for j in queue.jobs("ready", folder=str(tmp_path / "one"))] == [c]
    created = queue.get(b).created_at  # type: ignore[union-attr]
    assert [j.id for j in queue.jobs(created_after=created + 3600)] == []
    assert [j.id for j in queue.jobs(created_before=created + 3600, limit=2, newest_first=True)] == [c, b]


def test_rates_with_units() -> None:
    assert parse_rate("100M") == 100 * 1024**2  # rclone: M is MiB/s
    assert parse_rate("800K") == parse_rate("800KiB/s") == 800 * 1024
    assert parse_rate("12MB") == 12_000_000
    assert parse_rate("50Mbit/s") == parse_rate("50Mbps") == 50_000_000 // 8
    assert parse_rate(125000) == parse_rate("125000") == 125000
    assert parse_rate("off") is None
    for bad in ("fast", "10 parsecs", "0", "-5M", True):
        with pytest.raises(ValueError):
            parse_rate(bad)  # type: ignore[arg-type]


def test_rate_timetable_like_rclone() -> None:
    table = parse_rate_table("08:00,10M 18:00,off")
    monday = datetime(2026, 11, 30)  # a Monday
    assert rate_at(table, monday.replace(hour=7, minute=59)) is None  # yesterday's 18:00 entry still holds
    assert rate_at(table, monday.replace(hour=8)) == 10 * 1024**2
    assert rate_at(table, monday.replace(hour=17, minute=59)) == 10 * 1024**2
    assert rate_at(table, monday.replace(hour=18)) is None
    weekly = parse_rate_table("Mon-08:00,1M Fri-18:00,off")
    assert rate_at(weekly, datetime(2026, 12, 3, 12)) == 1024**2  # Thursday: Monday's entry
    assert rate_at(weekly, datetime(2026, 12, 5, 12)) is None  # Saturday
    assert rate_at(weekly, datetime(2026, 11, 30, 7)) is None  # Monday before 08:00: wrapped from Friday
    assert parse_rate_table("5M") == ((0, 5 * 1024**2),)
    for bad in ("08:00", "25:00,1M", "Xyz-08:00,1M", "08:00,fast"):
        with pytest.raises(ValueError):
            parse_rate_table(bad)


def test_ages() -> None:
    assert parse_duration("90d") == 90 * 86400 and parse_duration("12h") == 43200
    assert parse_duration("2w") == 14 * 86400 and parse_duration(30) == 30 and parse_duration("1h30m") == 5400
    for bad in ("soon", "-1h", -5, "3 fortnights"):
        with pytest.raises(ValueError):
            parse_duration(bad)
