"""Media from URLs, created exactly once (for `studio-watch import-url` and for link files in watched folders).

Creating media from a URL is not idempotent: every successful POST makes a new media. When the outcome of a send
is unknown (a read timeout, a reset or a 5xx after the request may have reached Studio), `import_once` does not
send again blindly. It first reconciles: it searches Studio's media for the import's title and takes a media with
exactly that title (and that source URL, when the media object carries one) created after the first attempt
started as the result. Only when none is found does it send again. Failures that prove nothing was created
(connection refused, 429, 401, 501) are simply retried.

Residual risk: reconciliation can only find what Studio's search shows. If search indexing lags behind creation,
a media created by a lost attempt may not be found yet and the retry creates a second copy. Matching is by exact
title and by creation time (with two minutes of tolerance for clock skew between this machine and Studio), so a
media with the same title created by someone else in that window is taken for ours and the import is not sent.
External YouTube/Vimeo links imported without a title are searched by their URL: Studio may give such media the
video's own title, which a search for the URL will not find, so a lost response there can still duplicate the
link; give external imports a title (`--title`) when duplicates matter. When reconciliation itself cannot run
(search refused or unreachable), the import fails with a message saying its outcome is unknown rather than
risking a duplicate; `studio-watch import-url` can then be run again once Studio has been checked by hand.
"""

from __future__ import annotations

import json
import re
import threading
import time
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from typing import Any, Protocol
from urllib.parse import urlsplit

from studio_watch.logs import get_logger
from studio_watch import logs
from studio_watch.errors import (CaptionsDisabled, ConfigError, PermanentError, Stopping, StudioError, TransientError,
                                 Unreachable)
from studio_watch.studio import retry as policy
from studio_watch.studio.client import StudioClient

log = get_logger(__name__)

URL_PATTERN = re.compile(r"^http[s]?:\/?\/")
EXTERNAL_HOSTS = frozenset({"youtube.com", "www.youtube.com", "m.youtube.com", "youtu.be", "vimeo.com",
                            "player.vimeo.com"})
CLOCK_SKEW = 120.0  # seconds of tolerance when deciding a media was created after our attempt started
SOURCE_URL_KEYS = ("source_url", "url", "media_url", "original_url")
CAPTIONS_SKIPPED = "auto-captioning is not enabled for this account; imported without captions"


@dataclass(frozen=True)
class ImportRequest:
    """One create-from-URL, as it will be sent."""

    url: str
    title: str | None
    description: str = ""
    auto_caption: bool = False
    is_external: bool = False
    collection_id: int | None = None
    user_id: int | None = None

    @property
    def key(self) -> str:
        """What reconciliation searches for: the title, or the URL for an external link without one."""
        return self.title or self.url


@dataclass(frozen=True)
class ImportResult:
    media: dict[str, Any]
    captions_skipped: bool = False
    reconciled: bool = False  # found by a search after a send of unknown outcome, not from a response

    @property
    def media_id(self) -> int:
        return int(self.media["id"])


