"""The `studio-watch` entry point: the argument parser, and errors turned into exit codes.

Exit codes: 0 success, 1 a runtime failure, 2 bad usage or bad configuration (the message names the file,
the key and what is wrong). No traceback reaches the user for an expected error. Each command group lives in
its own module beside this one (cli/run.py, cli/status.py, cli/upload.py, ...); shared helpers in cli/output.py.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import Callable, Sequence

from studio_watch import __version__
from studio_watch.cli.output import EXIT_FAILURE, EXIT_OK, EXIT_USAGE
from studio_watch.errors import ConfigError, StudioWatchError

# command → the cli module that carries it out. Imported when the command runs (start-up cost: `status` or
# `health` must not pay for watchdog, the HTTP client and the daemon).
COMMANDS = {"run": "run", "sandbox": "run", "demo": "demo", "status": "status", "jobs": "manage",
            "cancel": "manage", "forget": "manage", "prune": "manage", "retry": "status", "upload": "upload",
            "import-url": "imports", "check": "check", "explain": "check", "auth": "auth", "health": "health",
            "migrate": "migrate", "reload": "reload", "init": "init", "completion": "shell", "manpage": "shell"}
LOG_LEVELS = ("debug", "info", "warning", "error")
_CONFIG_HELP = "config file (default: ${env}, then {path})"
_TAKES_VALUE = ("-c", "--config")  # top-level options whose value is not the command's name


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse exits 2 already; keep its message, drop nothing
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _chosen(argv: Sequence[str]) -> str:
    """The command's name in `argv` ("" if none yet): the first word that is neither an option nor -c's value."""
    words = iter(argv)
    for word in words:
        if word in _TAKES_VALUE:
            next(words, None)
        elif not word.startswith("-"):
            return word
    return ""


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The whole parser; given the command line, only the chosen command's arguments are built (the others'
    choices and flags import modules a cold start should not pay for: the sandbox's, the config's, the queue's)."""
    chosen = None if argv is None else _chosen(argv)
    parser = _Parser(prog="studio-watch", description="Upload recordings from watched folders to Canvas Studio, "
                     "exactly once, surviving crashes, outages and expired tokens.")
    parser.add_argument("--version", action="version", version=f"studio-watch {__version__}")
    # -c before the subcommand or after it: the subcommand's copy sets nothing unless given (SUPPRESS), so it
    # never overwrites one given before the subcommand's name.
    parser.add_argument("-c", "--config", metavar="PATH", default=None,
                        help=_config_help() if chosen != "" else "config file (see COMMAND --help)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    known = chosen in COMMANDS  # a valid command's name: the only subparser parsing can reach (each costs ~0.5 ms)
    for name, help_text, arguments in _ARGUMENTS:
        if chosen is not None and chosen != name:  # never parsed: its name and help are all the listing needs
            if not known:
                sub.add_parser(name, help=help_text)
            continue
        common = _common()
        p = sub.add_parser(name, help=help_text, description=help_text, parents=[] if name == "sandbox" else [common])
        arguments(p, common)
    return parser


def _config_help() -> str:
    from studio_watch import config as cfg  # start-up cost: `--version` loads no YAML

    return _CONFIG_HELP.format(env=cfg.CONFIG_ENV, path=cfg.DEFAULT_CONFIG_PATH)


def _common() -> argparse.ArgumentParser:
    """The options every command but `sandbox` takes."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-c", "--config", metavar="PATH", default=argparse.SUPPRESS, help=_config_help())
    return common


def _none(p: argparse.ArgumentParser, common: argparse.ArgumentParser) -> None:
    pass


def _elsewhere(module: str) -> Arguments:
    """A command whose arguments its own module registers (`add_arguments(add, ...)` with one `add` per command):
    only that one's are kept, on `p`; the module's other commands are built on a scratch parser and dropped."""
    def arguments(p: argparse.ArgumentParser, common: argparse.ArgumentParser) -> None:
        mod = importlib.import_module(f"studio_watch.cli.{module}")  # start-up cost: only when chosen

        def add(name: str, help_text: str) -> argparse.ArgumentParser:
            return p if name == p.prog.rsplit(" ", 1)[-1] else argparse.ArgumentParser(add_help=False)

        if module == "manage":
            mod.add_arguments(add, _positive_int)
        else:
            mod.add_arguments(add)
    return arguments


def _run_args(p: argparse.ArgumentParser, common: argparse.ArgumentParser) -> None:
    p.add_argument("--once", action="store_true",
                   help="upload what is in the folders now, then exit (0, or 1 if a job failed meanwhile)")
    p.add_argument("--new-database", action="store_true",
                   help="start a new state database where an earlier one was lost (its -wal, -shm or lock file "
                        "is still there); files marked as uploaded on disk are still not sent again")
    p.add_argument("--log-level", choices=LOG_LEVELS, help="overrides log.level of the config")
    p.add_argument("-v", "--verbose", dest="log_level", action="store_const", const="debug",
                   help="the same as --log-level debug")


def _reload_args(p: argparse.ArgumentParser, common: argparse.ArgumentParser) -> None:
    p.add_argument("--pid", type=_positive_int, help="the daemon's pid (default: the holder of the database lock)")
    p.add_argument("--timeout", type=float, default=60.0, metavar="SECONDS",
                   help="how long to wait for the daemon's answer (default 60)")


def _status_args(p: argparse.ArgumentParser, common: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="one JSON object on stdout")


def _completion_args(p: argparse.ArgumentParser, common: argparse.ArgumentParser) -> None:
    p.add_argument("shell", choices=("bash", "zsh"))


def _retry_args(p: argparse.ArgumentParser, common: argparse.ArgumentParser) -> None:
    p.add_argument("ids", nargs="*", type=_positive_int, metavar="JOB_ID")
    p.add_argument("--failed", action="store_true", help="every failed job")


def _upload_args(p: argparse.ArgumentParser, common: argparse.ArgumentParser) -> None:
    p.add_argument("files", nargs="+", metavar="FILE", help="one or more files, uploaded one after the other")
    _target_args(p)
    p.add_argument("--again", action="store_true", help="upload even if this exact file was uploaded before")
    p.add_argument("--force", action="store_true",
                   help="upload a file whose name matches no include pattern of the default folder rules "
                        "(e.g. notes.txt); without it such a file is refused")


def _import_url_args(p: argparse.ArgumentParser, common: argparse.ArgumentParser) -> None:
    p.add_argument("url", metavar="URL")
    _target_args(p)
    p.add_argument("--external", action="store_true", default=None,  # None: YouTube/Vimeo URLs are external
                   help="an external YouTube/Vimeo link (no title needed)")
    p.add_argument("--no-external", dest="external", action="store_false", default=None,
                   help="import a YouTube/Vimeo URL as a regular media instead of an external link")


def _check_args(p: argparse.ArgumentParser, common: argparse.ArgumentParser) -> None:
    p.add_argument("--try-upload", action="store_true",
                   help="also ask Studio for an upload URL for every target, the only sure test that the token may "
                        "upload there (Studio keeps each as a pending, never completed upload; nothing is sent)")


def _explain_args(p: argparse.ArgumentParser, common: argparse.ArgumentParser) -> None:
    p.add_argument("path", metavar="PATH", nargs="?")
    p.add_argument("--all", action="store_true", help="every file in every watched folder: what would happen")
    p.add_argument("--date", metavar="DAY", help="YYYY-MM-DD, today or yesterday: the lectures PATH's folder expected "
                   "that day, their outcome, and the files first seen")


def _auth_args(p: argparse.ArgumentParser, common: argparse.ArgumentParser) -> None:
    auth = p.add_subparsers(dest="auth_command", metavar="ACTION", parser_class=_Parser)
    auth.required = True
    login = auth.add_parser("login", help="authorize studio-watch (prints a URL, reads the code)", parents=[common])
    login.add_argument("--code", help="the authorization code (or the whole redirect URL), without prompting")
    login.add_argument("--redirect-uri", default=None, help="the https:// redirect URI registered with the Developer Key; required unless --code "
                       "is given (Studio has no out-of-band flow); the browser is sent there with ?code=...")
    auth.add_parser("status", help="whether a token is stored and when it expires (never the token)",
                    parents=[common])


def _migrate_args(p: argparse.ArgumentParser, common: argparse.ArgumentParser) -> None:
    p.add_argument("--from", dest="source", required=True, metavar="OLD_STATE_DB",
                   help="the SQLite state database to move (stop its daemon first; the file is left unchanged)")


def _sandbox_args(p: argparse.ArgumentParser, common: argparse.ArgumentParser) -> None:
    p.description = ("Serve a local Canvas Studio emulator: the public API studio-watch speaks (the three-step "
                     "upload, URL imports, media, collections, users, OAuth), with fault injection.")
    from studio_watch.sandbox.command import add_sandbox_arguments  # start-up cost: only `sandbox` builds these

    add_sandbox_arguments(p)


def _demo_args(p: argparse.ArgumentParser, common: argparse.ArgumentParser) -> None:
    p.add_argument("--once", action="store_true", help="exit when the sample files are uploaded")
    p.add_argument("--files", type=_positive_int, default=3, help="how many sample files to drop (default 3)")
    p.add_argument("--tls", action="store_true",
                   help="the sandbox serves https (a private CA, verified as a real Studio host would be)")


Arguments = Callable[[argparse.ArgumentParser, argparse.ArgumentParser], None]
_ARGUMENTS: tuple[tuple[str, str, Arguments], ...] = (
    ("run", "run the daemon in the foreground (stops cleanly on SIGTERM/SIGINT; SIGHUP reloads)", _run_args),
    ("reload", "ask the running daemon to re-read its config and wait for its answer "
     "(exit 0 applied, 2 rejected, 1 no answer)", _reload_args),
    ("status", "jobs per state, oldest waiting job, recent failures, pause state", _status_args),
    ("jobs", "the newest jobs first: id, state, created (local time), tries, media id, target, title, path "
     "and why it is where it is", _elsewhere("manage")),
    ("cancel", "never upload these jobs (one in flight stops at its next step)", _elsewhere("manage")),
    ("forget", "drop these rows so their files may be queued again (refused for an uploaded file "
     "still in place, and for a job in flight)", _elsewhere("manage")),
    ("prune", "drop finished jobs older than AGE whose files are gone or changed (never a row that "
     "keeps a kept file from being uploaded again)", _elsewhere("manage")),
    ("init", "write a config to start from (asks, or --non-interactive with flags), then run check",
     _elsewhere("init")),
    ("completion", "print a bash or zsh completion script (generated from this parser)", _completion_args),
    ("manpage", "print the man page (roff, generated from this parser; needs the [man] extra)", _none),
    ("retry", "put failed jobs back in the queue", _retry_args),
    ("upload", "upload files through the durable queue and follow each to completion", _upload_args),
    ("import-url", "create media from a URL (YouTube and Vimeo become external media)", _import_url_args),
    ("check", "validate the config, reach the API, check the token, folders and targets", _check_args),
    ("explain", "which folder rule a path matches and exactly what would be sent; with --all, every file "
     "of every folder; with --date, what a folder's timetable expected that day and what arrived "
     "(e.g. explain --date 2026-12-07 /srv/room-101)", _explain_args),
    ("auth", "OAuth authorization and the stored token's state", _auth_args),
    ("health", "exit 0 when the daemon is alive and healthy (for container and monitoring health checks)", _none),
    ("migrate", "move a single machine's SQLite queue into the PostgreSQL queue state_db names "
     "(example: studio-watch migrate --from /var/lib/studio-watch/state.db)", _migrate_args),
    ("sandbox", "a local Studio emulator with fault injection", _sandbox_args),
    ("demo", "sandbox + a temporary drop folder + the daemon: the whole pipeline, with no account", _demo_args),
)


def _target_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--collection", type=_positive_int, metavar="ID", help="into this collection")
    p.add_argument("--user", type=_positive_int, metavar="ID",
                   help="on behalf of this user (admin token): into their My Uploads, or with --collection into it")
    p.add_argument("--title", help="the media title")
    p.add_argument("--description", default="", help="the media description")
    p.add_argument("--auto-caption", action="store_true", help="ask Studio for automatic captions")


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(argv).parse_args(argv)
    try:
        return _dispatch(args)
    except ConfigError as exc:
        if args.command == "run" and not sys.stderr.isatty():
            _log_fatal(exc)
        else:
            print(f"studio-watch: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except StudioWatchError as exc:
        print(f"studio-watch: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `jobs | head`: the reader has all it wanted; say nothing more to a closed pipe
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    except Exception as exc:
        # A database damaged in a way the queue did not classify: still one line. sqlite3 is looked up, not
        # imported: `--version` never loads it, and an error of it can only come once something has.
        sqlite3 = sys.modules.get("sqlite3")
        if sqlite3 is None or not isinstance(exc, sqlite3.Error):
            raise
        print(f"studio-watch: state database error: {exc} (see docs/operations.md, 'The state database')",
              file=sys.stderr)
        return EXIT_FAILURE


def _log_fatal(exc: ConfigError) -> None:
    """The daemon's last word as one more log line (JSON off a terminal, with its journal priority), not plain
    text among JSON lines. The config may be what failed: then the defaults decide the format."""
    from studio_watch import logs  # start-up cost: only on this error path

    if not logs.is_configured():
        logs.setup("info", "auto")
    logs.get_logger("studio_watch.cli").critical("config_invalid", error=str(exc), exit_code=EXIT_USAGE)


def _dispatch(args: argparse.Namespace) -> int:
    module = importlib.import_module(f"studio_watch.cli.{COMMANDS[args.command]}")
    handler: Callable[[argparse.Namespace], int] = getattr(module, "cmd_" + args.command.replace("-", "_"))
    return handler(args)
