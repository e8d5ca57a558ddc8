"""GET one small document from an arbitrary URL (a room's iCalendar timetable), with the project's TLS settings.

It goes through the program's one HTTP stack (transport.py: the same proxies as every other request, the same
TLS context as the client, `studio.ca_bundle` else certifi), follows at most 5 redirects, never lets a redirect
leave https (except to a loopback host, as the config allows), and reads at most MAX_DOCUMENT_BYTES.
"""

from __future__ import annotations

import time
from pathlib import Path
from urllib.parse import urlsplit

from studio_watch.config import StudioConfig, is_loopback
from studio_watch.errors import TransientError
from studio_watch.studio.connections import tls_context

MAX_DOCUMENT_BYTES = 16 * 1024 * 1024  # a year of a busy room's timetable is well under 1 MB
MAX_REDIRECTS = 5
# httpx's timeout is per read: a server dripping a byte at a time never trips it. The whole answer (redirects
# included) gets this many timeouts, so a calendar server cannot hold the thread that judges every folder.
WHOLE_ANSWER_TIMEOUTS = 4


def shown_url(url: str) -> str:
    """A URL for logs and status: private calendar addresses carry their secret in the path or the query."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}/…" if parts.path.strip("/") or parts.query \
        else f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}"


def fetch_document(url: str, ca_bundle: Path | None, timeout: float, studio: StudioConfig | None = None) -> bytes:
    """The body of a 200 answer to GET `url`; raises TransientError (naming the host, never the path).

    Through the program's one HTTP stack (studio/transport.py): `studio`'s proxy settings (`studio.proxy`, else
    HTTPS_PROXY / HTTP_PROXY / NO_PROXY; loopback never through a proxy), TLS verified against `ca_bundle`.
    """
    import httpx  # start-up cost: only a calendar URL needs it

    from studio_watch.studio.proxies import Proxies  # start-up cost: the transport (httpcore), only when fetching
    from studio_watch.studio.transport import Pool, reason  # start-up cost, as above

    shown = shown_url(url)
    deadline = time.monotonic() + WHOLE_ANSWER_TIMEOUTS * timeout
    slow = f"GET {shown}: the answer took too long (over {WHOLE_ANSWER_TIMEOUTS * timeout:g} s); refused"
    pool = Pool(lambda: tls_context(ca_bundle), timeout, proxies=Proxies.from_config(studio))
    origin = shown.removesuffix("/…")
    try:
        # Redirects are followed by hand: each hop is checked before it is requested, since a plain-http hop
        # would already have sent the calendar's private path in clear text.
        with pool.httpx(owned=True) as http:
            request = http.build_request("GET", url, headers={"Accept": "text/calendar, */*;q=0.5"})
            for _ in range(MAX_REDIRECTS + 1):
                response = http.send(request, stream=True, follow_redirects=False)
                try:
                    if response.next_request is not None:  # a redirect
                        target = response.next_request.url
                        if target.scheme != "https" and not is_loopback(target.host):
                            raise TransientError(f"GET {shown}: redirected to plain http:// ({target.host}); refused")
                        request = response.next_request
                        if time.monotonic() > deadline:
                            raise TransientError(slow)
                        continue
                    if response.status_code != 200:
                        raise TransientError(f"GET {shown}: HTTP {response.status_code}")
                    body = bytearray()
                    for chunk in response.iter_bytes():
                        if time.monotonic() > deadline:
                            raise TransientError(slow)
                        body += chunk
                        if len(body) > MAX_DOCUMENT_BYTES:
                            raise TransientError(f"GET {shown}: larger than {MAX_DOCUMENT_BYTES} bytes; refused")
                    return bytes(body)
                finally:
                    response.close()
            raise TransientError(f"GET {shown}: more than {MAX_REDIRECTS} redirects; refused")
    except (httpx.ConnectError, httpx.ConnectTimeout, httpx.ProxyError) as exc:
        cause = exc.__cause__ or exc  # netio's error: it says whether the proxy or the host was out of reach
        raise TransientError(f"GET {shown}: {pool._unreachable(cause, origin)}") from None
    except httpx.HTTPError as exc:
        raise TransientError(f"GET {shown}: {type(exc).__name__}: {reason(exc).replace(url, shown)}") from None
