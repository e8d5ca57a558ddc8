"""StudioClient against the real sandbox on loopback: the three steps, error mapping, retries, tokens, stop."""

from __future__ import annotations

import email.utils
import hashlib
import os
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Iterator

import pytest

from studio_watch.config import RetryConfig, StudioConfig
from studio_watch.errors import (AuthError, CaptionsDisabled, MediaNotFound, PermanentError, SourceChanged,
                                 SourceUnreadable, SourceVanished, Stopping, TransientError, Unreachable,
                                 UploadUrlExpired)
from studio_watch.sandbox.server import Faults, Sandbox
from studio_watch.schedule import RateLimiter
from studio_watch.files.reading import READ_AHEAD_MIN, UploadFile, hash_file
from studio_watch.files.sources import identity_of
from studio_watch.studio.retry import MAX_CLIENT_WAIT
from studio_watch.studio.auth import StaticToken
from studio_watch.studio.client import StudioClient, parse_retry_after
from studio_watch.studio.connections import tls_context
from studio_watch.studio.fetch import shown_url
from studio_watch.studio.transport import Reply

TOKEN = "sandbox-token"


def make_client(sb: Sandbox, tries: int = 3, max_seconds: float = 0.2, tokens: Any = None,
                **kwargs: Any) -> StudioClient:
    return StudioClient(StudioConfig(url=sb.url, token_file=None, token_env="X", timeout_seconds=10),
                        RetryConfig(initial_seconds=0.01, max_seconds=max_seconds, max_attempts=5,
                                    request_tries=tries),
                        tokens or StaticToken(lambda: TOKEN), **kwargs)


def media_file(path: Path, size: int) -> tuple[str, tuple[int, int, int]]:
    path.write_bytes(os.urandom(size))
    st = os.stat(path)
    return str(path), (st.st_ino, st.st_size, st.st_mtime_ns)


