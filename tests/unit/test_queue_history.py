"""The queue with a long history: every query an idle daemon or a command runs walks an index (EXPLAIN QUERY PLAN
says so) and costs the same with 100 times the history, jobs stream newest first, and the per-state counts are
recounted only when a job changed."""

from __future__ import annotations

import itertools
import sqlite3
from pathlib import Path
from typing import Callable, Iterator

import pytest

from studio_watch.queue import Seen, State
from studio_watch.queue.reads import PAGE
from studio_watch.queue.sqlite import SqliteQueue as JobQueue

_inodes = itertools.count(1)


def seen(path: str) -> Seen:
    return Seen(path=path, folder="/watch", size=100, mtime_ns=1, inode=next(_inodes), device=1, collection_id=1,
                user_id=None, auto_caption=False, after_upload="keep", move_to=None, duplicates="skip",
                settle_seconds=0)


@pytest.fixture
def queue(tmp_path: Path) -> Iterator[JobQueue]:
    q = JobQueue(tmp_path / "queue.db")
    try:
        yield q
    finally:
        q.close()


def history(queue: JobQueue, n: int) -> list[int]:
    """`n` jobs, every third one completed with its after-upload action done, the rest failed or skipped."""
    ids = [job_id for job_id, _ in queue.observe([seen(f"/watch/{i}.mp4") for i in range(n)], now=1.0)]
    states = (State.COMPLETED, State.FAILED, State.SKIPPED)
    # Written as the years wrote them, straight into the file (the transitions to get there are tested elsewhere).
    set_rows(queue, "UPDATE jobs SET state = ?, after_done = 1 WHERE id = ?",
             [(states[i % 3].value, job_id) for i, job_id in enumerate(ids)])
    queue.recover()  # a daemon has started on it before: its one-time cleanups of older rows are done
    return ids


def set_rows(queue: JobQueue, sql: str, rows: list[tuple[object, ...]]) -> None:
    with queue._mutex:
        queue._db.execute("BEGIN")
        queue._db.executemany(sql, rows)
        queue._db.execute("COMMIT")


def plans(queue: JobQueue, call: Callable[[], object]) -> list[tuple[str, str]]:
    """(statement, query plan) of every statement on `jobs` that `call` runs on the queue's connection."""
    statements: list[str] = []
    queue._db.set_trace_callback(statements.append)
    try:
        result = call()
        if isinstance(result, Iterator):
            list(result)
    finally:
        queue._db.set_trace_callback(None)
    probe = sqlite3.connect(queue.path)
    try:
        return [(sql, " / ".join(row[3] for row in probe.execute("EXPLAIN QUERY PLAN " + sql)))
                for sql in statements if " jobs" in sql and not sql.startswith(("BEGIN", "COMMIT", "PRAGMA"))]
    finally:
        probe.close()


def vm_steps(queue: JobQueue, call: Callable[[JobQueue], object]) -> int:
    """SQLite virtual-machine instructions (in hundreds) that `call` costs: the work, whatever the clock says."""
    steps = [0]

    def count() -> int:
        steps[0] += 1
        return 0

    queue._db.set_progress_handler(count, 100)
    try:
        result = call(queue)
        if isinstance(result, Iterator):
            list(result)
    finally:
        queue._db.set_progress_handler(None, 100)
    return steps[0]


QUERIES = [
    ("next_due", lambda q: q.next_due()),
    ("in_flight", lambda q: q.in_flight()),
    ("recover", lambda q: q.recover()),
    ("recent_failures", lambda q: q.recent_failures()),
    ("oldest_waiting", lambda q: q.oldest_waiting()),
    ("settling", lambda q: q.settling()),
    ("latest_by_path", lambda q: q.latest_by_path(["/watch/1.mp4", "/watch/new.mp4"])),
    ("newest jobs", lambda q: q.each_job(limit=5)),
    ("newest failed jobs", lambda q: q.each_job("failed", limit=5)),
    ("waiting jobs", lambda q: q.each_job("ready", limit=5)),
    ("claim", lambda q: q.claim("w")),
]


@pytest.mark.parametrize("name, call", QUERIES)
def test_idle_and_command_queries_never_scan_the_history(queue: JobQueue, name: str,
                                                         call: Callable[[JobQueue], object]) -> None:
    history(queue, 30)
    seen_plans = plans(queue, lambda: call(queue))
    assert seen_plans, f"{name} ran no statement on jobs"
    for sql, plan in seen_plans:
        if name.startswith(("newest", "recent")):  # over the history itself: walked in order, never sorted
            assert "TEMP B-TREE" not in plan, f"{name} sorts what it reads: {sql!r} → {plan}"
        if plan == "SCAN jobs":  # the table in id order: only bounded, newest or oldest first (`jobs`)
            assert " ORDER BY id " in sql and " LIMIT " in sql, f"{name} walks every row: {sql!r}"
            continue
        # a SEARCH, or a SCAN of a (partial) index; never "SCAN jobs" alone, a walk of every row
        assert "SCAN jobs" not in plan.replace("SCAN jobs USING", ""), f"{name}: {sql!r} → {plan}"
        assert "USING INDEX" in plan or "USING COVERING INDEX" in plan or "INTEGER PRIMARY KEY" in plan, \
            f"{name}: {sql!r} → {plan}"


