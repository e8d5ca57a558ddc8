"""The sandbox as tools that nobody here wrote see it: its Swagger document, the details Instructure's example
scripts read, paths as Swagger-built clients join them, 100-continue, ETags, both ids, and https with a private CA."""

from __future__ import annotations

import re
import socket
import ssl
import subprocess
import sys
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from studio_watch.sandbox import routes
from studio_watch.sandbox.server import Sandbox

AUTH = {"Authorization": "Bearer sandbox-token"}


@pytest.fixture
def sb(sandbox: Sandbox) -> Sandbox:
    return sandbox


@pytest.fixture
def api(sandbox_api: httpx.Client) -> httpx.Client:
    return sandbox_api


def upload(api: httpx.Client, body: bytes = b"lecture" * 100, verify: Any = True, **params: Any) -> dict[str, Any]:
    """The three steps; returns the completed media object."""
    made = api.post("/media/uploads", params={k: v for k, v in params.items() if k.endswith("_id")})
    assert made.status_code == 201, made.text
    target = made.json()["upload"]
    put = httpx.put(target["url"], content=body, timeout=5, verify=verify)
    assert put.status_code == 200, put.text
    done = api.post(f"/media/uploads/{target['id']}/complete",
                    params={"title": params.get("title", "Week 1"), "auto_caption": params.get("auto_caption", False)})
    assert done.status_code == 200, done.text
    media: dict[str, Any] = done.json()["media"]
    return media


def test_swagger_document_is_valid_swagger_2_and_lists_every_route(sb: Sandbox, api: httpx.Client) -> None:
    from openapi_spec_validator import validate
    from openapi_spec_validator.validation import OpenAPIV2SpecValidator

    doc = httpx.get(sb.url + "/api/public/apidocs", timeout=5).json()
    validate(doc, cls=OpenAPIV2SpecValidator)
    assert doc["swagger"] == "2.0" and doc["basePath"] == "/api/public/v1"
    assert doc["host"] == urlsplit(sb.url).netloc and doc["schemes"] == ["http"]
    listed = {(method.upper(), path) for path, ops in doc["paths"].items() for method in ops}
    served = {(r.method, r.template) for r in routes.ROUTES if not r.oauth}
    assert listed == served and len(listed) >= 12
    oauth = doc["securityDefinitions"]["oauth"]
    assert oauth["tokenUrl"] == sb.url + "/api/public/oauth/token"
    for path, ops in doc["paths"].items():
        for op in ops.values():  # what a Swagger-driven command-line client needs of each operation
            assert op["summary"] and all(p["description"] for p in op["parameters"])
            names = {p["name"] for p in op["parameters"] if p["in"] == "path"}
            assert names == set(re.findall(r"{(\w+)}", path))


def test_every_documented_get_is_served_with_its_path_joined_as_swagger_clients_join_it(
        sb: Sandbox, api: httpx.Client) -> None:
    media = upload(api, collection_id=2)
    doc = api.get(sb.url + "/api/public/apidocs").json()
    values = {"media_id": media["id"], "user_id": 42, "collection_id": 2}
    for path, ops in doc["paths"].items():
        if "get" not in ops:
            continue
        # base + "/" + path: the double slash Instructure's generated client sends
        url = f"{sb.url}{doc['basePath']}/{path.format(**values)}"
        assert "//" in urlsplit(url).path
        answer = httpx.get(url, headers=AUTH, timeout=5)
        assert answer.status_code == 200, (path, answer.status_code, answer.text)
        schema = ops["get"]["responses"]["200"]["schema"]
        if schema.get("type") == "object":
            assert set(answer.json()) == set(schema["properties"]), path


def test_media_details_that_instructures_get_media_details_example_reads(sb: Sandbox, api: httpx.Client) -> None:
    media = upload(api, body=b"x" * 500_000, collection_id=2, auto_caption=True, title="CS101 week 3")
    mid = media["id"]
    shown = api.get(f"/media/{mid}").json()["media"]
    assert shown["collection"] == {"id": 2, "name": "Room 101", "type": "course"}
    assert shown["duration"] == 2.0 and shown["size"] == 500_000
    assert api.get(f"/media/{mid}/caption_files").json()["caption_files"][0]["srclang"] == "en"
    assert api.get(f"/media/{mid}/courses").json()["courses"] == [{"id": 2, "name": "Room 101"}]
    assert api.get(f"/media/{mid}/tags").json() == {"tags": []}
    permissions = api.get(f"/media/{mid}/users").json()["user_permissions"]
    assert permissions[0]["role"] == "owner" and permissions[0]["user"]["id"] == 42
    assert api.get("/media/99999/tags").status_code == 404
    thumb = httpx.get(shown["thumbnail_url"], timeout=5)
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/png"
    assert thumb.content.startswith(b"\x89PNG\r\n\x1a\n") and thumb.content.endswith(b"IEND\xaeB`\x82")
    assert httpx.get(sb.url + "/_thumb/99999.png", timeout=5).status_code == 404


