"""The queue contract: every test here runs against both backends, a real SQLite file and a real PostgreSQL
database started by the suite (the `state_db` fixture), with real threads."""

from __future__ import annotations

import itertools
import os
import functools
import threading
import time
import unicodedata
from pathlib import Path
from typing import Any, Iterator

import pytest

from studio_watch.queue import STATES, JobQueue, Seen, Settled, State, Verdict, open_queue, settle_clock
from ..conftest import at_once, drive

_inodes = itertools.count(1000)


def seen(path: str, *, inode: int | None = None, size: int = 100, mtime_ns: int = 1_700_000_000 * 10**9,
         folder: str = "/watch", collection_id: int | None = 7, user_id: int | None = None,
         move_to: str | None = None, **extra: Any) -> Seen:
    return Seen(path=path, folder=folder, size=size, mtime_ns=mtime_ns, inode=next(_inodes) if inode is None else inode,
                device=1, collection_id=collection_id, user_id=user_id, auto_caption=False, after_upload="keep",
                move_to=move_to, duplicates="skip", settle_seconds=5.0, **extra)


@pytest.fixture
def queue(state_db: str | Path) -> Iterator[JobQueue]:
    q = open_queue(state_db, node="node-a")
    try:
        yield q
    finally:
        q.close()


# -- observe ---------------------------------------------------------------------------------------------------

def test_evolve_is_replace_without_touching_the_original(queue: JobQueue) -> None:
    import dataclasses

    job_id = queue.add(seen("/watch/a.mp4"), State.READY)
    job = queue.get(job_id)
    assert job is not None
    changed = job.evolve(state=State.URL_ISSUED, media_id=5, claimed_by=None)
    assert changed == dataclasses.replace(job, state=State.URL_ISSUED, media_id=5, claimed_by=None)
    assert job.state is State.READY and job.media_id is None  # the original is untouched
    with pytest.raises(dataclasses.FrozenInstanceError):
        changed.media_id = 6  # type: ignore[misc]


def test_observe_creates_once_per_identity(queue: JobQueue) -> None:
    s = seen("/watch/a.mp4", inode=1)
    created = queue.observe([s], now=1000.0)
    assert [seen_ for _, seen_ in created] == [s]
    job = queue.get(created[0][0])
    assert job is not None
    assert (job.state, job.path, job.folder, job.stable_since, job.created_at) == (
        State.SETTLING, "/watch/a.mp4", "/watch", 1000.0, 1000.0)
    assert job.identity == s.identity
    assert queue.observe([s], now=1005.0) == []
    assert len(queue.jobs()) == 1
    assert queue.get(job.id).stable_since == 1000.0  # type: ignore[union-attr]


def test_observe_changed_settling_job_restarts_its_clock(queue: JobQueue) -> None:
    [(job_id, _)] = queue.observe([seen("/watch/a.mp4", inode=1, size=10, mtime_ns=990 * 10**9)], now=1000.0)
    # Grew; its mtime (1004) lies between the last look (1000) and now (1010): believed.
    assert queue.observe([seen("/watch/a.mp4", inode=1, size=20, mtime_ns=1004 * 10**9)], now=1010.0) == []
    job = queue.get(job_id)
    assert job is not None and (job.size, job.mtime_ns, job.stable_since) == (20, 1004 * 10**9, 1004.0)
    # Changed again, with an mtime from before the last look (cp -p): now is used.
    queue.observe([seen("/watch/a.mp4", inode=1, size=30, mtime_ns=500 * 10**9)], now=1020.0)
    job = queue.get(job_id)
    assert job is not None and (job.size, job.stable_since) == (30, 1020.0)
    # An mtime in the future (clock skew on a share): now again.
    queue.observe([seen("/watch/a.mp4", inode=1, size=40, mtime_ns=9999 * 10**9)], now=1030.0)
    job = queue.get(job_id)
    assert job is not None and (job.size, job.stable_since) == (40, 1030.0)
    assert len(queue.jobs()) == 1


