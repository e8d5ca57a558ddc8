"""The sandbox's command line (stdlib only): its options (address, tokens, data, TLS, one flag per fault, with
the built-in data in the help), the `Sandbox` they describe, and serving until told to stop. `studio-watch
sandbox` (cli/run.py) uses these hooks; `python -m studio_watch.sandbox.command [flags]` runs them alone."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from typing import Any, Callable, Sequence, TextIO

from studio_watch.sandbox.faults import KNOWN_ENDPOINTS, Faults
from studio_watch.sandbox.server import Sandbox, built_in

__all__ = ["add_sandbox_arguments", "sandbox_from_args", "serve_forever_until", "main"]


def _id_name(text: str) -> tuple[int, str]:
    """argparse type for ID=NAME."""
    key, sep, name = text.partition("=")
    if not sep or not key.strip().isdigit() or not name.strip():
        raise argparse.ArgumentTypeError(f"expected ID=NAME, got {text!r}")
    return int(key), name.strip()


def _endpoints(text: str) -> frozenset[str]:
    """argparse type for a comma list of endpoint names."""
    names = frozenset(n.strip() for n in text.split(",") if n.strip())
    unknown = names - KNOWN_ENDPOINTS
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown endpoints {sorted(unknown)}; known: {sorted(KNOWN_ENDPOINTS)}")
    return names


FAULT_FLAGS: list[tuple[str, str, Callable[[str], Any] | None, str]] = [
    # (flag, Faults field, type (None: a switch), help)
    ("--error-rate", "error_rate", float, "fraction of requests answered 500/502/503/504"),
    ("--error-endpoints", "error_endpoints", _endpoints,
     "comma list of endpoints errors and 429s apply to ('oauth' may be added)"),
    ("--rate-limit-rate", "rate_limit_rate", float, "fraction of requests answered 429"),
    ("--retry-after", "retry_after", str, "Retry-After value sent with 429 (seconds or an HTTP date)"),
    ("--reset-rate", "reset_rate", float, "fraction of PUTs cut off mid-body (connection reset, no response)"),
    ("--expire-first-put", "expire_first_put", None,
     "answer the first PUT to an upload URL 410 and kill the URL (the next URL issued is spared)"),
    ("--url-ttl", "url_ttl_seconds", float, "upload URL lifetime in seconds"),
    ("--lose-complete-rate", "lose_complete_rate", float,
     "fraction of completes processed but answered by closing the connection"),
    ("--captions-disabled", "captions_disabled", None, "answer 501 when auto_caption is requested"),
    ("--put-bytes-per-second", "put_bytes_per_second", int, "throttle PUT bodies (0 = unlimited)"),
    ("--latency", "latency_seconds", float, "seconds added before every API response"),
    ("--token-ttl", "token_ttl_seconds", float, "OAuth access token lifetime in seconds"),
    ("--token-ttl-calls", "token_ttl_calls", int, "issued access tokens answer 401 after N calls (0 = no limit)"),
    ("--transcode-seconds", "transcode_seconds", float, "seconds a completed media stays 'processing'"),
    ("--transcode-fail", "transcode_fail", None, "transcoding ends 'failed' instead of 'completed'"),
    ("--max-upload-bytes", "max_upload_bytes", int, "PUTs with a larger Content-Length get 413"),
    ("--seed", "seed", int, "seed of the fault generator"),
]



SANDBOX_EPILOG = """Built in (the same every time, so scripts can rely on them):
  {lines}

Media are kept in memory only, until the sandbox stops. With --tls it serves https with a certificate signed
by a private CA made at start; the CA's path is printed (give it to clients: studio.ca_bundle, curl --cacert).

Example, in one terminal:   studio-watch sandbox --port 8765 --latency 0.05
and in another:             curl -H 'Authorization: Bearer sandbox-token' http://127.0.0.1:8765/api/public/v1/ping
"""


def add_sandbox_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the sandbox's options (address, tokens, data, TLS, one flag per fault) and its help text to a parser."""
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = SANDBOX_EPILOG.format(lines="\n  ".join(built_in()))
    a = parser.add_argument
    a("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    a("--port", type=int, default=8765, help="port to listen on; 0 picks a free one (default 8765)")
    a("--token", action="append", metavar="TOKEN", help="accepted bearer token, repeatable (default sandbox-token)")
    a("--collection", action="append", type=_id_name, metavar="ID=NAME", help="add a collection, repeatable")
    a("--user", action="append", type=_id_name, metavar="ID=NAME", help="add a user, repeatable")
    a("--forbidden-collection", action="append", type=int, metavar="ID", help="collection answering 403, repeatable")
    a("--tls", action="store_true", help="serve https, with a certificate from a private CA made at start")
    a("--tls-dir", metavar="DIR", help="with --tls: write ca.pem, server.pem and server.key here and keep them "
                                       "(default: a temporary folder, removed at exit)")
    defaults = Faults()
    for flag, name, kind, text in FAULT_FLAGS:
        if kind is None:
            a(flag, dest=name, action="store_true", help=text)
        else:
            default = getattr(defaults, name)
            shown = ",".join(sorted(default)) if isinstance(default, frozenset) else default
            metavar = {float: "X", int: "N", str: "VALUE"}.get(kind, "LIST")  # type: ignore[call-overload]
            a(flag, dest=name, type=kind, default=default, metavar=metavar, help=f"{text} (default {shown})")


def faults_from_args(args: argparse.Namespace) -> Faults:
    """The Faults described by parsed sandbox arguments."""
    values = {name: getattr(args, name) for _, name, _, _ in FAULT_FLAGS}
    return Faults(**values, forbidden_collections=frozenset(args.forbidden_collection or ()))


def sandbox_from_args(args: argparse.Namespace) -> Sandbox:
    """Build (and bind, not start) a Sandbox from parsed sandbox arguments."""
    return Sandbox(
        host=args.host, port=args.port, faults=faults_from_args(args),
        tokens=tuple(args.token or ("sandbox-token",)),
        collections=dict(args.collection or ()), users=dict(args.user or ()),
        tls=args.tls or bool(args.tls_dir), tls_dir=args.tls_dir,
    )


def serve_forever_until(sandbox: Sandbox, stop: threading.Event, out: TextIO) -> None:
    """Start the sandbox, print where it listens, block until `stop` is set, then stop it."""
    sandbox.start()
    try:
        lines = [f"sandbox listening on {sandbox.url} (token: {sandbox.tokens[0]})", *sandbox.describe()]
        if sandbox.ca_path:
            lines.append(f"CA certificate: {sandbox.ca_path}  (studio.ca_bundle, curl --cacert)")
        print("\n  ".join(lines), file=out, flush=True)
        stop.wait()
    finally:
        sandbox.stop()


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m studio_watch.sandbox.command [flags]`: serve until SIGINT/SIGTERM."""
    parser = argparse.ArgumentParser(prog="studio_watch.sandbox.command", description="Local Canvas Studio emulator")
    add_sandbox_arguments(parser)
    args = parser.parse_args(argv)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    serve_forever_until(sandbox_from_args(args), stop, sys.stdout)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
