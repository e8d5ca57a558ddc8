"""The Studio sandbox, exercised over real HTTP on a loopback port."""

from __future__ import annotations

import argparse
import hashlib
import http.client
import io
import threading
import time
import tracemalloc
from typing import Any, Iterator
from urllib.parse import urlsplit

import httpx
import pytest

from studio_watch.sandbox.command import add_sandbox_arguments, sandbox_from_args, serve_forever_until
from studio_watch.sandbox.server import Faults, Sandbox

TOKEN = "sandbox-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def sb() -> Iterator[Sandbox]:
    """A running sandbox on a free port."""
    with Sandbox(port=0) as sandbox:
        yield sandbox
        assert sandbox.errors() == []


@pytest.fixture
def api(sb: Sandbox) -> Iterator[httpx.Client]:
    """An authenticated client on the API root."""
    with httpx.Client(base_url=sb.api_url, headers=AUTH, timeout=5) as client:
        yield client


def generate(api: httpx.Client, **params: Any) -> dict[str, Any]:
    """Step 1; returns {"id", "url"}."""
    response = api.post("/media/uploads", params=params)
    assert response.status_code == 201, response.text
    upload: dict[str, Any] = response.json()["upload"]
    return upload


def put(url: str, body: bytes, **kwargs: Any) -> httpx.Response:
    """Step 2 with a fresh connection."""
    return httpx.put(url, content=body, timeout=5, **kwargs)


def media_by_id(sb: Sandbox, media_id: int) -> dict[str, Any]:
    """The sandbox's record of one media."""
    return next(m for m in sb.media() if m["id"] == media_id)


class Zeros(io.RawIOBase):
    """A file-like body of n zero bytes that never holds more than one block in memory."""

    def __init__(self, size: int) -> None:
        """Produce `size` bytes."""
        self.left = size

    def readable(self) -> bool:
        """Yes."""
        return True

    def read(self, n: int = -1) -> bytes:
        """Up to n zero bytes (64 KiB blocks)."""
        n = min(self.left, 65536 if n is None or n < 0 else n)
        self.left -= n
        return bytes(n)


# ----- the three-step upload -------------------------------------------------------------------


def test_happy_path_records_bytes_hash_and_events(sb: Sandbox, api: httpx.Client) -> None:
    body = b"lecture" * 200_000
    upload = generate(api, collection_id=2)
    assert upload["url"].startswith(sb.url + "/_upload/")
    assert put(upload["url"], body).status_code == 200
    done = api.post(f"/media/uploads/{upload['id']}/complete", params={"title": "Week 1", "description": "d"})
    assert done.status_code == 200
    assert done.json()["media"]["title"] == "Week 1"
    (media,) = sb.completed()
    assert media["id"] == upload["id"] and media["collection_id"] == 2
    assert media["bytes_received"] == len(body)
    assert media["content_sha256"] == hashlib.sha256(body).hexdigest()
    assert media["transcoding_status"] == "completed" and media["put_count"] == 1
    assert [(e["method"], e["status"], e["media_id"]) for e in sb.events()] == [
        ("POST", 201, upload["id"]), ("PUT", 200, upload["id"]), ("POST", 200, upload["id"])]
    assert sb.violations() == []
    got = api.get(f"/media/{upload['id']}").json()["media"]
    assert got["size"] == len(body) and got["owner"]["id"] == 42


def test_api_requires_a_valid_bearer_token(sb: Sandbox) -> None:
    assert httpx.get(sb.api_url + "/ping").status_code == 401
    bad = httpx.get(sb.api_url + "/ping", headers={"Authorization": "Bearer nope"})
    assert bad.status_code == 401 and "error" in bad.json()
    ok = httpx.get(sb.api_url + "/ping", headers=AUTH)
    assert (ok.status_code, ok.text) == (200, "pong")
    assert sb.violations() == []


def test_unknown_route_is_404_json(api: httpx.Client) -> None:
    response = api.get("/nothing/here")
    assert response.status_code == 404 and "error" in response.json()


