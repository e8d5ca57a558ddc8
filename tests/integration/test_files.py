"""The life of a source file: duplicates, vanishing, empty and unreadable files, moves, limits, odd names."""

from __future__ import annotations

import os
import threading
import time
import unicodedata
from pathlib import Path
from typing import Iterator

import pytest

from studio_watch import config as cfg
from studio_watch.daemon.app import Daemon
from studio_watch.queue import State, open_queue
from studio_watch.sandbox.server import Faults, Sandbox

from ..conftest import run_cli, sha256_of, wait_until, write_config, write_media


class InProcess:
    """The daemon in a thread of the test process: fast, and its queue is open to inspection."""

    def __init__(self, config_path: Path) -> None:
        self.config = cfg.load(config_path)
        self.stop = threading.Event()
        self.daemon = Daemon(self.config, self.stop)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        assert self.daemon.ready.wait(15), self.error
        self.queue = open_queue(self.config.state_db)

    def _run(self) -> None:
        try:
            self.daemon.run()
        except BaseException as exc:  # surfaced by the assertion in __init__
            self.error = exc
            self.daemon.ready.set()

    def jobs(self, state: str | None = None) -> list:
        return self.queue.jobs(state)

    def wait_states(self, expected: dict[str, int], timeout: float = 20) -> bool:
        def match() -> bool:
            counts = {k: v for k, v in self.queue.counts().items() if v}
            return counts == expected
        return wait_until(match, timeout)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=30)
        self.queue.close()


@pytest.fixture
def start(tmp_path, sandbox) -> Iterator:
    running: list[InProcess] = []

    def go(folders: list[dict], **top) -> InProcess:
        d = InProcess(write_config(tmp_path, sandbox.url, folders, **top))
        running.append(d)
        return d

    yield go
    for d in running:
        d.close()


def test_duplicate_bytes_are_skipped_with_the_first_media_id(tmp_path, sandbox, start):
    d = start([{"path": "a", "settle_seconds": 0.05}, {"path": "b", "settle_seconds": 0.05}])
    first = write_media(tmp_path / "a" / "lecture.mp4", 120_000, seed=5)
    assert d.wait_states({"completed": 1})
    copy = tmp_path / "b" / "lecture copy.mp4"
    copy.write_bytes(first.read_bytes())
    assert d.wait_states({"completed": 1, "skipped": 1})
    skipped = d.jobs("skipped")[0]
    assert skipped.reason == "duplicate" and skipped.media_id == d.jobs("completed")[0].media_id
    assert len(sandbox.completed()) == 1


def test_duplicates_upload_uploads_again(tmp_path, sandbox, start):
    d = start([{"path": "a", "settle_seconds": 0.05, "duplicates": "upload"}])
    first = write_media(tmp_path / "a" / "one.mp4", 50_000, seed=6)
    assert d.wait_states({"completed": 1})
    (tmp_path / "a" / "two.mp4").write_bytes(first.read_bytes())
    assert d.wait_states({"completed": 2})
    assert len(sandbox.completed()) == 2


def test_two_copies_at_once_upload_once(tmp_path, sandbox, start):
    src = os.urandom(80_000)
    (tmp_path / "a").mkdir()
    for n in range(4):
        (tmp_path / "a" / f"copy{n}.mp4").write_bytes(src)
    d = start([{"path": "a", "settle_seconds": 0.05}], workers=4)
    assert d.wait_states({"completed": 1, "skipped": 3})
    assert len(sandbox.completed()) == 1


def test_empty_file_is_skipped_and_vanished_file_is_skipped(tmp_path, sandbox, start):
    d = start([{"path": "in", "settle_seconds": 0.5}])
    (tmp_path / "in" / "empty.mp4").write_bytes(b"")
    gone = tmp_path / "in" / "gone.mp4"
    gone.write_bytes(b"x" * 1000)
    assert wait_until(lambda: len(d.jobs()) == 2, 10)
    gone.unlink()
    assert d.wait_states({"skipped": 2})
    assert {j.reason for j in d.jobs()} == {"empty", "vanished"}
    assert sandbox.events() == [] or all(e["path"] == "/api/public/v1/ping" for e in sandbox.events())


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads every file")
def test_unreadable_file_fails_and_daemon_goes_on(tmp_path, sandbox, start):
    d = start([{"path": "in", "settle_seconds": 0.05}])
    locked = write_media(tmp_path / "in" / "locked.mp4", 1000)
    locked.chmod(0)
    write_media(tmp_path / "in" / "fine.mp4", 1000, seed=2)
    assert d.wait_states({"failed": 1, "completed": 1})
    assert "permission" in (d.jobs("failed")[0].last_error or "").lower()