def sha256(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def events(sb: Sandbox, endpoint: str) -> list[dict[str, Any]]:
    return [e for e in sb.events() if e["endpoint"] == endpoint]


@pytest.fixture
def sb() -> Iterator[Sandbox]:
    with Sandbox() as sandbox:
        yield sandbox


@pytest.fixture
def client(sb: Sandbox) -> Iterator[StudioClient]:
    c = make_client(sb)
    yield c
    c.close()


# -- the three steps -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [1_500_000, READ_AHEAD_MIN + 123], ids=["inline", "read-ahead"])
def test_three_steps_upload_whole_file_without_auth_on_put(sb: Sandbox, client: StudioClient, tmp_path: Path,
                                                          size: int) -> None:
    path, identity = media_file(tmp_path / "lecture.mp4", size)  # more than one 1 MiB chunk
    media_id, url = client.generate(1, None)
    assert url.startswith(sb.url) and "signature=" in url

    result = client.put(url, UploadFile(path, identity))
    assert result.bytes == size
    assert result.content_hash == hash_file(path)
    media = client.complete(media_id, "Lecture 1", "week 1", False)

    assert media is not None and media["id"] == media_id and media["title"] == "Lecture 1"
    [done] = sb.completed()
    assert done["id"] == media_id and done["collection_id"] == 1
    assert done["bytes_received"] == size and done["content_sha256"] == sha256(path)
    assert sb.violations() == []  # no chunked body, no Authorization on the upload URL
    [put] = events(sb, "put")
    assert put["status"] == 200


def test_generate_targets_user_and_my_uploads(sb: Sandbox, client: StudioClient) -> None:
    mine, _ = client.generate(None, None)
    theirs, _ = client.generate(None, 43)
    by_id = {m["id"]: m for m in sb.media()}
    assert by_id[mine]["collection_id"] is None and by_id[mine]["user_id"] is None
    assert by_id[theirs]["user_id"] == 43


def test_generate_with_both_ids_uploads_on_behalf_of_the_user_into_the_collection(sb: Sandbox,
                                                                                 client: StudioClient) -> None:
    media_id, _ = client.generate(2, 43)
    [media] = sb.media()
    assert (media["id"], media["collection_id"], media["user_id"]) == (media_id, 2, 43)
    assert sb.violations() == []


# -- generate errors ---------------------------------------------------------------------------------------------


def test_generate_unknown_collection_or_user_is_permanent_and_names_the_target(client: StudioClient) -> None:
    with pytest.raises(PermanentError, match="collection 999") as exc:
        client.generate(999, None)
    assert exc.value.status == 404
    with pytest.raises(PermanentError, match="user 777") as exc:
        client.generate(None, 777)
    assert exc.value.status == 404


def test_generate_forbidden_collection_is_permanent_403() -> None:
    with Sandbox(faults=Faults(forbidden_collections=frozenset({2}))) as sb:
        c = make_client(sb)
        with pytest.raises(PermanentError, match="collection 2") as exc:
            c.generate(2, None)
        assert exc.value.status == 403
        assert len(events(sb, "generate")) == 1  # a 403 is not retried


def test_generate_invalid_target_is_permanent_422(client: StudioClient) -> None:
    with pytest.raises(PermanentError, match="collection abc") as exc:
        client.generate("abc", None)  # type: ignore[arg-type]  # the sandbox answers 422 to a non-integer id
    assert exc.value.status == 422


# -- complete errors ---------------------------------------------------------------------------------------------


def uploaded(client: StudioClient, tmp_path: Path, size: int = 1000) -> int:
    path, identity = media_file(tmp_path / f"f{size}.mp4", size)
    media_id, url = client.generate(None, None)
    client.put(url, UploadFile(path, identity))
    return media_id


def test_second_complete_is_409_and_returns_none(sb: Sandbox, client: StudioClient, tmp_path: Path) -> None:
    media_id = uploaded(client, tmp_path)
    assert client.complete(media_id, "t", "", False) is not None
    assert client.complete(media_id, "t", "", False) is None
    assert [e["status"] for e in events(sb, "complete")] == [200, 409]
    assert len(sb.completed()) == 1


def test_complete_unknown_media_is_media_not_found(client: StudioClient) -> None:
    with pytest.raises(MediaNotFound) as exc:
        client.complete(424242, "t", "", False)
    assert exc.value.status == 404


def test_complete_with_captions_disabled_is_captions_disabled(tmp_path: Path) -> None:
    with Sandbox(faults=Faults(captions_disabled=True)) as sb:
        c = make_client(sb)
        media_id = uploaded(c, tmp_path)
        with pytest.raises(CaptionsDisabled) as exc:
            c.complete(media_id, "t", "", True)
        assert exc.value.status == 501 and sb.completed() == []
        assert c.complete(media_id, "t", "", False) is not None  # the documented fallback works
        assert sb.completed()[0]["captions"] == []


# -- PUT errors --------------------------------------------------------------------------------------------------


def test_put_to_a_used_url_is_upload_url_expired(sb: Sandbox, client: StudioClient, tmp_path: Path) -> None:
    path, identity = media_file(tmp_path / "a.mp4", 5000)
    _, url = client.generate(None, None)
    client.put(url, UploadFile(path, identity))
    with pytest.raises(UploadUrlExpired) as exc:
        client.put(url, UploadFile(path, identity))
    assert exc.value.status == 403
    assert len(events(sb, "put")) == 2  # not retried


def test_expired_first_put_then_a_new_url_works(tmp_path: Path) -> None:
    with Sandbox(faults=Faults(expire_first_put=True)) as sb:
        c = make_client(sb)
        path, identity = media_file(tmp_path / "a.mp4", 5000)
        _, url = c.generate(None, None)
        with pytest.raises(UploadUrlExpired) as exc:
            c.put(url, UploadFile(path, identity))
        assert exc.value.status == 410
        media_id, url2 = c.generate(None, None)
        c.put(url2, UploadFile(path, identity))
        assert c.complete(media_id, "t", "", False) is not None
        assert [e["status"] for e in events(sb, "put")] == [410, 200]


def test_put_too_large_is_permanent_413(tmp_path: Path) -> None:
    with Sandbox(faults=Faults(max_upload_bytes=1000)) as sb:
        c = make_client(sb)
        path, identity = media_file(tmp_path / "big.mp4", 5000)
        _, url = c.generate(None, None)
        with pytest.raises(PermanentError) as exc:
            c.put(url, UploadFile(path, identity))
        assert exc.value.status == 413 and "too large" in str(exc.value)
        assert len(events(sb, "put")) == 1


# -- retries -----------------------------------------------------------------------------------------------------


def test_generate_errors_exhaust_exactly_request_tries() -> None:
    with Sandbox(faults=Faults(error_rate=1.0, error_endpoints=frozenset({"generate"}))) as sb:
        c = make_client(sb, tries=3)
        with pytest.raises(TransientError) as exc:
            c.generate(None, None)
        assert exc.value.status in (500, 502, 503, 504)
        assert not isinstance(exc.value, Unreachable)
        assert len(events(sb, "generate")) == 3
        assert sb.media() == []


def test_intermittent_errors_are_retried_until_success() -> None:
    with Sandbox(faults=Faults(error_rate=0.5, error_endpoints=frozenset({"generate"}), seed=1)) as sb:
        c = make_client(sb, tries=5)
        media_id, _ = c.generate(None, None)
        statuses = [e["status"] for e in events(sb, "generate")]
        assert statuses[0] >= 500 and statuses[-1] == 201  # seed 1: the first try fails
        assert [m["id"] for m in sb.media()] == [media_id]  # failed tries created nothing


def test_retry_after_is_capped_at_max_seconds() -> None:
    """wait = min(max(backoff, Retry-After), retry.max_seconds): a 1 s hint waits only max_seconds (0.2)."""
    with Sandbox(faults=Faults(rate_limit_rate=1.0, retry_after="1",
                               error_endpoints=frozenset({"generate"}))) as sb:
        c = make_client(sb, tries=3, max_seconds=0.2)
        with pytest.raises(TransientError) as exc:
            c.generate(None, None)
        assert exc.value.status == 429 and exc.value.retry_after == 1.0
        times = [e["t"] for e in events(sb, "generate")]
        assert len(times) == 3
        gaps = [b - a for a, b in zip(times, times[1:])]
        assert all(0.19 <= g < 0.9 for g in gaps), gaps


def test_retry_after_is_honoured_when_below_max_seconds() -> None:
    with Sandbox(faults=Faults(rate_limit_rate=1.0, retry_after="1",
                               error_endpoints=frozenset({"generate"}))) as sb:
        c = make_client(sb, tries=2, max_seconds=5.0)
        with pytest.raises(TransientError):
            c.generate(None, None)
        first, second = (e["t"] for e in events(sb, "generate"))
        assert second - first >= 0.95  # backoff alone (initial 0.01 s) would be far shorter


@pytest.mark.parametrize("hint", ["60", "date"])
def test_retry_after_beyond_client_wait_is_left_to_the_queue(hint: str) -> None:
    if hint == "date":
        hint = email.utils.format_datetime(datetime.now(timezone.utc) + timedelta(seconds=120), usegmt=True)
    with Sandbox(faults=Faults(rate_limit_rate=1.0, retry_after=hint,
                               error_endpoints=frozenset({"generate"}))) as sb:
        c = make_client(sb, tries=3, max_seconds=5.0)
        started = time.monotonic()
        with pytest.raises(TransientError) as exc:
            c.generate(None, None)
        assert time.monotonic() - started < 2
        assert exc.value.retry_after is not None and exc.value.retry_after > MAX_CLIENT_WAIT
        assert len(events(sb, "generate")) == 1


def test_parse_retry_after() -> None:
    now = 1_700_000_000.0
    assert parse_retry_after("5") == 5.0
    assert parse_retry_after(" 7 ") == 7.0
    in_3s = email.utils.format_datetime(datetime.fromtimestamp(now + 3, timezone.utc), usegmt=True)
    assert parse_retry_after(in_3s, now=now) == pytest.approx(3.0)
    past = email.utils.format_datetime(datetime.fromtimestamp(now - 30, timezone.utc), usegmt=True)
    assert parse_retry_after(past, now=now) == 0.0
    for garbage in ("soon", "1.5x", "", None, "-3"):
        assert parse_retry_after(garbage) is None, garbage


def test_put_reset_is_resent_from_byte_zero(tmp_path: Path) -> None:
    # seed 7 at rate 0.5: the first two PUTs are cut mid-body, the third goes through
    with Sandbox(faults=Faults(reset_rate=0.5, seed=7)) as sb:
        c = make_client(sb, tries=5)
        path, identity = media_file(tmp_path / "a.mp4", 2_500_000)
        media_id, url = c.generate(None, None)
        result = c.put(url, UploadFile(path, identity))
        puts = events(sb, "put")
        assert [e.get("fault") for e in puts] == ["reset", "reset", None] and puts[-1]["status"] == 200
        [media] = sb.media()
        assert media["bytes_received"] == 2_500_000 and media["content_sha256"] == sha256(path)
        assert result.content_hash == hash_file(path)  # the hash restarted with the bytes
        assert c.complete(media_id, "t", "", False) is not None


def test_lost_complete_response(tmp_path: Path) -> None:
    with Sandbox(faults=Faults(lose_complete_rate=1.0)) as sb:
        once = make_client(sb, tries=1)
        media_id = uploaded(once, tmp_path)
        with pytest.raises(TransientError):
            once.complete(media_id, "t", "", False)
        sb.faults.lose_complete_rate = 0.0
        assert once.complete(media_id, "t", "", False) is None  # 409: it was completed the first time
        assert [e["status"] for e in events(sb, "complete")] == [None, 409]
        assert len(sb.completed()) == 1


def test_lost_complete_response_is_reconciled_by_the_client_retry(tmp_path: Path) -> None:
    with Sandbox(faults=Faults(lose_complete_rate=1.0)) as sb:
        c = make_client(sb, tries=3)
        media_id = uploaded(c, tmp_path)
        assert c.complete(media_id, "t", "", False) is None  # lost response, then 409 on the retry
        assert [e["status"] for e in events(sb, "complete")] == [None, 409]
        assert sb.completed()[0]["completed_count"] == 2  # processed once, then seen again as a duplicate


# -- outages -----------------------------------------------------------------------------------------------------


def test_server_down_is_transient_and_refused_is_unreachable() -> None:
    sb = Sandbox().start()
    c = make_client(sb, tries=2)
    c.ping()
    sb.set_down(True)  # accepts, then closes without a response
    with pytest.raises(TransientError):
        c.ping()
    with pytest.raises(TransientError):
        c.probe()
    with pytest.raises(TransientError):
        c.generate(None, None)
    sb.set_down(False)
    c.ping()
    sb.stop()  # the port is closed: connection refused
    with pytest.raises(Unreachable):
        c.ping()
    with pytest.raises(Unreachable):
        c.probe()


def test_probe_sends_exactly_one_request() -> None:
    with Sandbox(faults=Faults(error_rate=1.0, error_endpoints=frozenset({"ping"}))) as sb:
        c = make_client(sb, tries=3)
        with pytest.raises(TransientError):
            c.probe()
        assert len(events(sb, "ping")) == 1
        with pytest.raises(TransientError):
            c.ping()
        assert len(events(sb, "ping")) == 4


def test_probe_with_a_bad_token_is_auth_error(sb: Sandbox) -> None:
    c = make_client(sb, tokens=StaticToken(lambda: "nope"))
    with pytest.raises(AuthError):
        c.probe()
    assert len(events(sb, "ping")) == 1


# -- tokens ------------------------------------------------------------------------------------------------------


def test_401_rereads_the_token_once_and_succeeds(sb: Sandbox) -> None:
    reads = iter(["stale-token", TOKEN])
    c = make_client(sb, tokens=StaticToken(lambda: next(reads)))
    media_id, _ = c.generate(None, None)
    assert [e["status"] for e in events(sb, "generate")] == [401, 201]
    assert [m["id"] for m in sb.media()] == [media_id]


def test_401_with_the_same_token_after_reread_is_auth_error(sb: Sandbox) -> None:
    c = make_client(sb, tokens=StaticToken(lambda: "revoked"))
    with pytest.raises(AuthError):
        c.generate(None, None)
    assert [e["status"] for e in events(sb, "generate")] == [401]  # not retried


def test_401_after_a_refresh_is_auth_error(sb: Sandbox) -> None:
    reads = iter(["bad-1", "bad-2"])
    c = make_client(sb, tokens=StaticToken(lambda: next(reads)))
    with pytest.raises(AuthError, match="even after a refresh"):
        c.ping()
    assert [e["status"] for e in events(sb, "ping")] == [401, 401]


class CountingTokens:
    """Starts with a revoked token; refresh() waits until `expect` requests were refused, then hands out TOKEN."""

    def __init__(self, sb: Sandbox, expect: int) -> None:
        self.sb, self.expect = sb, expect
        self.current = "revoked"
        self.refreshes = 0
        self.lock = threading.Lock()

    def token(self) -> str:
        return self.current

    def refresh(self, rejected: str) -> str:
        with self.lock:
            self.refreshes += 1
        # hold the refresh until every thread has been refused, so they all queue up on the client's lock
        self.sb.wait_for(lambda: sum(e["status"] == 401 for e in self.sb.events()) >= self.expect, timeout=5)
        self.current = TOKEN
        return TOKEN


def test_concurrent_401s_refresh_the_token_once(sb: Sandbox) -> None:
    tokens = CountingTokens(sb, expect=8)
    c = make_client(sb, tokens=tokens)
    errors: list[BaseException] = []

    def call() -> None:
        try:
            c.ping()
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=call) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    assert errors == []
    statuses = [e["status"] for e in events(sb, "ping")]
    assert statuses.count(401) == 8 and statuses.count(200) == 8
    assert tokens.refreshes == 1


