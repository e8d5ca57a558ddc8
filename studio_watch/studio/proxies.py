"""Which proxy a request goes through: `studio.proxy`, else the usual environment variables; loopback never.

The variables are read as curl and httpx read them: `HTTPS_PROXY` for https URLs, `HTTP_PROXY` for http URLs,
`ALL_PROXY` for either (lower-case names too, which win), and `NO_PROXY`: a comma-separated list of host names
(a name also covers its subdomains; a leading `.` or `*.` is the same), IP addresses, CIDR ranges, or `*`.
`NO_PROXY` applies to `studio.proxy` as well. A proxy is `http://host:port` (https through CONNECT) or
`https://host:port` (the proxy's own certificate verified like any other). Credentials come from
`studio.proxy_auth_file` (one line, `user:password`), or from the variable's URL; they are never logged.
"""

from __future__ import annotations

import base64
import ipaddress
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping
from urllib.parse import unquote, urlsplit

from studio_watch import logs
from studio_watch.config import StudioConfig, is_loopback
from studio_watch.errors import ConfigError

SCHEMES = ("http", "https")


@dataclass(frozen=True)
class Proxy:
    url: str  # scheme://host:port, never credentials: fit for a message
    source: str  # "studio.proxy" or the variable it came from
    host: str
    port: int
    auth: tuple[bytes, bytes] | None = field(default=None, repr=False)

    def __str__(self) -> str:
        return f"{self.url} (from {self.source})"

    @property
    def address(self) -> str:
        """host:port, as netio names the end of a connection."""
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


class ProxyUnusable(ValueError):
    """A proxy variable that cannot be used; the message names the variable, never its credentials."""


def parse(value: str, source: str, auth: tuple[bytes, bytes] | None = None) -> Proxy:
    """`value` as a Proxy (a bare `host:port` means http://); ProxyUnusable if it is not one."""
    text = value.strip()
    parts = urlsplit(text if "://" in text else f"http://{text}")
    scheme = parts.scheme.lower()
    if scheme not in SCHEMES or not parts.hostname:
        raise ProxyUnusable(f"{source}: expected http://host:port or https://host:port, "
                            f"got a {scheme or 'schemeless'} URL")
    try:
        port = parts.port or (443 if scheme == "https" else 80)
    except ValueError:
        raise ProxyUnusable(f"{source}: bad port") from None
    if parts.username is not None and auth is None:
        auth = unquote(parts.username).encode(), unquote(parts.password or "").encode()
    if auth is not None:
        _register(auth)
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return Proxy(f"{scheme}://{host}:{port}", source, parts.hostname, port, auth)


def read_auth(path: Path) -> tuple[bytes, bytes]:
    """`user:password` from the first line of `path` (studio.proxy_auth_file)."""
    try:
        line = path.read_text(encoding="utf-8").splitlines()[0].strip() if path.stat().st_size else ""
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"studio.proxy_auth_file: cannot read {path}: {getattr(exc, 'strerror', None) or exc}") \
            from None
    user, colon, password = line.partition(":")
    if not colon or not user:
        raise ConfigError(f"studio.proxy_auth_file: {path} must hold one line, user:password")
    return user.encode(), password.encode()


def _register(auth: tuple[bytes, bytes]) -> None:
    user, password = auth
    if password:
        logs.register_secret(password.decode("utf-8", "replace"))
    logs.register_secret(base64.b64encode(user + b":" + password).decode())  # the Proxy-Authorization value


class Proxies:
    """The proxy for each URL; made once per client from the config and the environment."""

    def __init__(self, explicit: Proxy | None = None, env: Mapping[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        self.explicit = explicit
        self._by_scheme: dict[str, Proxy | ProxyUnusable | None] = {}
        for scheme in SCHEMES:
            for name in (f"{scheme}_proxy", f"{scheme.upper()}_PROXY", "all_proxy", "ALL_PROXY"):
                if env.get(name, "").strip():
                    try:
                        self._by_scheme[scheme] = parse(env[name], name)
                    except ProxyUnusable as exc:
                        self._by_scheme[scheme] = exc
                    break
        raw = env.get("no_proxy") or env.get("NO_PROXY") or ""
        self._no_proxy = [entry.strip().lower() for entry in raw.replace(" ", ",").split(",") if entry.strip()]

    @classmethod
    def from_config(cls, studio: StudioConfig | None, env: Mapping[str, str] | None = None) -> Proxies:
        if studio is None or not studio.proxy:
            return cls(None, env)
        auth = read_auth(studio.proxy_auth_file) if studio.proxy_auth_file else None
        try:
            return cls(parse(studio.proxy, "studio.proxy", auth), env)
        except ProxyUnusable as exc:
            raise ConfigError(str(exc)) from None

    def for_url(self, scheme: str, host: str) -> Proxy | None:
        """The proxy for a request to `scheme://host`, or None to connect directly; ProxyUnusable for a bad
        variable that would have applied."""
        host = host.strip("[]").lower()
        if is_loopback(host) or self._bypassed(host):
            return None
        chosen = self.explicit or self._by_scheme.get(scheme)
        if isinstance(chosen, ProxyUnusable):
            raise chosen
        return chosen

    def describe(self, url: str) -> str:
        """How a request to `url` goes: 'directly' or 'through proxy URL (from SOURCE)'."""
        parts = urlsplit(url)
        try:
            proxy = self.for_url(parts.scheme, parts.hostname or "")
        except ProxyUnusable as exc:
            return f"nowhere: {exc}"
        return f"through proxy {proxy}" if proxy else "directly"

    def _bypassed(self, host: str) -> bool:
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            address = None
        for entry in self._no_proxy:
            if entry == "*":
                return True
            if address is not None:
                try:
                    if address in ipaddress.ip_network(entry.strip("[]"), strict=False):
                        return True
                except ValueError:
                    pass
                continue
            name = entry.rsplit(":", 1)[0] if entry.count(":") == 1 else entry  # host:port: the port is ignored
            name = name.removeprefix("*").lstrip(".")
            if name and (host == name or host.endswith("." + name)):
                return True
        return False
