"""The sandbox's route table, and the Swagger 2.0 document generated from it (stdlib only).

Every API route is declared once, with what a client needs to know about it (summary, parameters and where
they go, answers); the HTTP layer matches requests against the same table that `swagger()` describes at
`GET /api/public/apidocs`, so the document cannot drift from what the sandbox serves. The upload PUT (an
unauthenticated presigned URL) and the OAuth endpoints live outside the API's base path: the first is
described in the generate answer, the second as the document's OAuth2 security definition, as Studio does.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Mapping
from urllib.parse import parse_qs

if TYPE_CHECKING:
    from studio_watch.sandbox.state import SandboxState

API_ROOT = "/api/public/v1"
OAUTH_ROOT = "/api/public/oauth"
APIDOCS_PATH = "/api/public/apidocs"


@dataclass
class Request:
    """One parsed API request as the route handlers see it."""

    groups: dict[str, str]
    query: dict[str, str]
    body: bytes
    basic: tuple[str, str] | None


Handler = Callable[["SandboxState", Request], tuple[int, Any]]


@dataclass(frozen=True)
class Param:
    """One documented parameter: `where` is Swagger's `in` (path, query, body)."""

    name: str
    where: str
    description: str
    type: str = "integer"
    required: bool = False
    schema: Mapping[str, Any] | None = None  # for `in: body`

    def swagger(self) -> dict[str, Any]:
        """This parameter as a Swagger 2.0 parameter object. A boolean in the query is a string with the
        choices true/false (what a query string carries; Instructure's generated client knows no booleans)."""
        doc: dict[str, Any] = {"name": self.name, "in": self.where, "description": self.description,
                               "required": self.required or self.where == "path"}
        if self.where == "body":
            doc["schema"] = dict(self.schema or {"type": "object"})
        elif self.type == "boolean":
            doc.update(type="string", enum=["true", "false"])
        else:
            doc["type"] = self.type
        return doc


@dataclass(frozen=True)
class Route:
    """One API route: matched by method and path template, served by `handler`, described by the rest."""

    method: str
    template: str  # relative to API_ROOT (or OAUTH_ROOT when `oauth`), with {name} path parameters
    endpoint: str  # the fault/event name (see Faults.error_endpoints)
    handler: Handler
    summary: str
    params: tuple[Param, ...] = ()
    ok: int = 200
    schema: Mapping[str, Any] = field(default_factory=lambda: {"type": "object", "properties": {}})
    errors: Mapping[int, str] = field(default_factory=dict)
    produces: str = "application/json"
    oauth: bool = False
    pattern: re.Pattern[str] = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        root = OAUTH_ROOT if self.oauth else API_ROOT
        regex = re.sub(r"\\\{(\w+)\\\}", r"(?P<\1>[^/]+)", re.escape(self.template))
        object.__setattr__(self, "pattern", re.compile(f"^{re.escape(root)}{regex}$"))

    def swagger(self) -> dict[str, Any]:
        """This route as a Swagger 2.0 operation object."""
        responses: dict[str, Any] = {str(self.ok): {"description": "success", "schema": dict(self.schema)}}
        for status, text in {401: "authorization missing or invalid", **self.errors}.items():
            responses[str(status)] = {"description": text, "schema": {"$ref": "#/definitions/Error"}}
        op_id = self.method.lower() + "_" + "_".join(p.strip("{}") for p in self.template.split("/") if p)
        return {"summary": self.summary, "operationId": op_id, "produces": [self.produces],
                "parameters": [p.swagger() for p in self.params], "responses": responses,
                "tags": [self.template.split("/")[1]]}


def _obj(**props: Any) -> dict[str, Any]:
    return {"type": "object", "properties": props}


INT, STR, BOOL = {"type": "integer"}, {"type": "string"}, {"type": "boolean"}
MEDIA = {"$ref": "#/definitions/Media"}
META = _obj(current_page=INT, last_page=INT, total_count=INT)
MEDIA_ID = Param("media_id", "path", "The ID of the media.")
PAGING = (Param("page", "query", "Page number, from 1."), Param("per_page", "query", "Items per page (at most 50)."))
CAPTION = Param("auto_caption", "query", "Request automatic captions.", "boolean")
TITLE_DESC = (Param("title", "query", "Title of the media.", "string"),
              Param("description", "query", "Description of the media.", "string"))