def test_settle_clock() -> None:
    assert settle_clock(1005 * 10**9, 1000.0, 1010.0) == 1005.0
    assert settle_clock(999 * 10**9, 1000.0, 1010.0) == 1010.0
    assert settle_clock(1011 * 10**9, 1000.0, 1010.0) == 1010.0
    assert settle_clock(1000 * 10**9, 1000.0, 1010.0) == 1000.0


@pytest.mark.parametrize("final", [State.COMPLETED, State.SKIPPED, State.FAILED])
def test_finished_job_is_not_recreated_for_the_same_file(queue: JobQueue, final: State) -> None:
    s = seen("/watch/a.mp4", inode=1)
    [(job_id, _)] = queue.observe([s], now=1000.0)
    drive(queue, job_id, final)
    assert queue.observe([s], now=2000.0) == []
    # A different file at the same path (new inode, size or mtime) is a new job.
    for changed in (seen("/watch/a.mp4", inode=2), seen("/watch/a.mp4", inode=1, size=101),
                    seen("/watch/a.mp4", inode=1, mtime_ns=s.mtime_ns + 1)):
        [(new_id, _)] = queue.observe([changed], now=3000.0)
        assert new_id != job_id and queue.get(new_id).state is State.SETTLING  # type: ignore[union-attr]
        drive(queue, new_id, final)


def test_a_file_that_vanished_and_came_back_is_a_new_job(queue: JobQueue) -> None:
    """Skipped as vanished (it was away for a moment: renamed, or taken aside) and then back unchanged."""
    s = seen("/watch/a.mp4", inode=1)
    [(job_id, _)] = queue.observe([s], now=1000.0)
    drive(queue, job_id, State.SKIPPED, reason="vanished")
    [(new_id, _)] = queue.observe([s], now=2000.0)
    assert new_id != job_id and queue.get(new_id).state is State.SETTLING  # type: ignore[union-attr]
    assert queue.observe([s], now=3000.0) == []  # once
    drive(queue, new_id, State.SKIPPED, reason="vanished")
    assert queue.latest_by_path(["/watch/a.mp4"])[b"/watch/a.mp4"][0] == "vanished"  # what a rescan sees: hand it over again


def test_in_flight_job_is_left_to_the_pipeline(queue: JobQueue) -> None:
    [(job_id, _)] = queue.observe([seen("/watch/a.mp4", inode=1)], now=1000.0)
    drive(queue, job_id, State.URL_ISSUED, upload_url="https://up/1")
    assert queue.observe([seen("/watch/a.mp4", inode=1, size=5)], now=1001.0) == []
    job = queue.get(job_id)
    assert job is not None and job.size == 100 and job.state is State.URL_ISSUED


def test_observe_batch_is_one_transaction(queue: JobQueue) -> None:
    batch = [seen(f"/watch/{i}.mp4") for i in range(50)]
    created = queue.observe(batch, now=1.0)
    assert sorted(s.path for _, s in created) == sorted(s.path for s in batch)
    assert queue.counts()["settling"] == 50


# -- claim -----------------------------------------------------------------------------------------------------

def _ready_jobs(queue: JobQueue, n: int) -> list[int]:
    created = queue.observe([seen(f"/watch/{i:03}.mp4") for i in range(n)], now=1.0)
    ids = [job_id for job_id, _ in created]
    assert queue.settle([Settled(job_id, queue.get(job_id).identity, State.READY,  # type: ignore[union-attr]
                                 {"next_attempt_at": 0.0}) for job_id in ids]) == set(ids)
    return ids


