"""`studio-watch demo`: the sandbox, a temporary drop folder and the daemon, visibly, with no account."""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import threading
from pathlib import Path

from studio_watch import config as cfg
from studio_watch import logs
from studio_watch.cli.output import EXIT_FAILURE, EXIT_OK, human_bytes, stop_on_signals
from studio_watch.daemon.app import Daemon
from studio_watch.queue import STATE_WORDS, Job, State, open_queue
from studio_watch.sandbox.server import Faults, Sandbox

SAMPLE_SIZES = (3_000_000, 1_200_000, 6_500_000, 800_000, 2_000_000)


def write_demo_config(root: Path, studio_url: str, token: str, ca_bundle: Path | None = None) -> Path:
    """A complete config for the demo: one drop folder into collection 1, uploads moved aside when done
    (with `ca_bundle`, the private CA that the https sandbox's certificate is verified against)."""
    drop, done = root / "drop", root / "uploaded"
    drop.mkdir()
    done.mkdir()
    token_file = root / "token"
    token_file.write_text(token)
    token_file.chmod(0o600)
    path = root / "config.yaml"
    path.write_text(
        f"studio:\n  url: {studio_url}\n  token_file: token\n"
        + (f"  ca_bundle: {ca_bundle}\n" if ca_bundle else "") +
        "state_db: state.db\nworkers: 2\nrescan_seconds: 30\n"
        "retry:\n  initial_seconds: 0.5\n  max_seconds: 5\n"
        "log:\n  level: warning\n"
        "folders:\n  - path: drop\n    collection_id: 1\n    settle_seconds: 1\n"
        "    title: \"{stem} ({mtime:%Y-%m-%d})\"\n    description: \"Recorded in {folder}, {size} bytes\"\n"
        "    after_upload: move\n    move_to: uploaded\n")
    return path


def drop_samples(folder: Path, count: int) -> list[Path]:
    """Write `count` small fake recordings (random bytes with media names), each via a temp name and a rename."""
    paths = []
    for n in range(count):
        final = folder / f"lecture-{n + 1:02d}.mp4"
        part = folder / f"lecture-{n + 1:02d}.mp4.part"
        with open(part, "wb") as f:
            f.write(os.urandom(SAMPLE_SIZES[n % len(SAMPLE_SIZES)]))
        part.rename(final)
        paths.append(final)
    return paths


def cmd_demo(args: argparse.Namespace) -> int:
    return run_demo(files=args.files, once=args.once, tls=args.tls)


def run_demo(files: int = 3, once: bool = False, tls: bool = False) -> int:
    stop = threading.Event()
    stop_on_signals(stop)
    root = Path(tempfile.mkdtemp(prefix="studio-watch-demo-"))
    samples: list[Path] = []
    try:
        return _demo(root, files, once, tls, stop, samples)
    finally:
        _clean_up(root, samples)


def _demo(root: Path, files: int, once: bool, tls: bool, stop: threading.Event, samples: list[Path]) -> int:
    with Sandbox(faults=Faults(put_bytes_per_second=2_000_000), tls=tls, tls_dir=root / "tls") as sandbox:
        config = cfg.load(write_demo_config(root, sandbox.url, "sandbox-token", sandbox.ca_path))
        logs.setup("warning", "console")
        print(f"sandbox Studio:  {sandbox.url} (an emulator on this machine; nothing leaves it)")
        print(f"drop folder:     {config.folders[0].path}  → collection 1, then moved to {root / 'uploaded'}")
        daemon = Daemon(config, stop)
        runner = threading.Thread(target=_run_quietly, args=(daemon,), name="daemon", daemon=True)
        runner.start()
        daemon.ready.wait(10)
        samples += drop_samples(config.folders[0].path, files)
        print(f"dropped {len(samples)} sample recordings; watching them go through the pipeline:\n")
        try:
            seen: dict[int, tuple[str, bool]] = {}
            _watch(config.state_db, stop, len(samples), seen)
            if not once and not stop.is_set():
                print(f"\nStill watching {config.folders[0].path}: drop more .mp4 files there; Ctrl-C to stop "
                      f"(files of your own are kept).", flush=True)
                _watch(config.state_db, stop, None, seen)
        finally:
            stop.set()
            runner.join(timeout=30)
        done = sandbox.completed()
        print(f"\nStudio (sandbox) now holds {len(done)} completed media:")
        for media in done:
            print(f"  media {media['id']}: {media['title']!r}, {human_bytes(media['bytes_received'])}")
        return EXIT_OK if not once or len(done) >= files else EXIT_FAILURE


def _run_quietly(daemon: Daemon) -> None:
    try:
        daemon.run()
    except Exception as exc:  # shown to the demo's user, who has no log to read
        print(f"daemon stopped: {exc}")
        daemon.stop.set()


def _clean_up(root: Path, samples: list[Path]) -> None:
    """Remove the demo's folder, unless files other than the samples were dropped: then keep it and say where."""
    names = {p.name for p in samples}
    own = [p for sub in ("drop", "uploaded") if (root / sub).is_dir() for p in (root / sub).iterdir()
           if p.name not in names and not p.name.startswith(".")]
    if own:
        print(f"\nYour {len(own)} file(s) are kept in {root} (drop/ and uploaded/); delete that folder when done.")
    else:
        shutil.rmtree(root, ignore_errors=True)


def _watch(db: Path, stop: threading.Event, until_completed: int | None,
           seen: dict[int, tuple[str, bool]]) -> None:
    """Print each job's state changes until `until_completed` jobs are done (or forever)."""
    queue = open_queue(db)
    try:
        while not stop.wait(0.2):
            jobs = queue.jobs()
            for job in jobs:
                key = (job.state.value, job.after_done)
                if seen.get(job.id) == key:
                    continue
                seen[job.id] = key
                print(f"  job {job.id:>3}  {_describe(job)}", flush=True)
            done = sum(1 for j in jobs if j.state is State.COMPLETED and j.after_done)
            if until_completed is not None and done >= until_completed:
                return
    finally:
        queue.close()


def _describe(job: Job) -> str:
    name = Path(job.display_path).name
    if job.state is State.URL_ISSUED:
        return f"uploading   {name} ({human_bytes(job.size or 0)}) to media {job.media_id}"
    if job.state is State.COMPLETED and job.after_done:
        where = f", moved to {Path(job.final_path).parent.name}/" if job.final_path else ""
        return f"done        {name}: Studio media {job.media_id}, titled {job.title!r}{where}"
    if job.state is State.COMPLETED:
        return f"completed   {name}: Studio confirmed media {job.media_id}"
    if job.state in (State.FAILED, State.SKIPPED):
        return f"{STATE_WORDS[job.state.value]:<11} {name}: {job.last_error or job.reason}"
    return f"{STATE_WORDS[job.state.value]:<11} {name}"
