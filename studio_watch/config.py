"""Configuration: frozen dataclasses, YAML loading and validation with errors that name the key.

`load(path)` is the only entry point that reads a file. Every problem raises `ConfigError` whose message is
`<file>: <key>: <problem>`. Relative paths resolve against the config file's folder. One responsibility, kept
whole past 400 lines: every key is read and checked here, next to the dataclass that holds it.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import stat
from dataclasses import dataclass, field
from datetime import datetime
from enum import Enum
from pathlib import Path
from typing import Any, Callable, Mapping, NoReturn
from urllib.parse import urlsplit

import yaml

from studio_watch.errors import ConfigError
from studio_watch.schedule import Window, parse_duration, parse_rate_table, parse_window

DEFAULT_CONFIG_PATH = "/etc/studio-watch/config.yaml"
CONFIG_ENV = "STUDIO_WATCH_CONFIG"
MEDIA_PATTERNS = ("*.mp4", "*.mov", "*.m4v", "*.avi", "*.wmv", "*.mpg", "*.mpeg", "*.flv", "*.asf", "*.qt",
                  "*.3gp", "*.mp3", "*.wma", "*.wav")
JUNK_PATTERNS = (".*", "~*", "*.part", "*.tmp", "*.crdownload")
TEMPLATE_FIELDS = ("stem", "name", "folder", "parent", "mtime", "size")
MAX_UPLOAD_BYTES = 10 * 1000 ** 3  # Studio's documented limit: 10 GB


class Choice(str, Enum):
    """A config value from a fixed set: a str (equal to its YAML spelling, written as it in JSON and SQLite)."""

    def __str__(self) -> str:
        return str(self.value)

    __format__ = str.__format__


class AfterUpload(Choice):
    KEEP = "keep"
    MOVE = "move"
    DELETE = "delete"


class Duplicates(Choice):
    SKIP = "skip"  # the same bytes seen again (same target) are not uploaded again
    UPLOAD = "upload"


class ObserverKind(Choice):
    AUTO = "auto"  # polling on network filesystems, inotify elsewhere
    INOTIFY = "inotify"
    POLLING = "polling"


@dataclass(frozen=True)
class Target:
    """Where an upload goes: into a collection, into a user's My Uploads (an admin token acting for the user),
    both (on behalf of the user, into the collection), or neither (the token owner's My Uploads)."""

    collection_id: int | None = None
    user_id: int | None = None

    def describe(self) -> str:
        """Where an upload lands, in words: the one wording every message uses."""
        if self.collection_id is not None and self.user_id is not None:
            return f"collection {self.collection_id} on behalf of user {self.user_id}"
        if self.collection_id is not None:
            return f"collection {self.collection_id}"
        if self.user_id is not None:
            return f"user {self.user_id}'s My Uploads"
        return "My Uploads"

    def explain(self) -> str:
        """The wording for `explain`: who acts, too."""
        if self.user_id is not None:
            return self.describe() + " (on behalf of, admin token)"
        return self.describe() if self.collection_id is not None else "the token owner's My Uploads"

    def params(self) -> dict[str, int]:
        """The ids that are set, by name (as the generate request's query carries them)."""
        return {k: v for k, v in (("collection_id", self.collection_id), ("user_id", self.user_id)) if v is not None}


@dataclass(frozen=True)
class OAuthConfig:
    client_id: str
    token_store: Path
    client_secret_file: Path | None = None
    client_secret_env: str | None = None


@dataclass(frozen=True)
class StudioConfig:
    url: str
    token_file: Path | None = None
    token_env: str | None = None
    oauth: OAuthConfig | None = None
    timeout_seconds: float = 30.0
    ca_bundle: Path | None = None
    proxy: str | None = None  # http(s)://host:port; else HTTPS_PROXY and friends (studio/proxies.py)
    proxy_auth_file: Path | None = None  # one line, user:password, for the proxy

    @property
    def api_url(self) -> str:
        return self.url.rstrip("/") + "/api/public/v1"


@dataclass(frozen=True)
class ExpectConfig:
    """A folder's timetable: a recording is due for every lecture in `calendar` (docs: README "Timetables")."""

    calendar: str | None = None  # an iCalendar file's absolute path, or an http(s) URL; None: no checks
    grace_seconds: float = 1200.0  # how long after a lecture ends its file may still arrive
    refresh_seconds: float = 900.0  # how often a calendar URL is fetched again (a file: whenever it changes)

    @property
    def is_url(self) -> bool:
        return self.calendar is not None and self.calendar.startswith(("https://", "http://"))


@dataclass(frozen=True)
class FolderRule:
    """Everything that decides what happens to a file found in one watched folder."""

    path: Path
    collection_id: int | None = None
    user_id: int | None = None
    recursive: bool = False
    settle_seconds: float = 10.0
    include: tuple[str, ...] = MEDIA_PATTERNS
    exclude: tuple[str, ...] = JUNK_PATTERNS
    title: str = "{stem}"
    description: str = ""
    auto_caption: bool = False
    after_upload: AfterUpload = AfterUpload.KEEP
    after_upload_when: str = "completed"  # completed | processed (wait for Studio's transcoding)
    processed_timeout_seconds: float = 86400.0
    move_to: Path | None = None
    duplicates: Duplicates = Duplicates.SKIP
    links: bool = True
    expect: ExpectConfig | None = None  # None: no timetable, no checks

    @property
    def target(self) -> Target:
        return Target(self.collection_id, self.user_id)


# The folder keys that may also appear under `defaults:`.
FOLDER_KEYS = tuple(f.name for f in dataclasses.fields(FolderRule) if f.name != "path") + ("path",)


@dataclass(frozen=True)
class RetryConfig:
    initial_seconds: float = 2.0
    max_seconds: float = 900.0
    max_attempts: int = 12
    request_tries: int = 4  # tries of one HTTP request inside the client before the queue takes over


@dataclass(frozen=True)
class MetricsConfig:
    listen: str | None = None


@dataclass(frozen=True)
class ScheduleConfig:
    upload_hours: tuple[str, ...] = ()  # e.g. ("Mon-Fri 18:00-07:00",); empty: any time
    windows: tuple[Window, ...] = ()  # upload_hours, parsed once when the config is loaded
    # bytes per second across all workers, as a timetable: ((minute of the week, rate or None), ...); () = none
    max_upload_rate: tuple[tuple[int, int | None], ...] = ()
    start_jitter_seconds: float = 0.0  # a random delay before the first upload after start
    timezone: str | None = None  # an IANA name (Europe/Berlin) for upload_hours and the rate timetable; None: local


@dataclass(frozen=True)
class NotifyConfig:
    command: str | None = None  # run with the alert as JSON on stdin
    webhook: str | None = None  # POSTed the same JSON
    paused_after_seconds: float = 600.0  # alert when the queue has been paused this long
    folder_missing_after_seconds: float = 300.0  # alert when a watched folder has been unavailable this long


@dataclass(frozen=True)
class LogConfig:
    format: str = "auto"
    level: str = "info"


@dataclass(frozen=True)
class Config:
    source: Path
    studio: StudioConfig
    state_db: Path | str  # a SQLite file's path, or a postgresql:// URI (a str) for a cluster's shared queue
    folders: tuple[FolderRule, ...] = ()
    workers: int = 4  # measured: bench latency row; docs/operations.md "Choosing workers"
    rescan_seconds: float = 60.0
    observer: ObserverKind = ObserverKind.AUTO
    retry: RetryConfig = field(default_factory=RetryConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    log: LogConfig = field(default_factory=LogConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    notify: NotifyConfig = field(default_factory=NotifyConfig)
    defaults: Mapping[str, Any] = field(default_factory=dict)
    node_name: str = field(default_factory=lambda: default_node_name())
    password_file: Path | None = None  # the PostgreSQL password (else PGPASSFILE or a systemd credential)
    lease_seconds: float = 30.0  # a cluster: a node's claim on a job outlives its last heartbeat this long

    @property
    def shared_state(self) -> bool:
        """The queue is a cluster's PostgreSQL database (not this machine's SQLite file)."""
        return isinstance(self.state_db, str)

    @property
    def local_state(self) -> Path:
        """Where this daemon keeps files of its own (a calendar's last good copy): beside the SQLite file, or
        for a cluster's node under $STATE_DIRECTORY (systemd's StateDirectory=), else ~/.local/state/studio-watch,
        named after the node."""
        if not isinstance(self.state_db, str):
            return self.state_db
        base = os.environ.get("STATE_DIRECTORY") or str(Path.home() / ".local" / "state" / "studio-watch")
        return Path(base.split(":")[0]) / self.node_name

    @property
    def state_db_display(self) -> str:
        """state_db for logs and messages: a URI's password never shows."""
        return redact_uri(self.state_db) if isinstance(self.state_db, str) else str(self.state_db)
    prune_after: float | None = None  # finished jobs older than this are pruned by the daemon; None: never


_FOLDER_KEYS = frozenset({"collection_id", "user_id", "recursive", "settle_seconds", "include", "exclude", "title",
                          "description", "auto_caption", "after_upload", "after_upload_when",
                          "processed_timeout_seconds", "move_to", "duplicates", "links", "expect"})
# Every key each mapping may hold, known before any is read: a misspelt key is reported first (with the key it
# was probably meant to be), not as the "required" key it failed to set.
KNOWN_KEYS: dict[str, frozenset[str]] = {
    "": frozenset({"studio", "state_db", "node_name", "password_file", "lease_seconds", "prune_after", "defaults", "folders", "workers", "rescan_seconds",
                   "observer", "retry", "metrics", "log", "schedule", "notify"}),
    "studio": frozenset({"url", "token_file", "token_env", "oauth", "timeout_seconds", "ca_bundle", "proxy",
                        "proxy_auth_file"}),
    "studio.oauth": frozenset({"client_id", "client_secret_file", "client_secret_env", "token_store"}),
    "defaults": _FOLDER_KEYS,
    "folder": _FOLDER_KEYS | {"path"},
    "retry": frozenset({"initial_seconds", "max_seconds", "max_attempts", "request_tries"}),
    "metrics": frozenset({"listen"}),
    "log": frozenset({"format", "level"}),
    "schedule": frozenset({"upload_hours", "max_upload_rate", "start_jitter_seconds", "timezone"}),
    "notify": frozenset({"command", "webhook", "paused_after_seconds", "folder_missing_after_seconds"}),
    "expect": frozenset({"calendar", "grace", "refresh"}),
}


class _Reader:
    """Takes typed values out of one YAML mapping, naming `file: key` in every error."""

    def __init__(self, source: Path, where: str, data: Any, section: str | None = None) -> None:
        self.source, self.where = source, where
        if data is None:
            data = {}
        if not isinstance(data, dict):
            self.fail(None, f"expected a mapping, got {_kind(data)}")
        self.data: dict[str, Any] = data
        self.used: set[str] = set()
        self.known = KNOWN_KEYS[where if section is None else section]
        for key in data:
            if key not in self.known:
                self.fail(str(key), "unknown key" + _did_you_mean(str(key), self.known))

    def key(self, name: str | None) -> str:
        if name is None:
            return self.where or "(top level)"
        return f"{self.where}.{name}" if self.where else name

    def fail(self, name: str | None, problem: str) -> NoReturn:
        raise ConfigError(f"{self.source}: {self.key(name)}: {problem}")

    def get(self, name: str, kind: type | tuple[type, ...], default: Any = None) -> Any:
        assert name in self.known, f"config key {self.key(name)} read but missing from KNOWN_KEYS"
        self.used.add(name)
        if name not in self.data or self.data[name] is None:
            return default
        value = self.data[name]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if float in kinds and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if isinstance(value, bool) and bool not in kinds or not isinstance(value, kinds):
            names = " or ".join(_TYPE_NAMES.get(k, k.__name__) for k in kinds)
            self.fail(name, f"expected {names}, got {_kind(value)} {value!r}")
        return value

    def positive(self, name: str, default: float, kind: type = float, zero_ok: bool = False) -> Any:
        value = self.get(name, kind, default)
        if value < 0 or (value == 0 and not zero_ok):
            self.fail(name, f"must be {'zero or more' if zero_ok else 'greater than zero'}, got {value!r}")
        return value

    def choice(self, name: str, choices: tuple[str, ...], default: str) -> str:
        value = self.get(name, str, default)
        if value not in choices:
            self.fail(name, f"must be one of {', '.join(choices)}; got {value!r}")
        return value

    def path(self, name: str, default: Path | None = None) -> Path | None:
        value = self.get(name, str)
        if value is None:
            return default
        return resolve_path(self.source, value)

    def patterns(self, name: str, default: tuple[str, ...]) -> tuple[str, ...]:
        value = self.get(name, list)
        if value is None:
            return default
        for item in value:
            if not isinstance(item, str) or not item:
                self.fail(name, f"expected a list of glob patterns (strings), found {item!r}")
        return tuple(value)

    def finish(self) -> None:
        unknown = sorted(set(self.data) - self.used)
        if unknown:
            self.fail(unknown[0], f"unknown key (known keys here: {', '.join(sorted(self.used))})")


def zone_of(name: str) -> Any:
    """The tzinfo for an IANA time zone name; raises ValueError naming it."""
    import zoneinfo  # start-up cost (~3 ms): only a configured schedule.timezone needs it

    try:
        return zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {name!r} (an IANA name such as Europe/Berlin or UTC)") from None


def _did_you_mean(key: str, known: frozenset[str]) -> str:
    import difflib  # start-up cost: only a config with an unknown key needs it

    close = difflib.get_close_matches(key, sorted(known), n=1, cutoff=0.6)
    if close:
        return f" (did you mean {close[0]!r}?)"
    return f" (known keys here: {', '.join(sorted(known))})"


_TYPE_NAMES = {int: "an integer", float: "a number", str: "a string", bool: "true or false", list: "a list",
               dict: "a mapping"}


def _kind(value: Any) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "a list",
            dict: "a mapping"}.get(type(value), type(value).__name__)


def resolve_path(source: Path, value: str) -> Path:
    """Expand `~` and `$VARS`, and resolve a relative path against the config file's folder."""
    expanded = Path(os.path.expandvars(os.path.expanduser(value)))
    return expanded if expanded.is_absolute() else (source.parent / expanded).absolute()


def config_path(cli_value: str | None) -> Path:
    """The config file to use: the -c option, then $STUDIO_WATCH_CONFIG, then /etc/studio-watch/config.yaml."""
    return Path(cli_value or os.environ.get(CONFIG_ENV) or DEFAULT_CONFIG_PATH)


def load(path: Path) -> Config:
    """Read, parse and validate a config file."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found (use -c PATH or set ${CONFIG_ENV})") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read config file: {exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{path}: YAML syntax error: {where}{problem}") from None
    return parse(path.absolute(), data)


def parse(source: Path, data: Any) -> Config:
    """Validate already-parsed YAML data; `source` names the file in errors and anchors relative paths."""
    top = _Reader(source, "", data)
    studio = _studio(source, top.get("studio", dict))
    state_db = _state_db(top)
    defaults_reader = _Reader(source, "defaults", top.get("defaults", dict, {}))
    defaults = _folder_fields(defaults_reader, FolderRule(path=Path("/")))
    defaults_reader.finish()
    folders_data = top.get("folders", list, [])
    folders = tuple(_folder(source, f"folders[{i}]", item, defaults) for i, item in enumerate(folders_data))
    _check_folders(source, folders)
    config = Config(
        source=source,
        studio=studio,
        state_db=state_db,
        folders=folders,
        workers=top.positive("workers", DEFAULT_WORKERS, int),
        rescan_seconds=top.positive("rescan_seconds", 60.0),
        observer=ObserverKind(top.choice("observer", tuple(ObserverKind), "auto")),
        retry=_retry(source, top.get("retry", dict, {})),
        metrics=_metrics(source, top.get("metrics", dict, {})),
        log=_log(source, top.get("log", dict, {})),
        schedule=_schedule(source, top.get("schedule", dict, {})),
        notify=_notify(source, top.get("notify", dict, {})),
        defaults=dataclasses.asdict(defaults),
        node_name=_node_name(top),
        password_file=top.path("password_file"),
        lease_seconds=top.positive("lease_seconds", 30.0),
        prune_after=_duration(top, "prune_after", 0.0) or None,
    )
    if config.password_file is not None and not config.shared_state:
        top.fail("password_file", "only a postgresql:// state_db has a password")
    top.finish()
    return config


DEFAULT_WORKERS = 4  # chosen from `python -m bench --only latency` (docs/operations.md: choosing workers)
POSTGRES_SCHEMES = ("postgresql://", "postgres://")
CREDENTIAL_NAME = "state_db_password"  # systemd LoadCredential= name for the PostgreSQL password


def default_node_name() -> str:
    return os.uname().nodename or "localhost"  # gethostname(2) is this on Linux, without importing socket


def _state_db(top: _Reader) -> Path | str:
    value = top.get("state_db", str)
    if not value:
        top.fail("state_db", "required: the path of the SQLite state database, or a postgresql:// URI")
    if value.startswith(POSTGRES_SCHEMES):
        # A password inline works but is discouraged (password_file, PGPASSFILE or a systemd credential instead):
        # it is registered as a secret, so it never reaches a log line, and `redact_uri` hides it in messages.
        return value
    if "://" in value:
        top.fail("state_db", f"{redact_uri(value)!r}: expected a path or a postgresql:// URI")
    return resolve_path(top.source, value)


def _node_name(top: _Reader) -> str:
    name = top.get("node_name", str) or default_node_name()
    if not name.strip() or "/" in name or len(name) > 64 or not name.isprintable():
        top.fail("node_name", f"{name!r}: expected a printable name without '/', at most 64 characters")
    return name


def redact_uri(uri: str) -> str:
    """A connection URI without its password (in the user part or a `password=` parameter)."""
    parts = urlsplit(uri)
    netloc = parts.netloc
    if parts.password is not None:
        user, _, host = netloc.rpartition("@")
        netloc = f"{user.split(':', 1)[0]}:***@{host}"
    query = "&".join("password=***" if q.split("=", 1)[0] == "password" else q for q in parts.query.split("&")) \
        if parts.query else ""
    if netloc == parts.netloc and query == parts.query:
        return uri  # (geturl() would turn postgresql:///db into postgresql:/db)
    return parts._replace(netloc=netloc, query=query).geturl()


def state_db_password(config: Config) -> str | None:
    """The PostgreSQL password: password_file, else the systemd credential, else None (libpq then reads
    PGPASSFILE / ~/.pgpass, or the server needs none: peer or certificate authentication)."""
    if not config.shared_state:
        return None
    inline = urlsplit(str(config.state_db)).password
    if inline:
        return None  # libpq reads it from the URI; the caller registers it as a secret
    if config.password_file is not None:
        return read_secret_file(config.password_file, "password_file", config.source)
    creds = os.environ.get("CREDENTIALS_DIRECTORY")
    if creds and (Path(creds) / CREDENTIAL_NAME).is_file():
        return read_secret_file(Path(creds) / CREDENTIAL_NAME, f"systemd credential {CREDENTIAL_NAME}", config.source)
    return None


def _studio(source: Path, data: Any) -> StudioConfig:
    r = _Reader(source, "studio", data)
    url = r.get("url", str)
    if not url:
        r.fail("url", "required: your Studio address, e.g. https://myschool.instructuremedia.com")
    _check_url(r, url)
    token_file, token_env = r.path("token_file"), r.get("token_env", str)
    oauth_data = r.get("oauth", dict)
    oauth = _oauth(source, oauth_data) if oauth_data is not None else None
    if token_file and token_env:
        r.fail("token_env", "set token_file or token_env, not both")
    if not (token_file or token_env or oauth):
        r.fail("token_file", "required: set token_file, token_env or oauth")
    ca_bundle = r.path("ca_bundle")
    if ca_bundle is not None and not ca_bundle.is_file():
        r.fail("ca_bundle", f"no such file: {ca_bundle}")
    if ca_bundle is not None:
        import ssl  # start-up cost (~6 ms): only a configured ca_bundle is checked here

        try:  # now, not at the first upload: the client builds its TLS context when it first needs it
            ssl.create_default_context(cafile=str(ca_bundle))
        except (OSError, ssl.SSLError) as exc:
            r.fail("ca_bundle", f"{ca_bundle} is not a readable PEM file of CA certificates: {exc}")
    proxy, proxy_auth_file = r.get("proxy", str), r.path("proxy_auth_file")
    if proxy is not None:
        _check_proxy(r, proxy)
    if proxy_auth_file is not None:
        if proxy is None:
            r.fail("proxy_auth_file", "set studio.proxy too: the credentials are for that proxy")
        if not proxy_auth_file.is_file():
            r.fail("proxy_auth_file", f"no such file: {proxy_auth_file}")
    studio = StudioConfig(url=url.rstrip("/"), token_file=token_file, token_env=token_env, oauth=oauth,
                          timeout_seconds=r.positive("timeout_seconds", 30.0), ca_bundle=ca_bundle,
                          proxy=proxy, proxy_auth_file=proxy_auth_file)
    r.finish()
    return studio


def _check_proxy(r: _Reader, proxy: str) -> None:
    parts = urlsplit(proxy)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        r.fail("proxy", f"expected http://host:port or https://host:port, got {parts.scheme or 'no'} scheme")
    if parts.username is not None or parts.password is not None:
        r.fail("proxy", "no credentials in the URL: put user:password in a file named by studio.proxy_auth_file")
    if parts.path.rstrip("/") or parts.query:
        r.fail("proxy", "expected http://host:port, without a path")
    try:
        parts.port
    except ValueError:
        r.fail("proxy", "bad port")


def _check_url(r: _Reader, url: str, key: str = "url", allow_path: bool = False) -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        r.fail(key, f"expected an http(s) URL, got {url!r}")
    if parts.scheme == "http" and not is_loopback(parts.hostname):
        r.fail(key, f"http:// is only allowed for loopback hosts; use https:// for {parts.hostname}")
    if parts.path.rstrip("/") and not allow_path:
        r.fail(key, f"give the Studio host only (e.g. https://{parts.netloc}), without a path: {url!r}")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _oauth(source: Path, data: Any) -> OAuthConfig:
    r = _Reader(source, "studio.oauth", data)
    client_id = r.get("client_id", (str, int))
    if client_id is None:
        r.fail("client_id", "required: the Developer Key's client id")
    token_store = r.path("token_store")
    if token_store is None:
        r.fail("token_store", "required: where the daemon keeps its access and refresh tokens")
    secret_file, secret_env = r.path("client_secret_file"), r.get("client_secret_env", str)
    if "client_secret" in r.data:
        r.fail("client_secret", "never put the secret in the YAML; use client_secret_file or client_secret_env")
    if not (secret_file or secret_env):
        r.fail("client_secret_file", "required: set client_secret_file or client_secret_env")
    oauth = OAuthConfig(client_id=str(client_id), token_store=token_store, client_secret_file=secret_file,
                        client_secret_env=secret_env)
    r.finish()
    return oauth


def _folder_fields(r: _Reader, base: FolderRule) -> FolderRule:
    """Read every folder key except `path` on top of `base` (the defaults)."""
    values = {
        "collection_id": _id(r, "collection_id", base.collection_id),
        "user_id": _id(r, "user_id", base.user_id),
        "recursive": r.get("recursive", bool, base.recursive),
        "settle_seconds": r.positive("settle_seconds", base.settle_seconds, zero_ok=True),
        "include": r.patterns("include", base.include),
        "exclude": r.patterns("exclude", base.exclude),
        "title": _template(r, "title", base.title),
        "description": _template(r, "description", base.description),
        "auto_caption": r.get("auto_caption", bool, base.auto_caption),
        "after_upload": AfterUpload(r.choice("after_upload", tuple(AfterUpload), base.after_upload)),
        "after_upload_when": r.choice("after_upload_when", ("completed", "processed"), base.after_upload_when),
        "processed_timeout_seconds": r.positive("processed_timeout_seconds", base.processed_timeout_seconds),
        "move_to": r.path("move_to", base.move_to),
        "duplicates": Duplicates(r.choice("duplicates", tuple(Duplicates), base.duplicates)),
        "links": r.get("links", bool, base.links),
        "expect": _expect(r, base.expect),
    }
    own = [k for k in ("collection_id", "user_id") if r.data.get(k) is not None]
    if len(own) == 1:  # a folder naming its target replaces the other one inherited from defaults
        values["user_id" if own[0] == "collection_id" else "collection_id"] = None
    # Both: on behalf of the user, into the collection; neither: the token owner's My Uploads.
    return dataclasses.replace(base, **values)


def _expect(r: _Reader, base: ExpectConfig | None) -> ExpectConfig | None:
    """`expect:` over the one inherited from `defaults:` key by key (`expect: false` turns it off). A folder's
    own `expect:` must end up with a calendar; one in `defaults:` may leave it out (then it sets grace and refresh)."""
    if r.data.get("expect") is False:
        r.used.add("expect")
        return None
    data = r.get("expect", dict)
    if data is None:
        return base
    e = _Reader(r.source, r.key("expect"), data, section="expect")
    base = base or ExpectConfig()
    calendar = e.get("calendar", str)
    if calendar is not None:
        if calendar.startswith(("https://", "http://")):
            _check_url(e, calendar, "calendar", allow_path=True)
        else:
            calendar = str(resolve_path(r.source, calendar))
    expect = ExpectConfig(calendar=calendar or base.calendar,
                          grace_seconds=_duration(e, "grace", base.grace_seconds, zero_ok=True),
                          refresh_seconds=_duration(e, "refresh", base.refresh_seconds))
    e.finish()
    if expect.calendar is None and r.where != "defaults":
        e.fail("calendar", "required: the room's timetable, an iCalendar file or an https:// URL")
    return expect


def _duration(r: _Reader, name: str, default: float, zero_ok: bool = False) -> float:
    value = r.get(name, (str, int, float))
    if value is None:
        return default
    try:
        seconds = parse_duration(value)
    except ValueError as exc:
        r.fail(name, str(exc))
    if seconds < 0 or (seconds == 0 and not zero_ok):
        r.fail(name, f"must be {'zero or more' if zero_ok else 'greater than zero'}, got {value!r}")
    return seconds


def _id(r: _Reader, name: str, default: int | None) -> int | None:
    value = r.get(name, int, default)
    if value is not None and value <= 0:
        r.fail(name, f"must be a positive integer, got {value!r}")
    return value


def _template(r: _Reader, name: str, default: str) -> str:
    value = r.get(name, str, default)
    try:
        render(value, Path("/x/y/z.mp4"), Path("/x"), size=1, mtime=0.0)
    except (KeyError, IndexError, ValueError, AttributeError) as exc:
        r.fail(name, f"bad template {value!r}: {exc!r}; fields: {', '.join('{%s}' % f for f in TEMPLATE_FIELDS)}")
    return value


def _folder(source: Path, where: str, data: Any, defaults: FolderRule) -> FolderRule:
    r = _Reader(source, where, data, section="folder")
    path = r.path("path")
    if path is None:
        r.fail("path", "required: the folder to watch")
    rule = dataclasses.replace(_folder_fields(r, defaults), path=path)
    r.finish()
    if rule.expect is not None and rule.expect.calendar is None:  # defaults gave grace only
        rule = dataclasses.replace(rule, expect=None)
    if rule.expect is not None and not rule.expect.is_url and not Path(rule.expect.calendar or "").is_file():
        r.fail("expect.calendar", f"no such file: {rule.expect.calendar}")
    # A missing folder is not a config error (a late or lost mount): `run` watches it once it appears and says
    # so meanwhile, and `check` fails naming it. Something else at that path is a mistake.
    present = _exists(path)
    if present and not path.is_dir():
        r.fail("path", f"not a directory: {path}")
    if rule.after_upload == "move" and rule.move_to is None:
        r.fail("move_to", "required when after_upload is move")
    if rule.after_upload == "move" and rule.move_to is not None and present and not rule.move_to.is_dir():
        r.fail("move_to", f"folder does not exist: {rule.move_to}")
    return rule


def _exists(path: Path) -> bool:
    """Is there anything at `path`? (A folder we may not look into counts: `check` says what is wrong.)"""
    try:
        os.stat(path)
    except FileNotFoundError:
        return False
    except OSError:
        return True
    return True


def _check_folders(source: Path, folders: tuple[FolderRule, ...]) -> None:
    """Refuse the same folder twice, overlapping recursive folders and move_to inside a watched folder."""
    real = [Path(os.path.realpath(f.path)) for f in folders]
    for i, (a, rule) in enumerate(zip(real, folders)):
        for j, b in enumerate(real[:i]):
            if a == b:
                raise ConfigError(f"{source}: folders[{i}].path: the same folder as folders[{j}]: {rule.path}")
            inner, outer = (a, j) if b in a.parents else (b, i) if a in b.parents else (None, None)
            if inner is not None and folders[outer].recursive:
                raise ConfigError(f"{source}: folders[{i}].path: overlaps folders[{j}] ({rule.path} and "
                                  f"{folders[j].path}), and the outer one is recursive: a file would match twice")
        if rule.move_to is not None and rule.after_upload == "move":
            target = Path(os.path.realpath(rule.move_to))
            for j, (w, other) in enumerate(zip(real, folders)):
                if target == w or (other.recursive and w in target.parents):
                    raise ConfigError(f"{source}: folders[{i}].move_to: {rule.move_to} is inside watched folder "
                                      f"folders[{j}]; moved files would be found and uploaded again")


def _retry(source: Path, data: Any) -> RetryConfig:
    r = _Reader(source, "retry", data)
    retry = RetryConfig(initial_seconds=r.positive("initial_seconds", 2.0), max_seconds=r.positive("max_seconds", 900.0),
                        max_attempts=r.positive("max_attempts", 12, int), request_tries=r.positive("request_tries", 4, int))
    if retry.max_seconds < retry.initial_seconds:
        r.fail("max_seconds", f"must be at least initial_seconds ({retry.initial_seconds})")
    r.finish()
    return retry


def _metrics(source: Path, data: Any) -> MetricsConfig:
    r = _Reader(source, "metrics", data)
    listen = r.get("listen", str)
    if listen is not None:
        try:
            parse_listen(listen)
        except ValueError:
            r.fail("listen", f"expected HOST:PORT such as 127.0.0.1:9464, got {listen!r}")
    r.finish()
    return MetricsConfig(listen=listen)


def parse_listen(listen: str) -> tuple[str, int]:
    """ "HOST:PORT" or "[V6HOST]:PORT" → (host, port); raises ValueError for anything else."""
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise ValueError(f"expected HOST:PORT, got {listen!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    number = int(port)
    if number > 65535:
        raise ValueError(f"port out of range in {listen!r}")
    return host, number


def _log(source: Path, data: Any) -> LogConfig:
    r = _Reader(source, "log", data)
    log = LogConfig(format=r.choice("format", ("auto", "json", "console"), "auto"),
                    level=r.choice("level", ("debug", "info", "warning", "error"), "info"))
    r.finish()
    return log


def _schedule(source: Path, data: Any) -> ScheduleConfig:
    r = _Reader(source, "schedule", data)
    hours = r.patterns("upload_hours", ())
    windows = []
    for i, line in enumerate(hours):
        try:
            windows.append(parse_window(line))
        except ValueError as exc:
            r.fail(f"upload_hours[{i}]", str(exc))
    rates: tuple[tuple[int, int | None], ...] = ()
    raw_rate = r.get("max_upload_rate", (int, float, str))
    if raw_rate is not None:
        try:
            rates = parse_rate_table(raw_rate)
        except ValueError as exc:
            r.fail("max_upload_rate", str(exc))
    timezone = r.get("timezone", str)
    if timezone is not None:
        try:
            zone_of(timezone)
        except ValueError as exc:
            r.fail("timezone", str(exc))
    schedule = ScheduleConfig(upload_hours=hours, windows=tuple(windows), max_upload_rate=rates, timezone=timezone,
                              start_jitter_seconds=r.positive("start_jitter_seconds", 0.0, zero_ok=True))
    r.finish()
    return schedule


def _notify(source: Path, data: Any) -> NotifyConfig:
    r = _Reader(source, "notify", data)
    webhook = r.get("webhook", str)
    if webhook is not None:
        _check_url(r, webhook, "webhook", allow_path=True)
    notify = NotifyConfig(command=r.get("command", str), webhook=webhook,
                          paused_after_seconds=r.positive("paused_after_seconds", 600.0),
                          folder_missing_after_seconds=r.positive("folder_missing_after_seconds", 300.0))
    r.finish()
    return notify


def render(template: str, path: Path, folder: Path, size: int, mtime: float) -> str:
    """Fill a title or description template for one file (undecodable name bytes become U+FFFD).

    Only the fields the template names are worked out: this runs twice for every file that settles.
    """
    if "{" not in template:
        return template
    fields: dict[str, Callable[[], Any]] = {
        "stem": lambda: readable(path.stem), "name": lambda: readable(path.name),
        "folder": lambda: readable(folder.name), "parent": lambda: readable(path.parent.name),
        "mtime": lambda: datetime.fromtimestamp(mtime), "size": lambda: size}
    return template.format_map(_Lazy(fields))


class _Lazy(dict):  # type: ignore[type-arg]
    """A mapping that computes a template field when format_map first asks for it."""

    def __init__(self, fields: Mapping[str, Callable[[], Any]]) -> None:
        super().__init__()
        self.fields = fields

    def __missing__(self, key: str) -> Any:
        self[key] = value = self.fields[key]()  # an unknown field is a KeyError, as with format()
        return value


def readable(text: str) -> str:
    """A file-name string fit for Studio and humans: bytes that were not UTF-8 become U+FFFD."""
    return os.fsencode(text).decode("utf-8", "replace")


def loose_permissions(path: Path, st: os.stat_result) -> str | None:
    """What is wrong with a secret file that others than its owner may read or write (None: nothing)."""
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        return f"{path} is readable by group or others (mode {stat.S_IMODE(st.st_mode):04o}); run: chmod 600 {path}"
    return None


def read_secret_file(path: Path, key: str, source: Path) -> str:
    """Read a token or secret from a file that only its owner may read."""
    try:
        problem = loose_permissions(path, path.stat())
        if problem:
            raise ConfigError(f"{source}: {key}: {problem}")
        value = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        raise ConfigError(f"{source}: {key}: no such file: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{source}: {key}: cannot read {path}: {exc}") from None
    if not value:
        raise ConfigError(f"{source}: {key}: {path} is empty")
    return value


def read_env_secret(name: str, key: str, source: Path) -> str:
    value = os.environ.get(name, "").strip()
    if not value:
        raise ConfigError(f"{source}: {key}: environment variable {name} is not set or empty")
    return value


def static_token(config: Config) -> str | None:
    """The fixed access token from token_file or token_env (None when only OAuth is configured)."""
    s = config.studio
    if s.token_file is not None:
        return read_secret_file(s.token_file, "studio.token_file", config.source)
    if s.token_env is not None:
        return read_env_secret(s.token_env, "studio.token_env", config.source)
    return None


def client_secret(config: Config) -> str:
    oauth = config.studio.oauth
    assert oauth is not None
    if oauth.client_secret_file is not None:
        return read_secret_file(oauth.client_secret_file, "studio.oauth.client_secret_file", config.source)
    return read_env_secret(oauth.client_secret_env or "", "studio.oauth.client_secret_env", config.source)