def test_claim_is_atomic_across_threads(queue: JobQueue) -> None:
    ids = _ready_jobs(queue, 200)
    workers = 8
    barrier = threading.Barrier(workers)
    got: dict[str, list[int]] = {}
    errors: list[BaseException] = []

    def work(owner: str) -> None:
        mine: list[int] = []
        try:
            barrier.wait(timeout=10)
            while True:
                jobs = queue.claim(owner, limit=3)
                if not jobs:
                    break
                assert all(j.claimed_by == owner for j in jobs)
                mine.extend(j.id for j in jobs)
        except BaseException as exc:  # reported below; a thread must not swallow it
            errors.append(exc)
        got[owner] = mine

    threads = [threading.Thread(target=work, args=(f"worker-{i}",)) for i in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=20)
    assert not any(t.is_alive() for t in threads)
    assert errors == []
    claimed = [job_id for mine in got.values() for job_id in mine]
    assert len(claimed) == len(set(claimed)), "a job was claimed twice"
    assert sorted(claimed) == sorted(ids)
    for owner, mine in got.items():
        for job_id in mine:
            assert queue.get(job_id).claimed_by == owner  # type: ignore[union-attr]
    assert queue.claim("late") == []


def test_in_flight_states_are_claimed_before_ready(queue: JobQueue) -> None:
    ready = queue.add(seen("/watch/ready.mp4"), State.READY)
    url_issued = queue.add(seen("/watch/put.mp4"), State.URL_ISSUED, upload_url="https://up/1", media_id=1)
    uploaded = queue.add(seen("/watch/up.mp4"), State.UPLOADED, media_id=2)
    completed = queue.add(seen("/watch/done.mp4"), State.COMPLETED, media_id=3)
    queue.add(seen("/watch/finished.mp4"), State.COMPLETED, media_id=4, after_done=True)
    for state in (State.SETTLING, State.FAILED, State.SKIPPED):
        queue.add(seen(f"/watch/{state.value}.mp4"), state)
    first = [queue.claim("w")[0].id for _ in range(3)]
    assert sorted(first) == sorted([url_issued, uploaded, completed])
    assert [j.id for j in queue.claim("w", limit=10)] == [ready]
    assert queue.claim("w", limit=10) == []


def test_future_jobs_wait_and_recover_releases_claims(queue: JobQueue) -> None:
    now = time.time()
    a, b = queue.owner("a"), queue.owner("b")  # this node's workers: recover() releases this node's claims
    later, due = _ready_jobs(queue, 2)
    held = queue.claim_id(later, "w")
    assert held is not None and queue.reschedule(held, next_attempt_at=now + 10)
    assert queue.next_due() == 0  # `due` is claimable right away
    assert [j.id for j in queue.claim(a, limit=5, now=now)] == [due]
    assert queue.next_due() == now + 10
    assert queue.claim(a, limit=5, now=now + 9) == []
    assert [j.id for j in queue.claim(b, limit=5, now=now + 10)] == [later]
    assert queue.next_due() is None
    assert {j.id for j in queue.in_flight()} == {due, later}
    released = queue.recover()
    assert {(j.id, j.claimed_by) for j in released} == {(due, a), (later, b)}
    assert queue.in_flight() == []
    assert all(queue.get(i).claimed_by is None for i in (due, later))  # type: ignore[union-attr]
    assert {j.id for j in queue.claim(queue.owner("c"), limit=5, now=now + 10)} == {due, later}


def test_claim_id_takes_only_an_unclaimed_job(queue: JobQueue) -> None:
    [job_id] = _ready_jobs(queue, 1)
    job = queue.claim_id(job_id, "cli")
    assert job is not None and job.claimed_by == "cli"
    assert queue.claim_id(job_id, "daemon") is None
    assert queue.issue_url(job, 9, "https://up/9", time.time())
    assert not queue.release(job)  # guarded by the state it starts from: the job is in url_issued now
    moved = queue.get(job_id)
    assert moved is not None and moved.claimed_by == "cli" and queue.release(moved)
    assert queue.get(job_id).claimed_by is None  # type: ignore[union-attr]


# -- duplicates -------------------------------------------------------------------------------------------------

