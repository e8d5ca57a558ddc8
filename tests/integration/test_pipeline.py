"""The pipeline driven step by step against a real queue (SQLite in tmp_path) and the real sandbox Studio:
each step's result is committed before the next side effect, and the retry policy's decision for each failure."""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from pathlib import Path
from typing import Iterator

import pytest

from studio_watch import config as cfg
from studio_watch.config import RetryConfig, StudioConfig
from studio_watch.daemon.activity import Activity
from studio_watch.daemon.engine import LoneUpload
from studio_watch.daemon.pipeline import Pipeline
from studio_watch.errors import PermanentError
from studio_watch.queue import JobQueue, Seen, State, open_queue
from studio_watch.sandbox.server import Faults, Sandbox
from studio_watch.studio.auth import StaticToken
from studio_watch.studio.client import StudioClient

from ..conftest import TOKEN, write_config, write_media

RETRY = RetryConfig(initial_seconds=0.01, max_seconds=0.05, max_attempts=3, request_tries=1)


def client_for(sb: Sandbox, retry: RetryConfig = RETRY) -> StudioClient:
    return StudioClient(StudioConfig(url=sb.url, token_file=None, token_env="X", timeout_seconds=5), retry,
                        StaticToken(lambda: TOKEN))


@contextlib.contextmanager
def studio(faults: Faults | None = None) -> Iterator[tuple[Sandbox, StudioClient]]:
    """The sandbox Studio and a client for it."""
    with Sandbox(faults=faults or Faults()) as sb:
        client = client_for(sb)
        try:
            yield sb, client
        finally:
            client.close()


@pytest.fixture
def queue(tmp_path: Path) -> Iterator[JobQueue]:
    q = open_queue(tmp_path / "state.db")
    yield q
    q.close()


def ready_job(queue: JobQueue, path: Path, state: State = State.READY, after_upload: str = "keep",
              collection_id: int | None = None, auto_caption: bool = False, **extra: object) -> int:
    """A job for `path` in `queue`: ready to upload (as the settler leaves it), or in `state`."""
    st = os.stat(path)
    return queue.add(Seen(path=str(path), folder=str(path.parent), size=st.st_size, mtime_ns=st.st_mtime_ns,
                          inode=st.st_ino, device=st.st_dev, collection_id=collection_id, user_id=None,
                          auto_caption=auto_caption, after_upload=after_upload, move_to=None, duplicates="upload",
                          settle_seconds=0),
                     state, **extra)


class _PutFailsMidway:
    """A Studio client whose PUT reports progress, then fails for good (the upload URL was refused)."""

    def generate(self, collection_id, user_id):
        return 1, "https://upload.invalid/1?sig=x"

    def put(self, url, source, progress):
        progress(1024 * 1024)
        raise PermanentError("put: HTTP 418", 418)


def test_a_failed_transfer_leaves_the_live_transfer_list(tmp_path):

    path = write_media(tmp_path / "a.mp4", 2000)
    queue = open_queue(tmp_path / "state.db")
    try:
        job_id = ready_job(queue, path)
        activity = Activity()
        seen_live = []
        original = activity.progress
        activity.progress = lambda *args: (original(*args), seen_live.append(dict(activity.transfers)))
        pipeline = Pipeline(queue, _PutFailsMidway(), RetryConfig(), None, threading.Event(), activity)
        [job] = queue.claim("test")
        pipeline.run(job)
        assert seen_live and job_id in seen_live[0]  # it was a live transfer (the test is not vacuous)...
        assert activity.transfers == {}  # ...and is not any more
        assert queue.get(job_id).state is State.FAILED
    finally:
        queue.close()


class _Pauses:
    def __init__(self) -> None:
        self.reasons: list[str] = []

    def trip(self, reason: str) -> None:
        self.reasons.append(reason)


def test_upload_host_down_while_the_api_is_up_reschedules_without_pausing(tmp_path, sandbox):
    """The PUT cannot connect, /ping answers: this job waits its backoff (the queue is not paused, which used to
    flap: pause, /ping fine, resume, the same PUT fails again, pause...)."""

    with socket.socket() as s:  # a port nobody listens on: the "upload host"
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]

    class DeadUploadHost(StudioClient):
        def generate(self, collection_id, user_id):
            media_id, url = super().generate(collection_id, user_id)
            return media_id, url.replace(f":{sandbox.url.rsplit(':', 1)[1]}/", f":{dead}/", 1)

    retry = RetryConfig(initial_seconds=30, max_seconds=60, max_attempts=5, request_tries=1)
    client = DeadUploadHost(StudioConfig(url=sandbox.url, token_file=None, token_env="X", timeout_seconds=5), retry,
                            StaticToken(lambda: "sandbox-token"))
    path = write_media(tmp_path / "a.mp4", 2000)
    queue = open_queue(tmp_path / "state.db")
    try:
        job_id = ready_job(queue, path)
        pauses = _Pauses()
        [job] = queue.claim("test")
        Pipeline(queue, client, retry, pauses, threading.Event()).run(job)
        after = queue.get(job_id)
        assert pauses.reasons == []
        assert after.state is State.URL_ISSUED and after.attempts == 1 and after.claimed_by is None
        assert after.next_attempt_at > time.time() + 10 and "cannot reach" in after.last_error
        assert [e["endpoint"] for e in sandbox.events()] == ["generate", "ping"]  # the API was asked, and is up
    finally:
        queue.close()
        client.close()


