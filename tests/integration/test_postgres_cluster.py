"""What only a shared PostgreSQL queue does: several nodes (each a PostgresQueue of its own, as each machine of
a cluster has) on one real database started by the suite."""

from __future__ import annotations

import itertools
import threading
import time
from typing import Iterator

import psycopg
import pytest

from studio_watch.errors import DatabaseTooNew, DatabaseUnavailable, NodeNameInUse
from studio_watch.queue import Settled, State, open_queue
from studio_watch.queue.base import JobQueue

from ..conftest import PostgresServer, drive, wait_until
from ..unit.test_jobqueue import seen

LEASE = 30.0


@pytest.fixture
def nodes(pg_uri: str) -> Iterator[list[JobQueue]]:
    opened = [open_queue(pg_uri, node=f"node-{n}", lease_seconds=LEASE) for n in "abc"]
    try:
        yield opened
    finally:
        for q in opened:
            q.close()


def test_each_file_is_one_job_however_many_nodes_see_it(nodes: list[JobQueue]) -> None:
    files = [seen(f"/share/{i:03}.mp4", inode=5000 + i) for i in range(60)]
    barrier = threading.Barrier(len(nodes))
    created: list[int] = []
    lock = threading.Lock()

    def watch(q: JobQueue) -> None:
        barrier.wait(timeout=10)
        for start in range(0, len(files), 7):  # in batches, each node in its own order
            batch = files[start:start + 7] if q is nodes[0] else list(reversed(files[start:start + 7]))
            got = q.observe(batch)
            with lock:
                created.extend(job_id for job_id, _ in got)

    threads = [threading.Thread(target=watch, args=(q,)) for q in nodes]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert len(created) == len(set(created)) == len(files)
    assert nodes[1].counts()["settling"] == len(files)
    # Finished and seen again unchanged: still one job; a new recording under the same name: one new job.
    drive(nodes[0], created[0], State.COMPLETED)
    path = nodes[0].get(created[0]).path  # type: ignore[union-attr]
    again = next(f for f in files if f.path == path)
    assert all(q.observe([again]) == [] for q in nodes)
    newer = seen(path, inode=again.inode + 10**6)  # type: ignore[arg-type]
    assert sum(len(q.observe([newer])) for q in nodes) == 1


def test_a_settle_decision_based_on_an_old_look_does_not_apply(nodes: list[JobQueue]) -> None:
    """Node a saw the file stable; node b saw it grow meanwhile: b's observation wins, the file keeps settling."""
    a, b, _ = nodes
    [(job_id, s)] = a.observe([seen("/share/growing.mp4", inode=7, size=100)])
    looked = a.get(job_id)
    assert looked is not None
    assert b.observe([seen("/share/growing.mp4", inode=7, size=200)]) == []
    assert a.settle([Settled(job_id, looked.identity, State.READY, {"next_attempt_at": 0.0})]) == set()
    job = b.get(job_id)
    assert job is not None and (job.state, job.size) == (State.SETTLING, 200)


def test_a_dead_nodes_job_is_taken_over_after_its_lease_at_its_step(nodes: list[JobQueue]) -> None:
    a, b, _ = nodes
    job_id = a.add(seen("/share/a.mp4"), State.READY)
    [held] = a.claim(a.owner("worker-1"))
    assert a.issue_url(held, 41, "https://up/41", time.time())
    a.let_go(held)  # as if node a were SIGKILLed: nothing extends its lease any more
    assert b.claim(b.owner("worker-1")) == []  # the lease still runs
    [taken] = b.claim(b.owner("worker-1"), now=b.now() + LEASE + 1)
    assert (taken.id, taken.state, taken.media_id, taken.upload_url) == (job_id, State.URL_ISSUED, 41, "https://up/41")
    assert taken.claimed_by is not None and taken.claimed_by.startswith("node-b/")


def test_a_node_back_from_a_partition_cannot_finish_a_job_taken_over(nodes: list[JobQueue]) -> None:
    a, b, _ = nodes
    a.add(seen("/share/a.mp4", move_to="/share/done"), State.READY)
    [stale] = a.claim(a.owner("worker-1"))
    assert a.issue_url(stale, 1, "https://up/1", time.time())
    stale = a.get(stale.id)  # type: ignore[assignment]
    a.let_go(stale)
    [taken] = b.claim(b.owner("worker-1"), now=b.now() + LEASE + 1)
    # a's PUT ends now: every transition it tries is fenced off, and it may not act on the file either.
    assert not a.mark_uploaded(stale, "h")
    assert not a.renew(stale)
    assert not a.fail(stale, "late")
    assert not a.release(stale)
    assert b.mark_uploaded(taken, "h")
    job = b.get(taken.id)
    assert job is not None and job.state is State.UPLOADED and job.claimed_by == taken.claimed_by