def test_content_verdict(queue: JobQueue) -> None:
    queue.add(seen("/watch/first.mp4", collection_id=7), State.COMPLETED, media_id=77, content_hash="h1")
    copy = queue.get(queue.add(seen("/watch/copy.mp4", collection_id=7), State.READY))
    other_target = queue.get(queue.add(seen("/watch/elsewhere.mp4", collection_id=8), State.READY))
    assert copy is not None and other_target is not None
    assert queue.content_verdict(copy, "h1") == (Verdict.DUPLICATE, 77)
    assert queue.content_verdict(other_target, "h1") == (Verdict.UPLOAD, None)
    assert queue.get(other_target.id).content_hash == "h1"  # type: ignore[union-attr]
    # Different bytes, same target: upload, and the hash is recorded.
    assert queue.content_verdict(copy, "h2") == (Verdict.UPLOAD, None)
    assert queue.get(copy.id).content_hash == "h2"  # type: ignore[union-attr]


def test_content_verdict_my_uploads_targets_compare_null_safely(queue: JobQueue) -> None:
    queue.add(seen("/watch/a.mp4", collection_id=None), State.COMPLETED, media_id=5, content_hash="h")
    mine = queue.get(queue.add(seen("/watch/b.mp4", collection_id=None), State.READY))
    users = queue.get(queue.add(seen("/watch/c.mp4", collection_id=None, user_id=42), State.READY))
    assert mine is not None and users is not None
    assert queue.content_verdict(mine, "h") == (Verdict.DUPLICATE, 5)
    assert queue.content_verdict(users, "h") == (Verdict.UPLOAD, None)


@pytest.mark.parametrize("state", [State.URL_ISSUED, State.UPLOADED])
def test_content_verdict_waits_for_a_copy_in_flight(queue: JobQueue, state: State) -> None:
    queue.add(seen("/watch/a.mp4"), state, media_id=1, upload_url="https://up/1", content_hash="h")
    b = queue.get(queue.add(seen("/watch/b.mp4"), State.READY))
    assert b is not None
    assert queue.content_verdict(b, "h") == (Verdict.WAIT, None)
    assert queue.get(b.id).content_hash is None  # type: ignore[union-attr]


def test_content_verdict_waits_for_a_ready_job_that_owns_the_bytes(queue: JobQueue) -> None:
    """A job that recorded the hash and went back to ready (a transient failure, an expired URL) will upload
    without asking again (the pipeline only asks while content_hash is NULL): a copy must wait for it."""
    a, b, c = (queue.get(queue.add(seen(f"/watch/{n}.mp4"), State.READY)) for n in "abc")
    assert a is not None and b is not None and c is not None
    [claimed] = queue.claim("w1")
    assert claimed.id == a.id and queue.content_verdict(claimed, "h") == (Verdict.UPLOAD, None)
    assert queue.reschedule(claimed, attempts=1, next_attempt_at=time.time() + 60)  # failed before the URL
    assert queue.content_verdict(b, "h") == (Verdict.WAIT, None)
    again = queue.claim_id(a.id, "w1")
    assert again is not None and queue.issue_url(again, 1, "https://up/a", time.time())
    assert queue.content_verdict(c, "h") == (Verdict.WAIT, None)


def test_ready_copy_waits_while_a_same_sized_job_is_sending_unhashed(queue: JobQueue) -> None:
    """A job that went out before any sibling existed is hashed only in its PUT: until then, a new same-sized
    job cannot know whether it holds the same bytes, and must wait rather than upload a possible duplicate."""
    queue.add(seen("/watch/a.mp4", size=500), State.URL_ISSUED, media_id=1, upload_url="https://up/1",
              claimed_by="worker-1")
    b = queue.get(queue.add(seen("/watch/b.mp4", size=500), State.READY))
    other_size = queue.get(queue.add(seen("/watch/c.mp4", size=501), State.READY))
    assert b is not None and other_size is not None
    assert queue.content_verdict(b, "h") == (Verdict.WAIT, None)
    assert queue.content_verdict(other_size, "h2") == (Verdict.UPLOAD, None)
    sending = queue.get(1)
    assert sending is not None and queue.content_verdict(sending, "h") == (Verdict.UPLOAD, None)  # the sender goes on