def test_generate_validates_targets(sb: Sandbox, api: httpx.Client) -> None:
    sb.faults.forbidden_collections = frozenset({3})
    assert api.post("/media/uploads", params={"collection_id": 999}).status_code == 404
    assert api.post("/media/uploads", params={"user_id": 999}).status_code == 404
    assert api.post("/media/uploads", params={"collection_id": "abc"}).status_code == 422
    assert api.post("/media/uploads", params={"user_id": "x"}).status_code == 422
    assert api.post("/media/uploads", params={"collection_id": 3}).status_code == 403
    assert api.post("/media/uploads", params={"collection_id": 1, "user_id": 999}).status_code == 404
    assert sb.violations() == []
    assert generate(api, user_id=43)["id"] > 0
    assert generate(api)["id"] > 0


def test_put_without_content_length_is_411_and_a_violation(sb: Sandbox, api: httpx.Client) -> None:
    upload = generate(api)
    response = httpx.put(upload["url"], content=iter([b"abc", b"def"]))  # a generator: chunked
    assert response.status_code == 411
    assert sb.violations() == [f"put without content-length: media {upload['id']}"]
    assert media_by_id(sb, upload["id"])["state"] == "pending"


def test_put_with_authorization_is_400_and_does_not_consume_the_url(sb: Sandbox, api: httpx.Client) -> None:
    upload = generate(api)
    assert put(upload["url"], b"abc", headers=AUTH).status_code == 400
    assert sb.violations() == [f"put with authorization header: media {upload['id']}"]
    assert put(upload["url"], b"abc").status_code == 200


def test_upload_url_is_single_use(sb: Sandbox, api: httpx.Client) -> None:
    upload = generate(api)
    assert put(upload["url"], b"one").status_code == 200
    assert put(upload["url"], b"two").status_code == 403
    media = media_by_id(sb, upload["id"])
    assert media["content_sha256"] == hashlib.sha256(b"one").hexdigest() and media["put_count"] == 2


def test_oversized_put_is_413(sb: Sandbox, api: httpx.Client) -> None:
    sb.faults.max_upload_bytes = 10
    upload = generate(api)
    assert put(upload["url"], bytes(11)).status_code == 413
    assert put(upload["url"], bytes(10)).status_code == 200


def test_bad_or_expired_upload_urls_are_403(sb: Sandbox, api: httpx.Client) -> None:
    upload = generate(api)
    parts = urlsplit(upload["url"])
    assert put(f"{sb.url}{parts.path}x?{parts.query}", b"a").status_code == 403
    assert put(f"{sb.url}{parts.path}?signature=00&expires=1", b"a").status_code == 403
    sb.faults.url_ttl_seconds = -1
    assert put(upload["url"], b"a").status_code == 403
    sb.faults.url_ttl_seconds = 3600
    assert put(upload["url"], b"a").status_code == 200


def test_complete_errors(sb: Sandbox, api: httpx.Client) -> None:
    upload = generate(api)
    early = api.post(f"/media/uploads/{upload['id']}/complete", params={"title": "t"})
    assert early.status_code == 422 and early.json() == {"error": "upload not received"}
    assert sb.violations() == [f"complete before put: media {upload['id']}"]
    assert put(upload["url"], b"x").status_code == 200
    assert api.post(f"/media/uploads/{upload['id']}/complete").status_code == 200
    assert api.post(f"/media/uploads/{upload['id']}/complete").status_code == 409
    assert api.post("/media/uploads/424242/complete").status_code == 404
    assert media_by_id(sb, upload["id"])["completed_count"] == 2


def test_captions_disabled_is_501_then_complete_without_captions(sb: Sandbox, api: httpx.Client) -> None:
    sb.faults.captions_disabled = True
    upload = generate(api)
    put(upload["url"], b"x")
    path = f"/media/uploads/{upload['id']}/complete"
    assert api.post(path, params={"title": "t", "auto_caption": "true"}).status_code == 501
    assert api.post(path, params={"title": "t", "auto_caption": "false"}).status_code == 200
    assert media_by_id(sb, upload["id"])["captions"] == []


