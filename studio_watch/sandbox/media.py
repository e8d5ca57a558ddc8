"""The sandbox's media (stdlib only): the users and collections they belong to, their single-use upload URLs,
the three-step upload (generate, PUT, complete), URL imports, and the media objects the API shows.

Its API methods take already-parsed parameters, return `(status, payload)` and raise `ApiError` for every
refusal; all of it runs under the journal's lock, and every change is notified there.
"""

from __future__ import annotations

import json
import re
import secrets
import struct
import time
import zlib
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any, Mapping
from urllib.parse import urlsplit

from studio_watch.sandbox.api import ApiError, Reply, as_bool, as_int, paged
from studio_watch.sandbox.faults import Injector
from studio_watch.sandbox.journal import Journal

DEFAULT_COLLECTIONS: Mapping[int, str] = {1: "Lecture Capture", 2: "Room 101", 3: "Biology"}
DEFAULT_USERS: Mapping[int, str] = {42: "Ada Lovelace", 43: "Grace Hopper"}
EXTERNAL_HOSTS = ("youtube.com", "youtu.be", "vimeo.com")
URL_PATTERN = re.compile(r"^http[s]?:\/?\/")


@dataclass
class UploadUrl:
    """One issued upload URL; it accepts exactly one whole PUT."""

    media_id: int
    token: str
    signature: str
    issued_at: float
    used: bool = False
    dead: bool = False
    attempts: int = 0
    replacement: bool = False


@dataclass
class MediaRecord:
    """A media as the sandbox stores it (public fields plus the bookkeeping tests look at)."""

    id: int
    created_at: str
    collection_id: int | None = None
    user_id: int | None = None
    state: str = "pending"
    title: str | None = None
    description: str | None = None
    bytes_received: int = 0
    content_sha256: str | None = None
    put_count: int = 0
    completed_count: int = 0
    auto_caption: bool = False
    captions: list[str] = field(default_factory=list)
    source_url: str | None = None
    is_external: bool = False
    completed_at: float | None = None
    embed_id: str = field(default_factory=lambda: secrets.token_hex(8))
    lti_launch_id: str = field(default_factory=lambda: secrets.token_hex(8))


def is_external_host(url: str) -> bool:
    """True for YouTube and Vimeo URLs, the only ones Studio accepts as external media."""
    host = (urlsplit(url).hostname or "").lower()
    return any(host == h or host.endswith("." + h) for h in EXTERNAL_HOSTS)


def _duration(size: int) -> float:
    """A made-up but stable duration for an uploaded media: its size played at 2 Mbit/s."""
    return round(size / 250_000, 3)