def test_a_same_sized_job_merely_waiting_to_resume_is_not_waited_for(queue: JobQueue) -> None:
    """Nobody is sending it (its retry is due later, or no daemon runs beside a lone `upload`): waiting for it
    could be for ever. It asks about its bytes itself when its PUT ends, and is then skipped as a copy."""
    queue.add(seen("/watch/a.mp4", size=500), State.URL_ISSUED, media_id=1, upload_url="https://up/1")
    b = queue.get(queue.add(seen("/watch/b.mp4", size=500), State.READY))
    assert b is not None and queue.content_verdict(b, "h") == (Verdict.UPLOAD, None)
    drive(queue, b.id, State.COMPLETED, media_id=2, content_hash="h")
    resumed = queue.get(1)
    assert resumed is not None and queue.content_verdict(resumed, "h") == (Verdict.DUPLICATE, 2)


def test_content_verdict_ignores_failed_and_skipped_copies(queue: JobQueue) -> None:
    queue.add(seen("/watch/a.mp4"), State.FAILED, content_hash="h")
    queue.add(seen("/watch/b.mp4"), State.SKIPPED, content_hash="h")
    c = queue.get(queue.add(seen("/watch/c.mp4"), State.READY))
    assert c is not None and queue.content_verdict(c, "h") == (Verdict.UPLOAD, None)


def test_content_verdict_is_atomic_across_threads(queue: JobQueue, state_db: str | Path) -> None:
    """Many copies of the same bytes asking at once, half of them through another connection (another node,
    with PostgreSQL): exactly one may upload."""
    other = open_queue(state_db, node="node-b")
    try:
        ids = [queue.add(seen(f"/watch/{i}.mp4"), State.READY) for i in range(12)]
        jobs = [queue.claim_id(job_id, f"worker-{job_id}") for job_id in ids]  # as the pipeline holds them
        answers = at_once(*[functools.partial((queue if j.id % 2 else other).content_verdict, j, "same")
                            for j in jobs])
        assert sorted(verdict for verdict, _ in answers) == ["upload"] + ["wait"] * (len(jobs) - 1)
    finally:
        other.close()


# -- retry -------------------------------------------------------------------------------------------------------

def test_retry_puts_failed_jobs_back(queue: JobQueue) -> None:
    plain = queue.add(seen("/watch/a.mp4"), State.FAILED, attempts=12, next_attempt_at=9e9, reason="exhausted")
    with_url = queue.add(seen("/watch/b.mp4"), State.FAILED, attempts=12, upload_url="https://up/b", media_id=3)
    done = queue.add(seen("/watch/c.mp4"), State.COMPLETED, attempts=2, media_id=4, after_done=True)
    other_failed = queue.add(seen("/watch/d.mp4"), State.FAILED, attempts=5)
    before = time.time()
    assert queue.retry([plain, with_url, done]) == (sorted([plain, with_url]), {})
    a, b, c, d = (queue.get(i) for i in (plain, with_url, done, other_failed))
    assert a is not None and b is not None and c is not None and d is not None
    assert (a.state, a.attempts, a.reason) == (State.READY, 0, None)
    assert before <= a.next_attempt_at <= time.time()
    assert (b.state, b.attempts, b.upload_url, b.media_id) == (State.URL_ISSUED, 0, "https://up/b", 3)
    assert (c.state, c.attempts) == (State.COMPLETED, 2)
    assert (d.state, d.attempts) == (State.FAILED, 5)
    assert queue.retry(None) == ([other_failed], {})
    assert queue.get(other_failed).state is State.READY  # type: ignore[union-attr]
    assert queue.retry(None) == ([], {})
    assert {j.id for j in queue.claim("w", limit=10)} == {plain, with_url, other_failed}