DEFINITIONS: dict[str, Any] = {
    "Error": _obj(error=STR),
    "User": _obj(id=INT, full_name=STR, display_name=STR, email=STR),
    "Collection": _obj(id=INT, name=STR, type=STR),
    "Media": _obj(id=INT, title=STR, description=STR, duration={"type": "number"}, created_at=STR,
                  thumbnail_url=STR, transcoding_status=STR, owner={"$ref": "#/definitions/User"}, size=INT,
                  source=STR, embed_id=STR, lti_launch_id=STR, collection={"$ref": "#/definitions/Collection"}),
}


def _routes() -> list[Route]:
    import_params = (Param("url", "query", "The media's URL (http or https).", "string", required=True), *TITLE_DESC,
                     CAPTION, Param("user_id", "query", "Create it on behalf of this user (admin)."),
                     Param("is_external", "query", "YouTube or Vimeo media, played from there.", "boolean"))
    body = _obj(url=STR, title=STR, description=STR, user_id=INT, collection_id=INT, auto_caption=BOOL,
                is_external=BOOL)
    return [
        Route("GET", "/ping", "ping", lambda s, r: (200, "pong"), "Check the API and the token: answers pong.",
              schema=STR, produces="text/plain"),
        Route("POST", "/media/uploads", "generate", lambda s, r: s.media.generate(r.query),
              "Create a pending media and its upload URL (PUT the file there without Authorization, then "
              "complete). With both ids: on behalf of the user, into the collection.",
              (Param("collection_id", "query", "Upload into this collection."),
               Param("user_id", "query", "Upload on behalf of this user (admin).")),
              ok=201, schema=_obj(upload=_obj(id=INT, url=STR)),
              errors={403: "not permitted", 404: "user or collection not found", 422: "invalid id"}),
        Route("POST", "/media/uploads/{media_id}/complete", "complete",
              lambda s, r: s.media.complete(r.groups["media_id"], r.query), "Mark an uploaded media as complete.",
              (MEDIA_ID, *TITLE_DESC, CAPTION), schema=_obj(media=MEDIA),
              errors={404: "media not found", 409: "upload already completed", 422: "upload not received",
                      501: "auto-captioning not enabled"}),
        Route("GET", "/media/search", "media", lambda s, r: s.media.search(r.query), "Search media by title.",
              (Param("title", "query", "Text the title contains (case-insensitive).", "string"), *PAGING),
              schema=_obj(media={"type": "array", "items": MEDIA}, meta=META)),
        Route("GET", "/media/{media_id}", "media", lambda s, r: s.media.get_media(r.groups["media_id"]),
              "Show a media.", (MEDIA_ID,), schema=_obj(media=MEDIA), errors={404: "media not found"}),
        Route("GET", "/media/{media_id}/caption_files", "media",
              lambda s, r: s.media.media_detail(r.groups["media_id"], "caption_files"), "List a media's caption files.",
              (MEDIA_ID,), schema=_obj(caption_files={"type": "array", "items": _obj(id=STR, srclang=STR,
                                                                                    label=STR, status=STR)}),
              errors={404: "media not found"}),
        Route("GET", "/media/{media_id}/courses", "media",
              lambda s, r: s.media.media_detail(r.groups["media_id"], "courses"), "List the courses a media is in.",
              (MEDIA_ID,), schema=_obj(courses={"type": "array", "items": _obj(id=INT, name=STR)}),
              errors={404: "media not found"}),
        Route("GET", "/media/{media_id}/tags", "media", lambda s, r: s.media.media_detail(r.groups["media_id"], "tags"),
              "List a media's tags.", (MEDIA_ID,), schema=_obj(tags={"type": "array", "items": STR}),
              errors={404: "media not found"}),
        Route("GET", "/media/{media_id}/users", "media",
              lambda s, r: s.media.media_detail(r.groups["media_id"], "user_permissions"),
              "List who may see or edit a media.", (MEDIA_ID,),
              schema=_obj(user_permissions={"type": "array", "items": _obj(user={"$ref": "#/definitions/User"},
                                                                          role=STR)}),
              errors={404: "media not found"}),
        Route("POST", "/media", "import", lambda s, r: s.media.import_json(r.body),
              "Create media from a URL, into My Uploads (or a collection); user_id and collection_id not together.",
              (Param("body", "body", "The media to create.", schema=body),), ok=201, schema=_obj(media=MEDIA),
              errors={403: "not permitted", 422: "invalid parameters", 501: "auto-captioning not enabled"}),
        Route("POST", "/collections/{collection_id}/media", "import",
              lambda s, r: s.media.import_into_collection(r.groups["collection_id"], r.query),
              "Create media from a URL in a collection (on behalf of user_id, if given).",
              (Param("collection_id", "path", "The ID of the collection."), *import_params), ok=201,
              schema=_obj(media=MEDIA), errors={403: "not permitted", 404: "collection not found",
                                                422: "invalid parameters", 501: "auto-captioning not enabled"}),
        Route("GET", "/collections", "collections", lambda s, r: s.media.list_collections(r.query),
              "List the collections the token can see.", PAGING,
              schema=_obj(collections={"type": "array", "items": {"$ref": "#/definitions/Collection"}}, meta=META)),
        Route("GET", "/users/{user_id}", "users", lambda s, r: s.media.get_user(r.groups["user_id"]), "Show a user.",
              (Param("user_id", "path", "The ID of the user."),), schema=_obj(user={"$ref": "#/definitions/User"}),
              errors={404: "user not found"}),
        Route("POST", "/token", "oauth", lambda s, r: s.oauth.token(_form(r.body), r.basic),
              "OAuth2 token endpoint (authorization_code and refresh_token grants).", oauth=True),
        Route("GET", "/authorize", "oauth", lambda s, r: (302, s.oauth.authorize(r.query)),
              "OAuth2 authorization endpoint: redirects to redirect_uri with a code.", oauth=True),
    ]