def test_the_heartbeat_keeps_a_working_nodes_lease(pg_uri: str) -> None:
    a = open_queue(pg_uri, node="node-a", lease_seconds=0.6)
    b = open_queue(pg_uri, node="node-b", lease_seconds=0.6)
    try:
        a.add(seen("/share/a.mp4"), State.READY)
        [held] = a.claim(a.owner("worker-1"))
        first = held.lease_expires_at
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:  # well past several lease times
            assert b.claim(b.owner("worker-1")) == []
            time.sleep(0.1)
        assert a.get(held.id).lease_expires_at > first  # type: ignore[union-attr, operator]
        assert a.release(held)
    finally:
        a.close()
        b.close()


def test_recover_releases_only_this_nodes_claims(nodes: list[JobQueue]) -> None:
    a, b, _ = nodes
    ids = [a.add(seen(f"/share/{i}.mp4"), State.READY) for i in range(2)]
    [mine] = a.claim(a.owner("w"))
    [theirs] = b.claim(b.owner("w"))
    assert [j.id for j in a.recover()] == [mine.id]
    assert a.get(theirs.id).claimed_by == theirs.claimed_by  # type: ignore[union-attr]
    assert sorted(ids) == sorted([mine.id, theirs.id])


def test_two_live_daemons_with_one_name_are_refused(pg_uri: str) -> None:
    first = open_queue(pg_uri, node="room-101")
    first.register_node("room-101", 111, "host-a")
    second = open_queue(pg_uri, node="room-101")
    try:
        with pytest.raises(NodeNameInUse, match="room-101.*pid 111 on host-a"):
            second.register_node("room-101", 222, "host-b")
        assert [(n["name"], n["live"], n["host"]) for n in second.nodes()] == [("room-101", True, "host-a")]
        first.close()
        # The name is free once its daemon is gone: the server drops the closed session's advisory lock a
        # moment after the disconnect, not at once, so the second daemon may be refused until then.
        assert wait_until(lambda: _registers(second, "room-101", 222, "host-b"), 10)
        assert [(n["name"], n["live"], n["pid"]) for n in second.nodes()] == [("room-101", True, 222)]
    finally:
        first.close()
        second.close()


def _registers(queue: JobQueue, name: str, pid: int, host: str) -> bool:
    try:
        queue.register_node(name, pid, host)
    except NodeNameInUse:
        return False
    return True


def test_pause_and_meta_are_shared(nodes: list[JobQueue]) -> None:
    a, b, _ = nodes
    a.set_meta("paused", '{"reason": "Studio down", "since": 1}')
    assert b.meta("paused") == '{"reason": "Studio down", "since": 1}'
    b.set_meta("paused", None)
    assert a.meta("paused") is None


def test_shared_lock_is_one_at_a_time_across_nodes(nodes: list[JobQueue]) -> None:
    inside: list[int] = []
    overlaps: list[int] = []

    def use(q: JobQueue) -> None:
        for _ in range(5):
            with q.shared_lock("oauth-refresh"):
                inside.append(1)
                if len(inside) > 1:
                    overlaps.append(1)
                time.sleep(0.01)
                inside.pop()

    threads = [threading.Thread(target=use, args=(q,)) for q in nodes]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert overlaps == []


def test_an_older_node_refuses_a_newer_schema(pg_uri: str) -> None:
    open_queue(pg_uri, node="n").close()
    with psycopg.connect(pg_uri, autocommit=True) as conn:
        conn.execute("UPDATE studio_watch_schema SET version = version + 1")
    with pytest.raises(DatabaseTooNew, match="newer studio-watch"):
        open_queue(pg_uri, node="n")
    with psycopg.connect(pg_uri, autocommit=True) as conn:  # left alone
        assert conn.execute("SELECT count(*) FROM jobs").fetchone() == (0,)