def test_expire_first_put_kills_the_url_and_a_new_one_works(sb: Sandbox, api: httpx.Client) -> None:
    sb.faults.expire_first_put = True
    first = generate(api)
    assert put(first["url"], b"x").status_code == 410
    assert put(first["url"], b"x").status_code == 410
    second = generate(api)
    assert put(second["url"], b"x").status_code == 200
    assert put(generate(api)["url"], b"x").status_code == 410  # the next file's first URL dies again


def test_reset_cuts_the_put_and_leaves_media_pending(sb: Sandbox, api: httpx.Client) -> None:
    sb.faults.reset_rate = 1.0
    upload = generate(api)
    with pytest.raises(httpx.TransportError):
        put(upload["url"], bytes(4 * 1024 * 1024))
    media = media_by_id(sb, upload["id"])
    assert media["state"] == "pending" and media["bytes_received"] == 0
    sb.faults.reset_rate = 0.0
    assert put(upload["url"], b"again").status_code == 200  # a cut-off PUT does not consume the URL


def test_lost_complete_response_is_processed_and_409_after(sb: Sandbox, api: httpx.Client) -> None:
    upload = generate(api)
    put(upload["url"], b"x")
    sb.faults.lose_complete_rate = 1.0
    with pytest.raises(httpx.TransportError):
        api.post(f"/media/uploads/{upload['id']}/complete", params={"title": "t"})
    assert [m["id"] for m in sb.completed()] == [upload["id"]]
    sb.faults.lose_complete_rate = 0.0
    assert api.post(f"/media/uploads/{upload['id']}/complete").status_code == 409


def test_set_down_drops_connections_until_up(sb: Sandbox, api: httpx.Client) -> None:
    assert api.get("/ping").status_code == 200  # leaves a pooled keep-alive connection
    sb.set_down(True)
    with pytest.raises(httpx.TransportError):
        api.get("/ping")
    with pytest.raises(httpx.TransportError):
        httpx.get(sb.api_url + "/ping", headers=AUTH)
    sb.set_down(False)
    assert api.get("/ping").status_code == 200


def test_rate_limit_and_errors_are_injected_per_endpoint(sb: Sandbox, api: httpx.Client) -> None:
    sb.faults.rate_limit_rate, sb.faults.retry_after = 1.0, "Wed, 21 Oct 2015 07:28:00 GMT"
    limited = api.get("/ping")
    assert limited.status_code == 429 and limited.headers["Retry-After"] == "Wed, 21 Oct 2015 07:28:00 GMT"
    sb.faults.rate_limit_rate = 0.0
    sb.faults.error_rate, sb.faults.error_endpoints = 1.0, frozenset({"ping"})
    assert {api.get("/ping").status_code for _ in range(20)} <= {500, 502, 503, 504}
    assert api.post("/media/uploads").status_code == 201


def test_faults_are_reproducible_with_a_seed() -> None:
    def statuses() -> list[int]:
        with Sandbox(faults=Faults(error_rate=0.5, seed=7)) as sandbox, httpx.Client(headers=AUTH) as client:
            return [client.get(sandbox.api_url + "/ping").status_code for _ in range(20)]

    first = statuses()
    assert first == statuses() and 200 in first and len(set(first)) > 1


# ----- URL imports, reads ------------------------------------------------------------------------


