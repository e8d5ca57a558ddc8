"""Rows about the cold start of a command: `--version`, `status`, `upload` wall time against the interpreter's
own start (`python -c pass`), what `python -X importtime` says each imports, and `upload FILE...` against one
`upload` per file.

Bytecode is compiled first (`compileall`): an installed package ships it, and this environment sets
PYTHONDONTWRITEBYTECODE, so without it every run would compile studio_watch from source.

The commands run as an installed package runs them (pip, pipx, the image): a scratch venv whose site-packages
holds plain path entries for this checkout and the dependencies, so no editable-install import finder (~12 ms
of every start in the development venv, paid by no user) is in the figures; the console script's two lines are
the `-c` program.
"""

from __future__ import annotations

import compileall
import site
import subprocess
import sys
import time
import venv
from pathlib import Path

from .harness import REPO, STUDIO_WATCH, Sink, median, remove, scratch, write_config, write_small_files
from .report import Result

PYTHON = sys.executable
ENTRY = "import sys; from studio_watch.cli.main import main; sys.exit(main())"  # what the console script runs


def _installed(root: Path) -> list[str]:
    """argv prefix of `studio-watch` as installed (see the module's docstring): a venv made in `root`."""
    env = root / "venv"
    venv.EnvBuilder(with_pip=False).create(env)
    target = next((env / "lib").glob("python3*/site-packages"))
    (target / "studio_watch_bench.pth").write_text("\n".join([str(REPO), *site.getsitepackages()]) + "\n")
    return [str(env / "bin" / "python"), "-c", ENTRY]


def _wall(argv: list[str], reps: int) -> float:
    """Median wall seconds of `argv` run to completion (stdout and stderr discarded)."""
    times = []
    for _ in range(reps):
        started = time.monotonic()
        done = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=REPO)
        times.append(time.monotonic() - started)
        if done.returncode != 0:
            raise RuntimeError(f"{argv[1:3]} exited {done.returncode}: {done.stderr[-300:]!r}")
    return median(times)


def _importtime(cmd: list[str], args: list[str]) -> tuple[int, float, list[tuple[str, float]]]:
    """(modules imported, their total import ms, the three costliest top-level imports) of `studio-watch ARGS`."""
    done = subprocess.run([cmd[0], "-X", "importtime", *cmd[1:], *args], capture_output=True, text=True, cwd=REPO)
    rows = []
    for line in done.stderr.splitlines():
        if line.startswith("import time:") and "|" in line and "self [us]" not in line:
            _, cumulative, name = line.split("|")
            rows.append((name.rstrip(), int(cumulative)))
    top = [(name.strip(), us / 1000) for name, us in rows if not name.startswith("  ")]
    total = sum(us for _, us in top)
    return len(rows), total, sorted(top, key=lambda t: -t[1])[:3]


def coldstart_rows(sink: Sink, quick: bool) -> list[Result]:
    compileall.compile_dir(str(REPO / "studio_watch"), quiet=1)
    reps = 7 if quick else 21
    root = scratch("cold")
    try:
        config = write_config(root, sink.url)
        small = write_small_files(root / "one", 1, 4096, seed=3)[0]
        cmd = _installed(root)
        floor = _wall([cmd[0], "-c", "pass"], reps)
        version = _wall([*cmd, "--version"], reps)
        status = _wall([*cmd, "status", "-c", str(config)], reps)
        upload = _wall([*cmd, "upload", str(small), "--again", "-c", str(config), "--collection", "1"], reps)
        editable = _wall([STUDIO_WATCH, "--version"], reps)
        imports = {name: _importtime(cmd, args) for name, args in (
            ("--version", ["--version"]), ("status", ["status", "-c", str(config)]),
            ("upload", ["upload", str(small), "--again", "-c", str(config), "--collection", "1"]))}
        many = _many(sink, root, config, 10 if quick else 20)
    finally:
        remove(root)
    shown = "; ".join(f"`{name}` {n} modules, {ms:.0f} ms (" + ", ".join(f"{m} {t:.1f}" for m, t in top) + ")"
                      for name, (n, ms, top) in imports.items())
    editable = (f"installed as pip installs it; the development venv's editable install takes {editable * 1000:.0f} "
                "ms for `--version`, its import finder being in every start")
    return [
        Result("cold `--version`", f"{version * 1000:.0f} ms", f"`python -c pass` {floor * 1000:.0f} ms",
               f"+{(version - floor) * 1000:.0f} ms", "< 60 ms", version < 0.060,
               [f"Median wall time of {reps} runs each, alternating commands in one invocation; {editable}."]),
        Result("cold `status`", f"{status * 1000:.0f} ms", f"`python -c pass` {floor * 1000:.0f} ms",
               f"+{(status - floor) * 1000:.0f} ms", "< 60 ms", status < 0.060,
               ["Empty state DB, no daemon; the config is read, the database opened, the lock file looked at."]),
        Result("cold `upload` (4 KiB)", f"{upload * 1000:.0f} ms", f"`python -c pass` {floor * 1000:.0f} ms",
               f"+{(upload - floor) * 1000:.0f} ms", "< 80 ms + the transfer", upload < 0.080,
               ["Whole command, loopback sink: parse, config, queue, generate → PUT → complete, 5 SQLite commits "
                "(two wait for the disk), the after-upload step. The transfer of 4 KiB is well under 1 ms here."]),
        Result("`python -X importtime`", shown, "-", "-", "-", None,
               ["Modules each command imports and the sum of their top-level cumulative import times (the "
                "three costliest named). Not imported by `--version`/`status`: structlog (and asyncio through "
                "structlog.stdlib), the watcher (watchdog), the sandbox, the HTTP client; a quiet `upload` "
                "imports no structlog (tests/e2e/test_cold_start.py checks which)."]),
        many,
    ]


def _many(sink: Sink, root: Path, config: Path, count: int) -> Result:
    """`upload F1 ... Fn` in one process against n `upload F` processes (a script calling it per file)."""
    one = write_small_files(root / "many-a", count, 1 << 20, seed=21)
    each = write_small_files(root / "many-b", count, 1 << 20, seed=22)
    started = time.monotonic()
    done = subprocess.run([STUDIO_WATCH, "upload", *map(str, one), "-c", str(config), "--collection", "1"],
                          capture_output=True, text=True)
    together = time.monotonic() - started
    if done.returncode != 0 or done.stdout.count("uploaded ") != count:
        raise RuntimeError(f"upload FILE... failed: {done.stderr[-300:]!r}")
    started = time.monotonic()
    for path in each:
        if subprocess.run([STUDIO_WATCH, "upload", str(path), "-c", str(config), "--collection", "1"],
                          capture_output=True).returncode != 0:
            raise RuntimeError("upload FILE failed")
    apart = time.monotonic() - started
    return Result(f"`upload` of {count} × 1 MiB in one command", f"{together / count * 1000:.0f} ms per file",
                  f"one `upload` per file {apart / count * 1000:.0f} ms", f"{together / apart:.2f}×", "-", None,
                  ["One process, one connection, each file through the queue, one result line per file; "
                   "against a loop that starts `studio-watch upload FILE` per file (what drop-folder scripts do)."])