def test_retry_resumes_at_the_step_the_job_failed_at(queue: JobQueue) -> None:
    """Failed while completing: Studio has the bytes, so only complete again (no second PUT of a big file)."""
    at_complete = queue.add(seen("/watch/a.mp4"), State.FAILED, upload_url="https://up/a", media_id=3,
                            content_hash="h1", failed_state="uploaded")
    at_put = queue.add(seen("/watch/b.mp4"), State.FAILED, upload_url="https://up/b", media_id=4,
                       content_hash="h2", failed_state="url_issued")
    at_generate = queue.add(seen("/watch/c.mp4"), State.FAILED, content_hash="h3", failed_state="ready")
    maybe_sent = queue.add(seen("/watch/d.url", kind="link"), State.FAILED, url_issued_at=123.0,
                           failed_state="url_issued")
    assert queue.retry(None).moved == sorted([at_complete, at_put, at_generate, maybe_sent])
    a, b, c, d = (queue.get(i) for i in (at_complete, at_put, at_generate, maybe_sent))
    assert a is not None and b is not None and c is not None and d is not None
    assert (d.state, d.url_issued_at) == (State.URL_ISSUED, 123.0)  # reconciled before it is sent again
    assert (a.state, a.media_id, a.content_hash, a.failed_state) == (State.UPLOADED, 3, "h1", None)
    assert (b.state, b.media_id, b.content_hash) == (State.URL_ISSUED, 4, None)  # asked about duplicates again
    assert (c.state, c.content_hash) == (State.READY, None)


def test_retry_refuses_a_job_whose_file_has_a_live_job(queue: JobQueue) -> None:
    """The file was found again after its job failed (a new job, still to be uploaded): putting the old one back
    would send the file twice. PostgreSQL's unique index on the live jobs' paths refused it with an error; SQLite
    let it through. Now both refuse it, naming the live job, and put the others back."""
    old = queue.add(seen("/watch/a.mp4"), State.FAILED, failed_state="ready")
    live = queue.add(seen("/watch/a.mp4"), State.READY)
    other = queue.add(seen("/watch/b.mp4"), State.FAILED, failed_state="ready")
    why = f"job {live} for the same file is already queued (waiting)"
    assert queue.retry([old, other]) == ([other], {old: why})
    assert queue.get(old).state is State.FAILED  # type: ignore[union-attr]
    assert queue.retry(None) == ([], {old: why})


def test_retry_of_two_failed_jobs_for_one_file_puts_back_the_newer(queue: JobQueue) -> None:
    older = queue.add(seen("/watch/a.mp4"), State.FAILED, failed_state="ready")
    newer = queue.add(seen("/watch/a.mp4"), State.FAILED, failed_state="ready")
    assert queue.retry(None) == ([newer], {older: f"job {newer} for the same file is already queued (waiting)"})
    assert [j.id for j in queue.claim("w", limit=10)] == [newer]


# -- reading for status ---------------------------------------------------------------------------------------

def test_counts_list_every_state(queue: JobQueue) -> None:
    assert queue.counts() == {state: 0 for state in STATES}
    assert set(STATES) == {"settling", "ready", "url_issued", "uploaded", "completed", "failed", "skipped"}
    queue.add(seen("/watch/a.mp4"), State.READY)
    queue.add(seen("/watch/b.mp4"), State.READY)
    queue.add(seen("/watch/c.mp4"), State.FAILED)
    counts = queue.counts()
    assert counts == {**{state: 0 for state in STATES}, "ready": 2, "failed": 1}


def test_oldest_waiting(queue: JobQueue) -> None:
    assert queue.oldest_waiting() is None
    [(old_done, _)] = queue.observe([seen("/watch/old.mp4")], now=50.0)
    drive(queue, old_done, State.COMPLETED)
    [(settling, _)] = queue.observe([seen("/watch/settling.mp4")], now=100.0)
    queue.add(seen("/watch/new.mp4"), State.READY)
    oldest = queue.oldest_waiting()
    assert oldest is not None and oldest.id == settling
    drive(queue, settling, State.SKIPPED)
    oldest = queue.oldest_waiting()
    assert oldest is not None and oldest.path == "/watch/new.mp4"


