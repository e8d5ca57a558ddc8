"""Shell completion (bash, zsh) and the man page, both generated from the parser, so they never fall behind.

    studio-watch completion bash > /usr/share/bash-completion/completions/studio-watch
    studio-watch completion zsh  > /usr/local/share/zsh/site-functions/_studio-watch
    studio-watch manpage > /usr/local/share/man/man1/studio-watch.1     # needs the [man] extra

shtab writes the completion scripts (a dependency: a tiny pure-Python library, maintained, with a wheel);
argparse-manpage writes the man page (the optional `man` extra: it ships no wheel, and the image installs
wheels only).
"""

from __future__ import annotations

import argparse
import sys

import shtab

from studio_watch import __version__
from studio_watch.cli.main import build_parser
from studio_watch.cli.output import EXIT_OK, config_error

_FILE_DESTS = {"config", "path", "file", "output", "token_file", "move_to", "state_db", "folder",
               "oauth_client_secret_file", "token_store"}


def _with_file_hints(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Mark every option and argument that takes a path, so the shell completes file names there."""
    stack = [parser]
    while stack:
        current = stack.pop()
        for action in current._actions:
            if isinstance(action, argparse._SubParsersAction):
                stack.extend(action.choices.values())
            elif action.dest in _FILE_DESTS:
                action.complete = shtab.FILE  # type: ignore[attr-defined]
    return parser


def cmd_completion(args: argparse.Namespace) -> int:
    sys.stdout.write(shtab.complete(_with_file_hints(build_parser()), shell=args.shell))
    return EXIT_OK


def cmd_manpage(args: argparse.Namespace) -> int:
    try:
        from argparse_manpage.manpage import Manpage  # optional (the [man] extra): only here
    except ImportError:
        raise config_error("manpage", "needs argparse-manpage: pip install 'studio-watch[man]' "
                                      "(or .[man] in a checkout)") from None
    page = Manpage(build_parser(), _data={
        "project_name": "studio-watch", "version": __version__, "url": "https://github.com/studio-watch/studio-watch",
        "description": "upload lecture recordings from watched folders to Canvas Studio"})
    sys.stdout.write(str(page))
    return EXIT_OK
