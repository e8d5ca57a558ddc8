"""Open writers as inotify shows them: modified since the last close-write means still being written."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from studio_watch.config import FolderRule
from studio_watch.files.watcher import Watcher
from studio_watch.files.writers import QUIET_MIN_SECONDS, STALE_SECONDS, OpenWriters, after_upload_quiet, unseen_message

from ..conftest import wait_until


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_write_marks_a_file_until_its_close_and_a_rename_carries_the_mark() -> None:
    writers = OpenWriters()
    writers.modified("/d/a.mp4")
    assert writers.writing("/d/a.mp4") and not writers.writing("/d/b.mp4")
    writers.moved("/d/a.mp4", "/d/b.mp4")
    assert writers.writing("/d/b.mp4") and not writers.writing("/d/a.mp4")
    writers.closed("/d/b.mp4")
    assert not writers.writing("/d/b.mp4") and len(writers) == 0


def test_a_clean_file_renamed_over_a_marked_name_is_clean() -> None:
    writers = OpenWriters()
    writers.modified("/d/b.mp4")
    writers.moved("/d/a.part", "/d/b.mp4")  # a finished copy renamed over the name
    assert not writers.writing("/d/b.mp4")


def test_a_mark_whose_close_was_lost_expires_after_the_stale_limit() -> None:
    clock = Clock()
    writers = OpenWriters(clock)
    writers.modified("/d/a.mp4")
    clock.now += STALE_SECONDS - 1
    assert writers.writing("/d/a.mp4")
    clock.now += 2
    assert not writers.writing("/d/a.mp4")


def test_a_writer_that_kept_writing_past_the_stale_limit_and_then_pauses_is_still_writing() -> None:
    # A room recording all day into one file: 13 hours of writes, then a pause with the file open. Counting the
    # stale limit from the first write declared the writer gone at its first pause (uploaded half, deleted
    # under it); a lost close is a silence of STALE_SECONDS, counted from the last write.
    clock = Clock()
    writers = OpenWriters(clock)
    for _ in range(13 * 60):
        writers.modified("/d/day.mp4")
        clock.now += 60
    clock.now += 300  # the pause, longer than any settle time
    assert writers.writing("/d/day.mp4")
    clock.now += STALE_SECONDS
    assert not writers.writing("/d/day.mp4")


def test_quiet_period_where_writers_cannot_be_seen() -> None:
    assert after_upload_quiet(2) == QUIET_MIN_SECONDS
    assert after_upload_quiet(600) == 6000
    assert unseen_message(2) == "open writers cannot be seen here: relying on settle_seconds=2"


@pytest.fixture
def watcher(tmp_path: Path):
    folder = tmp_path / "drop"
    folder.mkdir()
    stop = threading.Event()
    w = Watcher([FolderRule(path=folder, settle_seconds=0.1)], "inotify", 3600, lambda found, scan: None, stop)
    w.start()
    yield w, folder
    stop.set()
    w.close()


def test_inotify_sees_a_file_held_open_after_a_write_until_it_is_closed(watcher) -> None:
    w, folder = watcher
    path = folder / "lecture.mp4"
    with open(path, "wb") as f:
        f.write(b"x" * 1000)
        f.flush()
        assert wait_until(lambda: w.writing(str(path)), 5)
        assert w.sees_writers(w.rules[0])
    assert wait_until(lambda: not w.writing(str(path)), 5)
    # Reading it (as the upload does) marks nothing.
    with open(path, "rb") as f:
        f.read()
    os.utime(path)  # nor does a change of times alone (IN_ATTRIB, no write)
    closed_no_write = folder / "other.mp4"
    closed_no_write.write_bytes(b"y")
    assert wait_until(lambda: not w.writing(str(closed_no_write)), 5)
    assert not w.writing(str(path))


def test_a_polled_folder_says_once_that_it_cannot_see_writers(tmp_path: Path) -> None:
    import io
    import logging

    import structlog

    from studio_watch import logs

    saved, handlers = structlog.get_config(), logging.getLogger().handlers[:]
    out = io.StringIO()
    logs.setup("info", "json", stream=out)
    folder = tmp_path / "share"
    folder.mkdir()
    stop = threading.Event()
    w = Watcher([FolderRule(path=folder, settle_seconds=2)], "polling", 3600, lambda found, scan: None, stop)
    w.start()
    try:
        path = folder / "lecture.mp4"
        with open(path, "wb") as f:
            f.write(b"x")
        w.restart_dead()
        assert not w.sees_writers(w.rules[0]) and not w.writing(str(path))
        assert w.folder_status()[0]["open_writers_seen"] is False
    finally:
        stop.set()
        w.close()
        structlog.configure(**saved)
        logging.getLogger().handlers[:] = handlers
    err = out.getvalue()
    assert err.count("open_writers_unseen") == 1
    assert "open writers cannot be seen here: relying on settle_seconds=2" in err