def test_search_by_title_is_paged_with_meta(api: httpx.Client) -> None:
    for week in range(1, 6):
        upload(api, body=bytes([week]) * 10, title=f"Physics week {week}")
    upload(api, title="Biology week 1")
    first = api.get("/media/search", params={"title": "PHYSICS", "per_page": 2}).json()
    assert [m["title"] for m in first["media"]] == ["Physics week 1", "Physics week 2"]
    assert first["meta"] == {"current_page": 1, "last_page": 3, "total_count": 5}
    last = api.get("/media/search", params={"title": "physics", "per_page": 2, "page": 3}).json()
    assert [m["title"] for m in last["media"]] == ["Physics week 5"]


def test_both_ids_upload_on_behalf_of_the_user_into_the_collection(sb: Sandbox, api: httpx.Client) -> None:
    media = upload(api, collection_id=3, user_id=43)
    assert media["owner"]["id"] == 43 and media["collection"]["id"] == 3
    record = next(m for m in sb.media() if m["id"] == media["id"])
    assert record["collection_id"] == 3 and record["user_id"] == 43 and sb.violations() == []
    # The JSON import into My Uploads still refuses both, as the documentation says.
    both = api.post("/media", json={"url": "https://example.edu/a.mp4", "title": "A", "user_id": 43,
                                    "collection_id": 3})
    assert both.status_code == 422


def test_put_answers_with_an_etag(api: httpx.Client) -> None:
    made = api.post("/media/uploads").json()["upload"]
    put = httpx.put(made["url"], content=b"abc" * 1000, timeout=5)
    assert put.status_code == 200 and re.fullmatch(r'"[0-9a-f]{32}"', put.headers["etag"])


def _raw(sb: Sandbox, head: str, body: bytes | None = None) -> tuple[bytes, bytes]:
    """Send request headers (and, after the first answer, `body`); return (first answer, what followed)."""
    with socket.create_connection(("127.0.0.1", sb.port), timeout=5) as conn:
        conn.sendall(head.encode())
        first = conn.recv(65536)
        rest = b""
        if body is not None:
            conn.sendall(body)
            while b"\r\n\r\n" not in rest:
                chunk = conn.recv(65536)
                if not chunk:
                    break
                rest += chunk
        return first, rest


def test_100_continue_comes_only_after_the_request_was_checked(sb: Sandbox, api: httpx.Client) -> None:
    made = api.post("/media/uploads").json()["upload"]
    target = urlsplit(made["url"])
    where = f"{target.path}?{target.query}"
    # A chunked body is refused before the client sends it: a 411, not a 100 and then a broken pipe.
    first, _ = _raw(sb, f"PUT {where} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
                        "Expect: 100-continue\r\n\r\n")
    assert first.startswith(b"HTTP/1.1 411 ")
    # A bad signature, the same: refused at once, nothing drained.
    bad = where.replace("signature=", "signature=0")
    first, _ = _raw(sb, f"PUT {bad} HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
    assert first.startswith(b"HTTP/1.1 403 ")
    # A good request is told to go on, and then takes the body.
    first, rest = _raw(sb, f"PUT {where} HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n",
                       b"hello")
    assert first == b"HTTP/1.1 100 Continue\r\n\r\n" and rest.startswith(b"HTTP/1.1 200 ")


def test_tls_sandbox_is_verified_against_its_own_ca(tmp_path) -> None:
    with Sandbox(port=0, tls=True, tls_dir=tmp_path / "tls") as sb:
        assert sb.url.startswith("https://127.0.0.1:") and sb.ca_path == tmp_path / "tls" / "ca.pem"
        assert (tmp_path / "tls" / "server.key").stat().st_mode & 0o077 == 0
        trust = ssl.create_default_context(cafile=str(sb.ca_path))
        with httpx.Client(base_url=sb.api_url, headers=AUTH, verify=trust, timeout=5) as api:
            assert api.get("/ping").text == "pong"
            media = upload(api, body=b"t" * 300_000, verify=trust)
            assert media["size"] == 300_000
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            httpx.get(sb.api_url + "/ping", headers=AUTH, timeout=5)  # the system's CAs do not know it
        assert sb.errors() == []


def test_sandbox_command_serves_https_and_prints_where_its_ca_is() -> None:
    proc = subprocess.Popen([sys.executable, "-m", "studio_watch", "sandbox", "--port", "0", "--tls"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert proc.stdout is not None
        lines = [proc.stdout.readline() for _ in range(8)]
        said = "".join(lines)
        url = re.search(r"listening on (https://\S+)", said)
        ca = re.search(r"CA certificate: (\S+)", said)
        assert url and ca, said
        assert "client_secret sandbox-secret" in said and "42 Ada Lovelace" in said
        answer = httpx.get(url[1] + "/api/public/v1/ping", headers=AUTH, timeout=5,
                           verify=ssl.create_default_context(cafile=ca[1]))
        assert answer.text == "pong"
    finally:
        proc.terminate()
        assert proc.wait(10) == 0
