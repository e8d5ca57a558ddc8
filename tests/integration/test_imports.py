"""Media from URLs: validation, link files, and an import that happens exactly once, against the real sandbox."""

from __future__ import annotations

import argparse
import plistlib
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit
from typing import Any, Iterator

import pytest
import yaml

from studio_watch import config as cfg
from studio_watch.cli.main import main
from studio_watch.errors import ConfigError, PermanentError, SourceUnreadable, TransientError, Unreachable
from studio_watch.cli.imports import cmd_import_url
from studio_watch.files.links import parse_link_file
from studio_watch.studio.imports import (ImportAttempt, ImportRequest, import_link, import_once, matches,
                                         validate_import)
from studio_watch.queue import open_queue
from studio_watch.sandbox.server import Faults, Sandbox
from studio_watch.studio.auth import StaticToken
from studio_watch.studio.client import StudioClient
from studio_watch.studio.transport import Pool, Reply

YOUTUBE = "https://www.youtube.com/watch?v=dQw4w9WgXcQ"
LECTURE = "https://media.example.edu/lectures/week1.mp4"


@pytest.fixture
def sb() -> Iterator[Sandbox]:
    with Sandbox(port=0) as sandbox:
        yield sandbox
        assert sandbox.errors() == []


def write_config(tmp_path: Path, url: str) -> Path:
    token = tmp_path / "token"
    token.write_text("sandbox-token\n")
    token.chmod(0o600)
    data = {"studio": {"url": url, "token_file": str(token), "timeout_seconds": 5},
            "state_db": str(tmp_path / "state.db"),
            "retry": {"initial_seconds": 0.01, "max_seconds": 0.05, "request_tries": 3}}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def make_client(sb: Sandbox, tmp_path: Path) -> StudioClient:
    config = cfg.load(write_config(tmp_path, sb.url))
    return StudioClient(config.studio, config.retry, StaticToken(lambda: "sandbox-token"))


def args(config: Path, url: str, **kw: Any) -> argparse.Namespace:
    values = dict(url=url, collection=None, user=None, title=None, description="", auto_caption=False,
                  external=None, config=str(config))
    values.update(kw)
    return argparse.Namespace(**values)


def imports_seen(sb: Sandbox) -> list[dict[str, Any]]:
    return [e for e in sb.events() if e["endpoint"] == "import"]


# -- the command --------------------------------------------------------------------------------------------------