def test_move_never_overwrites(tmp_path, sandbox, start):
    (tmp_path / "done").mkdir()
    (tmp_path / "done" / "talk.mp4").write_bytes(b"an older file that must survive")
    d = start([{"path": "in", "settle_seconds": 0.05, "after_upload": "move", "move_to": "done"}])
    write_media(tmp_path / "in" / "talk.mp4", 10_000, seed=3)
    assert d.wait_states({"completed": 1})
    assert wait_until(lambda: (tmp_path / "done" / "talk (1).mp4").exists(), 10)
    assert (tmp_path / "done" / "talk.mp4").read_bytes() == b"an older file that must survive"
    assert d.jobs()[0].final_path == str(tmp_path / "done" / "talk (1).mp4")


def test_delete_happens_only_after_studio_confirmed(tmp_path, start, sandbox):
    sandbox.faults.error_endpoints = frozenset({"complete"})
    sandbox.faults.error_rate = 1.0
    d = start([{"path": "in", "settle_seconds": 0.05, "after_upload": "delete"}],
              retry={"max_attempts": 3, "initial_seconds": 0.05, "max_seconds": 0.1, "request_tries": 2})
    f = write_media(tmp_path / "in" / "keep-me.mp4", 10_000, seed=4)
    assert d.wait_states({"failed": 1}, timeout=30)
    assert f.exists(), "the source was deleted although Studio never confirmed the media"
    sandbox.faults.error_rate = 0.0
    assert run_cli("retry", "--failed", "-c", str(d.config.source)).returncode == 0
    assert d.wait_states({"completed": 1})
    assert wait_until(lambda: not f.exists(), 10)


def test_move_failure_is_retried_not_fatal(tmp_path, sandbox, start):
    d = start([{"path": "in", "settle_seconds": 0.05, "after_upload": "move", "move_to": "done"}])
    (tmp_path / "done").rmdir()  # the move cannot happen until the folder is back
    write_media(tmp_path / "in" / "a.mp4", 5_000, seed=5)
    assert wait_until(lambda: any(j.last_error and "move failed" in j.last_error for j in d.jobs()), 20)
    assert len(sandbox.completed()) == 1
    # while the move waits for its retry the file is where the operator expects it, not taken aside
    assert [p.name for p in (tmp_path / "in").iterdir() if p.name != ".studio-watch-lock"] == ["a.mp4"]
    (tmp_path / "done").mkdir()
    assert wait_until(lambda: (tmp_path / "done" / "a.mp4").exists(), 20)
    assert d.jobs()[0].after_done


def test_file_over_ten_gigabytes_fails_at_once(tmp_path, sandbox, start):
    (tmp_path / "in").mkdir()
    with open(tmp_path / "in" / "huge.mp4", "wb") as f:  # sparse: no disk used
        f.truncate(cfg.MAX_UPLOAD_BYTES + 1)
    d = start([{"path": "in", "settle_seconds": 0.05}])
    assert d.wait_states({"failed": 1})
    assert "10 GB" in d.jobs()[0].last_error
    assert not [e for e in sandbox.events() if e["path"].endswith("/media/uploads")]


def test_file_that_changes_during_put_is_uploaded_again_whole(tmp_path, start):
    with Sandbox(faults=Faults(put_bytes_per_second=300_000)) as slow:
        d = InProcess(write_config(tmp_path, slow.url, [{"path": "in", "settle_seconds": 0.2}]))
        try:
            f = write_media(tmp_path / "in" / "growing.mp4", 1_500_000, seed=8)
            # url_issued is committed just before the PUT starts, and the PUT takes 5 s at this rate.
            assert wait_until(lambda: any(j.state is State.URL_ISSUED for j in d.jobs()), 20)
            with open(f, "ab") as out:
                out.write(os.urandom(100_000))  # the recorder was not done after all
            final_hash = sha256_of(f)
            slow.faults.put_bytes_per_second = 0
            assert d.wait_states({"completed": 1}, timeout=30)
            assert [m["content_sha256"] for m in slow.completed()] == [final_hash]
            assert slow.violations() == []
        finally:
            d.close()


