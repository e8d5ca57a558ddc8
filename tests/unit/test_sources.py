"""Source files: read once, hashed as read, a big one ahead of the send on a helper thread that always ends;
after the upload, moved or deleted only if still the uploaded one, with no window between the check and the
act (renamed aside first), and nothing ever overwritten."""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Any, Callable

import pytest

from studio_watch.errors import SourceChanged, SourceUnreadable
from studio_watch.files.after_upload import NotTheUploadedFile, aside_path, delete, move, put_back, take_aside
from studio_watch.files.reading import CHUNK, content_hasher, hash_file, read_ahead, read_chunks, read_whole
from studio_watch.files.sources import open_source


def identity(path: Path) -> tuple[int, int, int]:
    st = os.stat(path)
    return (st.st_ino, st.st_size, st.st_mtime_ns)


def replaced(path: Path, before: bytes, after: bytes) -> tuple[int, int, int]:
    """Another file under the same name: `path` written with `before`, deleted, written anew with `after`.
    Returns the identity the first one had."""
    path.write_bytes(before)
    first = identity(path)
    path.unlink()
    path.write_bytes(after)
    return first


def test_the_uploaded_file_is_taken_aside_to_a_hidden_name(tmp_path: Path) -> None:
    path = tmp_path / "talk.mp4"
    path.write_bytes(b"lecture")
    uploaded = identity(path)
    aside = take_aside(str(path), 7, uploaded)
    assert aside == aside_path(str(path), 7) and Path(aside).name.startswith(".")
    assert not path.exists() and Path(aside).read_bytes() == b"lecture" and identity(Path(aside)) == uploaded


def test_a_different_file_at_the_path_is_put_back_untouched(tmp_path: Path) -> None:
    path = tmp_path / "talk.mp4"
    path.write_bytes(b"yesterday")
    uploaded = identity(path)
    replacement = tmp_path / "incoming.part"
    replacement.write_bytes(b"today, still recording")
    os.replace(replacement, path)  # the recorder published a new file under the same name
    new = identity(path)
    with pytest.raises(NotTheUploadedFile):
        take_aside(str(path), 7, uploaded)
    assert identity(path) == new and path.read_bytes() == b"today, still recording"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["talk.mp4"]  # nothing left aside


def test_the_same_inode_rewritten_in_place_is_not_the_uploaded_file(tmp_path: Path) -> None:
    path = tmp_path / "talk.mp4"
    path.write_bytes(b"yesterday")
    uploaded = identity(path)
    with open(path, "r+b") as f:  # a recorder reopening the name with O_TRUNC and writing
        f.truncate(0)
        f.write(b"today")
    with pytest.raises(NotTheUploadedFile):
        take_aside(str(path), 7, uploaded)
    assert path.read_bytes() == b"today"


def test_nothing_at_the_path_is_none(tmp_path: Path) -> None:
    assert take_aside(str(tmp_path / "gone.mp4"), 7, (1, 2, 3)) is None


def test_a_file_taken_aside_by_an_earlier_try_is_found_and_a_new_one_left_alone(tmp_path: Path) -> None:
    """A crash between taking aside and deleting: the retry acts on the file aside, not on whatever now has
    the name."""
    path = tmp_path / "talk.mp4"
    path.write_bytes(b"uploaded")
    uploaded = identity(path)
    aside = take_aside(str(path), 7, uploaded)
    path.write_bytes(b"a new recording")
    assert take_aside(str(path), 7, uploaded) == aside
    assert path.read_bytes() == b"a new recording"


def test_put_back_never_overwrites_and_never_leaves_a_file_hidden(tmp_path: Path) -> None:
    path, aside = tmp_path / "talk.mp4", tmp_path / ".studio-watch-7.taken"
    aside.write_bytes(b"taken aside")
    path.write_bytes(b"arrived meanwhile")
    assert put_back(str(aside), str(path)) == tmp_path / "talk (1).mp4"  # beside it, in view
    assert path.read_bytes() == b"arrived meanwhile" and (tmp_path / "talk (1).mp4").read_bytes() == b"taken aside"
    assert not aside.exists()


def test_a_new_recording_under_the_name_is_never_moved_even_for_an_instant(tmp_path: Path) -> None:
    """Looked at before any rename: its job, if the settler looks at it now, finds it where it is."""
    path = tmp_path / "talk.mp4"
    uploaded = replaced(path, b"yesterday", b"today's recording")
    ctime = os.stat(path).st_ctime_ns  # a rename, even there and back, would change it
    with pytest.raises(NotTheUploadedFile):
        take_aside(str(path), 7, uploaded)
    assert os.stat(path).st_ctime_ns == ctime and sorted(p.name for p in tmp_path.iterdir()) == ["talk.mp4"]