# -- stop, changing and vanishing files ------------------------------------------------------------------------


def test_stop_set_before_put_uploads_nothing(sb: Sandbox, client: StudioClient, tmp_path: Path) -> None:
    path, identity = media_file(tmp_path / "a.mp4", 100_000)
    _, url = client.generate(None, None)
    client.stop.set()
    with pytest.raises(Stopping):
        client.put(url, UploadFile(path, identity))
    assert sb.media()[0]["state"] == "pending"


def test_stop_during_a_slow_put_raises_stopping_quickly(tmp_path: Path) -> None:
    """Setting `stop` shuts the PUT's socket down: the blocked send (or the wait for the answer) ends at once."""
    with Sandbox(faults=Faults(put_bytes_per_second=200_000)) as sb:  # 2 MiB takes ~10 s
        c = make_client(sb)
        path, identity = media_file(tmp_path / "a.mp4", 2 * 1024 * 1024)
        _, url = c.generate(None, None)
        stopper = threading.Timer(0.3, c.stop.set)
        # a backstop so the test ends fast either way: after 2.5 s the server reads the rest at full speed
        unthrottle = threading.Timer(2.5, lambda: setattr(sb.faults, "put_bytes_per_second", 0))
        stopper.start()
        unthrottle.start()
        started = time.monotonic()
        try:
            with pytest.raises(Stopping):
                c.put(url, UploadFile(path, identity))
            assert time.monotonic() - started < 2.0
            assert sb.media()[0]["state"] == "pending"
        finally:
            stopper.cancel()
            unthrottle.cancel()