def test_import_into_collection(sb: Sandbox, api: httpx.Client) -> None:
    ok = api.post("/collections/1/media", params={"url": "https://example.edu/a.mp4", "title": "A"})
    assert ok.status_code == 201 and ok.json()["media"]["title"] == "A"
    external = api.post("/collections/1/media", params={"url": "https://youtu.be/xyz", "is_external": "true"})
    assert external.status_code == 201
    media = {m["id"]: m for m in sb.completed()}
    assert media[ok.json()["media"]["id"]]["source_url"] == "https://example.edu/a.mp4"
    assert media[external.json()["media"]["id"]]["is_external"] is True
    refused = [
        ({"url": "ftp://example.edu/a.mp4", "title": "A"}, "/collections/1/media", 422),
        ({"url": "https://example.edu/a.mp4"}, "/collections/1/media", 422),  # title required
        ({"url": "https://example.edu/a", "is_external": "true"}, "/collections/1/media", 422),
        ({"url": "https://example.edu/a.mp4", "title": "A"}, "/collections/999/media", 404),
        ({"url": "https://example.edu/a.mp4", "title": "A"}, "/collections/abc/media", 422),
        ({"url": "https://example.edu/a.mp4", "title": "A", "user_id": 999}, "/collections/1/media", 404),
    ]
    for params, path, status in refused:
        assert api.post(path, params=params).status_code == status, (params, path)
    sb.faults.captions_disabled = True
    params = {"url": "https://example.edu/a.mp4", "title": "A", "auto_caption": "true"}
    assert api.post("/collections/1/media", params=params).status_code == 501
    assert len(sb.media()) == 2


def test_import_with_json_body(sb: Sandbox, api: httpx.Client) -> None:
    ok = api.post("/media", json={"url": "http://example.edu/b.mp4", "title": "B", "user_id": 43})
    assert ok.status_code == 201 and ok.json()["media"]["owner"]["id"] == 43
    vimeo = api.post("/media", json={"url": "https://vimeo.com/1", "is_external": True, "collection_id": 2})
    assert vimeo.status_code == 201
    assert api.post("/media", json={"url": "ftp://example.edu/b.mp4", "title": "B"}).status_code == 422
    assert api.post("/media", json={"url": "https://example.edu/b.mp4"}).status_code == 422
    both = api.post("/media", json={"url": "https://example.edu/b.mp4", "title": "B", "user_id": 42,
                                    "collection_id": 1})
    assert both.status_code == 422
    assert sb.violations() == ["both collection_id and user_id: POST /media"]
    assert [m["collection_id"] for m in sb.media()] == [None, 2]


def test_search_by_title(api: httpx.Client) -> None:
    api.post("/media", json={"url": "https://example.edu/1.mp4", "title": "Biology Week 3"})
    api.post("/media", json={"url": "https://example.edu/2.mp4", "title": "Chemistry"})
    found = api.get("/media/search", params={"query": "week 3"}).json()["media"]
    assert [m["title"] for m in found] == ["Biology Week 3"]


def test_transcoding_status_is_computed_on_read(sb: Sandbox, api: httpx.Client) -> None:
    sb.faults.transcode_seconds = 3600
    media_id = api.post("/media", json={"url": "https://example.edu/1.mp4", "title": "T"}).json()["media"]["id"]
    assert api.get(f"/media/{media_id}").json()["media"]["transcoding_status"] == "processing"
    sb.faults.transcode_seconds = 0
    assert api.get(f"/media/{media_id}").json()["media"]["transcoding_status"] == "completed"
    sb.faults.transcode_fail = True
    assert api.get(f"/media/{media_id}").json()["media"]["transcoding_status"] == "failed"
    assert api.get("/media/999999").status_code == 404


def test_collections_pagination_and_users() -> None:
    extra = {100 + i: f"Course {i}" for i in range(60)}
    with Sandbox(collections=extra) as sandbox, httpx.Client(base_url=sandbox.api_url, headers=AUTH) as api:
        first = api.get("/collections").json()
        assert len(first["collections"]) == 20
        assert first["meta"] == {"current_page": 1, "last_page": 4, "total_count": 63}
        assert first["collections"][0] == {"id": 1, "name": "Lecture Capture", "type": "course"}
        capped = api.get("/collections", params={"page": 2, "per_page": 500}).json()
        assert len(capped["collections"]) == 13 and capped["meta"]["last_page"] == 2
        assert api.get("/collections", params={"page": "x"}).status_code == 422
        user = api.get("/users/42").json()["user"]
        assert user["full_name"] == "Ada Lovelace" and set(user) == {"id", "full_name", "display_name", "email"}
        assert api.get("/users/7").status_code == 404


# ----- OAuth ---------------------------------------------------------------------------------------


