"""The pieces behind degraded folders, with real files and threads: observers per mount point, the folder
lock's record, upload marks on files, SQLite errors turned into errors one can act on."""

from __future__ import annotations

import os
import sqlite3
import threading
from pathlib import Path

import pytest

from studio_watch.config import FolderRule
from studio_watch.daemon import folder_locks
from studio_watch.daemon.folder_locks import LOCK_NAME, FolderLocks
from studio_watch.errors import DatabaseUnusable, StorageFull
from studio_watch.files import marks
from studio_watch.files.watcher import Watcher
from studio_watch.queue import integrity
from studio_watch.queue import open_queue

MOUNTINFO = ("22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n"
             "40 22 0:40 / {share} rw,relatime shared:9 - nfs4 fileserver:/capture rw\n")


def watcher_for(rule: FolderRule, mountinfo: Path, observer: str = "auto") -> tuple[Watcher, list[str]]:
    found: list[str] = []
    watcher = Watcher([rule], observer, 3600, lambda items, scan: found.extend(f.path for f in items),
                      threading.Event(), mountinfo=str(mountinfo))
    watcher.observers.probe_seconds = 0.5
    return watcher, found


def test_network_mount_inside_a_recursive_folder_is_polled(tmp_path):
    rooms = tmp_path / "rooms"
    share = rooms / "remote"
    share.mkdir(parents=True)
    mountinfo = tmp_path / "mountinfo"
    mountinfo.write_text(MOUNTINFO.format(share=share))
    watcher, found = watcher_for(FolderRule(path=rooms, recursive=True, settle_seconds=0), mountinfo)
    try:
        watcher.start()
        status = watcher.folder_status()[0]
        assert status["observer"] == "inotify" and status["polled_mounts"] == [str(share)]
        assert "polling" in watcher.observers.threads and watcher.observers.threads["polling"].is_alive()
    finally:
        watcher.stop.set()
        watcher.close()


def test_forced_inotify_on_a_network_filesystem_is_warned_about_in_run(tmp_path):
    share = tmp_path / "share"
    share.mkdir()
    mountinfo = tmp_path / "mountinfo"
    mountinfo.write_text(MOUNTINFO.format(share=share))
    watcher, _ = watcher_for(FolderRule(path=share), mountinfo, observer="inotify")
    try:
        watcher.start()  # logs inotify_on_network_fs, and `status` shows the same words
        warning = watcher.folder_status()[0]["warning"]
        assert warning is not None and "nfs4" in warning and "observer: auto or polling" in warning
    finally:
        watcher.stop.set()
        watcher.close()


def test_folder_lock_is_taken_over_once_its_owner_stops_beating(tmp_path, monkeypatch):
    folder = tmp_path / "in"
    folder.mkdir()
    rule = FolderRule(path=folder)
    (folder / LOCK_NAME).write_text("4242 7 another-host /srv/other/state.db\n")  # a daemon on another machine
    mine = FolderLocks(tmp_path / "state.db")
    reason = mine.claim(rule)
    assert reason is not None and "pid 4242 on another-host" in reason and "/srv/other/state.db" in reason
    clock = [1000.0]
    monkeypatch.setattr(folder_locks.time, "monotonic", lambda: clock[0])
    assert mine.claim(rule) is not None  # first sight of this record: its age starts now
    clock[0] += folder_locks.STALE_SECONDS - 1
    assert mine.claim(rule) is not None
    (folder / LOCK_NAME).write_text("4242 8 another-host /srv/other/state.db\n")  # it beat: alive
    clock[0] += 2
    assert mine.claim(rule) is not None
    clock[0] += folder_locks.STALE_SECONDS
    assert mine.claim(rule) is None  # silent for STALE_SECONDS: gone
    assert (folder / LOCK_NAME).read_text().startswith(f"{os.getpid()} ")
    mine.release(folder)
    assert (folder / LOCK_NAME).read_text() == ""


def test_folder_lock_never_writes_through_a_planted_link(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    victim = tmp_path / "victim"
    victim.write_text("precious")
    (folder / LOCK_NAME).symlink_to(victim)
    (tmp_path / "db").mkdir()
    locks = FolderLocks(tmp_path / "db" / "state.db")
    assert locks.claim(FolderRule(path=folder)) is None  # held through the lock beside the database instead
    assert victim.read_text() == "precious"
    assert locks.owned[folder].parent == Path(str(tmp_path / "db" / "state.db") + ".folders")


def test_upload_mark_matches_only_the_same_file_and_target(tmp_path):
    path = tmp_path / "talk.mp4"
    path.write_bytes(b"x" * 100)
    st = path.stat()
    if not marks.record(str(path), 77, st.st_size, st.st_mtime_ns, st.st_ino, 5, None):
        pytest.skip(f"{tmp_path} does not take user extended attributes")
    assert path.stat().st_mtime_ns == st.st_mtime_ns  # the mark changes no time a rescan looks at
    assert marks.uploaded_as(str(path), path.stat(), 5, None) == 77
    assert marks.uploaded_as(str(path), path.stat(), 6, None) is None  # another target
    path.write_bytes(b"y" * 101)  # a new recording under the old name
    assert marks.uploaded_as(str(path), path.stat(), 5, None) is None


def test_sqlite_errors_become_errors_one_can_act_on(tmp_path):
    db = tmp_path / "state.db"
    full = sqlite3.OperationalError("database or disk is full")
    assert isinstance(integrity.translate(db, full), StorageFull)
    damaged = integrity.translate(db, sqlite3.DatabaseError("file is not a database"))
    assert isinstance(damaged, DatabaseUnusable) and str(db) in str(damaged) and "--new-database" in str(damaged)
    busy = sqlite3.OperationalError("database is locked")
    assert integrity.translate(db, busy) is busy


def test_database_replaced_under_an_open_queue_is_noticed(tmp_path):
    db = tmp_path / "state.db"
    queue = open_queue(db)
    queue.check_same_file()
    other = tmp_path / "restored.db"
    open_queue(other).close()
    os.replace(other, db)
    with pytest.raises(DatabaseUnusable, match="replaced"):
        queue.check_same_file()
    queue.close()