def test_identity_mismatch_is_source_changed_before_any_byte(sb: Sandbox, client: StudioClient,
                                                             tmp_path: Path) -> None:
    path, (ino, size, mtime_ns) = media_file(tmp_path / "a.mp4", 5000)
    _, url = client.generate(None, None)
    for stale in [(ino, size - 1, mtime_ns), (ino, size, mtime_ns - 1), (ino + 1, size, mtime_ns)]:
        with pytest.raises(SourceChanged):
            client.put(url, UploadFile(path, stale))
    assert events(sb, "put") == []


@pytest.mark.parametrize("size", [2 * 1024 * 1024, READ_AHEAD_MIN + 1], ids=["inline", "read-ahead"])
def test_file_truncated_during_put_is_source_changed(tmp_path: Path, size: int) -> None:
    with Sandbox(faults=Faults(put_bytes_per_second=2_000_000)) as sb:  # 2 MiB take ~1 s
        c = make_client(sb)
        path, identity = media_file(tmp_path / "a.mp4", size)
        _, url = c.generate(None, None)
        shrink = threading.Timer(0.2, lambda: os.truncate(path, 1000))
        shrink.start()
        try:
            with pytest.raises(SourceChanged):
                c.put(url, UploadFile(path, identity))
        finally:
            shrink.cancel()