def token_request(sb: Sandbox, **form: str) -> httpx.Response:
    """POST the OAuth token endpoint with the default client."""
    data = {"client_id": "sandbox-client", "client_secret": "sandbox-secret", **form}
    return httpx.post(sb.url + "/api/public/oauth/token", data=data)


def test_oauth_code_exchange_and_refresh_rotation(sb: Sandbox) -> None:
    code = sb.issue_auth_code()
    first = token_request(sb, grant_type="authorization_code", code=code, redirect_uri="https://x.example/cb")
    assert first.status_code == 200
    pair = first.json()
    assert pair["expires_in"] == 7200 and pair["token_type"] == "Bearer"
    bearer = {"Authorization": f"Bearer {pair['access_token']}"}
    assert httpx.get(sb.api_url + "/ping", headers=bearer).status_code == 200
    reused = token_request(sb, grant_type="authorization_code", code=code)
    assert reused.status_code == 400 and reused.json()["error"] == "invalid_grant"
    second = token_request(sb, grant_type="refresh_token", refresh_token=pair["refresh_token"])
    assert second.status_code == 200 and second.json()["refresh_token"] != pair["refresh_token"]
    stale = token_request(sb, grant_type="refresh_token", refresh_token=pair["refresh_token"])
    assert stale.status_code == 400 and stale.json() == {"error": "invalid_grant"}
    assert httpx.get(sb.api_url + "/ping", headers=bearer).status_code == 200  # old access token still valid
    bad = httpx.post(sb.url + "/api/public/oauth/token",
                     data={"grant_type": "authorization_code", "code": "sandbox-code",
                           "client_id": "sandbox-client", "client_secret": "wrong"})
    assert bad.status_code == 401 and bad.json()["error"] == "invalid_client"
    sb.expire_access_tokens()
    assert httpx.get(sb.api_url + "/ping", headers=bearer).status_code == 401


def test_access_tokens_expire_by_calls_and_by_time(sb: Sandbox) -> None:
    sb.faults.token_ttl_calls = 2
    token = token_request(sb, grant_type="authorization_code", code="sandbox-code").json()["access_token"]
    bearer = {"Authorization": f"Bearer {token}"}
    assert [httpx.get(sb.api_url + "/ping", headers=bearer).status_code for _ in range(3)] == [200, 200, 401]
    assert httpx.get(sb.api_url + "/ping", headers=AUTH).status_code == 200  # static tokens never expire
    sb.faults.token_ttl_calls, sb.faults.token_ttl_seconds = 0, 0
    expired = token_request(sb, grant_type="authorization_code", code="sandbox-code").json()
    assert expired["expires_in"] == 0
    dead = {"Authorization": f"Bearer {expired['access_token']}"}
    assert httpx.get(sb.api_url + "/ping", headers=dead).status_code == 401


def test_oauth_authorize_redirects_with_a_code(sb: Sandbox) -> None:
    params = {"client_id": "sandbox-client", "response_type": "code", "redirect_uri": "https://app.example/cb"}
    response = httpx.get(sb.url + "/api/public/oauth/authorize", params=params)
    assert response.status_code == 302
    code = response.headers["Location"].split("code=", 1)[1]
    assert token_request(sb, grant_type="authorization_code", code=code).status_code == 200
    params["redirect_uri"] = "http://localhost/cb"
    assert httpx.get(sb.url + "/api/public/oauth/authorize", params=params).status_code == 400


# ----- transport ---------------------------------------------------------------------------------


def test_keep_alive_serves_two_requests_on_one_connection(sb: Sandbox) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", sb.port, timeout=5)
    try:
        conn.request("GET", "/api/public/v1/ping", headers=AUTH)
        first = conn.getresponse()
        assert first.read() == b"pong" and first.getheader("Content-Length") == "4"
        sock = conn.sock
        conn.request("POST", "/api/public/v1/media/uploads", headers=AUTH)
        second = conn.getresponse()
        assert second.status == 201 and b"upload" in second.read()
        assert conn.sock is sock
    finally:
        conn.close()