def test_import_into_collection_with_title(sb: Sandbox, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = write_config(tmp_path, sb.url)
    assert cmd_import_url(args(config, LECTURE, collection=2, title="Week 1", description="intro")) == 0
    [media] = sb.media()
    assert (media["title"], media["source_url"], media["collection_id"]) == ("Week 1", LECTURE, 2)
    assert media["description"] == "intro" and media["is_external"] is False
    assert capsys.readouterr().out.strip() == f"imported {LECTURE} as media {media['id']}"
    assert [e["path"] for e in imports_seen(sb)] == ["/api/public/v1/collections/2/media"]


def test_external_youtube_into_user_library_needs_no_title(sb: Sandbox, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    config = write_config(tmp_path, sb.url)
    assert cmd_import_url(args(config, YOUTUBE, user=42)) == 0
    [media] = sb.media()
    assert media["is_external"] is True and media["user_id"] == 42 and media["source_url"] == YOUTUBE
    assert [e["path"] for e in imports_seen(sb)] == ["/api/public/v1/media"]  # the JSON-body endpoint
    assert capsys.readouterr().out.strip() == f"imported {YOUTUBE} as media {media['id']} (external)"


def test_ftp_url_is_refused_before_any_request(sb: Sandbox, tmp_path: Path) -> None:
    config = write_config(tmp_path, sb.url)
    done = subprocess.run([sys.executable, "-m", "studio_watch", "import-url", "ftp://files.example.edu/a.mp4",
                           "--title", "A", "-c", str(config)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stderr
    assert "http:// or https://" in done.stderr and "ftp://files.example.edu/a.mp4" in done.stderr
    assert sb.events() == []


def test_external_flag_refuses_other_hosts(sb: Sandbox, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = write_config(tmp_path, sb.url)
    code = main(["import-url", LECTURE, "--external", "-c", str(config)])
    assert code == 2
    assert "only YouTube and Vimeo" in capsys.readouterr().err
    assert sb.events() == []


def test_validation_rules() -> None:
    assert validate_import(LECTURE, 1, 42, "T", None) == (False, "T")  # both: on behalf of 42, into 1
    with pytest.raises(ConfigError, match="--title"):
        validate_import(LECTURE, None, None, None, None)
    with pytest.raises(ConfigError, match="--title"):
        validate_import(YOUTUBE, None, None, "  ", False)  # --no-external: a regular media needs a title
    assert validate_import("https://youtu.be/abc", None, None, None, None) == (True, None)
    assert validate_import("https://player.vimeo.com/video/1", None, None, "T", None) == (True, "T")
    assert validate_import(YOUTUBE, None, None, "T", False) == (False, "T")
    assert validate_import("http:/example.edu/x.mp4", None, None, "T", None) == (False, "T")  # Studio's own pattern
    with pytest.raises(ConfigError, match="only YouTube"):
        validate_import("https://youtube.com.evil.example/x", None, None, "T", True)


def test_collection_and_user_together_import_into_the_collection_on_behalf_of_the_user(sb: Sandbox,
                                                                                     tmp_path: Path) -> None:
    config = write_config(tmp_path, sb.url)
    assert main(["import-url", LECTURE, "--title", "T", "--collection", "3", "--user", "43", "-c", str(config)]) == 0
    [media] = sb.media()
    assert (media["collection_id"], media["user_id"], media["title"]) == (3, 43, "T")
    [seen] = imports_seen(sb)
    assert seen["path"] == "/api/public/v1/collections/3/media"  # POST /media's body may not carry both
    assert sb.violations() == []


def test_captions_disabled_imports_without_captions_and_says_so(tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    with Sandbox(port=0, faults=Faults(captions_disabled=True)) as sb:
        config = write_config(tmp_path, sb.url)
        assert cmd_import_url(args(config, LECTURE, collection=1, title="Week 2", auto_caption=True)) == 0
        [media] = sb.media()
        assert media["auto_caption"] is False and media["title"] == "Week 2"
        assert [e["status"] for e in imports_seen(sb)] == [501, 201]
    out, err = capsys.readouterr()
    assert "captions skipped" in out
    assert "auto-captioning is not enabled" in err


def test_unknown_collection_fails_with_a_clear_message(sb: Sandbox, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    config = write_config(tmp_path, sb.url)
    assert main(["import-url", LECTURE, "--title", "T", "--collection", "999", "-c", str(config)]) == 1
    assert "collection 999 not found (404)" in capsys.readouterr().err
    assert sb.media() == [] and len(imports_seen(sb)) == 1  # a 404 is not retried


# -- exactly once -----------------------------------------------------------------------------------------------------

class LoseImportResponses:
    """Wraps the client's real connection pool; for the first `lose` imports, Studio does the work but the answer
    never arrives (or, with forward=False, the request never reaches it)."""

    def __init__(self, lose: int, forward: bool = True, search_down: bool = False) -> None:
        self.inner = Pool(ssl.create_default_context(), 5.0)
        self.lose, self.forward, self.search_down = lose, forward, search_down

    def request(self, method: str, url: str, headers: list, body: object = b"") -> Reply:
        path = urlsplit(url).path
        if self.search_down and path.endswith("/media/search"):
            raise Unreachable("cannot reach the API: connection refused")
        if method == "POST" and path.endswith("/media") and self.lose > 0:
            self.lose -= 1
            if self.forward:
                self.inner.request(method, url, headers, body)
            raise TransientError("timed out")
        return self.inner.request(method, url, headers, body)

    def close(self) -> None:
        self.inner.close()


def lossy_client(sb: Sandbox, tmp_path: Path, pool: LoseImportResponses) -> StudioClient:
    client = make_client(sb, tmp_path)
    client.pool.close()
    client.pool = pool
    return client


def test_lost_response_is_reconciled_into_exactly_one_media(sb: Sandbox, tmp_path: Path) -> None:
    client = lossy_client(sb, tmp_path, LoseImportResponses(lose=1))
    try:
        result = import_once(client, None, ImportRequest(LECTURE, "Week 3", collection_id=1))
    finally:
        client.close()
    [media] = sb.media()
    assert result.reconciled and result.media_id == media["id"] and media["title"] == "Week 3"
    assert len(imports_seen(sb)) == 1  # not sent a second time
    assert any(e["path"].endswith("/media/search") for e in sb.events())


def test_request_that_never_arrived_is_sent_again_after_reconciling(sb: Sandbox, tmp_path: Path) -> None:
    client = lossy_client(sb, tmp_path, LoseImportResponses(lose=1, forward=False))
    try:
        result = import_once(client, None, ImportRequest(LECTURE, "Week 4", collection_id=1))
    finally:
        client.close()
    assert not result.reconciled and len(sb.media()) == 1 and len(imports_seen(sb)) == 1


def test_an_attempt_record_reads_what_databases_hold_and_nothing_else() -> None:
    assert ImportAttempt.from_stored('{"started": 1}') == ImportAttempt(1.0)  # as earlier versions wrote it
    assert ImportAttempt.from_stored(ImportAttempt(1700000000.5).stored()) == ImportAttempt(1700000000.5)
    for unreadable in (None, "", "{", "[]", '{"begun": 1}', '{"started": "soon"}'):
        assert ImportAttempt.from_stored(unreadable) is None, unreadable


def test_unknown_outcome_is_remembered_in_the_queue_across_runs(sb: Sandbox, tmp_path: Path) -> None:
    queue = open_queue(tmp_path / "attempts.db")
    request = ImportRequest(YOUTUBE, None, is_external=True, user_id=42)  # reconciled by its URL
    client = lossy_client(sb, tmp_path, LoseImportResponses(lose=1, search_down=True))
    try:
        with pytest.raises(TransientError, match="unknown outcome"):
            import_once(client, queue, request)  # the send landed, its answer was lost, and search is down
    finally:
        client.close()
    created = len(imports_seen(sb))
    assert created == len(sb.media()) == 1  # not sent again while the outcome could not be known
    client = make_client(sb, tmp_path)  # "the next run": a healthy network
    try:
        result = import_once(client, queue, request)
    finally:
        client.close()
        queue.close()
    assert result.reconciled and len(sb.media()) == 1 and len(imports_seen(sb)) == created


def test_matching_needs_exact_title_source_and_recent_creation() -> None:
    request = ImportRequest(LECTURE, "Week 5")
    fresh = {"id": 1, "title": "Week 5", "created_at": "2030-01-01T00:00:00Z"}
    started = fresh_ts = 1893456000.0  # 2030-01-01T00:00:00Z
    assert matches(fresh, request, started)
    assert not matches({**fresh, "title": "Week 5 (copy)"}, request, started)
    assert not matches({**fresh, "source_url": "https://other.example/x.mp4"}, request, started)
    assert matches({**fresh, "source_url": LECTURE}, request, started)
    assert not matches({**fresh, "created_at": "2029-12-31T23:00:00Z"}, request, fresh_ts)
    assert not matches({**fresh, "created_at": None}, request, started)


# -- link files ------------------------------------------------------------------------------------------------------

def test_parse_url_file_with_bom_and_crlf(tmp_path: Path) -> None:
    path = tmp_path / "Lecture.url"
    path.write_bytes(b"\xef\xbb\xbf[InternetShortcut]\r\nURL=" + LECTURE.encode() + b"\r\nIconIndex=0\r\n")
    assert parse_link_file(str(path)) == LECTURE
    other = tmp_path / "Other.URL"
    other.write_text("[{000214A0-0000-0000-C000-000000000046}]\nProp3=19,11\n[internetshortcut]\nurl = "
                     f"{YOUTUBE}\n")
    assert parse_link_file(str(other)) == YOUTUBE


def test_parse_webloc_xml_and_binary(tmp_path: Path) -> None:
    xml, binary = tmp_path / "a.webloc", tmp_path / "b.webloc"
    xml.write_bytes(plistlib.dumps({"URL": LECTURE}, fmt=plistlib.FMT_XML))
    binary.write_bytes(plistlib.dumps({"URL": YOUTUBE}, fmt=plistlib.FMT_BINARY))
    assert parse_link_file(str(xml)) == LECTURE
    assert parse_link_file(str(binary)) == YOUTUBE


@pytest.mark.parametrize("name,data", [("a.url", b"URL=https://x.example/\r\n"),  # no [InternetShortcut]
                                       ("b.url", b"[InternetShortcut]\r\nIconIndex=0\r\n"),
                                       ("c.webloc", b"<plist><dict><key>URL</key>"),
                                       ("d.webloc", plistlib.dumps({"Title": "no url"}))])
def test_malformed_link_files_are_refused_clearly(tmp_path: Path, name: str, data: bytes) -> None:
    path = tmp_path / name
    path.write_bytes(data)
    with pytest.raises(SourceUnreadable, match="malformed"):
        parse_link_file(str(path))


def test_import_link_decides_external_itself(sb: Sandbox, tmp_path: Path) -> None:
    link = tmp_path / "Talk.webloc"
    link.write_bytes(plistlib.dumps({"URL": YOUTUBE}, fmt=plistlib.FMT_BINARY))
    client = make_client(sb, tmp_path)
    try:
        done = import_link(client, parse_link_file(str(link)), "Talk", "", False, 3, None, stop=threading.Event())
        bad = tmp_path / "Bad.url"
        bad.write_text("[InternetShortcut]\nURL=ftp://files.example.edu/x\n")
        with pytest.raises(PermanentError, match="Bad.url"):
            import_link(client, parse_link_file(str(bad)), "Bad", "", False, 3, None, source=str(bad))
    finally:
        client.close()
    [media] = sb.media()
    assert done["id"] == media["id"] and done["is_external"] and media["is_external"]
    assert done["source_url"] == YOUTUBE and done["captions_skipped"] is False
    assert media["collection_id"] == 3 and media["title"] == "Talk"


def test_import_link_reconciles_a_job_that_may_have_been_sent(sb: Sandbox, tmp_path: Path) -> None:
    link = tmp_path / "Week 6.url"
    link.write_text(f"[InternetShortcut]\r\nURL={LECTURE}\r\n")
    client = make_client(sb, tmp_path)
    try:
        before_crash = time.time()
        client.import_url(LECTURE, "Week 6", "", False, False, 1)  # sent by a process that died before recording it
        done = import_link(client, parse_link_file(str(link)), "Week 6", "", False, 1, None, maybe_sent_at=before_crash)
        other = tmp_path / "Week 7.url"
        other.write_text(f"[InternetShortcut]\nURL={LECTURE}\n")
        fresh = import_link(client, parse_link_file(str(other)), "Week 7", "", False, 1, None, maybe_sent_at=time.time())
    finally:
        client.close()
    assert done["reconciled"] and done["id"] == sb.media()[0]["id"]
    assert not fresh["reconciled"] and fresh["title"] == "Week 7"  # nothing found: sent
    assert len(sb.media()) == 2 and len(imports_seen(sb)) == 2


def test_youtube_and_vimeo_are_external_without_the_flag(sb: Sandbox, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    config = write_config(tmp_path, sb.url)
    assert main(["import-url", "https://vimeo.com/123", "--collection", "1", "-c", str(config)]) == 0
    assert main(["import-url", YOUTUBE, "--no-external", "--title", "Plain", "-c", str(config)]) == 0
    vimeo, plain = sb.media()
    assert vimeo["is_external"] is True and plain["is_external"] is False and plain["title"] == "Plain"
    assert "(external)" in capsys.readouterr().out.splitlines()[0]
