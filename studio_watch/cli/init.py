"""`studio-watch init`: write a config a user can start from, by questions or by flags, then run `check`.

    studio-watch init                                   # asks
    studio-watch init --non-interactive --url https://school.instructuremedia.com \
        --token-file /etc/studio-watch/token --folder /srv/capture/room-101=collection:1234 \
        --after-upload move --move-to /srv/capture/uploaded -o /etc/studio-watch/config.yaml

The file is validated with the same loader the daemon uses before it is put in place (written to a temporary
name, then renamed: an existing config is only replaced with --force).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable

import yaml

from studio_watch import config as cfg
from studio_watch.cli.output import EXIT_OK, EXIT_USAGE, config_error
from studio_watch.errors import ConfigError

DEFAULT_TOKEN_FILE = "/run/credentials/studio-watch.service/token"
DEFAULT_STATE_DB = "/var/lib/studio-watch/state.db"
_TARGET = re.compile(r"^(?:(collection|user):(\d+)|my-uploads)$")


def add_arguments(add: Callable[[str, str], argparse.ArgumentParser]) -> None:
    p = add("init", "write a config to start from (asks, or --non-interactive with flags), then run check")
    p.add_argument("--non-interactive", action="store_true", help="take everything from the flags; ask nothing")
    p.add_argument("--url", help="the Studio address, e.g. https://myschool.instructuremedia.com")
    token = p.add_mutually_exclusive_group()
    token.add_argument("--token-file", metavar="PATH", help=f"a file holding the access token (0600); under the "
                       f"systemd unit: {DEFAULT_TOKEN_FILE}")
    token.add_argument("--token-env", metavar="NAME", help="an environment variable holding the access token")
    token.add_argument("--oauth-client-id", metavar="ID", help="OAuth instead of a fixed token: the Developer Key's "
                       "client id (then --oauth-client-secret-file and --token-store; run `auth login` after)")
    p.add_argument("--oauth-client-secret-file", metavar="PATH", help="the Developer Key's client secret (0600)")
    p.add_argument("--token-store", metavar="PATH", help="where `auth login` keeps the OAuth tokens "
                   "(default: beside the state database)")
    p.add_argument("--folder", action="append", default=[], metavar="PATH[=TARGET]",
                   help="a folder to watch, with its target: collection:ID, user:ID or my-uploads (the default); "
                        "repeat for more folders")
    p.add_argument("--after-upload", choices=("keep", "move", "delete"), help="what to do with a file Studio has "
                   "(default keep)")
    p.add_argument("--move-to", metavar="PATH", help="where uploaded files go with --after-upload move")
    p.add_argument("--state-db", metavar="PATH", help=f"the state database (default {DEFAULT_STATE_DB})")
    p.add_argument("-o", "--output", metavar="PATH", help="where to write the config (default: -c, then "
                   f"${cfg.CONFIG_ENV}, then {cfg.DEFAULT_CONFIG_PATH})")
    p.add_argument("--force", action="store_true", help="replace an existing file")
    p.add_argument("--no-check", action="store_true", help="do not run `check` after writing")


def parse_folder(text: str) -> dict[str, Any]:
    """`PATH`, `PATH=collection:ID`, `PATH=user:ID` or `PATH=my-uploads` → a folder entry."""
    path, sep, target = text.rpartition("=")
    if not sep or not _TARGET.match(target):
        path, target = text, "my-uploads"
    match = _TARGET.match(target)
    assert match is not None
    entry: dict[str, Any] = {"path": os.path.abspath(path)}
    if match[1]:
        entry[f"{match[1]}_id"] = int(match[2])
    return entry


class _Asker:
    """Questions on stdout, answers from stdin (a pipe works too: one answer per line)."""

    def ask(self, question: str, default: str | None = None) -> str:
        shown = f" [{default}]" if default else ""
        try:
            answer = input(f"{question}{shown}: ").strip()
        except EOFError:
            raise config_error("init", "the input ended before every question was answered "
                                       "(use --non-interactive with flags in scripts)") from None
        return answer or (default or "")

    def choose(self, question: str, choices: tuple[str, ...], default: str) -> str:
        while True:
            answer = self.ask(f"{question} ({'/'.join(choices)})", default)
            if answer in choices:
                return answer
            print(f"  please answer one of: {', '.join(choices)}")


def _interactive(args: argparse.Namespace) -> None:
    """Fill in what the flags did not give, by asking."""
    a = _Asker()
    print("Writing a studio-watch config. Enter accepts the [default].")
    while not args.url:
        args.url = a.ask("Studio address (https://<school>.instructuremedia.com)")
    if not (args.token_file or args.token_env or args.oauth_client_id):
        how = a.choose("Token: a file, an environment variable, or OAuth (refreshing tokens)",
                       ("file", "env", "oauth"), "file")
        if how == "file":
            args.token_file = a.ask("File holding the access token", DEFAULT_TOKEN_FILE)
        elif how == "env":
            args.token_env = a.ask("Environment variable holding the token", "STUDIO_TOKEN")
        else:
            args.oauth_client_id = a.ask("Developer Key client id")
            args.oauth_client_secret_file = a.ask("File holding its client secret", "/etc/studio-watch/client_secret")
    if not args.folder:
        while True:
            path = a.ask("Folder to watch (empty when done)" if args.folder else "Folder to watch")
            if not path:
                if args.folder:
                    break
                continue
            target = a.ask("  upload into: collection:ID, user:ID or my-uploads", "my-uploads")
            while not _TARGET.match(target):
                target = a.ask("  please give collection:ID, user:ID or my-uploads", "my-uploads")
            args.folder.append(f"{path}={target}")
    if not args.after_upload:
        args.after_upload = a.choose("After upload, the file is", ("keep", "move", "delete"), "keep")
    if args.after_upload == "move" and not args.move_to:
        args.move_to = a.ask("Move uploaded files to")
    if not args.state_db:
        args.state_db = a.ask("State database", DEFAULT_STATE_DB)


def build(args: argparse.Namespace) -> dict[str, Any]:
    """The config as data, from complete arguments (raises ConfigError naming the flag that is missing)."""
    if not args.url:
        raise config_error("--url", "required")
    studio: dict[str, Any] = {"url": args.url.rstrip("/")}
    state_db = os.path.abspath(args.state_db or DEFAULT_STATE_DB)
    if args.oauth_client_id:
        if not args.oauth_client_secret_file:
            raise config_error("--oauth-client-secret-file", "required with --oauth-client-id")
        studio["oauth"] = {"client_id": args.oauth_client_id,
                           "client_secret_file": os.path.abspath(args.oauth_client_secret_file),
                           "token_store": os.path.abspath(args.token_store or
                                                          os.path.join(os.path.dirname(state_db), "token.json"))}
    elif args.token_env:
        studio["token_env"] = args.token_env
    elif args.token_file:
        studio["token_file"] = args.token_file if args.token_file.startswith("$") else os.path.abspath(args.token_file)
    else:
        raise config_error("--token-file", "give --token-file, --token-env or --oauth-client-id")
    if not args.folder:
        raise config_error("--folder", "give at least one folder to watch")
    data: dict[str, Any] = {"studio": studio, "state_db": state_db}
    after = args.after_upload or "keep"
    if after != "keep" or args.move_to:
        data["defaults"] = {"after_upload": after}
        if after == "move":
            if not args.move_to:
                raise config_error("--move-to", "required with --after-upload move")
            data["defaults"]["move_to"] = os.path.abspath(args.move_to)
    data["folders"] = [parse_folder(text) for text in args.folder]
    return data


HEADER = """\
# studio-watch configuration, written by `studio-watch init`. Every key: config.example.yaml and README.md.
# Check it with: studio-watch check -c {path}
"""


def write(path: Path, data: dict[str, Any], force: bool) -> None:
    """Validate `data` with the daemon's own loader and put it at `path` (atomically; 0640)."""
    if path.exists() and not force:
        raise config_error("--output", f"{path} exists (use --force to replace it)")
    text = HEADER.format(path=path) + yaml.safe_dump(data, sort_keys=False)
    cfg.parse(path.absolute(), yaml.safe_load(text))  # a folder that does not exist, a bad URL: said now
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o640)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def cmd_init(args: argparse.Namespace) -> int:
    output = Path(args.output or cfg.config_path(getattr(args, "config", None)))
    if not args.non_interactive:
        _interactive(args)
    data = build(args)
    try:
        write(output, data, args.force)
    except ConfigError as exc:
        print(f"studio-watch: not written: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print(f"wrote {output} (mode 0640: make it readable by the service, e.g. chgrp studio-watch {output})")
    if args.no_check:
        return EXIT_OK
    print(f"\n$ studio-watch check -c {output}")
    from studio_watch.cli.check import cmd_check  # start-up cost: cli.main imports this module for its parser

    return cmd_check(argparse.Namespace(config=str(output), try_upload=False))