@dataclass(frozen=True)
class ImportAttempt:
    """A send of unknown outcome, remembered under the import's meta key: when the first send that may have
    created the media started (epoch seconds). Stored as the JSON object `{"started": ...}`."""

    started: float

    def stored(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_stored(cls, text: str | None) -> ImportAttempt | None:
        """The record in a stored value; None when there is none or it cannot be read (nothing to reconcile)."""
        try:
            return cls(float(json.loads(text)["started"])) if text else None
        except (ValueError, KeyError, TypeError):
            return None


class AttemptStore(Protocol):
    """Where a send of unknown outcome is remembered across processes (JobQueue.meta/set_meta fits)."""

    def meta(self, key: str) -> str | None: ...

    def set_meta(self, key: str, value: str | None) -> None: ...


# -- checking what was asked -----------------------------------------------------------------------------------

def is_external_url(url: str) -> bool:
    """A YouTube or Vimeo URL, the only kind Studio accepts as external media."""
    return (urlsplit(url).hostname or "").lower() in EXTERNAL_HOSTS


def validate_import(url: str, collection: int | None, user: int | None, title: str | None,
                    external: bool | None) -> tuple[bool, str | None]:
    """Check an import before any request; returns (is_external, title). ConfigError names what is wrong."""
    if not URL_PATTERN.match(url):
        raise ConfigError(f"command line: URL: must start with http:// or https:// (got {url!r})")
    video_site = is_external_url(url)
    if external and not video_site:
        raise ConfigError(f"command line: --external: only YouTube and Vimeo URLs can be external "
                          f"({', '.join(sorted(EXTERNAL_HOSTS))}); got {urlsplit(url).hostname or url!r}")
    is_external = video_site if external is None else external
    title = logs.title_text(title).strip() if title and logs.title_text(title).strip() else None
    if title is None and not is_external:
        raise ConfigError("command line: --title: required (only external YouTube/Vimeo links may omit it)")
    return is_external, title


# -- reconciliation ----------------------------------------------------------------------------------------------

def _created(media: dict[str, Any]) -> float | None:
    text = media.get("created_at")
    if not isinstance(text, str):
        return None
    try:
        when = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    return (when if when.tzinfo else when.replace(tzinfo=timezone.utc)).timestamp()


def matches(media: dict[str, Any], request: ImportRequest, started: float) -> bool:
    """Is this media the one a send of unknown outcome created? Exact title (or URL), source, time, owner."""
    if request.title is not None and media.get("title") != request.title:
        return False
    sources = [media[k] for k in SOURCE_URL_KEYS if isinstance(media.get(k), str) and "://" in media[k]]
    if sources and request.url not in sources:
        return False
    if request.title is None and media.get("title") != request.url and request.url not in sources:
        return False
    owner = media.get("owner") if isinstance(media.get("owner"), dict) else {}
    if request.user_id is not None and owner.get("id") not in (None, request.user_id):
        return False
    created = _created(media)
    return created is not None and created >= started - CLOCK_SKEW


def reconcile(client: StudioClient, request: ImportRequest, started: float) -> dict[str, Any] | None:
    """The media an earlier send created, if Studio's search shows one."""
    try:
        found = [m for m in client.search_media(request.key) if matches(m, request, started)]
    except PermanentError as exc:
        raise PermanentError(f"import of {request.url} has an unknown outcome and Studio cannot be searched to find "
                             f"out ({exc}); check Studio for media titled {request.key!r} before importing again",
                             exc.status) from None
    except TransientError as exc:
        raise type(exc)(f"import of {request.url} has an unknown outcome, and the search that would tell failed: "
                        f"{exc}", exc.status, exc.retry_after) from None
    if not found:
        return None
    found.sort(key=lambda m: (_created(m) or 0.0, str(m.get("id"))))
    if len(found) > 1:
        log.warning("import_duplicates_found", url=request.url, media_ids=[m.get("id") for m in found])
    return found[-1]


def _attempt_key(request: ImportRequest) -> str:
    target = f"c{request.collection_id}" if request.collection_id else f"u{request.user_id or ''}"
    return f"import_attempt:{target}:{request.key}:{request.url}"


def _remember(store: AttemptStore | None, request: ImportRequest, started: float) -> None:
    if store is not None:
        store.set_meta(_attempt_key(request), ImportAttempt(started).stored())


def _earlier_attempt(store: AttemptStore | None, request: ImportRequest) -> float | None:
    attempt = ImportAttempt.from_stored(store.meta(_attempt_key(request))) if store is not None else None
    return attempt.started if attempt else None


# -- the reconciling import --------------------------------------------------------------------------------------

def _wait(client: StudioClient, sends: int, exc: TransientError, stop: threading.Event) -> None:
    """Seconds-scale backoff between sends (longer outages are the queue's business)."""
    delay = policy.backoff(sends, client.retry, exc.retry_after)
    log.info("import_retry", sends=sends, error=str(exc), wait=round(delay, 2))
    if stop.wait(delay):
        raise Stopping("stopping")


def import_once(client: StudioClient, store: AttemptStore | None, request: ImportRequest,
                stop: threading.Event | None = None, maybe_sent_at: float | None = None) -> ImportResult:
    """Create the media exactly once: reconcile any send of unknown outcome before sending again.

    `maybe_sent_at` is when an earlier attempt (e.g. a queue job's, before a crash) may have sent the request;
    `store` (e.g. the JobQueue's meta) remembers an unknown outcome across processes; with neither, only this
    call's own sends are reconciled. 501 (captions not enabled) imports again without auto_caption;
    403/404/422 raise PermanentError.
    """
    stop = stop or client.stop
    captions_skipped = False
    unknown_since = maybe_sent_at or _earlier_attempt(store, request)
    sends = 0
    while True:
        if unknown_since is not None:
            media = reconcile(client, request, unknown_since)
            if media is not None:
                log.info("import_reconciled", url=request.url, media_id=media.get("id"))
                return _done(store, request, ImportResult(media, captions_skipped, reconciled=True))
        started = time.time()
        _remember(store, request, unknown_since or started)
        sends += 1
        try:
            media = client.import_url(request.url, request.title, request.description, request.auto_caption,
                                      request.is_external, request.collection_id, request.user_id)
        except CaptionsDisabled:
            log.warning("import_captions_skipped", url=request.url, reason="auto_caption not enabled (501)")
            request, captions_skipped = replace(request, auto_caption=False), True
            continue
        except TransientError as exc:
            if not _nothing_created(exc):
                unknown_since = unknown_since or started
            if not policy.client_retries(exc, sends, client.retry):
                _forget(store, request, unknown_since)
                raise _gave_up(exc, request, unknown_since) from None
            _wait(client, sends, exc, stop)
            continue
        except StudioError:
            _forget(store, request, unknown_since)
            raise
        log.info("media_imported", url=request.url, media_id=media.get("id"), external=request.is_external)
        return _done(store, request, ImportResult(media, captions_skipped))


def _nothing_created(exc: TransientError) -> bool:
    """Failures that prove the request was not processed: no connection, or rate limited."""
    return isinstance(exc, Unreachable) or exc.status == 429


def _gave_up(exc: TransientError, request: ImportRequest, unknown_since: float | None) -> TransientError:
    if unknown_since is None:
        return exc
    return type(exc)(f"{exc}; the import's outcome is unknown: it will be reconciled (searched for "
                     f"{request.key!r}) before it is sent again", exc.status, exc.retry_after)


def _forget(store: AttemptStore | None, request: ImportRequest, unknown_since: float | None) -> None:
    """A definite refusal: nothing of ours is pending any more (unless an earlier send may have landed)."""
    if unknown_since is None and store is not None:
        store.set_meta(_attempt_key(request), None)


def _done(store: AttemptStore | None, request: ImportRequest, result: ImportResult) -> ImportResult:
    if store is not None:
        store.set_meta(_attempt_key(request), None)
    return result


def import_link(client: StudioClient, url: str, title: str, description: str, auto_caption: bool,
                collection_id: int | None, user_id: int | None, *, source: str | None = None,
                maybe_sent_at: float | None = None, store: AttemptStore | None = None,
                stop: threading.Event | None = None) -> dict[str, Any]:
    """Import the URL read from a link file (`source`, named in errors); YouTube/Vimeo become external media.

    `maybe_sent_at`: when an earlier attempt of this job may have sent the request (reconciled before sending).
    Returns Studio's media object plus "captions_skipped", "reconciled", "is_external" and "source_url". A URL
    Studio cannot import raises PermanentError.
    """
    try:
        is_external, checked_title = validate_import(url, collection_id, user_id, title, None)
    except ConfigError as exc:
        raise PermanentError(f"link file {source or url!r}: {str(exc).removeprefix('command line: ')}") from None
    request = ImportRequest(url, checked_title, description, auto_caption, is_external, collection_id, user_id)
    result = import_once(client, store, request, stop, maybe_sent_at)
    return {**result.media, "captions_skipped": result.captions_skipped, "reconciled": result.reconciled,
            "is_external": is_external, "source_url": url}
