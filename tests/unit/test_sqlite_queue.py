"""What is particular to the SQLite backend: the file itself (mode, WAL, user_version) and its migrations.
The behaviour both backends share is tested in test_jobqueue.py."""

from __future__ import annotations

import os
import sqlite3
import stat
from pathlib import Path
from typing import Any, Iterator

import pytest

from studio_watch.queue import JobQueue, State, open_queue
from studio_watch.queue.sqlite import SCHEMA_VERSION
from .test_jobqueue import seen


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "queue.db"


@pytest.fixture
def queue(db_path: Path) -> Iterator[JobQueue]:
    q = open_queue(db_path)
    try:
        yield q
    finally:
        q.close()


def raw(path: Path, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    """Look at (or tamper with) the database file directly, as the sqlite3 shell would."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        return conn.execute(sql, args).fetchall()
    finally:
        conn.close()


# -- the file -------------------------------------------------------------------------------------------------

def test_database_file_mode_wal_and_version(queue: JobQueue, db_path: Path) -> None:
    queue.add(seen("/watch/a.mp4"), State.READY)
    assert stat.S_IMODE(db_path.stat().st_mode) == 0o600
    wal = db_path.with_name(db_path.name + "-wal")
    if wal.exists():
        assert stat.S_IMODE(wal.stat().st_mode) == 0o600
    assert raw(db_path, "PRAGMA journal_mode") == [("wal",)]
    assert raw(db_path, "PRAGMA user_version") == [(SCHEMA_VERSION,)] == [(5,)]


# What older databases looked like: the statements that take a current one back to that version.
_V4 = ["DROP INDEX jobs_folder_seen", "DROP TABLE lectures", "DROP TABLE timetable_watch"]
_V5 = ["DROP INDEX jobs_claimed", "DROP INDEX jobs_failed"]
OLDER_SCHEMAS = {1: [*_V5, "DROP INDEX jobs_size", "DROP INDEX jobs_after", "ALTER TABLE jobs DROP COLUMN failed_state",
                     *_V4],
                 2: [*_V5, "ALTER TABLE jobs DROP COLUMN failed_state", *_V4], 3: [*_V5, *_V4], 4: _V5}


@pytest.mark.parametrize("version", sorted(OLDER_SCHEMAS))
def test_older_database_is_migrated_in_place(db_path: Path, version: int) -> None:
    q = open_queue(db_path)
    job_id = q.add(seen("/watch/a.mp4"), State.FAILED, title="Kept")
    q.close()
    for statement in OLDER_SCHEMAS[version]:
        raw(db_path, statement)
    raw(db_path, f"PRAGMA user_version = {version}")
    again = open_queue(db_path)
    try:
        assert raw(db_path, "PRAGMA user_version") == [(SCHEMA_VERSION,)] == [(5,)]
        assert raw(db_path, "SELECT name FROM sqlite_master WHERE name = 'jobs_after'") == [("jobs_after",)]
        job = again.get(job_id)
        assert job is not None and (job.title, job.state, job.failed_state) == ("Kept", State.FAILED, None)
    finally:
        again.close()


def test_jobs_that_failed_completing_before_v3_resume_at_complete(db_path: Path) -> None:
    q = open_queue(db_path)
    at_complete = q.add(seen("/watch/a.mp4"), State.FAILED, media_id=3, upload_url="https://up/a",
                        last_error="gave up after 12 attempts: complete: HTTP 503")
    at_put = q.add(seen("/watch/b.mp4"), State.FAILED, media_id=4, upload_url="https://up/b",
                   last_error="gave up after 12 attempts: put: HTTP 503")
    q.close()
    for statement in OLDER_SCHEMAS[2]:
        raw(db_path, statement)
    raw(db_path, "PRAGMA user_version = 2")
    again = open_queue(db_path)
    try:
        assert [again.get(i).failed_state for i in (at_complete, at_put)] == ["uploaded", None]  # type: ignore
        again.retry(None)
        assert [again.get(i).state for i in (at_complete, at_put)] == [State.UPLOADED, State.URL_ISSUED]  # type: ignore
    finally:
        again.close()


def test_reopen_keeps_jobs(db_path: Path) -> None:
    q = open_queue(db_path)
    job_id = q.add(seen("/watch/a.mp4"), State.READY, title="Lecture")
    q.close()
    again = open_queue(db_path)
    try:
        job = again.get(job_id)
        assert job is not None and job.title == "Lecture" and job.state is State.READY
        assert raw(db_path, "PRAGMA user_version") == [(SCHEMA_VERSION,)]
    finally:
        again.close()


def test_newer_schema_is_refused_and_left_alone(db_path: Path) -> None:
    open_queue(db_path).close()
    raw(db_path, f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(Exception, match="newer"):
        open_queue(db_path)
    assert raw(db_path, "PRAGMA user_version") == [(SCHEMA_VERSION + 1,)]


def test_paths_are_stored_as_their_bytes(queue: JobQueue, db_path: Path) -> None:
    path = os.fsdecode(b"/watch/caf\xe9.mp4")
    queue.observe([seen(path)], now=1.0)
    assert raw(db_path, "SELECT typeof(path), path FROM jobs") == [("blob", b"/watch/caf\xe9.mp4")]


def test_recover_redacts_error_text_stored_before_redaction_once_and_clears_spent_urls(db_path: Path) -> None:
    open_queue(db_path).close()
    raw(db_path, "INSERT INTO jobs (kind, state, path, folder, collection_id, user_id, auto_caption, after_upload, "
                 "duplicates, settle_seconds, size, stable_since, created_at, updated_at, attempts, next_attempt_at, "
                 "last_error, upload_url) VALUES ('file', 'completed', X'2f612e6d7034', X'2f', NULL, NULL, 0, 'keep', "
                 "'skip', 0, 1, 0, 0, 0, 0, 0, 'put: HTTP 400: /u/1?signature=0ldsecret1', "
                 "'https://up.example/u/1?signature=0ldsecret1')")
    queue = open_queue(db_path)
    try:
        queue.recover()
        [job] = queue.jobs()
        assert job.last_error == "put: HTTP 400: /u/1?[redacted]" and job.upload_url is None
        assert queue.meta("error_text_redacted") == "1"
    finally:
        queue.close()