def _png(seed: int) -> bytes:
    """A small valid PNG (16x9, one colour chosen by `seed`), built with zlib: the sandbox's thumbnail."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rgb = bytes(((seed * 67) % 256, (seed * 131) % 256, (seed * 199) % 256))
    rows = b"".join(b"\x00" + rgb * 16 for _ in range(9))
    header = struct.pack(">IIBBBBB", 16, 9, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


class MediaStore:
    """Media, upload URLs, users and collections; `base_url` is where upload and thumbnail URLs point."""

    def __init__(self, journal: Journal, injector: Injector, collections: Mapping[int, str],
                 users: Mapping[int, str]) -> None:
        """Start with no media, the given collections and users."""
        self._journal = journal
        self._injector = injector
        self.collections = dict(collections)
        self.users = dict(users)
        self.base_url = ""
        self._media: dict[int, MediaRecord] = {}
        self._urls: dict[int, UploadUrl] = {}
        self._next_id = 1001
        self._owed_replacements = 0

    def snapshot(self) -> list[dict[str, Any]]:
        """Every media: the public object plus internal fields."""
        now = time.monotonic()
        with self._journal.lock:
            return [self._snapshot(rec, now) for rec in sorted(self._media.values(), key=lambda r: r.id)]

    def _snapshot(self, rec: MediaRecord, now: float) -> dict[str, Any]:
        """Public object merged with the internal record fields."""
        internal = asdict(rec)
        internal.pop("embed_id")
        internal.pop("lti_launch_id")
        return {**self._public(rec, now), **internal}

    def _transcoding(self, rec: MediaRecord, now: float) -> str:
        """transcoding_status, computed lazily from the completion time and the live faults."""
        if rec.completed_at is None:
            return "pending"
        if now - rec.completed_at < self._injector.faults.transcode_seconds:
            return "processing"
        return "failed" if self._injector.faults.transcode_fail else "completed"

    def _user(self, user_id: int) -> dict[str, Any]:
        """The user object of GET /users/{id}."""
        name = self.users[user_id]
        email = ".".join(name.lower().split()) + "@sandbox.example"
        return {"id": user_id, "full_name": name, "display_name": name.split()[0], "email": email}

    def _public(self, rec: MediaRecord, now: float) -> dict[str, Any]:
        """The media object of studio-api.md."""
        owner_id = rec.user_id if rec.user_id is not None else min(self.users, default=None)
        status = self._transcoding(rec, now)
        done = status == "completed"
        source = "external" if rec.is_external else ("url" if rec.source_url else "upload")
        cid = rec.collection_id
        return {
            "id": rec.id,
            "title": rec.title,
            "description": rec.description,
            "duration": _duration(rec.bytes_received) if done and not rec.source_url else None,
            "created_at": rec.created_at,
            "thumbnail_url": f"{self.base_url}/_thumb/{rec.id}.png" if done else None,
            "transcoding_status": status,
            "owner": self._user(owner_id) if owner_id in self.users else None,
            "size": rec.bytes_received if rec.state != "pending" and not rec.source_url else None,
            "source": source,
            "embed_id": rec.embed_id,
            "lti_launch_id": rec.lti_launch_id,
            "collection": {"id": cid, "name": self.collections[cid], "type": "course"} if cid is not None else None,
        }

    def _new_media(self, collection_id: int | None, user_id: int | None) -> MediaRecord:
        """Create and store a pending media (lock held)."""
        created = datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")
        rec = MediaRecord(id=self._next_id, created_at=created, collection_id=collection_id, user_id=user_id)
        self._next_id += 1
        self._media[rec.id] = rec
        return rec

    # ----- validation helpers ------------------------------------------------------------------

    def _check_collection(self, value: Any) -> int:
        """Validate a collection id: 422 not an integer, 404 unknown, 403 forbidden."""
        cid = as_int(value, "collection_id")
        if cid not in self.collections:
            raise ApiError(404, f"collection {cid} not found")
        if cid in self._injector.faults.forbidden_collections:
            raise ApiError(403, f"not permitted on collection {cid}")
        return cid

    def _check_user(self, value: Any) -> int:
        """Validate a user id: 422 not an integer, 404 unknown."""
        uid = as_int(value, "user_id")
        if uid not in self.users:
            raise ApiError(404, f"user {uid} not found")
        return uid

    def _check_captions(self, auto_caption: bool) -> None:
        """501 when captions are asked for but disabled for the account."""
        if auto_caption and self._injector.faults.captions_disabled:
            raise ApiError(501, "auto-captioning is not enabled for this account")

    def _both_targets(self, where: str) -> ApiError:
        """Record the violation of sending collection_id and user_id together, and return the 422."""
        self._journal.add_violation(f"both collection_id and user_id: {where}")
        return ApiError(422, "collection_id and user_id cannot be sent together")

    # ----- API: upload, complete, read ---------------------------------------------------------

    def generate(self, query: Mapping[str, str]) -> Reply:
        """POST /media/uploads: a new pending media and its single-use upload URL."""
        with self._journal.lock:
            # Both ids: on behalf of the user (the owner), into the collection (Instructure's own uploader).
            cid = self._check_collection(query["collection_id"]) if "collection_id" in query else None
            uid = self._check_user(query["user_id"]) if "user_id" in query else None
            rec = self._new_media(cid, uid)
            issued = time.time()
            url = UploadUrl(rec.id, secrets.token_urlsafe(16), secrets.token_hex(16), issued)
            if self._owed_replacements > 0:  # expire_first_put spares one URL per URL it killed
                self._owed_replacements -= 1
                url.replacement = True
            self._urls[rec.id] = url
            expires = int(issued + self._injector.faults.url_ttl_seconds)
            link = (
                f"{self.base_url}/_upload/{rec.id}/{url.token}"
                f"?signature={url.signature}&expires={expires}"
            )
            self._journal.notify()
            return 201, {"upload": {"id": rec.id, "url": link}}

    def begin_put(self, media_id: str, token: str, signature: str) -> UploadUrl:
        """Check an upload URL before reading the body: 403 invalid/used/expired, 410 dead or first PUT."""
        with self._journal.lock:
            mid = as_int(media_id, "upload URL", status=403)
            rec, url = self._media.get(mid), self._urls.get(mid)
            if rec is not None:
                rec.put_count += 1
                self._journal.notify()
            if url is None or not secrets.compare_digest(url.token, token):
                raise ApiError(403, "invalid upload URL")
            if not secrets.compare_digest(url.signature, signature):
                raise ApiError(403, "signature does not match")
            if url.used:
                raise ApiError(403, "upload URL already used")
            if url.dead:
                raise ApiError(410, "upload URL expired")
            if time.time() > url.issued_at + self._injector.faults.url_ttl_seconds:
                raise ApiError(403, "request has expired")
            url.attempts += 1
            if self._injector.faults.expire_first_put and url.attempts == 1 and not url.replacement:
                url.dead = True
                self._owed_replacements += 1
                raise ApiError(410, "upload URL expired")
            return url

    def finish_put(self, url: UploadUrl, size: int, sha256: str) -> None:
        """Record a whole PUT: the URL is consumed and the media becomes uploaded."""
        with self._journal.lock:
            if url.used:
                raise ApiError(403, "upload URL already used")
            url.used = True
            rec = self._media[url.media_id]
            rec.bytes_received, rec.content_sha256 = size, sha256
            if rec.state == "pending":
                rec.state = "uploaded"
            self._journal.notify()

    def complete(self, media_id: str, query: Mapping[str, str]) -> Reply:
        """POST /media/uploads/{id}/complete."""
        with self._journal.lock:
            rec = self._media.get(as_int(media_id, "media_id", status=404))
            if rec is None:
                raise ApiError(404, f"media {media_id} not found")
            if rec.state == "completed":
                rec.completed_count += 1
                self._journal.notify()
                raise ApiError(409, "upload already completed")
            if rec.state == "pending":
                self._journal.add_violation(f"complete before put: media {rec.id}")
                raise ApiError(422, "upload not received")
            auto_caption = as_bool(query.get("auto_caption"), "auto_caption")
            self._check_captions(auto_caption)
            rec.title = query.get("title") or rec.title or f"Untitled {rec.id}"
            rec.description = query.get("description", rec.description)
            self._mark_completed(rec, auto_caption)
            return 200, {"media": self._public(rec, time.monotonic())}

    def _mark_completed(self, rec: MediaRecord, auto_caption: bool) -> None:
        """State completed, transcoding starts now (lock held)."""
        rec.state = "completed"
        rec.completed_count += 1
        rec.completed_at = time.monotonic()
        rec.auto_caption = auto_caption
        rec.captions = ["en"] if auto_caption else []
        self._journal.notify()

    def get_media(self, media_id: str) -> Reply:
        """GET /media/{id}."""
        with self._journal.lock:
            rec = self._media.get(as_int(media_id, "media_id", status=404))
            if rec is None:
                raise ApiError(404, f"media {media_id} not found")
            return 200, {"media": self._public(rec, time.monotonic())}

    def search(self, query: Mapping[str, str]) -> Reply:
        """GET /media/search?title= (the documented name; `query=` also works): media whose title contains
        the text, case-insensitively, paged like /collections."""
        text = query.get("title", query.get("query", "")).lower()
        now = time.monotonic()
        with self._journal.lock:
            found = [self._public(r, now) for r in sorted(self._media.values(), key=lambda r: r.id)
                     if text in (r.title or "").lower()]
        return 200, paged("media", found, query)

    def media_detail(self, media_id: str, key: str) -> Reply:
        """GET /media/{id}/caption_files | courses | tags | users (answered under `user_permissions`)."""
        with self._journal.lock:
            rec = self._media.get(as_int(media_id, "media_id", status=404))
            if rec is None:
                raise ApiError(404, f"media {media_id} not found")
            owner = rec.user_id if rec.user_id is not None else min(self.users, default=None)
            details: dict[str, list[Any]] = {
                "caption_files": [{"id": f"{rec.id}-{lang}", "srclang": lang, "label": "English",
                                   "status": "published"} for lang in rec.captions],
                "courses": ([{"id": rec.collection_id, "name": self.collections[rec.collection_id]}]
                            if rec.collection_id is not None else []),
                "tags": [],
                "user_permissions": ([{"user": self._user(owner), "role": "owner"}] if owner in self.users else []),
            }
            return 200, {key: details[key]}

    def thumbnail(self, media_id: int) -> bytes | None:
        """The PNG behind a transcoded media's thumbnail_url; None when it has none (yet)."""
        with self._journal.lock:
            rec = self._media.get(media_id)
            if rec is None or self._transcoding(rec, time.monotonic()) != "completed":
                return None
        return _png(rec.id)

    # ----- API: imports, collections, users ----------------------------------------------------

    def import_into_collection(self, collection_id: str, query: Mapping[str, str]) -> Reply:
        """POST /collections/{cid}/media with query parameters."""
        with self._journal.lock:
            cid = self._check_collection(collection_id)
            return self._import(dict(query), cid, query.get("user_id"))

    def import_json(self, body: bytes) -> Reply:
        """POST /media with a JSON body."""
        try:
            doc = json.loads(body or b"{}")
        except ValueError as exc:
            raise ApiError(422, f"body is not JSON: {exc}") from None
        if not isinstance(doc, dict):
            raise ApiError(422, "body must be a JSON object")
        with self._journal.lock:
            if doc.get("collection_id") is not None and doc.get("user_id") is not None:
                raise self._both_targets("POST /media")
            cid = self._check_collection(doc["collection_id"]) if doc.get("collection_id") is not None else None
            return self._import(doc, cid, doc.get("user_id"))

    def _import(self, params: Mapping[str, Any], cid: int | None, user_id: Any) -> Reply:
        """Validate a URL import and create it completed (lock held)."""
        url = params.get("url")
        if not isinstance(url, str) or not URL_PATTERN.match(url):
            raise ApiError(422, f"invalid url: {url!r}")
        external = as_bool(params.get("is_external"), "is_external")
        if external and not is_external_host(url):
            raise ApiError(422, "is_external is only supported for YouTube and Vimeo URLs")
        title = params.get("title")
        if not external and not title:
            raise ApiError(422, "title is required for non-external media")
        uid = self._check_user(user_id) if user_id is not None else None
        auto_caption = as_bool(params.get("auto_caption"), "auto_caption")
        self._check_captions(auto_caption)
        rec = self._new_media(cid, uid)
        rec.title = str(title) if title else url
        rec.description = params.get("description")
        rec.source_url, rec.is_external = url, external
        self._mark_completed(rec, auto_caption)
        return 201, {"media": self._public(rec, time.monotonic())}

    def list_collections(self, query: Mapping[str, str]) -> Reply:
        """GET /collections?page=&per_page= (per_page capped at 50)."""
        items = [{"id": cid, "name": name, "type": "course"} for cid, name in sorted(self.collections.items())]
        return 200, paged("collections", items, query)

    def get_user(self, user_id: str) -> Reply:
        """GET /users/{id}."""
        uid = as_int(user_id, "user_id", status=404)
        if uid not in self.users:
            raise ApiError(404, f"user {user_id} not found")
        return 200, {"user": self._user(uid)}