def test_a_read_error_mid_put_is_the_file_s_problem_not_the_network_s(tmp_path: Path) -> None:
    """EIO from the disk while sending: SourceUnreadable naming the file, not a transient network error (which
    would probe Studio and retry as if the server were at fault)."""

    class FailingDisk:
        name = str(tmp_path / "a.mp4")

        def readinto(self, view: memoryview) -> int:
            raise OSError(5, "Input/output error")

    def failing(size: int) -> Any:
        path = tmp_path / "a.mp4"
        path.write_bytes(b"x" * size)
        opened = UploadFile(str(path), identity_of(path.stat())).open()
        opened.file.close()
        opened.file = FailingDisk()
        return opened

    with Sandbox() as sb:
        c = make_client(sb)
        for read in (lambda: list(c._body(failing(2 * 1024 * 1024).chunks(), 2 * 1024 * 1024, None)),
                     lambda: c._small_body(failing(1000))):
            with pytest.raises(SourceUnreadable, match="Input/output error") as exc:
                read()
            assert "a.mp4" in str(exc.value)


def test_missing_file_is_source_vanished(sb: Sandbox, client: StudioClient, tmp_path: Path) -> None:
    _, url = client.generate(None, None)
    with pytest.raises(SourceVanished):
        client.put(url, UploadFile(str(tmp_path / "gone.mp4"), (1, 2, 3)))
    with pytest.raises(SourceVanished):
        hash_file(str(tmp_path / "gone.mp4"))
    assert events(sb, "put") == []


