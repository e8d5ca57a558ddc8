"""Unit tests for studio_watch.config: the example file, validation errors, paths, templates and secrets."""

from __future__ import annotations

import copy
import dataclasses
import os
from datetime import datetime
from pathlib import Path
from typing import Any, Callable

import pytest
import yaml

from studio_watch import config
from studio_watch.config import Config, FolderRule, LogConfig, MetricsConfig, RetryConfig, StudioConfig
from studio_watch.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "config.example.yaml"


def _field_default(cls: type, name: str) -> Any:
    f = next(f for f in dataclasses.fields(cls) if f.name == name)
    if f.default is not dataclasses.MISSING:
        return f.default
    assert f.default_factory is not dataclasses.MISSING, f"{cls.__name__}.{name} has no default"
    return f.default_factory()


def _norm(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


@pytest.fixture
def source(tmp_path: Path) -> Path:
    return tmp_path / "studio-watch.yaml"


@pytest.fixture
def base(tmp_path: Path) -> dict[str, Any]:
    """A minimal valid configuration (as parsed YAML) with one existing folder."""
    folder = tmp_path / "in"
    folder.mkdir()
    return {
        "studio": {"url": "https://school.instructuremedia.com", "token_env": "STUDIO_WATCH_TEST_TOKEN"},
        "state_db": str(tmp_path / "state.db"),
        "folders": [{"path": str(folder)}],
    }


def expect_error(source: Path, data: Any, key: str) -> str:
    """parse() must refuse `data` with a message `<file>: <key>: <problem>`."""
    with pytest.raises(ConfigError) as info:
        config.parse(source, data)
    message = str(info.value)
    assert message.startswith(f"{source}: {key}: "), message
    assert len(message) > len(f"{source}: {key}: ") + 5, message  # and says what is wrong
    return message


# -- config.example.yaml is kept in step with the dataclass defaults -------------------------------------------

def _example_with_tmp_folders(tmp_path: Path) -> dict[str, Any]:
    data = yaml.safe_load(EXAMPLE.read_text(encoding="utf-8"))
    for i, folder in enumerate(data["folders"]):
        folder["path"] = str(tmp_path / f"watched{i}")
        Path(folder["path"]).mkdir()
        if folder.get("move_to") is not None:
            folder["move_to"] = str(tmp_path / f"moved{i}")
            Path(folder["move_to"]).mkdir()
    return data


def test_example_defaults_equal_folder_rule_defaults(tmp_path: Path) -> None:
    data = _example_with_tmp_folders(tmp_path)
    cfg = config.parse(EXAMPLE, data)
    example_defaults = data["defaults"]
    folder_keys = {f.name for f in dataclasses.fields(FolderRule)} - {"path"}
    assert set(example_defaults) == folder_keys, "example `defaults:` and FolderRule fields differ"
    for key, value in example_defaults.items():
        assert _norm(value) == _field_default(FolderRule, key), f"defaults.{key} in the example"
        assert cfg.defaults[key] == _field_default(FolderRule, key), f"defaults.{key} after parse"
    # A folder that only names its path, under the example's defaults, is exactly FolderRule(path=...).
    only_path = copy.deepcopy(data)
    only_path["folders"] = [{"path": data["folders"][0]["path"]}]
    assert config.parse(EXAMPLE, only_path).folders[0] == FolderRule(path=Path(data["folders"][0]["path"]))


def test_example_top_level_sections_equal_dataclass_defaults(tmp_path: Path) -> None:
    data = _example_with_tmp_folders(tmp_path)
    cfg = config.parse(EXAMPLE, data)
    for key in ("workers", "rescan_seconds", "observer", "password_file", "lease_seconds"):
        assert data[key] == _field_default(Config, key), key
        assert getattr(cfg, key) == _field_default(Config, key), key
    for section, cls, parsed in (("retry", RetryConfig, cfg.retry), ("metrics", MetricsConfig, cfg.metrics),
                                 ("log", LogConfig, cfg.log)):
        assert set(data[section]) == {f.name for f in dataclasses.fields(cls)}, section
        for key, value in data[section].items():
            assert value == _field_default(cls, key), f"{section}.{key}"
        assert parsed == cls(), section
    for key in ("token_env", "oauth", "timeout_seconds", "ca_bundle"):
        assert data["studio"][key] == _field_default(StudioConfig, key), f"studio.{key}"
    assert cfg.studio.timeout_seconds == _field_default(StudioConfig, "timeout_seconds")
    known_top = {f.name for f in dataclasses.fields(Config)} - {"source"}
    assert set(data) <= known_top


# -- every error names the file and the key ---------------------------------------------------------------------

Mutation = Callable[[dict[str, Any], Path], None]


def _set(*keys: str, value: Any) -> Mutation:
    def mutate(data: dict[str, Any], tmp: Path) -> None:
        target: Any = data
        for k in keys[:-1]:
            target = target[int(k)] if isinstance(target, list) else target.setdefault(k, {})
        target[keys[-1]] = value
    return mutate


def _delete(*keys: str) -> Mutation:
    def mutate(data: dict[str, Any], tmp: Path) -> None:
        target: Any = data
        for k in keys[:-1]:
            target = target[int(k)] if isinstance(target, list) else target[k]
        del target[keys[-1]]
    return mutate


def _second_folder(**extra: Any) -> Mutation:
    def mutate(data: dict[str, Any], tmp: Path) -> None:
        data["folders"].append({"path": data["folders"][0]["path"], **extra})
    return mutate


def _move_folder_to_dir(name: str) -> Mutation:
    def mutate(data: dict[str, Any], tmp: Path) -> None:
        (tmp / name).mkdir(parents=True, exist_ok=True)
        data["folders"][0].update(after_upload="move", move_to=str(tmp / name))
    return mutate


ERROR_CASES: list[tuple[str, Mutation, str]] = [
    ("unknown top-level key", _set("stat_db", value="x.db"), "stat_db"),
    ("unknown studio key", _set("studio", "tokn_file", value="/t"), "studio.tokn_file"),
    ("unknown folder key", _set("folders", "0", "recursiv", value=True), "folders[0].recursiv"),
    ("unknown defaults key", _set("defaults", "settle", value=3), "defaults.settle"),
    ("unknown retry key", _set("retry", "max_tries", value=3), "retry.max_tries"),
    ("proxy with credentials", _set("studio", "proxy", value="http://u:pw@proxy.example:3128"), "studio.proxy"),
    ("socks proxy", _set("studio", "proxy", value="socks5://proxy.example:1080"), "studio.proxy"),
    ("proxy auth file without a proxy", _set("studio", "proxy_auth_file", value="/etc/hostname"),
     "studio.proxy_auth_file"),
    ("non-integer id", _set("folders", "0", "collection_id", value="abc"), "folders[0].collection_id"),
    ("zero id", _set("folders", "0", "user_id", value=0), "folders[0].user_id"),
    ("bool for an int", _set("workers", value=True), "workers"),
    ("bool for an id", _set("folders", "0", "collection_id", value=True), "folders[0].collection_id"),
    ("string for a bool", _set("folders", "0", "recursive", value="yes"), "folders[0].recursive"),
    ("folder is a file", lambda d, t: (t / "a-file").write_text("x") and d["folders"][0].update(path=str(t / "a-file")),
     "folders[0].path"),
    ("move without move_to", _set("folders", "0", "after_upload", value="move"), "folders[0].move_to"),
    ("move_to missing dir", lambda d, t: d["folders"][0].update(after_upload="move", move_to=str(t / "gone")),
     "folders[0].move_to"),
    ("bad after_upload", _set("folders", "0", "after_upload", value="archive"), "folders[0].after_upload"),
    ("http to a remote host", _set("studio", "url", value="http://school.instructuremedia.com"), "studio.url"),
    ("url with a path", _set("studio", "url", value="https://school.instructuremedia.com/api/public/v1"),
     "studio.url"),
    ("not a url", _set("studio", "url", value="school.instructuremedia.com"), "studio.url"),
    ("zero workers", _set("workers", value=0), "workers"),
    ("negative workers", _set("workers", value=-1), "workers"),
    ("negative settle", _set("folders", "0", "settle_seconds", value=-1), "folders[0].settle_seconds"),
    ("zero rescan", _set("rescan_seconds", value=0), "rescan_seconds"),
    ("bad observer", _set("observer", value="fanotify"), "observer"),
    ("same folder twice", _second_folder(), "folders[1].path"),
    ("missing state_db", _delete("state_db"), "state_db"),
    ("missing studio url", _delete("studio", "url"), "studio.url"),
    ("missing studio section", _delete("studio"), "studio.url"),
    ("no token source", _delete("studio", "token_env"), "studio.token_file"),
    ("token_file and token_env", _set("studio", "token_file", value="/run/token"), "studio.token_env"),
    ("oauth inline secret", _set("studio", "oauth", value={"client_id": "17", "client_secret": "s3cret",
                                                           "token_store": "/var/lib/t.json"}),
     "studio.oauth.client_secret"),
    ("oauth without secret source", _set("studio", "oauth", value={"client_id": "17",
                                                                   "token_store": "/var/lib/t.json"}),
     "studio.oauth.client_secret_file"),
    ("folders not a list", _set("folders", value={"path": "/x"}), "folders"),
    ("bad metrics listen", _set("metrics", "listen", value="9464"), "metrics.listen"),
    ("bad log level", _set("log", "level", value="verbose"), "log.level"),
    ("missing ca_bundle", lambda d, t: d["studio"].update(ca_bundle=str(t / "nope.pem")), "studio.ca_bundle"),
    ("ca_bundle not PEM", lambda d, t: (t / "ca.pem").write_text("not a certificate")
     and d["studio"].update(ca_bundle=str(t / "ca.pem")), "studio.ca_bundle"),
]


@pytest.mark.parametrize("mutate, key", [c[1:] for c in ERROR_CASES], ids=[c[0] for c in ERROR_CASES])
def test_errors_name_file_and_key(base: dict[str, Any], source: Path, tmp_path: Path, mutate: Mutation,
                                  key: str) -> None:
    config.parse(source, copy.deepcopy(base))  # the base itself is valid
    mutate(base, tmp_path)
    expect_error(source, base, key)


def test_symlinked_same_folder_is_refused(base: dict[str, Any], source: Path, tmp_path: Path) -> None:
    (tmp_path / "alias").symlink_to(tmp_path / "in")
    base["folders"].append({"path": str(tmp_path / "alias")})
    expect_error(source, base, "folders[1].path")


@pytest.mark.parametrize("url", ["http://127.0.0.1:8765", "http://localhost:8765", "http://[::1]:8765",
                                 "https://school.instructuremedia.com/", "https://school.instructuremedia.com"])
def test_allowed_urls(base: dict[str, Any], source: Path, url: str) -> None:
    base["studio"]["url"] = url
    cfg = config.parse(source, base)
    assert cfg.studio.api_url == url.rstrip("/") + "/api/public/v1"


def test_yaml_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("studio:\n  url: https://x.example\nstate_db: a.db\n  workers: 2\n", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        config.load(path)
    message = str(info.value)
    assert message.startswith(f"{path}: ") and "line 4" in message, message


def test_missing_config_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        config.load(tmp_path / "absent.yaml")


def test_overlapping_folders(base: dict[str, Any], source: Path, tmp_path: Path) -> None:
    inner = tmp_path / "in" / "room-101"
    inner.mkdir()
    outer_path = base["folders"][0]["path"]
    # The outer folder recursive: a file in the inner one would match twice, in either order.
    base["folders"] = [{"path": outer_path, "recursive": True}, {"path": str(inner)}]
    expect_error(source, base, "folders[1].path")
    base["folders"] = [{"path": str(inner)}, {"path": outer_path, "recursive": True}]
    expect_error(source, base, "folders[1].path")
    # Not recursive: the outer folder never sees the inner one's files.
    base["folders"] = [{"path": outer_path}, {"path": str(inner), "recursive": True}]
    cfg = config.parse(source, base)
    assert [f.path for f in cfg.folders] == [Path(outer_path), inner]


def test_move_to_inside_a_watched_folder(base: dict[str, Any], source: Path, tmp_path: Path) -> None:
    folder = Path(base["folders"][0]["path"])
    (folder / "done").mkdir()
    base["folders"][0].update(recursive=True, after_upload="move", move_to=str(folder / "done"))
    expect_error(source, base, "folders[0].move_to")
    # Into another watched folder.
    other = tmp_path / "other"
    other.mkdir()
    base["folders"][0].update(recursive=False, move_to=str(other))
    base["folders"].append({"path": str(other)})
    expect_error(source, base, "folders[0].move_to")
    # Outside every watched folder: fine.
    (tmp_path / "uploaded").mkdir()
    base["folders"][0]["move_to"] = str(tmp_path / "uploaded")
    assert config.parse(source, base).folders[0].move_to == tmp_path / "uploaded"


def test_folder_target_replaces_the_inherited_one(base: dict[str, Any], source: Path, tmp_path: Path) -> None:
    """defaults.collection_id is the default target; a folder naming user_id sends there instead."""
    second = tmp_path / "in2"
    second.mkdir()
    base["defaults"] = {"collection_id": 5}
    base["folders"].append({"path": str(second), "user_id": 42})
    cfg = config.parse(source, base)
    assert (cfg.folders[0].collection_id, cfg.folders[0].user_id) == (5, None)
    assert (cfg.folders[1].collection_id, cfg.folders[1].user_id) == (None, 42)


def test_a_folder_may_name_both_a_collection_and_a_user(base: dict[str, Any], source: Path) -> None:
    """Both: on behalf of the user, into the collection (what an admin token uploads for an instructor)."""
    base["folders"][0].update(collection_id=7, user_id=42)
    cfg = config.parse(source, base)
    assert (cfg.folders[0].collection_id, cfg.folders[0].user_id) == (7, 42)
    assert config.Target(7, 42).describe() == "collection 7 on behalf of user 42"
    base["folders"][0].pop("user_id")
    base["defaults"] = {"collection_id": 1, "user_id": 2}
    assert (config.parse(source, base).folders[0].collection_id, config.parse(source, base).folders[0].user_id) \
        == (7, None)  # a folder naming one target replaces both inherited ones, as before


def test_defaults_apply_and_folders_override(base: dict[str, Any], source: Path, tmp_path: Path) -> None:
    second = tmp_path / "in2"
    second.mkdir()
    base["defaults"] = {"settle_seconds": 3, "title": "{folder}: {stem}", "links": False}
    base["folders"].append({"path": str(second), "settle_seconds": 0, "links": True})
    first, other = config.parse(source, base).folders
    assert (first.settle_seconds, first.title, first.links) == (3.0, "{folder}: {stem}", False)
    assert (other.settle_seconds, other.title, other.links) == (0.0, "{folder}: {stem}", True)


# -- relative paths -------------------------------------------------------------------------------------------

def test_relative_paths_resolve_against_the_config_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    etc = tmp_path / "etc"
    (etc / "in").mkdir(parents=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    path = etc / "config.yaml"
    path.write_text(yaml.safe_dump({
        "studio": {"url": "https://x.example", "token_file": "secrets/token",
                   "oauth": {"client_id": "1", "client_secret_file": "secrets/client", "token_store": "tok.json"}},
        "state_db": "state/queue.db",
        "folders": [{"path": "in"}],
    }), encoding="utf-8")
    cfg = config.load(path)
    assert cfg.state_db == etc / "state" / "queue.db"
    assert cfg.folders[0].path == etc / "in"
    assert cfg.studio.token_file == etc / "secrets" / "token"
    assert cfg.studio.oauth is not None
    assert cfg.studio.oauth.token_store == etc / "tok.json"
    assert cfg.studio.oauth.client_secret_file == etc / "secrets" / "client"


def test_relative_config_path_still_anchors_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "conf" / "in").mkdir(parents=True)
    (tmp_path / "conf" / "c.yaml").write_text(
        "studio: {url: 'https://x.example', token_env: T}\nstate_db: s.db\nfolders: [{path: in}]\n", encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    cfg = config.load(Path("conf/c.yaml"))
    assert cfg.state_db == tmp_path / "conf" / "s.db"
    assert cfg.folders[0].path == tmp_path / "conf" / "in"


# -- templates ------------------------------------------------------------------------------------------------

def test_render_every_field() -> None:
    mtime = datetime(2024, 3, 5, 10, 30).timestamp()
    out = config.render("{stem}|{name}|{folder}|{parent}|{mtime:%Y-%m-%d}|{size}",
                        Path("/srv/capture/room-101/week 2/Lecture 1.mp4"), Path("/srv/capture/room-101"),
                        size=1234, mtime=mtime)
    assert out == "Lecture 1|Lecture 1.mp4|room-101|week 2|2024-03-05|1234"


@pytest.mark.parametrize("where, template", [("folders[0].title", "{nope}"), ("folders[0].description", "{stem"),
                                             ("defaults.title", "{0}"), ("defaults.description", "{size.nope}")])
def test_bad_template_refused_at_load(base: dict[str, Any], source: Path, where: str, template: str) -> None:
    section, key = where.rsplit(".", 1)
    if section == "defaults":
        base["defaults"] = {key: template}
    else:
        base["folders"][0][key] = template
    expect_error(source, base, where)


# -- secrets --------------------------------------------------------------------------------------------------

def test_read_secret_file_modes(tmp_path: Path, source: Path) -> None:
    secret = tmp_path / "token"
    secret.write_text("  abc123\n", encoding="utf-8")
    os.chmod(secret, 0o644)
    with pytest.raises(ConfigError) as info:
        config.read_secret_file(secret, "studio.token_file", source)
    assert "chmod 600" in str(info.value) and str(source) in str(info.value) and "studio.token_file" in str(info.value)
    os.chmod(secret, 0o600)
    assert config.read_secret_file(secret, "studio.token_file", source) == "abc123"


def test_read_secret_file_missing_and_empty(tmp_path: Path, source: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        config.read_secret_file(tmp_path / "absent", "studio.token_file", source)
    empty = tmp_path / "empty"
    empty.write_text("\n", encoding="utf-8")
    os.chmod(empty, 0o600)
    with pytest.raises(ConfigError, match="empty"):
        config.read_secret_file(empty, "studio.token_file", source)


def test_static_token_from_env(base: dict[str, Any], source: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = config.parse(source, base)
    monkeypatch.delenv("STUDIO_WATCH_TEST_TOKEN", raising=False)
    with pytest.raises(ConfigError) as info:
        config.static_token(cfg)
    message = str(info.value)
    assert message.startswith(f"{source}: studio.token_env: ") and "STUDIO_WATCH_TEST_TOKEN" in message
    monkeypatch.setenv("STUDIO_WATCH_TEST_TOKEN", " tok-1 \n")
    assert config.static_token(cfg) == "tok-1"


def test_static_token_from_file(base: dict[str, Any], source: Path, tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("tok-2\n", encoding="utf-8")
    os.chmod(token, 0o600)
    del base["studio"]["token_env"]
    base["studio"]["token_file"] = str(token)
    assert config.static_token(config.parse(source, base)) == "tok-2"


# -- which config file --------------------------------------------------------------------------------------

def test_config_path_precedence(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STUDIO_WATCH_CONFIG", "/from/env.yaml")
    assert config.config_path("/from/cli.yaml") == Path("/from/cli.yaml")
    assert config.config_path(None) == Path("/from/env.yaml")
    monkeypatch.delenv("STUDIO_WATCH_CONFIG")
    assert config.config_path(None) == Path("/etc/studio-watch/config.yaml")


def test_proxy_keys(base: dict[str, Any], source: Path, tmp_path: Path) -> None:
    auth = tmp_path / "proxy-auth"
    auth.write_text("av:secret\n")
    base["studio"].update(proxy="http://proxy.campus.edu:3128", proxy_auth_file=str(auth))
    studio = config.parse(source, base).studio
    assert (studio.proxy, studio.proxy_auth_file) == ("http://proxy.campus.edu:3128", auth)
    base["studio"].update(proxy_auth_file=str(tmp_path / "missing"))
    assert "no such file" in expect_error(source, base, "studio.proxy_auth_file")


# -- a cluster's state_db ------------------------------------------------------------------------------------------

def test_state_db_uri_node_name_and_lease(tmp_path: Path, base: dict[str, Any]) -> None:
    import socket

    parsed = config.parse(tmp_path / "c.yaml", base)
    assert parsed.state_db == tmp_path / "state.db" and not parsed.shared_state
    assert parsed.node_name == socket.gethostname() and parsed.lease_seconds == 30.0
    uri = "postgresql://studio_watch@db.campus.edu:5432/queue?sslmode=verify-full"
    cluster = config.parse(tmp_path / "c.yaml", {**base, "state_db": uri, "node_name": "room-101",
                                                 "lease_seconds": 10})
    assert (cluster.state_db, cluster.shared_state, cluster.node_name, cluster.lease_seconds) == (
        uri, True, "room-101", 10.0)
    assert config.state_db_password(cluster) is None  # libpq's own PGPASSFILE / ~/.pgpass then


@pytest.mark.parametrize("key, value, words", [
    ("node_name", "a/b", "without '/'"),
    ("node_name", "x" * 65, "at most 64"),
    ("state_db", "mysql://db/queue", "a path or a postgresql:// URI"),
    ("lease_seconds", 0, "greater than zero"),
    ("password_file", "pw", "only a postgresql:// state_db"),
])
def test_cluster_keys_are_checked(tmp_path: Path, base: dict[str, Any], key: str, value: Any, words: str) -> None:
    assert words in expect_error(tmp_path / "c.yaml", {**base, key: value}, key)


def test_the_password_comes_from_password_file_or_a_systemd_credential(tmp_path: Path, base: dict[str, Any],
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    secret = tmp_path / "pgpass"
    secret.write_text("s3cret\n")
    secret.chmod(0o600)
    uri = "postgresql://studio_watch@db/queue"
    parsed = config.parse(tmp_path / "c.yaml", {**base, "state_db": uri, "password_file": str(secret)})
    assert config.state_db_password(parsed) == "s3cret"
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "state_db_password").write_text("from-systemd")
    (creds / "state_db_password").chmod(0o600)
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    assert config.state_db_password(config.parse(tmp_path / "c.yaml", {**base, "state_db": uri})) == "from-systemd"
    secret.chmod(0o644)
    with pytest.raises(ConfigError, match="password_file: .* readable by group or others"):
        config.state_db_password(parsed)


def test_a_uri_password_is_redacted_for_display(tmp_path: Path, base: dict[str, Any]) -> None:
    parsed = config.parse(tmp_path / "c.yaml", {**base, "state_db": "postgresql://u:hunter2@db/q?password=hunter3"})
    assert "hunter" not in parsed.state_db_display and parsed.state_db_display.count("***") == 2
    assert config.redact_uri("postgresql:///q?host=/run/postgresql") == "postgresql:///q?host=/run/postgresql"
def test_a_misspelt_key_is_reported_before_the_required_key_it_failed_to_set(tmp_path: Path) -> None:
    """`tokenfile:` must not yield "token_file: required"; the typo is named, with what was meant."""
    from studio_watch.config import parse

    with pytest.raises(ConfigError) as exc:
        parse(tmp_path / "c.yaml", {"studio": {"url": "https://s.example", "tokenfile": "t"}})
    assert str(exc.value) == f"{tmp_path / 'c.yaml'}: studio.tokenfile: unknown key (did you mean 'token_file'?)"
    with pytest.raises(ConfigError, match=r"^.*: statedb: unknown key \(did you mean 'state_db'\?\)$"):
        parse(tmp_path / "c.yaml", {"statedb": "x", "studio": {"url": "https://s.example"}})
    with pytest.raises(ConfigError, match=r"folders\[0\]\.colection_id: unknown key \(did you mean 'collection_id'"):
        parse(tmp_path / "c.yaml", {"studio": {"url": "https://s.example", "token_env": "T"}, "state_db": "s",
                                    "folders": [{"path": str(tmp_path), "colection_id": 3}]})
    with pytest.raises(ConfigError, match=r"zzz: unknown key \(known keys here: format, level\)"):
        parse(tmp_path / "c.yaml", {"studio": {"url": "https://s.example", "token_env": "T"}, "state_db": "s",
                                    "log": {"zzz": 1}})


def test_rates_timezone_and_prune_after(tmp_path: Path) -> None:
    from studio_watch.config import parse

    base = {"studio": {"url": "https://s.example", "token_env": "T"}, "state_db": "s"}
    config = parse(tmp_path / "c.yaml", {**base, "prune_after": "180d",
                                         "schedule": {"max_upload_rate": "08:00,10M 18:00,off",
                                                      "timezone": "Europe/Berlin", "upload_hours": ["* 18:00-07:00"]}})
    assert config.prune_after == 180 * 86400
    rates = dict(config.schedule.max_upload_rate)
    assert rates[8 * 60] == 10 * 1024**2 and rates[18 * 60] is None and rates[6 * 1440 + 8 * 60] == 10 * 1024**2
    assert config.schedule.timezone == "Europe/Berlin"
    assert parse(tmp_path / "c.yaml", {**base, "schedule": {"max_upload_rate": 125000}}).schedule.max_upload_rate == \
        ((0, 125000),)
    for schedule, key in (({"max_upload_rate": "fast"}, "schedule.max_upload_rate"),
                          ({"timezone": "Mars/Olympus"}, "schedule.timezone")):
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            parse(tmp_path / "c.yaml", {**base, "schedule": schedule})
    with pytest.raises(ConfigError, match="prune_after: expected a duration"):
        parse(tmp_path / "c.yaml", {**base, "prune_after": "soon"})


def test_upload_hours_are_read_in_the_configured_timezone() -> None:
    from datetime import datetime, timezone

    from studio_watch.config import zone_of
    from studio_watch.schedule import Schedule, parse_window

    tokyo = Schedule((parse_window("* 09:00-10:00"),), tz=zone_of("Asia/Tokyo"))
    # 00:30 UTC is 09:30 in Tokyo
    assert tokyo.open(datetime(2026, 12, 1, 0, 30, tzinfo=timezone.utc).astimezone(zone_of("Asia/Tokyo")))
    assert tokyo.now().utcoffset().total_seconds() == 9 * 3600  # type: ignore[union-attr]
