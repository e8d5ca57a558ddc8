"""How the program connects for a config: the TLS context it verifies servers with, and its HTTP pool.

Everything that talks HTTP (the client, the token endpoint, alert webhooks, `health`, fetched calendars) gets its
connections here, so TLS checks and proxies are the same for all. The transport (httpcore, ~16 ms to import) is
loaded when the first pool is built, not by importing this module.
"""

from __future__ import annotations

import ssl
import threading
from pathlib import Path
from typing import TYPE_CHECKING

import certifi

from studio_watch.config import StudioConfig
from studio_watch.errors import Unreachable

if TYPE_CHECKING:
    from studio_watch.studio.transport import Pool


def tls_context(ca_bundle: Path | None) -> ssl.SSLContext:
    """Verified TLS, always: the system's trust store via certifi, or the configured CA bundle.

    Built at the first https connection: a bundle gone or broken since the config was loaded is Unreachable
    (the queue pauses, and resumes once the file is fixed) with a message that names it.
    """
    cafile = str(ca_bundle) if ca_bundle else certifi.where()
    try:
        return ssl.create_default_context(cafile=cafile)
    except (OSError, ssl.SSLError) as exc:
        key = "studio.ca_bundle" if ca_bundle else "the certifi package"
        raise Unreachable(f"cannot set up TLS with {cafile} ({key}): {exc.strerror or exc}") from None


def http_pool(studio: StudioConfig | None, stop: threading.Event | None = None,
              timeout: float | None = None) -> Pool:
    """The program's HTTP pool for this config: verified TLS (studio.ca_bundle), proxies (studio.proxy, else the
    environment), stopped by `stop`. Without a config (health, a bare webhook), the system CAs and the environment."""
    from studio_watch.studio.proxies import Proxies  # start-up cost: the HTTP stack (httpcore) is imported by the first request
    from studio_watch.studio.transport import Pool  # start-up cost: the HTTP stack (httpcore) is imported by the first request

    ca_bundle = studio.ca_bundle if studio else None
    return Pool(lambda: tls_context(ca_bundle), timeout or (studio.timeout_seconds if studio else 30.0),
                proxies=Proxies.from_config(studio), stop=stop)