def test_rate_limiter_slows_the_put(sb: Sandbox, tmp_path: Path) -> None:
    c = make_client(sb, limiter=RateLimiter(1_000_000))
    path, identity = media_file(tmp_path / "a.mp4", 2 * 1024 * 1024)
    _, url = c.generate(None, None)
    started = time.monotonic()
    c.put(url, UploadFile(path, identity))
    assert time.monotonic() - started >= 1.8  # 2.1 MB at 1 MB/s with an empty bucket
    assert sb.media()[0]["bytes_received"] == 2 * 1024 * 1024


# -- imports, listings -------------------------------------------------------------------------------------------


def test_import_into_a_collection_uses_query_parameters(sb: Sandbox, client: StudioClient) -> None:
    media = client.import_url("https://example.org/talk.mp4", "Talk", "d", False, False, collection_id=3)
    [rec] = sb.media()
    assert media["id"] == rec["id"] and rec["collection_id"] == 3 and rec["title"] == "Talk"
    assert rec["source_url"] == "https://example.org/talk.mp4" and rec["state"] == "completed"
    [event] = events(sb, "import")
    assert event["path"] == "/api/public/v1/collections/3/media" and event["status"] == 201


def test_import_into_my_uploads_uses_a_json_body(sb: Sandbox, client: StudioClient) -> None:
    client.import_url("https://youtu.be/abc", None, "", False, True, user_id=42)
    [rec] = sb.media()
    assert rec["user_id"] == 42 and rec["is_external"] and rec["collection_id"] is None
    [event] = events(sb, "import")
    assert event["path"] == "/api/public/v1/media" and event["status"] == 201