def test_put_bytes_per_second_throttles(sb: Sandbox, api: httpx.Client) -> None:
    sb.faults.put_bytes_per_second = 400_000
    upload = generate(api)
    started = time.monotonic()
    assert put(upload["url"], bytes(200_000)).status_code == 200
    assert time.monotonic() - started >= 0.4


def test_large_put_streams_without_buffering(sb: Sandbox, api: httpx.Client) -> None:
    size = 50 * 1024 * 1024
    upload = generate(api)
    parts = urlsplit(upload["url"])
    conn = http.client.HTTPConnection("127.0.0.1", sb.port, timeout=10)
    tracemalloc.start()
    try:
        conn.request("PUT", f"{parts.path}?{parts.query}", body=Zeros(size), headers={"Content-Length": str(size)})
        assert conn.getresponse().status == 200
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        conn.close()
    assert peak < 8 * 1024 * 1024
    media = media_by_id(sb, upload["id"])
    assert media["bytes_received"] == size and media["state"] == "uploaded"


def test_state_endpoint_and_wait_for(sb: Sandbox, api: httpx.Client) -> None:
    upload = generate(api)
    waiter = threading.Thread(target=lambda: put(upload["url"], b"late"))
    waiter.start()
    assert sb.wait_for(lambda: media_by_id(sb, upload["id"])["state"] == "uploaded", timeout=5)
    waiter.join()
    assert sb.wait_for(lambda: False, timeout=0.05) is False
    # the predicate runs without the sandbox lock, so it may itself use HTTP
    assert sb.wait_for(lambda: httpx.get(sb.url + "/_sandbox/state").json()["events_count"] == 2, timeout=5)
    state = httpx.get(sb.url + "/_sandbox/state").json()
    assert state["events_count"] == 2 and state["violations"] == []
    assert state["media"][0]["state"] == "uploaded"


# ----- command line hooks --------------------------------------------------------------------------


class LineSignal(io.StringIO):
    """A StringIO that sets an Event when something is written."""

    def __init__(self) -> None:
        """Empty."""
        super().__init__()
        self.written = threading.Event()

    def write(self, text: str) -> int:
        """Write and signal."""
        count = super().write(text)
        self.written.set()
        return count


def test_cli_arguments_build_a_sandbox_and_serve_until_stopped() -> None:
    parser = argparse.ArgumentParser()
    add_sandbox_arguments(parser)
    args = parser.parse_args([
        "--port", "0", "--token", "t1", "--token", "t2", "--error-rate", "0.25",
        "--error-endpoints", "put,complete", "--expire-first-put", "--collection", "77=Physics",
        "--user", "5=Alan Turing", "--retry-after", "3", "--token-ttl-calls", "4", "--seed", "9",
    ])
    sandbox = sandbox_from_args(args)
    faults = sandbox.faults
    assert faults.error_rate == 0.25 and faults.error_endpoints == {"put", "complete"}
    assert faults.expire_first_put and faults.retry_after == "3" and faults.token_ttl_calls == 4
    assert faults.seed == 9 and not faults.captions_disabled
    stop, out = threading.Event(), LineSignal()
    server = threading.Thread(target=serve_forever_until, args=(sandbox, stop, out))
    server.start()
    try:
        assert out.written.wait(5)
        first, *rest = [line.strip() for line in out.getvalue().strip().splitlines()]
        assert first == f"sandbox listening on {sandbox.url} (token: t1)"
        said = "\n".join(rest)
        assert "t1, t2" in said and "5 Alan Turing" in said and "77 Physics" in said
        assert "client_id sandbox-client, client_secret sandbox-secret; authorization code sandbox-code" in said
        with httpx.Client(base_url=sandbox.api_url, headers={"Authorization": "Bearer t2"}) as api:
            assert api.get("/collections", params={"per_page": 50}).json()["collections"][-1]["name"] == "Physics"
            assert api.get("/users/5").json()["user"]["full_name"] == "Alan Turing"
    finally:
        stop.set()
        server.join(5)
    assert not server.is_alive()
    with pytest.raises(SystemExit):
        parser.parse_args(["--collection", "nope"])