def _form(body: bytes) -> dict[str, str]:
    """Decode a form-encoded body (first value of each key)."""
    return {k: v[0] for k, v in parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True).items()}


ROUTES: list[Route] = _routes()


def match(method: str, path: str) -> tuple[Route, dict[str, str]] | None:
    """The route serving `method path`, with its path parameters; None when there is none."""
    for route in ROUTES:
        found = route.pattern.match(path)
        if found and route.method == method:
            return route, found.groupdict()
    return None


def swagger(base_url: str) -> dict[str, Any]:
    """The Swagger 2.0 document of every API route, for a sandbox serving at `base_url` (scheme://host:port)."""
    scheme, _, host = base_url.partition("://")
    paths: dict[str, dict[str, Any]] = {}
    for route in ROUTES:
        if not route.oauth:
            paths.setdefault(route.template, {})[route.method.lower()] = route.swagger()
    return {
        "swagger": "2.0",
        "info": {"title": "Canvas Studio public API (studio-watch sandbox)", "version": "1",
                 "description": "The subset of the Canvas Studio public API that the studio-watch sandbox "
                                "emulates. Upload URLs returned by POST /media/uploads take one PUT of the "
                                "whole file, with a Content-Length and no Authorization header."},
        "host": host, "basePath": API_ROOT, "schemes": [scheme],
        "consumes": ["application/json"], "produces": ["application/json"],
        "securityDefinitions": {
            "bearer": {"type": "apiKey", "name": "Authorization", "in": "header",
                       "description": "Authorization: Bearer <access token>"},
            "oauth": {"type": "oauth2", "flow": "accessCode", "scopes": {},
                      "authorizationUrl": f"{base_url}{OAUTH_ROOT}/authorize",
                      "tokenUrl": f"{base_url}{OAUTH_ROOT}/token"},
        },
        "security": [{"bearer": []}, {"oauth": []}],
        "paths": paths,
        "definitions": DEFINITIONS,
    }