def test_import_is_sent_once_and_maps_errors() -> None:
    with Sandbox(faults=Faults(error_rate=1.0, error_endpoints=frozenset({"import"}))) as sb:
        c = make_client(sb, tries=3)
        with pytest.raises(TransientError):
            c.import_url("https://example.org/a.mp4", "A", "", False, False)
        with pytest.raises(TransientError):
            c.import_url("https://example.org/a.mp4", "A", "", False, False, collection_id=1)
        assert len(events(sb, "import")) == 2  # not idempotent: never retried inside the client
        sb.faults.error_rate = 0.0
        with pytest.raises(PermanentError, match="collection 999"):
            c.import_url("https://example.org/a.mp4", "A", "", False, False, collection_id=999)
        sb.faults.captions_disabled = True
        with pytest.raises(CaptionsDisabled):
            c.import_url("https://example.org/a.mp4", "A", "", True, False)


def test_collections_walks_every_page() -> None:
    extra = {100 + i: f"Course {i}" for i in range(120)}
    with Sandbox(collections=extra) as sb:
        c = make_client(sb)
        found = c.collections()
        assert len(found) == 123 and {x["id"] for x in found} == {1, 2, 3, *extra}
        assert len(events(sb, "collections")) == 3  # 50 + 50 + 23


def test_user_and_media_lookups(sb: Sandbox, client: StudioClient, tmp_path: Path) -> None:
    user = client.user(42)
    assert user is not None and user["full_name"] == "Ada Lovelace"
    assert client.user(999) is None
    media_id = uploaded(client, tmp_path)
    assert client.get_media(media_id)["id"] == media_id  # type: ignore[index]
    assert client.get_media(999999) is None


def test_ping(sb: Sandbox, client: StudioClient) -> None:
    client.ping()
    assert [e["status"] for e in events(sb, "ping")] == [200]


# -- small helpers -----------------------------------------------------------------------------------------------


def test_a_ca_bundle_gone_since_the_config_was_loaded_is_unreachable_naming_it(tmp_path: Path) -> None:
    with pytest.raises(Unreachable, match="studio.ca_bundle"):
        tls_context(tmp_path / "gone.pem")


def test_shown_url_keeps_only_scheme_and_host_of_a_signed_url() -> None:
    url = "https://bucket.s3.amazonaws.com/uploads/1001/AbCdEf?X-Amz-Signature=deadbeef&expires=1"
    assert shown_url(url) == "https://bucket.s3.amazonaws.com/…"


def test_hash_file_is_the_put_hash_and_depends_on_content(tmp_path: Path) -> None:
    a, _ = media_file(tmp_path / "a", 3 * 1024 * 1024 + 5)
    b = tmp_path / "b"
    data = bytearray(Path(a).read_bytes())
    data[-1] ^= 1
    b.write_bytes(bytes(data))
    assert hash_file(a) != hash_file(str(b))
    assert len(hash_file(a)) == 16  # XXH3-64 hex


class FakePool:
    """Stands in for the client's connection pool (an instance attribute, not a module global)."""

    def __init__(self, status: int, body: bytes = b"") -> None:
        self.status, self.body = status, body
        self.calls: list[tuple[str, str, dict[str, str], bytes]] = []

    def request(self, method: str, url: str, headers: list, body: object = b"") -> Reply:
        sent = body if isinstance(body, bytes) else b"".join(bytes(c) for c in body)  # type: ignore[attr-defined]
        self.calls.append((method, url, dict(headers), sent))
        return Reply(self.status, {}, self.body)

    def close(self) -> None:
        pass


def test_odd_status_on_the_upload_url_is_permanent(tmp_path: Path) -> None:
    """A status the sandbox never sends on the upload URL (418) is permanent, not retried."""
    with Sandbox() as sb:
        c = make_client(sb)
        c.pool = pool = FakePool(418, b"teapot")
        path, identity = media_file(tmp_path / "a.mp4", 100)
        with pytest.raises(PermanentError) as exc:
            c.put("https://upload.invalid/x?sig=1", UploadFile(path, identity))
        assert exc.value.status == 418 and len(pool.calls) == 1
        method, _, headers, body = pool.calls[0]
        assert method == "PUT" and headers["Content-Length"] == "100" and "Authorization" not in headers
        assert len(body) == 100
