"""May the token upload into each folder's target? As far as Studio's API lets a check tell.

`GET /collections` lists what the token can see; Studio documents no field saying whether it may also add
media there. Where a collection object carries one anyway (some fields other Studio versions or proxies add:
`permissions`, `can_upload`, `can_add_media`, `can_edit`, `role`), it is read; otherwise the check says plainly
that it cannot tell. The one sure answer is to ask: `check --try-upload` asks Studio for an upload URL for each
target (step 1 of an upload, nothing sent), which a target the token may not use refuses with 403. Studio
keeps that pending upload, never completed and invisible in the library: the option says so.
"""

from __future__ import annotations

from typing import Any

from studio_watch import config as cfg
from studio_watch.errors import PermanentError, StudioError
from studio_watch.studio.client import StudioClient

_YES = {"true", "yes", "upload", "write", "edit", "manage", "owner", "admin", "contributor", "editor"}
_NO = {"false", "no", "read", "read_only", "readonly", "view", "viewer", "none"}
_FIELDS = ("can_upload", "can_add_media", "can_edit", "permissions", "role", "access")


def upload_permission(collection: dict[str, Any]) -> tuple[bool | None, str]:
    """(True/False, the field that said so) when the collection object tells; (None, "") when it does not."""
    for name in _FIELDS:
        if name not in collection:
            continue
        value = collection[name]
        if isinstance(value, bool):
            return value, f"{name}: {str(value).lower()}"
        if isinstance(value, dict):
            for key in ("upload", "can_upload", "add_media", "edit", "write"):
                if isinstance(value.get(key), bool):
                    return value[key], f"{name}.{key}: {str(value[key]).lower()}"
            continue
        words = {str(v).lower() for v in (value if isinstance(value, list) else [value])}
        if words & _YES:
            return True, f"{name}: {value}"
        if words and words <= _NO:
            return False, f"{name}: {value}"
    return None, ""


def targets(config: cfg.Config) -> dict[tuple[int | None, int | None], list[int]]:
    """Each distinct (collection_id, user_id) target and the folders that upload into it."""
    found: dict[tuple[int | None, int | None], list[int]] = {}
    for i, rule in enumerate(config.folders):
        found.setdefault((rule.collection_id, rule.user_id), []).append(i)
    return found


def describe(target: tuple[int | None, int | None]) -> str:
    cid, uid = target
    if cid is not None:
        return f"collection {cid}" + (f" for user {uid}" if uid is not None else "")
    return f"user {uid}'s My Uploads" if uid is not None else "the token owner's My Uploads"


def try_upload(client: StudioClient, target: tuple[int | None, int | None]) -> tuple[bool, str]:
    """Ask for an upload URL (step 1 only). (True, media id note) or (False, Studio's refusal)."""
    try:
        media_id, _ = client.generate(*target)
    except PermanentError as exc:
        return False, str(exc)
    except StudioError as exc:
        return False, f"could not ask: {exc}"
    return True, f"Studio issued an upload URL (pending media {media_id} left uncompleted; nothing was sent)"
