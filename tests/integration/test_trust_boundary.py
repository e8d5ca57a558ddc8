"""The pipeline at the drop folder's trust boundary, against the real sandbox: a FIFO or a link swapped in for a
queued file ends as a clear per-job error (never a hang, also after a restart), and what a server echoes back
(the signed upload URL, the Authorization header) is never stored."""

from __future__ import annotations

import os
import sqlite3
import threading
from pathlib import Path

import pytest

from studio_watch.config import RetryConfig, StudioConfig
from studio_watch.daemon.pipeline import Pipeline
from studio_watch.queue import Job, Seen, State, open_queue
from studio_watch.sandbox.server import Faults, Sandbox
from studio_watch.studio.auth import StaticToken
from studio_watch.studio.client import StudioClient

from ..conftest import TOKEN, write_media

RETRY = RetryConfig(initial_seconds=0.01, max_seconds=0.05, max_attempts=3, request_tries=2)


class _Pauses:
    def __init__(self) -> None:
        self.reasons: list[str] = []

    def trip(self, reason: str) -> None:
        self.reasons.append(reason)


def _client(sb: Sandbox) -> StudioClient:
    return StudioClient(StudioConfig(url=sb.url, token_file=None, token_env="X", timeout_seconds=10), RETRY,
                        StaticToken(lambda: TOKEN))


def _ready(db: Path, path: Path, kind: str = "file") -> int:
    """A job for `path`, ready to upload, in the queue at `db`; its id."""
    st = os.lstat(path)
    queue = open_queue(db)
    try:
        return queue.add(Seen(path=str(path), folder=str(path.parent), size=st.st_size, mtime_ns=st.st_mtime_ns,
                              inode=st.st_ino, device=st.st_dev, collection_id=None, user_id=None,
                              auto_caption=False, after_upload="keep", move_to=None, duplicates="upload",
                              settle_seconds=0, kind=kind), State.READY, title="t")
    finally:
        queue.close()


def _run_bounded(db: Path, sb: Sandbox, job_id: int, seconds: float = 15) -> Job:
    """One process's go at the job (its own queue, client and pipeline, as after a restart); fails the test if
    it does not come back (a worker blocked in open() forever). Returns the job as the worker left it."""
    queue, client = open_queue(db), _client(sb)
    try:
        [job] = [j for j in queue.claim("test", limit=10) if j.id == job_id]
        worker = threading.Thread(target=Pipeline(queue, client, RETRY, _Pauses(), threading.Event()).run,
                                  args=(job,), daemon=True)
        worker.start()
        worker.join(seconds)
        assert not worker.is_alive(), "the worker hangs"
        left = queue.get(job_id)
        assert left is not None
        return left
    finally:
        client.close()
        queue.close()


@pytest.mark.parametrize("name, kind", [("lecture.mp4", "file"), ("talk.url", "link")])
def test_a_fifo_swapped_in_for_a_queued_file_fails_that_job_and_never_hangs(tmp_path, name, kind):
    path = tmp_path / name
    if kind == "link":
        path.write_text("[InternetShortcut]\nURL=https://www.youtube.com/watch?v=abc\n")
    else:
        write_media(path, 200_000)
    db = tmp_path / "state.db"
    with Sandbox() as sb:
        job_id = _ready(db, path, kind)
        path.unlink()
        os.mkfifo(path)  # nobody ever opens it for writing: a blocking open() would wait forever
        for restart in range(2):
            job = _run_bounded(db, sb, job_id)
            assert job.state is State.FAILED and "FIFO" in job.last_error and name in job.last_error, job
            queue = open_queue(db)
            queue.retry([job_id])  # `studio-watch retry`, then the next daemon start
            queue.close()
        assert sb.media() == [] or all(m["bytes_received"] == 0 for m in sb.media())


def test_a_symlink_swapped_in_for_a_queued_file_is_never_read(tmp_path):
    secret = tmp_path / "token"
    secret.write_text(TOKEN)
    path = write_media(tmp_path / "lecture.mp4", len(TOKEN))
    db = tmp_path / "state.db"
    with Sandbox() as sb:
        job_id = _ready(db, path)
        path.unlink()
        path.symlink_to(secret)
        job = _run_bounded(db, sb, job_id)
        assert job.state is State.FAILED and "symbolic link" in job.last_error
        assert all(m["bytes_received"] in (0, None) for m in sb.media())


@pytest.mark.parametrize("endpoint", ["generate", "put"])
def test_an_error_body_echoing_the_request_leaves_no_secret_in_the_database(tmp_path, endpoint):
    path = write_media(tmp_path / "lecture.mp4", 100_000)
    db = tmp_path / "state.db"
    with Sandbox(faults=Faults(echo_status=400, error_endpoints=frozenset({endpoint}))) as sb:
        job = _run_bounded(db, sb, _ready(db, path))
        echoed = [e for e in sb.events() if e.get("fault") == "echo"]
    assert echoed, "the sandbox echoed nothing: the test proves nothing"
    assert job.state is State.FAILED and "RequestURI" in job.last_error
    dump = "\n".join(sqlite3.connect(db).iterdump()) + db.read_bytes().decode("latin-1")
    for wal in tmp_path.glob("state.db-wal"):
        dump += wal.read_bytes().decode("latin-1")
    assert TOKEN not in dump and "signature=" not in job.last_error.replace("signature=[redacted]", "")
    if endpoint == "put":
        assert "?[redacted]" in job.last_error


def test_the_upload_url_is_cleared_once_the_bytes_are_in_studio(tmp_path):
    path = write_media(tmp_path / "lecture.mp4", 100_000)
    db = tmp_path / "state.db"
    with Sandbox() as sb:
        job = _run_bounded(db, sb, _ready(db, path))
    assert job.state is State.COMPLETED and job.media_id is not None and job.upload_url is None
    assert "signature" not in "\n".join(sqlite3.connect(db).iterdump())


def test_a_link_file_is_read_only_up_to_its_cap(tmp_path):
    from studio_watch.errors import SourceUnreadable
    from studio_watch.files.links import LINK_FILE_MAX, parse_link_file

    huge = tmp_path / "huge.url"
    huge.write_text("[InternetShortcut]\nURL=https://example.org/a\n" + "x" * LINK_FILE_MAX)
    with pytest.raises(SourceUnreadable, match="at most"):
        parse_link_file(str(huge))
    link = tmp_path / "elsewhere.url"
    link.symlink_to(huge)
    with pytest.raises(SourceUnreadable, match="symbolic link"):
        parse_link_file(str(link))
