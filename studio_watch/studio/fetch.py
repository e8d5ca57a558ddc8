"""GET one small document from an arbitrary URL (a room's iCalendar timetable), with the project's TLS settings.

The Studio transport (transport.py) speaks only to the Studio host and has no proxy support yet; until the HTTP
stack is one (issue 12), this is the single function to re-point. It verifies TLS with the same context as the
client (`studio.ca_bundle`, else certifi), honours HTTPS_PROXY / NO_PROXY like the webhook and token requests, and
never lets a redirect leave https (except to a loopback host, as the config allows).
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

from studio_watch.config import is_loopback
from studio_watch.errors import TransientError

MAX_DOCUMENT_BYTES = 16 * 1024 * 1024  # a year of a busy room's timetable is well under 1 MB


def shown_url(url: str) -> str:
    """A URL for logs and status: private calendar addresses carry their secret in the path or the query."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}/…" if parts.path.strip("/") or parts.query \
        else f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}"


def fetch_document(url: str, ca_bundle: Path | None, timeout: float) -> bytes:
    """The body of a 200 answer to GET `url`; raises TransientError (naming the host, never the path)."""
    import httpx

    from studio_watch.studio.client import tls_context

    shown = shown_url(url)
    try:
        with httpx.Client(verify=tls_context(ca_bundle), timeout=timeout, follow_redirects=True,
                          max_redirects=5) as http:
            with http.stream("GET", url, headers={"Accept": "text/calendar, */*;q=0.5"}) as response:
                final = response.url
                if final.scheme != "https" and not is_loopback(final.host):
                    raise TransientError(f"GET {shown}: redirected to plain http:// ({final.host}); refused")
                if response.status_code != 200:
                    raise TransientError(f"GET {shown}: HTTP {response.status_code}")
                body = bytearray()
                for chunk in response.iter_bytes():
                    body += chunk
                    if len(body) > MAX_DOCUMENT_BYTES:
                        raise TransientError(f"GET {shown}: larger than {MAX_DOCUMENT_BYTES} bytes; refused")
                return bytes(body)
    except httpx.HTTPError as exc:
        raise TransientError(f"GET {shown}: {type(exc).__name__}: {str(exc).replace(url, shown)}") from None