def test_recent_failures_newest_first(queue: JobQueue) -> None:
    ids = [queue.add(seen(f"/watch/{i}.mp4"), State.READY) for i in range(4)]
    for job_id in (ids[2], ids[0], ids[3]):
        drive(queue, job_id, State.FAILED, last_error=f"boom {job_id}")
        time.sleep(0.002)  # updated_at orders them: distinct on any clock
    assert [j.id for j in queue.recent_failures(limit=2)] == [ids[3], ids[0]]
    assert [j.id for j in queue.recent_failures()] == [ids[3], ids[0], ids[2]]
    assert queue.recent_failures()[0].last_error == f"boom {ids[3]}"


def test_latest_by_path(queue: JobQueue) -> None:
    assert queue.latest_by_path(["/watch/a.mp4"]) == {}
    [(first, _)] = queue.observe([seen("/watch/a.mp4", inode=1, size=10, mtime_ns=5)], now=1.0)
    drive(queue, first, State.COMPLETED)
    queue.observe([seen("/watch/a.mp4", inode=2, size=20, mtime_ns=6), seen("/watch/b.mp4", inode=3, size=30,
                                                                            mtime_ns=7)], now=2.0)
    assert queue.latest_by_path(["/watch/a.mp4", "/watch/b.mp4", "/watch/c.mp4"]) == {
        b"/watch/a.mp4": ("settling", (2, 20, 6)), b"/watch/b.mp4": ("settling", (3, 30, 7))}
    assert queue.latest_by_path(["/watch/b.mp4"]) == {b"/watch/b.mp4": ("settling", (3, 30, 7))}  # only those asked


def test_each_job_streams_newest_first_and_next_due_sees_only_claimable_work(queue: JobQueue) -> None:
    from studio_watch.queue.reads import PAGE

    ids = [i for i, _ in queue.observe([seen(f"/watch/{n}.mp4") for n in range(PAGE + 5)], now=1.0)]
    assert queue.next_due() is None  # settling: nothing to claim yet
    drive(queue, ids[0], State.FAILED)
    drive(queue, ids[1], State.READY)
    drive(queue, ids[2], State.FAILED)
    assert [j.id for j in queue.each_job()] == ids[::-1]  # across pages
    assert [j.id for j in queue.each_job(limit=3)] == ids[::-1][:3]
    assert [j.id for j in queue.each_job("failed")] == [ids[2], ids[0]]
    assert [j.id for j in queue.each_job("ready", limit=5)] == [ids[1]]
    assert [j.id for j in queue.jobs()] == ids  # the list form stays oldest first
    assert queue.next_due() == 0.0
    assert queue.claim_id(ids[1], "w") is not None
    assert queue.next_due() is None  # a claimed job is nobody else's to wait for
    assert {j.id for j in queue.recent_failures()} == {ids[0], ids[2]}
    assert [j.id for j in queue.in_flight()] == [ids[1]]


# -- paths that are not plain text -------------------------------------------------------------------------------

def test_undecodable_path_round_trips(queue: JobQueue) -> None:
    path = os.fsdecode(b"/watch/caf\xe9.mp4")
    folder = os.fsdecode(b"/watch/r\xf6om")
    [(job_id, _)] = queue.observe([seen(path, folder=folder, move_to=folder)], now=1.0)
    job = queue.get(job_id)
    assert job is not None
    assert os.fsencode(job.path) == b"/watch/caf\xe9.mp4"  # type: ignore[arg-type]
    assert os.fsencode(job.folder) == b"/watch/r\xf6om"  # type: ignore[arg-type]
    assert job.move_to == folder
    assert job.display_path == "/watch/caf\\xe9.mp4"
    assert b"/watch/caf\xe9.mp4" in queue.latest_by_path([path])
    assert queue.observe([seen(path, inode=job.inode, folder=folder)], now=2.0) == []  # found again by its bytes
    job = drive(queue, job_id, State.COMPLETED, after_done=False)
    held = queue.claim_id(job_id, "w")
    assert held is not None and queue.finish(held, final_path=os.fsdecode(b"/done/caf\xe9.mp4"))
    assert os.fsencode(queue.get(job_id).final_path) == b"/done/caf\xe9.mp4"  # type: ignore[union-attr, arg-type]