def test_a_schema_1_database_gets_the_failures_index(pg_uri: str) -> None:
    q = open_queue(pg_uri, node="n")
    job_id = q.add(seen("/share/a.mp4"), State.READY)
    q.close()
    with psycopg.connect(pg_uri, autocommit=True) as conn:  # what a node of the first release left
        conn.execute("DROP INDEX jobs_failed")
        conn.execute("UPDATE studio_watch_schema SET version = 1")
    q = open_queue(pg_uri, node="n")
    try:
        assert q.get(job_id) is not None
        with psycopg.connect(pg_uri, autocommit=True) as conn:
            assert conn.execute("SELECT version FROM studio_watch_schema").fetchall() == [(2,)]
            assert conn.execute("SELECT indexdef FROM pg_indexes WHERE indexname = 'jobs_failed'").fetchone()[0] \
                .endswith("(updated_at) WHERE (state = 'failed'::text)")
    finally:
        q.close()


def test_a_server_restart_is_an_outage_then_the_queue_goes_on(pg_uri: str,
                                                              postgres_server: PostgresServer) -> None:
    q = open_queue(pg_uri, node="n")
    try:
        job_id = q.add(seen("/share/a.mp4"), State.READY)
        postgres_server.stop("immediate")
        try:
            with pytest.raises(DatabaseUnavailable, match="postgresql://"):
                q.counts()
        finally:
            postgres_server.start()
        assert q.get(job_id).state is State.READY  # type: ignore[union-attr]
    finally:
        q.close()


def test_the_password_never_shows_in_where(pg_uri: str) -> None:
    uri = pg_uri.replace("postgres@", "postgres:s3cret@")
    q = open_queue(uri, node="n")  # trust authentication: the password is not checked
    try:
        assert "s3cret" not in q.where and "***" in q.where
    finally:
        q.close()


def test_a_job_made_ready_on_one_node_wakes_the_others(nodes: list[JobQueue]) -> None:
    a, b, _ = nodes
    woken = threading.Event()
    b.on_work(woken.set)
    assert not woken.wait(0.5)  # nothing became ready: no wake-up
    n = itertools.count()
    # The listener sets up its LISTEN on a connection of its own: jobs made ready until one wakes it.
    assert wait_until(lambda: bool(a.add(seen(f"/share/{next(n)}.mp4"), State.READY)) and woken.wait(0.2), 10), \
        "no NOTIFY reached the other node"


def test_the_node_name_is_held_again_after_a_server_restart(pg_uri: str, postgres_server: PostgresServer) -> None:
    first = open_queue(pg_uri, node="room-101")
    first.register_node("room-101", 111, "host-a")
    try:
        postgres_server.restart("fast")
        assert wait_until(lambda: _beats(first), 10)  # its heartbeat reconnects and takes the name again
        second = open_queue(pg_uri, node="room-101")
        try:
            with pytest.raises(NodeNameInUse):
                second.register_node("room-101", 222, "host-b")
        finally:
            second.close()
    finally:
        first.close()


def _beats(q: JobQueue) -> bool:
    try:
        q.keep_alive()  # type: ignore[attr-defined]
        return True
    except DatabaseUnavailable:
        return False


def test_a_pause_tripped_on_one_node_pauses_and_resumes_the_others(nodes: list[JobQueue]) -> None:
    from studio_watch.config import RetryConfig
    from studio_watch.daemon.pause import PauseSwitch

    stop = threading.Event()
    a, b = (PauseSwitch(q, None, RetryConfig(), stop) for q in nodes[:2])  # type: ignore[arg-type]
    a.trip("Studio answered 503 to /ping")
    assert a.paused and not b.paused
    b.follow_shared()
    assert b.paused and b.reason == "Studio answered 503 to /ping"
    a.clear()  # node a's probe got an answer
    b.follow_shared()
    assert not b.paused and b.wait_resumed(0)


def test_a_full_server_disk_pauses_like_a_full_sqlite_disk(nodes: list[JobQueue]) -> None:
    from studio_watch.errors import StorageFull

    a = nodes[0]
    with pytest.raises(StorageFull, match="free space"):
        with a._tx():  # the server answering SQLSTATE 53100, as a write on a full disk does
            raise psycopg.errors.DiskFull("could not extend file: No space left on device")
    a.probe_write()  # the connection was kept: the next write goes through once there is room
    assert a.meta("write_probe") is not None