def test_next_due_sees_only_claimable_work(queue: JobQueue) -> None:
    ids = history(queue, 9)
    assert queue.next_due() is None  # completed with the action done, failed, skipped: nothing to do
    set_rows(queue, "UPDATE jobs SET after_done = 0, next_attempt_at = 50.0 WHERE id = ?", [(ids[0],)])  # a move to do
    assert queue.next_due() == 50.0
    later = queue.add(seen("/watch/later.mp4"), State.READY, next_attempt_at=99.0)
    set_rows(queue, "UPDATE jobs SET next_attempt_at = 20.0 WHERE id = ?", [(later,)])
    assert queue.next_due() == 20.0
    queue.claim_id(later, "someone")
    assert queue.next_due() == 50.0  # a claimed job is nobody else's to wait for


def test_jobs_stream_newest_first_across_pages(queue: JobQueue) -> None:
    ids = history(queue, PAGE * 2 + 7)
    assert [j.id for j in queue.each_job()] == ids[::-1]
    assert [j.id for j in queue.each_job(limit=PAGE + 3)] == ids[::-1][:PAGE + 3]
    failed = [i for n, i in enumerate(ids) if n % 3 == 1]
    assert [j.id for j in queue.each_job("failed")] == failed[::-1]
    assert [j.id for j in queue.each_job("failed", limit=4)] == failed[::-1][:4]
    assert [j.id for j in queue.jobs()] == ids  # the list form stays oldest first
    assert list(queue.each_job("uploaded")) == []


def test_streaming_does_not_hold_the_connection_between_pages(queue: JobQueue) -> None:
    history(queue, PAGE + 1)
    stream = queue.each_job()
    next(stream)
    queue.add(seen("/watch/meanwhile.mp4"), State.READY)  # a worker commits while `jobs` is half printed
    assert len(list(stream)) == PAGE  # the rest of what was there, and nothing lost


def test_counts_are_recounted_only_when_a_job_changed(queue: JobQueue, tmp_path: Path) -> None:
    ids = history(queue, 3000)
    first = queue.counts()
    assert first["completed"] == first["failed"] == first["skipped"] == 1000
    assert vm_steps(queue, lambda q: q.counts()) == 0  # nothing changed: no count of 3,000 rows
    queue.set_meta("daemon", "{}", durable=False)  # the daemon's snapshot every 5 s is no job's change
    assert vm_steps(queue, lambda q: q.counts()) == 0
    queue.add(seen("/watch/new.mp4"), State.READY)  # a change by this connection
    assert queue.counts()["ready"] == 1
    conn = sqlite3.connect(tmp_path / "queue.db", isolation_level=None)
    try:
        conn.execute("DELETE FROM jobs WHERE id = ?", (ids[1],))  # and by another process (an operator's pruning)
    finally:
        conn.close()
    assert queue.counts()["failed"] == 999 and sum(queue.counts().values()) == 3000


def test_each_job_is_lazy(queue: JobQueue) -> None:
    """The first job arrives before the rest are read: one page, not the table."""
    history(queue, PAGE * 3)
    statements: list[str] = []
    queue._db.set_trace_callback(statements.append)
    try:
        first = next(queue.each_job())
    finally:
        queue._db.set_trace_callback(None)
    assert first.id == PAGE * 3
    assert sum(1 for s in statements if s.startswith("SELECT")) == 1 and f"LIMIT {PAGE}" in statements[-1]


@pytest.mark.parametrize("name, call", QUERIES)
def test_query_cost_does_not_grow_with_the_history(tmp_path: Path, name: str,
                                                    call: Callable[[JobQueue], object]) -> None:
    """A hundred times the history, the same work: what `next_due`'s old OR clause failed (it walked every
    completed row through an index the planner chose, a plan EXPLAIN alone would pass)."""
    costs = []
    for n in (30, 3000):
        q = JobQueue(tmp_path / f"{n}.db")
        try:
            history(q, n)
            q.add(seen("/watch/waiting.mp4"), State.READY)
            costs.append(vm_steps(q, call))
        finally:
            q.close()
    small, big = costs
    assert big <= 2 * small + 5, f"{name}: {small} → {big} (hundreds of VM steps) for 100× the history"