def test_newline_and_nfd_paths_round_trip_unchanged(queue: JobQueue) -> None:
    nfd = unicodedata.normalize("NFD", "/watch/Vorlesung Übung é.mp4")
    nfc = unicodedata.normalize("NFC", nfd)
    assert nfd != nfc
    newline = "/watch/line one\nline two.mp4"
    created = queue.observe([seen(nfd), seen(nfc), seen(newline)], now=1.0)
    assert len(created) == 3  # NFD and NFC are different names on Linux: two files, two jobs
    paths = {queue.get(job_id).path for job_id, _ in created}  # type: ignore[union-attr]
    assert paths == {nfd, nfc, newline}
    assert {j.display_path for j in queue.jobs()} == {nfd, nfc, newline}


def test_a_spent_upload_url_is_forgotten_and_error_text_is_redacted(queue: JobQueue) -> None:
    job_id = queue.add(seen("/watch/a.mp4"), State.READY)
    job = drive(queue, job_id, State.URL_ISSUED, upload_url="https://up.example/u/1?signature=s3cr3t")
    assert job.upload_url is not None  # still needed: the PUT may be redone
    held = queue.claim_id(job_id, "w")
    assert held is not None and queue.reschedule(held, next_attempt_at=0.0,
                                                 last_error="put: HTTP 500: /u/1?signature=s3cr3t")
    job = queue.get(job_id)
    assert job is not None and "s3cr3t" not in (job.last_error or "") and job.last_error
    done = drive(queue, job_id, State.COMPLETED)
    assert done.upload_url is None


# -- the machine misbehaving (issue 16) --------------------------------------------------------------------------

def test_clamp_times_brings_times_from_a_wrong_clock_back(queue: JobQueue) -> None:
    now = queue.now()
    ahead = now + 10 * 86400  # written while the clock ran ten days fast
    (settling, _), = queue.observe([seen("/watch/a.mp4")], now=ahead)
    far = queue.add(seen("/watch/b.mp4"), State.READY, next_attempt_at=ahead)
    near = queue.add(seen("/watch/c.mp4"), State.READY, next_attempt_at=now + 60)
    # stable_since and created_at of the settling job, next_attempt_at of the far one; the near wait is kept
    assert queue.clamp_times(now, max_wait=3600) == 3
    a, b, c = queue.get(settling), queue.get(far), queue.get(near)
    assert a and b and c
    for value in (a.stable_since, a.created_at, b.next_attempt_at):
        assert value is not None and abs(value - now) < 5  # PostgreSQL clamps to the server's clock: ~ now here
    assert c.next_attempt_at == pytest.approx(now + 60)
    assert queue.clamp_times(queue.now(), max_wait=3600) == 0  # nothing left to clamp


def test_probe_write_and_same_file_hold_on_a_healthy_database(queue: JobQueue) -> None:
    queue.probe_write()  # would raise StorageFull on a full disk
    assert queue.meta("write_probe") is not None
    queue.check_same_file()  # a file still in place (SQLite), nothing to check (PostgreSQL)


def test_a_settling_file_marked_as_uploaded_is_skipped_with_its_media(queue: JobQueue) -> None:
    (job_id, _), = queue.observe([seen("/watch/a.mp4")])
    job = queue.get(job_id)
    assert job is not None
    assert queue.settle([Settled(job.id, job.identity, State.SKIPPED,
                                 {"reason": "already uploaded (marked on the file)", "media_id": 42})]) == {job.id}
    done = queue.get(job_id)
    assert done is not None and (done.state, done.media_id) == (State.SKIPPED, 42)
