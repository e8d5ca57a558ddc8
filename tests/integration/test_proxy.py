"""Proxies and TLS end to end: the Studio client, the token endpoint, webhooks and fetches through a real CONNECT
proxy to a TLS stand-in (the sandbox behind a TLS front with a private CA) whose name only the proxy resolves."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import pytest

from studio_watch import logs
from studio_watch.config import RetryConfig, StudioConfig
from studio_watch.daemon.alerts import Alerts
from studio_watch.errors import ConfigError, Stopping, TransientError, Unreachable
from studio_watch.files.reading import UploadFile
from studio_watch.sandbox.server import Faults, Sandbox
from studio_watch.studio.auth import StaticToken, post_token
from studio_watch.studio.client import StudioClient
from studio_watch.studio.connections import tls_context
from studio_watch.studio.proxies import Proxies, parse, read_auth
from studio_watch.studio.fetch import fetch_document
from studio_watch.studio.transport import Pool

from ..conftest import wait_until
from studio_watch.sandbox.tls import TlsFiles

from ..netstubs import STUDIO_NAME, ConnectProxy, TlsFront, make_ca

TOKEN = "sandbox-token"
RETRY = RetryConfig(initial_seconds=0.01, max_seconds=0.05, max_attempts=3, request_tries=1)


@dataclass
class Campus:
    ca: TlsFiles
    sb: Sandbox
    proxy: ConnectProxy
    url: str  # https://studio.campus.test:<port>: resolvable only by the proxy

    def studio(self, **kw: Any) -> StudioConfig:
        values: dict[str, Any] = {"url": self.url, "token_env": "X", "timeout_seconds": 5, "ca_bundle": self.ca.ca}
        values.update(kw)
        return StudioConfig(**values)

    def client(self, env: dict[str, str], **kw: Any) -> StudioClient:
        studio = self.studio(**kw)
        pool = Pool(lambda: tls_context(studio.ca_bundle), 5, proxies=Proxies.from_config(studio, env))
        return StudioClient(studio, RETRY, StaticToken(lambda: TOKEN), pool=pool)

    @property
    def env(self) -> dict[str, str]:
        return {"HTTPS_PROXY": self.proxy.url}


@pytest.fixture
def campus(tmp_path: Path) -> Iterator[Campus]:
    ca = make_ca(tmp_path / "ca")
    with Sandbox() as sb, TlsFront(ca.server_context(), sb.port) as front, \
            ConnectProxy({STUDIO_NAME: "127.0.0.1"}) as proxy:
        url = f"https://{STUDIO_NAME}:{front.port}"
        sb._state.base_url = url  # upload URLs on the TLS name too (until the sandbox serves TLS itself)
        yield Campus(ca, sb, proxy, url)
        assert front.errors == [] and proxy.errors == []


def upload_one(client: StudioClient, path: Path, size: int = 3 << 20) -> int:
    path.write_bytes(b"v" * size)
    st = path.stat()
    media_id, url = client.generate(None, None)
    client.put(url, UploadFile(str(path), (st.st_ino, st.st_size, st.st_mtime_ns)))
    client.complete(media_id, "through the proxy", "", False)
    return media_id


def test_the_whole_upload_goes_through_the_proxy_to_a_host_only_it_resolves(campus: Campus, tmp_path: Path) -> None:
    client = campus.client(campus.env)
    try:
        assert client.route() == f"through proxy {campus.proxy.url} (from HTTPS_PROXY)"
        client.ping()
        media_id = upload_one(client, tmp_path / "a.mp4")
    finally:
        client.close()
    [media] = campus.sb.media()
    assert media["id"] == media_id and media["state"] == "completed" and media["size"] == 3 << 20
    tunnels = campus.proxy.tunnels()
    assert tunnels and set(tunnels) == {campus.url.removeprefix("https://")}  # https through CONNECT, by name
    assert len(tunnels) == 1  # ping, generate, PUT and complete: one kept-alive tunnel, one TLS session


def test_without_the_proxy_the_host_is_unreachable_by_name(campus: Campus) -> None:
    for env in ({}, {**campus.env, "NO_PROXY": "localhost,.campus.test"}):
        client = campus.client(env)
        try:
            assert client.route() == "directly"
            with pytest.raises(Unreachable, match=STUDIO_NAME):
                client.ping()
        finally:
            client.close()
    assert campus.proxy.seen == []


def test_loopback_never_goes_through_a_proxy(campus: Campus) -> None:
    dead = {"HTTPS_PROXY": "http://127.0.0.1:9", "HTTP_PROXY": "http://127.0.0.1:9", "ALL_PROXY": "http://127.0.0.1:9"}
    client = campus.client(dead, url=campus.sb.url, ca_bundle=None)
    try:
        assert client.route() == "directly"
        client.ping()
    finally:
        client.close()


def test_an_unreachable_proxy_is_named_not_the_host(campus: Campus) -> None:
    client = campus.client({"https_proxy": "http://127.0.0.1:9"})  # the discard port: nothing listens
    try:
        with pytest.raises(Unreachable) as info:
            client.ping()
    finally:
        client.close()
    assert str(info.value).startswith("ping: cannot reach proxy http://127.0.0.1:9 (from https_proxy): ")
    assert "refused" in str(info.value).lower()


def test_a_proxy_that_cannot_reach_the_host_says_so(campus: Campus) -> None:
    client = campus.client(campus.env, url=f"https://elsewhere.campus.test:{campus.proxy.port}")
    try:
        with pytest.raises(Unreachable, match="proxy .* refused the tunnel: 502"):
            client.ping()
    finally:
        client.close()


def test_studio_proxy_with_credentials_from_a_file(tmp_path: Path) -> None:
    ca = make_ca(tmp_path / "ca")
    secret = "s3cret pass:word"
    with Sandbox() as sb, TlsFront(ca.server_context(), sb.port) as front, \
            ConnectProxy({STUDIO_NAME: "127.0.0.1"}, auth=f"av-staff:{secret}") as proxy:
        campus = Campus(ca, sb, proxy, f"https://{STUDIO_NAME}:{front.port}")
        auth_file = tmp_path / "proxy-auth"
        auth_file.write_text(f"av-staff:{secret}\n")
        # The explicit key wins over the environment, whose proxy would not work.
        client = campus.client({"HTTPS_PROXY": "http://127.0.0.1:9"}, proxy=proxy.url, proxy_auth_file=auth_file)
        try:
            assert client.route() == f"through proxy {proxy.url} (from studio.proxy)"
            client.ping()
        finally:
            client.close()
        assert proxy.tunnels() == [f"{STUDIO_NAME}:{front.port}"]
        assert secret not in repr(parse(proxy.url, "studio.proxy", read_auth(auth_file)))
        assert secret not in logs.redact(f"proxy said {secret}")

        unauthorised = campus.client({}, proxy=proxy.url)
        try:
            with pytest.raises(Unreachable, match="refused the tunnel: 407"):
                unauthorised.ping()
        finally:
            unauthorised.close()


def test_a_proxy_auth_file_that_is_not_user_colon_password_is_a_config_error(tmp_path: Path) -> None:
    bad = tmp_path / "auth"
    bad.write_text("just-a-password\n")
    with pytest.raises(ConfigError, match="studio.proxy_auth_file: .* user:password"):
        read_auth(bad)


def test_an_https_proxy_is_verified_and_tls_runs_inside_its_tunnel(tmp_path: Path) -> None:
    ca, stranger = make_ca(tmp_path / "ca"), make_ca(tmp_path / "other")
    with Sandbox() as sb, TlsFront(ca.server_context(), sb.port) as front:
        for proxy_ca, works in ((ca, True), (stranger, False)):
            with ConnectProxy({STUDIO_NAME: "127.0.0.1"}, tls=proxy_ca.server_context()) as proxy:
                client = Campus(ca, sb, proxy, f"https://{STUDIO_NAME}:{front.port}").client(
                    {"HTTPS_PROXY": proxy.url})
                try:
                    if works:
                        client.ping()
                        assert proxy.tunnels() == [f"{STUDIO_NAME}:{front.port}"]
                    else:
                        with pytest.raises(Unreachable) as info:
                            client.ping()
                        assert f"cannot reach proxy {proxy.url} (from HTTPS_PROXY): TLS: certificate verify " \
                               "failed" in str(info.value)
                        assert proxy.seen == []  # nothing was said to a proxy we could not verify
                finally:
                    client.close()


def test_a_studio_certificate_from_an_unknown_ca_is_refused_through_the_tunnel(campus: Campus) -> None:
    client = campus.client(campus.env, ca_bundle=None)  # the system's CAs (certifi): not the private one
    try:
        with pytest.raises(Unreachable) as info:
            client.ping()
    finally:
        client.close()
    assert f"cannot reach {campus.url} through proxy" in str(info.value)
    assert "TLS: certificate verify failed" in str(info.value)
    assert campus.sb.events() == []


def test_token_endpoint_webhook_and_fetch_use_the_same_proxy(campus: Campus, tmp_path: Path) -> None:
    studio = campus.studio(proxy=campus.proxy.url)
    pool = Pool(lambda: tls_context(studio.ca_bundle), 5, proxies=Proxies.from_config(studio, {}))
    try:
        form = {"grant_type": "authorization_code", "code": campus.sb.issue_auth_code(),
                "client_id": "sandbox-client", "client_secret": "sandbox-secret"}
        tokens = post_token(pool, campus.url + "/api/public/oauth/token", form, "refused")
        assert tokens["access_token"] and tokens["refresh_token"]
        # A document fetched as a timetable URL is (the sandbox's Swagger document stands in for a calendar).
        document = campus.url + "/api/public/apidocs"
        assert b'"swagger"' in fetch_document(document, campus.ca.ca, 5, studio)
        with pytest.raises(TransientError, match="cannot reach proxy http://127.0.0.1:9 .from studio.proxy."):
            fetch_document(document, campus.ca.ca, 5, campus.studio(proxy="http://127.0.0.1:9"))
    finally:
        pool.close()
    before = len(campus.proxy.tunnels())

    # The webhook: the sandbox answers the POST (404, an unknown path), which is enough to show it went through.
    alerts = Alerts(None, campus.url + "/hook", studio)
    alerts.start()
    alerts.send("job_failed", job_id=1)
    assert wait_until(lambda: len(campus.proxy.tunnels()) > before, 10)
    alerts.close()


def test_stop_interrupts_a_put_through_the_tunnel(tmp_path: Path) -> None:
    ca = make_ca(tmp_path / "ca")
    with Sandbox(faults=Faults(put_bytes_per_second=100_000)) as sb, \
            TlsFront(ca.server_context(), sb.port) as front, \
            ConnectProxy({STUDIO_NAME: "127.0.0.1"}) as proxy:
        url = f"https://{STUDIO_NAME}:{front.port}"
        sb._state.base_url = url
        studio = StudioConfig(url=url, token_env="X", timeout_seconds=30, ca_bundle=ca.ca)
        stop = threading.Event()
        pool = Pool(lambda: tls_context(ca.ca), 30, proxies=Proxies.from_config(studio, {"HTTPS_PROXY": proxy.url}),
                    stop=stop)
        client = StudioClient(studio, RETRY, StaticToken(lambda: TOKEN), stop=stop, pool=pool)
        path = tmp_path / "a.mp4"
        path.write_bytes(b"x" * (1 << 20))  # 10 s at the sandbox's pace
        st = path.stat()
        _, upload_url = client.generate(None, None)
        timer = threading.Timer(0.3, stop.set)
        timer.start()
        started = time.monotonic()
        try:
            with pytest.raises(Stopping):
                client.put(upload_url, UploadFile(str(path), (st.st_ino, st.st_size, st.st_mtime_ns)))
            assert time.monotonic() - started < 5  # not the 10 s body, not the 30 s timeout
        finally:
            timer.cancel()
            sb.faults.put_bytes_per_second = 0
            client.close()
        assert sb.media()[0]["state"] == "pending"