def test_a_put_back_cut_short_between_link_and_unlink_is_finished(tmp_path: Path) -> None:
    path = tmp_path / "talk.mp4"
    path.write_bytes(b"uploaded")
    uploaded = identity(path)
    aside = aside_path(str(path), 7)
    os.link(path, aside)  # what a crash after put_back's link() leaves: two names, one file
    assert take_aside(str(path), 7, uploaded) == aside
    assert not path.exists() and Path(aside).read_bytes() == b"uploaded"


def other_filesystem(tmp_path: Path) -> Path:
    """A folder on another filesystem than tmp_path (tmpfs), or skip."""
    shm = Path("/dev/shm")
    if not shm.is_dir() or os.stat(shm).st_dev == os.stat(tmp_path).st_dev:
        pytest.skip("no second filesystem here")
    folder = Path(tempfile.mkdtemp(dir=shm))
    return folder


@pytest.mark.parametrize("where", ["same filesystem", "other filesystem"])
def test_move_picks_a_free_name_never_overwrites_and_leaves_nothing_behind(tmp_path: Path, where: str) -> None:
    done = tmp_path / "done" if where == "same filesystem" else other_filesystem(tmp_path)
    done.mkdir(exist_ok=True)
    try:
        (done / "talk.mp4").write_bytes(b"older")
        path = tmp_path / "talk.mp4"
        path.write_bytes(b"newer" * 1000)
        target = move(str(path), 7, identity(path), done)
        assert target == done / "talk (1).mp4" and target.read_bytes() == b"newer" * 1000
        assert (done / "talk.mp4").read_bytes() == b"older" and not path.exists()
        assert sorted(p.name for p in done.iterdir()) == ["talk (1).mp4", "talk.mp4"]  # no partial copy left
        assert [p.name for p in tmp_path.iterdir() if p.name != "done"] == []  # nothing left aside
    finally:
        if where == "other filesystem":
            shutil.rmtree(done)


def test_a_file_replaced_while_copied_across_filesystems_is_not_moved(tmp_path: Path) -> None:
    done = other_filesystem(tmp_path)
    try:
        path = tmp_path / "talk.mp4"
        uploaded = replaced(path, b"uploaded", b"a new recording")
        with pytest.raises(NotTheUploadedFile):
            move(str(path), 7, uploaded, done)
        assert path.read_bytes() == b"a new recording" and list(done.iterdir()) == []
    finally:
        shutil.rmtree(done)


def test_delete_removes_only_the_uploaded_file(tmp_path: Path) -> None:
    path = tmp_path / "talk.mp4"
    path.write_bytes(b"uploaded")
    assert delete(str(path), 7, identity(path)) is True and list(tmp_path.iterdir()) == []
    assert delete(str(path), 7, (1, 2, 3)) is False  # gone already


# -- reading ------------------------------------------------------------------------------------------------------

def read_ahead_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "read-ahead"]


def test_read_ahead_yields_the_file_exactly_hashed_as_read_chunks_does(tmp_path: Path) -> None:
    data = os.urandom(5 * CHUNK + 12345)
    path = tmp_path / "a.mp4"
    path.write_bytes(data)
    got, ahead, inline = bytearray(), content_hasher(), content_hasher()
    with open_source(str(path)) as f:
        for chunk in read_ahead(f, len(data), ahead):
            got += chunk  # each chunk is only valid until the next is asked for: copy it now
    with open_source(str(path)) as f:
        sizes = [len(c) for c in read_chunks(f, len(data), inline)]
    assert bytes(got) == data and ahead.hexdigest() == inline.hexdigest() == hash_file(str(path))
    assert sizes == [CHUNK] * 5 + [12345]
    assert read_ahead_threads() == []


def test_read_ahead_thread_ends_when_the_consumer_gives_up(tmp_path: Path) -> None:
    path = tmp_path / "a.mp4"
    path.write_bytes(os.urandom(8 * CHUNK))
    with open_source(str(path)) as f:
        chunks = read_ahead(f, 8 * CHUNK, content_hasher())
        next(chunks)
        assert len(read_ahead_threads()) == 1  # reading ahead now
        chunks.close()  # a failed send, a stop
    assert read_ahead_threads() == []


