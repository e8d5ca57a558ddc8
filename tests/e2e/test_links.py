"""Browser link files dropped into a watched folder become URL imports, once, across restarts."""

from __future__ import annotations

from ..conftest import wait_until, write_config


def test_url_file_is_imported_once_as_external_titled_from_its_name(tmp_path, sandbox, daemons):
    config = write_config(tmp_path, sandbox.url, [{"path": "in", "settle_seconds": 0.05, "user_id": 42}])
    (tmp_path / "in" / "Intro to Cells.url").write_bytes(
        b"\xef\xbb\xbf[InternetShortcut]\r\nURL=https://www.youtube.com/watch?v=dQw4w9WgXcQ\r\n")
    first = daemons(config)
    assert sandbox.wait_for(lambda: len(sandbox.completed()) == 1, timeout=20), first.output()
    [media] = sandbox.completed()
    assert media["title"] == "Intro to Cells" and media["is_external"] is True and media["user_id"] == 42
    assert media["source_url"] == "https://www.youtube.com/watch?v=dQw4w9WgXcQ"
    assert first.wait_event("link_imported", 10)
    assert first.stop() == 0

    second = daemons(config)  # a restart rescans the folder: the link file is still there
    second.wait_ready()
    assert second.stop() == 0
    imports = [e for e in sandbox.events() if e["method"] == "POST" and e["path"].endswith("/media")]
    assert len(imports) == 1 and len(sandbox.completed()) == 1


def test_webloc_into_a_collection(tmp_path, sandbox, daemons):
    import plistlib

    config = write_config(tmp_path, sandbox.url, [{"path": "in", "settle_seconds": 0.05, "collection_id": 2}])
    (tmp_path / "in" / "Guest lecture.webloc").write_bytes(plistlib.dumps({"URL": "https://example.edu/talk.mp4"}))
    daemon = daemons(config)
    assert sandbox.wait_for(lambda: len(sandbox.completed()) == 1, timeout=20), daemon.output()
    [media] = sandbox.completed()
    assert media["title"] == "Guest lecture" and media["collection_id"] == 2 and media["is_external"] is False
    assert daemon.stop() == 0


def test_links_false_ignores_link_files(tmp_path, sandbox, daemons):
    config = write_config(tmp_path, sandbox.url, [{"path": "in", "settle_seconds": 0.05, "links": False}])
    (tmp_path / "in" / "x.url").write_text("[InternetShortcut]\nURL=https://vimeo.com/1\n")
    (tmp_path / "in" / "real.mp4").write_bytes(b"x" * 100)
    daemon = daemons(config)
    assert sandbox.wait_for(lambda: len(sandbox.completed()) == 1, timeout=20), daemon.output()
    assert sandbox.completed()[0]["title"] == "real"
    assert daemon.stop() == 0


def test_after_upload_processed_waits_for_transcoding(tmp_path, daemons):
    from studio_watch.sandbox.server import Faults, Sandbox

    with Sandbox(faults=Faults(transcode_seconds=1.5)) as sb:
        config = write_config(tmp_path, sb.url, [{"path": "in", "settle_seconds": 0.05, "after_upload": "delete",
                                                  "after_upload_when": "processed"}])
        f = tmp_path / "in" / "a.mp4"
        f.write_bytes(b"y" * 1000)
        daemon = daemons(config)
        assert sb.wait_for(lambda: len(sb.completed()) == 1, timeout=20)
        completed_at = __import__("time").monotonic()
        assert f.exists(), "deleted before Studio finished processing"
        assert wait_until(lambda: not f.exists(), 20), daemon.output()
        assert __import__("time").monotonic() - completed_at > 0.5
        assert daemon.stop() == 0


def test_after_upload_processed_keeps_a_file_that_failed_to_transcode(tmp_path, daemons):
    from studio_watch.sandbox.server import Faults, Sandbox

    with Sandbox(faults=Faults(transcode_seconds=0.2, transcode_fail=True)) as sb:
        config = write_config(tmp_path, sb.url, [{"path": "in", "settle_seconds": 0.05, "after_upload": "delete",
                                                  "after_upload_when": "processed"}])
        f = tmp_path / "in" / "a.mp4"
        f.write_bytes(b"z" * 1000)
        daemon = daemons(config)
        assert daemon.wait_event("after_upload_abandoned", 20), daemon.output()
        assert f.exists()
        assert daemon.stop() == 0