@pytest.mark.parametrize("name", [
    "with spaces.mp4", "café NFC.mp4", unicodedata.normalize("NFD", "café NFD.mp4"), "new\nline.mp4",
    "-leading-dash.mp4", ("x" * 251) + ".mp4", os.fsdecode(b"latin1-\xe9t\xe9.mp4"),
])
def test_odd_file_names_upload_with_readable_titles(tmp_path, sandbox, start, name):
    d = start([{"path": "in", "settle_seconds": 0.05}])
    path = os.path.join(tmp_path / "in", name)
    with open(path, "wb") as f:
        f.write(os.urandom(2000))
    assert d.wait_states({"completed": 1}), d.jobs()
    title = sandbox.completed()[0]["title"]
    assert title and "\udce9" not in title
    assert title.encode("utf-8")  # a valid string Studio can store


@pytest.mark.parametrize("observer", ["inotify", "polling"])
def test_settling_counts_from_the_last_change_where_the_clock_is_local(tmp_path, sandbox, observer):
    """A file untouched since before the daemon started need not wait again in a local (inotify) folder; on a
    polled (network) folder its times come from another clock, so the wait counts from when it was found. A
    tool-set old mtime (utime, `cp -p`) is not believed: the ctime, which no tool sets, says when it changed."""
    (tmp_path / "in").mkdir()
    untouched = write_media(tmp_path / "in" / "yesterday.mp4", 1000, seed=1)
    backdated = write_media(tmp_path / "in" / "backdated.mp4", 1000, seed=2)
    os.utime(backdated, (time.time() - 3600, time.time() - 3600))
    last_change = {p.name: max(os.stat(p).st_mtime, os.stat(p).st_ctime) for p in (untouched, backdated)}
    started = time.time()
    d = InProcess(write_config(tmp_path, sandbox.url, [{"path": "in", "settle_seconds": 60}], observer=observer))
    try:
        since = {Path(j.path).name: j.stable_since for j in d.jobs()}  # found by the scan before "ready"
    finally:
        d.close()
    if observer == "inotify":
        assert since == pytest.approx(last_change, abs=1e-3)  # from the last change, before this start
        assert since["backdated.mp4"] > started - 60  # the hour-old mtime did not count
    else:
        assert all(started <= t <= time.time() for t in since.values())


def test_a_file_a_writer_still_holds_open_does_not_settle(tmp_path, sandbox, start):
    """However long a recorder pauses, a file it still has open for writing is not finished (where the kernel
    can tell: a read lease is refused while a writer holds the file)."""
    from studio_watch.files.sources import open_for_writing

    (tmp_path / "in").mkdir()
    recording = open(tmp_path / "in" / "live.mp4", "wb")
    try:
        recording.write(os.urandom(5000))
        recording.flush()
        if open_for_writing(recording.name) is not True:
            pytest.skip("this filesystem or user cannot take a file lease")
        d = start([{"path": "in", "settle_seconds": 0.05}])
        write_media(tmp_path / "in" / "done.mp4", 3000, seed=9)
        assert d.wait_states({"completed": 1, "settling": 1}, timeout=20)  # settled alike, but one is still open
        [live] = d.jobs("settling")
        assert live.path.endswith("live.mp4")
    finally:
        recording.close()
    assert d.wait_states({"completed": 2}, timeout=20)
    assert sorted(m["bytes_received"] for m in sandbox.completed()) == [3000, 5000]


def test_a_watched_folder_gone_as_a_whole_is_not_a_vanished_file(tmp_path, sandbox, start):
    """A share not mounted on this node (the whole watched folder missing) must not skip its files as vanished:
    another node, or this one once the share is back, uploads them."""
    d = start([{"path": "in", "settle_seconds": 0.5}], observer="polling", rescan_seconds=1)
    write_media(tmp_path / "in" / "lecture.mp4", 50_000, seed=3)
    assert d.wait_states({"settling": 1}, timeout=10)
    [job] = d.jobs()
    (tmp_path / "in").rename(tmp_path / "unmounted")
    gone_at = time.time()
    # The settler looks again after the settle time (the row's updated_at moves): the job keeps settling.
    assert wait_until(lambda: d.queue.get(job.id).updated_at > gone_at + 0.5, 15)  # type: ignore[union-attr]
    assert d.queue.get(job.id).state is State.SETTLING  # type: ignore[union-attr]
    (tmp_path / "unmounted").rename(tmp_path / "in")
    assert d.wait_states({"completed": 1})
    assert len(sandbox.completed()) == 1