@pytest.mark.parametrize("read", [read_chunks, read_ahead])
def test_a_file_shorter_than_its_size_is_source_changed(tmp_path: Path, read: Callable[..., Any]) -> None:
    path = tmp_path / "a.mp4"
    path.write_bytes(os.urandom(2 * CHUNK))  # the size recorded was 3 MiB: it shrank since
    with open_source(str(path)) as f, pytest.raises(SourceChanged, match="shrank"):
        for _ in read(f, 3 * CHUNK, content_hasher()):
            pass
    assert read_ahead_threads() == []


@pytest.mark.parametrize("read", [read_chunks, read_ahead, read_whole])
def test_a_read_error_is_source_unreadable_naming_the_file(read: Callable[..., Any]) -> None:
    class FailingDisk:
        name = "/watch/lecture.mp4"

        def readinto(self, view: memoryview) -> int:
            raise OSError(5, "Input/output error")

    with pytest.raises(SourceUnreadable, match="lecture.mp4.*Input/output error"):
        result = read(FailingDisk(), 2 * CHUNK, content_hasher())
        if not isinstance(result, bytes):
            list(result)
    assert read_ahead_threads() == []


# -- the trust boundary: links, special files, planted names ------------------------------------------------------

def test_open_source_never_follows_a_symlink(tmp_path: Path) -> None:
    secret = tmp_path / "token"
    secret.write_bytes(b"sandbox-token")
    link = tmp_path / "lecture.mp4"
    link.symlink_to(secret)
    with pytest.raises(SourceUnreadable, match="symbolic link"):
        open_source(str(link))


def test_open_source_of_a_fifo_fails_at_once_instead_of_waiting_for_a_writer(tmp_path: Path) -> None:
    fifo = tmp_path / "lecture.mp4"
    os.mkfifo(fifo)
    outcome: list[BaseException] = []
    reader = threading.Thread(target=lambda: outcome.append(pytest.raises(SourceUnreadable, open_source, str(fifo))
                                                            .value), daemon=True)
    reader.start()
    reader.join(5)
    assert not reader.is_alive(), "open() blocked on a FIFO"
    assert "FIFO" in str(outcome[0]) and "lecture.mp4" in str(outcome[0])


def test_open_source_checks_the_identity_that_settled_and_a_size_limit(tmp_path: Path) -> None:
    path = tmp_path / "lecture.mp4"
    settled = replaced(path, b"settled", b"another file")
    with pytest.raises(SourceChanged):
        open_source(str(path), settled)
    with open_source(str(path), identity(path)) as f:
        assert f.read() == b"another file"
    with pytest.raises(SourceUnreadable, match="at most 5"):
        open_source(str(path), limit=5)


def test_a_symlink_is_never_taken_for_the_uploaded_file(tmp_path: Path) -> None:
    real = tmp_path / "elsewhere.mp4"
    real.write_bytes(b"uploaded")
    link = tmp_path / "talk.mp4"
    link.symlink_to(real)
    with pytest.raises(NotTheUploadedFile):
        delete(str(link), 7, identity(real))  # stat() through the link would say "same file"
    assert link.is_symlink() and real.read_bytes() == b"uploaded"


def test_cross_filesystem_move_never_writes_through_a_planted_partial_name(tmp_path: Path) -> None:
    done = other_filesystem(tmp_path)
    try:
        victim = done / "victim"
        victim.write_bytes(b"precious")
        (done / ".studio-watch-7.partial").symlink_to(victim)  # the old, predictable scratch name
        (done / ".studio-watch-7-abc123.partial").symlink_to(victim)  # looks like a leftover of job 7
        path = tmp_path / "talk.mp4"
        path.write_bytes(b"recording" * 1000)
        target = move(str(path), 7, identity(path), done)
        assert target == done / "talk.mp4" and target.read_bytes() == b"recording" * 1000
        assert not target.is_symlink() and victim.read_bytes() == b"precious"
        # The leftover link went, not what it pointed to.
        assert not (done / ".studio-watch-7-abc123.partial").exists() and victim.exists()
        assert (target.stat().st_mode & 0o777) == (0o666 & ~_umask())
    finally:
        shutil.rmtree(done)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_a_cross_filesystem_move_onto_a_full_disk_leaves_no_partial_and_the_source_in_place(
        tmp_path: Path, full_filesystem: Path) -> None:
    path = tmp_path / "talk.mp4"
    path.write_bytes(os.urandom(1 << 20))
    with pytest.raises(OSError) as failed:
        move(str(path), 7, identity(path), full_filesystem)
    assert failed.value.errno == 28  # ENOSPC
    assert sorted(p.name for p in full_filesystem.iterdir()) == ["filler"]
    assert path.exists() and [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
