"""What every API method of the sandbox shares (stdlib only): the refusal `ApiError`, the `(status, payload)`
reply, the parsing of integer and boolean parameters, and paging."""

from __future__ import annotations

import re
from typing import Any, Mapping

MAX_PER_PAGE = 50
Reply = tuple[int, Any]


class ApiError(Exception):
    """A refusal: HTTP status plus the JSON error body `{"error": ...}`."""

    def __init__(self, status: int, error: str, headers: Mapping[str, str] | None = None) -> None:
        """Remember the status, the error text and any extra response headers."""
        super().__init__(f"{status} {error}")
        self.status = status
        self.error = error
        self.headers = dict(headers or {})


def as_int(value: Any, name: str, status: int = 422) -> int:
    """Parse an integer parameter (query string or JSON) or raise ApiError(status)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and re.fullmatch(r"-?\d+", value.strip()):
        return int(value)
    raise ApiError(status, f"invalid {name}: {value!r}")


def as_bool(value: Any, name: str) -> bool:
    """Parse a boolean parameter; absent means false."""
    if value is None or isinstance(value, bool):
        return bool(value)
    text = str(value).strip().lower()
    if text in ("true", "1", "yes", "on"):
        return True
    if text in ("false", "0", "no", "off", ""):
        return False
    raise ApiError(422, f"invalid {name}: {value!r}")


def paged(key: str, items: list[Any], query: Mapping[str, str]) -> dict[str, Any]:
    """One page of `items` under `key`, with the `meta` block (page=, per_page= capped at 50)."""
    page = as_int(query.get("page", "1"), "page")
    per_page = min(as_int(query.get("per_page", "20"), "per_page"), MAX_PER_PAGE)
    if page < 1 or per_page < 1:
        raise ApiError(422, "page and per_page must be positive")
    last = max(1, -(-len(items) // per_page))
    meta = {"current_page": page, "last_page": last, "total_count": len(items)}
    return {key: items[(page - 1) * per_page : page * per_page], "meta": meta}