def test_retry_of_a_job_that_failed_completing_only_completes(tmp_path):

    retry = RetryConfig(initial_seconds=0.01, max_seconds=0.05, max_attempts=1, request_tries=1)
    with Sandbox(faults=Faults(error_rate=1.0, error_endpoints=frozenset({"complete"}))) as sb:
        client = StudioClient(StudioConfig(url=sb.url, token_file=None, token_env="X", timeout_seconds=5), retry,
                              StaticToken(lambda: "sandbox-token"))
        queue = open_queue(tmp_path / "state.db")
        try:
            job_id = ready_job(queue, write_media(tmp_path / "a.mp4", 300_000))
            pipeline = Pipeline(queue, client, retry, _Pauses(), threading.Event())
            [job] = queue.claim("test")
            pipeline.run(job)
            failed = queue.get(job_id)
            assert failed.state is State.FAILED and failed.failed_state == "uploaded"
            sb.faults.error_rate = 0.0
            assert queue.retry([job_id]).moved == [job_id]
            [job] = queue.claim("test")
            assert job.state is State.UPLOADED
            pipeline.run(job)
            assert queue.get(job_id).state is State.COMPLETED
            puts = [e for e in sb.events() if e["endpoint"] == "put"]
            assert len(puts) == 1 and [m["bytes_received"] for m in sb.completed()] == [300_000]
        finally:
            queue.close()
            client.close()


def test_delete_leaves_a_new_recording_under_the_same_name_alone(tmp_path):
    """Uploaded yesterday, deleted today: today's recording under the same name survives, and yesterday's job
    ends (its media is safe in Studio) without touching it."""
    path = write_media(tmp_path / "room101.mp4", 3000, seed=1)
    queue = open_queue(tmp_path / "state.db")
    try:
        job_id = ready_job(queue, path, State.COMPLETED, after_upload="delete", media_id=5)
        path.unlink()
        today = write_media(tmp_path / "room101.mp4", 4000, seed=2)
        content = today.read_bytes()
        [job] = queue.claim("test")
        Pipeline(queue, None, RetryConfig(), _Pauses(), threading.Event()).run(job)
        assert today.read_bytes() == content and [p.name for p in tmp_path.iterdir() if p.suffix == ".mp4"] == [
            "room101.mp4"]
        done = queue.get(job_id)
        assert done.after_done and done.state is State.COMPLETED and "not moved or deleted" in done.reason
    finally:
        queue.close()



def run_once(queue: JobQueue, client: StudioClient, pauses: _Pauses | None = None,
             retry: RetryConfig = RETRY, now: float | None = None) -> None:
    """Claim the one job due (by `now`) and carry it as far as it goes."""
    [job] = queue.claim("test", now=now)
    Pipeline(queue, client, retry, pauses or _Pauses(), threading.Event(), Activity()).run(job)


def test_a_ready_job_goes_through_generate_put_complete(tmp_path: Path, queue: JobQueue) -> None:
    path = write_media(tmp_path / "talk.mp4", 300_000, seed=3)
    job_id = ready_job(queue, path, title="Talk", description="d")
    with studio() as (sb, client):
        run_once(queue, client)
        job = queue.get(job_id)
        assert job.state is State.COMPLETED and job.after_done and job.claimed_by is None
        [media] = sb.completed()
        assert media["id"] == job.media_id and media["title"] == "Talk" and media["bytes_received"] == 300_000
        assert [e["endpoint"] for e in sb.events()] == ["generate", "put", "complete"]
        assert job.content_hash  # hashed in the PUT's own pass


