"""After the upload: a source file is moved or deleted only if it is still the uploaded one, with no window
between the check and the act (it is renamed aside first), and nothing is ever overwritten."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from studio_watch.sources import NotTheUploadedFile, aside_path, move, put_back, take_aside


def identity(path: Path) -> tuple[int, int, int]:
    st = os.stat(path)
    return (st.st_ino, st.st_size, st.st_mtime_ns)


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


def test_put_back_never_overwrites(tmp_path: Path) -> None:
    path, aside = tmp_path / "talk.mp4", tmp_path / ".aside"
    aside.write_bytes(b"taken aside")
    path.write_bytes(b"arrived meanwhile")
    with pytest.raises(FileExistsError):
        put_back(str(aside), str(path))
    assert path.read_bytes() == b"arrived meanwhile" and aside.read_bytes() == b"taken aside"
    path.unlink()
    put_back(str(aside), str(path))
    assert path.read_bytes() == b"taken aside" and not aside.exists()


def test_move_picks_a_free_name_and_never_overwrites(tmp_path: Path) -> None:
    done = tmp_path / "done"
    done.mkdir()
    (done / "talk.mp4").write_bytes(b"older")
    aside = tmp_path / ".aside"
    aside.write_bytes(b"newer")
    target = move(str(aside), done, "talk.mp4")
    assert target == done / "talk (1).mp4" and target.read_bytes() == b"newer"
    assert (done / "talk.mp4").read_bytes() == b"older" and not aside.exists()