def test_a_job_killed_after_its_url_was_issued_puts_again_to_the_stored_url(tmp_path: Path,
                                                                              queue: JobQueue) -> None:
    path = write_media(tmp_path / "a.mp4", 200_000, seed=4)
    job_id = ready_job(queue, path)
    with studio() as (sb, client):
        media_id, url = client.generate(None, None)  # what the killed process had done and committed
        [claimed] = queue.claim("4242:worker-1")
        assert queue.issue_url(claimed, media_id, url, time.time())
        assert [j.id for j in queue.recover()] == [job_id]  # the next start releases the dead process's claim
        run_once(queue, client)
        assert queue.get(job_id).state is State.COMPLETED
        assert [e["endpoint"] for e in sb.events()] == ["generate", "put", "complete"]  # no second generate
        assert [m["id"] for m in sb.completed()] == [media_id]


def test_an_expired_upload_url_is_renewed_in_the_same_run(tmp_path: Path, queue: JobQueue) -> None:
    job_id = ready_job(queue, write_media(tmp_path / "a.mp4", 100_000, seed=5))
    with studio(Faults(expire_first_put=True)) as (sb, client):
        run_once(queue, client)
        job = queue.get(job_id)
        assert job.state is State.COMPLETED and job.attempts == 0
        assert [e["endpoint"] for e in sb.events()].count("generate") == 2 and len(sb.completed()) == 1


def test_captions_disabled_completes_without_them(tmp_path: Path, queue: JobQueue) -> None:
    job_id = ready_job(queue, write_media(tmp_path / "a.mp4", 5_000, seed=6), auto_caption=True)
    with studio(Faults(captions_disabled=True)) as (sb, client):
        run_once(queue, client)
        job = queue.get(job_id)
        assert job.state is State.COMPLETED and job.captions_skipped and len(sb.completed()) == 1


def test_a_refused_collection_fails_at_once_naming_it(tmp_path: Path, queue: JobQueue) -> None:
    job_id = ready_job(queue, write_media(tmp_path / "a.mp4", 5_000, seed=7), collection_id=9)
    with studio(Faults(forbidden_collections=frozenset({9}))) as (sb, client):
        run_once(queue, client)
        job = queue.get(job_id)
        assert job.state is State.FAILED and job.attempts == 0 and "collection 9" in job.last_error
        assert sb.media() == []


def test_studio_down_pauses_the_queue_and_the_job_keeps_its_attempts(tmp_path: Path, queue: JobQueue) -> None:
    job_id = ready_job(queue, write_media(tmp_path / "a.mp4", 5_000, seed=8))
    pauses = _Pauses()
    with studio() as (sb, client):
        sb.set_down(True)
        run_once(queue, client, pauses)
    job = queue.get(job_id)
    assert len(pauses.reasons) == 1 and job.state is State.READY and job.attempts == 0
    assert job.claimed_by is None and job.last_error


def test_a_transient_failure_reschedules_and_gives_up_after_max_attempts(tmp_path: Path, queue: JobQueue) -> None:
    job_id = ready_job(queue, write_media(tmp_path / "a.mp4", 5_000, seed=9))
    with studio(Faults(error_rate=1.0, error_endpoints=frozenset({"generate"}))) as (sb, client):
        for attempt in range(1, RETRY.max_attempts + 1):
            job = queue.get(job_id)
            run_once(queue, client, now=job.next_attempt_at)  # due then: the backoff itself is not under test
            job = queue.get(job_id)
            if attempt < RETRY.max_attempts:
                assert job.state is State.READY and job.attempts == attempt and job.next_attempt_at > time.time()
    job = queue.get(job_id)
    assert job.state is State.FAILED and "gave up after 3 attempts" in job.last_error


def test_a_file_gone_before_its_upload_is_skipped(tmp_path: Path, queue: JobQueue) -> None:
    path = write_media(tmp_path / "a.mp4", 5_000, seed=10)
    job_id = ready_job(queue, path)
    path.unlink()
    with studio() as (sb, client):
        run_once(queue, client)
        assert sb.events() == []
    job = queue.get(job_id)
    assert job.state is State.SKIPPED and job.reason == "vanished"


def test_a_lone_upload_says_at_once_that_its_job_has_moved_on(tmp_path: Path) -> None:
    """`upload` working alone follows its job by an event the worker sets when it has run it, not by a poll: the
    event is set, and by then the job is done."""
    with Sandbox(faults=Faults()) as sb:
        config = cfg.load(write_config(tmp_path, sb.url, []))
        queue = open_queue(tmp_path / "lone.db")
        try:
            job_id = ready_job(queue, write_media(tmp_path / "a.mp4", 5000, seed=8), collection_id=1)
            stop = threading.Event()
            with LoneUpload(config, queue, job_id, stop) as alone:
                assert alone.changed.wait(30)
                job = queue.get(job_id)
                assert job is not None and job.state is State.COMPLETED and job.after_done
        finally:
            queue.close()
    assert len(sb.completed()) == 1
