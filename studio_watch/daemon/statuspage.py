"""The read-only status page served at / on the metrics listener: plain HTML, no JavaScript.

It shows what an operator walking up to the machine wants first: is the queue moving (or paused, and why),
which folders are watched and by what, what is being sent right now (with progress), what failed and why.
The page refreshes itself every REFRESH_SECONDS with a meta tag. Every value that comes from outside (paths,
titles, error texts, reasons) is escaped: a file named `<script>` is shown, never run.
"""

from __future__ import annotations

import os
import socket
import time
from datetime import datetime
from html import escape
from typing import Any, Iterable

from studio_watch import config as cfg
from studio_watch import logs
from studio_watch.daemon.activity import Activity
from studio_watch.daemon.pause import PauseSwitch
from studio_watch.queue import STATE_WORDS, JobQueue

REFRESH_SECONDS = 10

_STYLE = """
body { font: 15px/1.4 system-ui, sans-serif; margin: 1.5em; color: #222; }
h1 { font-size: 1.4em; margin: 0 0 .2em; } h2 { font-size: 1.1em; margin: 1.4em 0 .4em; }
table { border-collapse: collapse; } td, th { padding: .25em .8em .25em 0; text-align: left; vertical-align: top; }
th { font-weight: 600; border-bottom: 1px solid #ccc; }
.banner { padding: .6em 1em; border-radius: 4px; margin: .6em 0; }
.ok { background: #e6f4ea; } .bad { background: #fde7e9; } .warn { background: #fff4ce; }
.muted { color: #666; } progress { width: 12em; }
"""


def _when(ts: float | None, now: float) -> str:
    if not ts:
        return "never"
    seconds = max(0, int(now - ts))
    ago = f"{seconds}s" if seconds < 120 else f"{seconds // 60}m" if seconds < 7200 else f"{seconds // 3600}h"
    return f"{datetime.fromtimestamp(ts).strftime('%Y-%m-%d %H:%M:%S')} ({ago} ago)"


def _bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def _target(rule: cfg.FolderRule | None) -> str:
    return rule.target.describe() if rule is not None else "My Uploads"


def collect(queue: JobQueue, activity: Activity, pause: PauseSwitch, folder_status: list[dict[str, Any]],
            rules: Iterable[cfg.FolderRule], healthy: bool, window_open: bool,
            storage_paused: str | None = None, timetables: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """One snapshot of everything the page shows (the daemon calls it on the metrics reader thread);
    `timetables` is what `status` shows of folders with a timetable (daemon.timetable_report.status_timetables)."""
    oldest = queue.oldest_waiting()
    with activity.lock:
        transfers = [{"id": t.job_id, "sent": t.sent, "size": t.total, "seconds": time.monotonic() - t.started}
                     for t in activity.transfers.values()]
    flying = {job.id: job.display_path for job in queue.in_flight()}
    for t in transfers:
        t["path"] = flying.get(t["id"], "?")
    by_path = {str(rule.path): rule for rule in rules}
    folders = [{**f, "target": _target(by_path.get(f["path"]))} for f in folder_status]
    return {"now": time.time(), "host": socket.gethostname(), "pid": os.getpid(), "healthy": healthy,
            "paused": pause.paused or bool(storage_paused),
            "pause_reason": logs.redact(pause.reason or storage_paused or ""), "paused_since": pause.since,
            "upload_window_open": window_open, "jobs": queue.counts(),
            "oldest_waiting": oldest.summary() if oldest else None, "transfers": transfers,
            "failures": [{**j.summary(), "last_error": logs.redact(j.last_error or ""), "reason": logs.redact(j.reason or "")}
                         for j in queue.recent_failures(10)], "folders": folders, "timetables": timetables or []}


def _timetable(t: dict[str, Any]) -> str:
    """One folder's timetable: the next lecture, the last verdicts, the lectures that brought no recording."""
    e = escape
    nxt = t["next"]
    upcoming = "no lecture in the next days" if nxt is None else \
        f"{'now' if nxt['in_progress'] else 'next'}: {nxt['summary']} {nxt['when']}"
    problem = f" <span class='bad'>calendar: {e(t['calendar_error'])}</span>" if t.get("calendar_error") else ""
    rows = "".join(f"<tr class='{'bad' if r['outcome'] == 'missing' else 'ok'}' data-outcome='{e(r['outcome'])}'>"
                   f"<td>{e(r['outcome'])}</td><td>{e(r['summary'])}</td><td>{e(r['when'])}</td></tr>"
                   for r in t["recent"])
    missing = "".join(f"<div class='banner bad'>{e(m['line'])}</div>" for m in t["missing"])
    return (f"<div class='timetable' data-folder='{e(t['path'])}'><p><strong>{e(t['path'])}</strong>: "
            f"{e(upcoming)}{problem}</p>{missing}"
            + (f"<table><tr><th>outcome</th><th>lecture</th><th>when</th></tr>{rows}</table>" if rows else "")
            + "</div>")


def render(data: dict[str, Any]) -> str:
    """The whole page for one snapshot of the daemon (see Daemon.page_data for the keys)."""
    now = data.get("now") or time.time()
    e = escape
    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
             f"<meta http-equiv='refresh' content='{REFRESH_SECONDS}'>"
             f"<title>studio-watch on {e(data['host'])}</title><style>{_STYLE}</style></head><body>",
             f"<h1>studio-watch on {e(data['host'])}</h1>",
             f"<p class='muted'>pid {data['pid']} · as of {e(_when(now, now).split(' (')[0])} · "
             f"refreshes every {REFRESH_SECONDS}s</p>"]
    if data["paused"]:
        parts.append(f"<div class='banner bad' id='queue'><strong>Queue paused</strong> since "
                     f"{e(_when(data['paused_since'], now))}: <span id='pause-reason'>{e(data['pause_reason'] or '')}"
                     f"</span></div>")
    elif not data["healthy"]:
        parts.append("<div class='banner bad' id='queue'><strong>Unhealthy</strong>: a watcher or worker is dead "
                     "or stuck</div>")
    elif data.get("upload_window_open") is False:
        parts.append("<div class='banner warn' id='queue'><strong>Outside upload hours</strong>: nothing new "
                     "starts until the next window</div>")
    else:
        parts.append("<div class='banner ok' id='queue'><strong>Running</strong></div>")

    counts = data["jobs"]
    parts.append("<h2>Jobs</h2><table id='jobs'><tr>" + "".join(f"<th>{e(STATE_WORDS[s])}</th>" for s in counts)
                 + "</tr><tr>" + "".join(f"<td data-state='{e(s)}'>{n}</td>" for s, n in counts.items())
                 + "</tr></table>")
    oldest = data.get("oldest_waiting")
    if oldest:
        parts.append(f"<p>Oldest waiting: job {oldest['id']} ({e(STATE_WORDS.get(oldest['state'], oldest['state']))}),"
                     f" found {e(_when(oldest['created_at'], now))}: {e(oldest['path'])}</p>")

    parts.append("<h2>Uploading now</h2>")
    if data["transfers"]:
        rows = []
        for t in data["transfers"]:
            size = max(int(t["size"] or 0), 1)
            rate = t["sent"] / t["seconds"] if t["seconds"] else 0
            percent = 100 * t["sent"] / size
            rows.append(f"<tr data-job='{t['id']}'><td>{t['id']}</td><td>{e(t['path'])}</td>"
                        f"<td><progress max='{size}' value='{int(t['sent'])}'>{percent:.0f}%</progress> "
                        f"{percent:.0f}% of {_bytes(size)}</td><td>{_bytes(rate)}/s</td></tr>")
        parts.append("<table id='transfers'><tr><th>job</th><th>file</th><th>progress</th><th>speed</th></tr>"
                     + "".join(rows) + "</table>")
    else:
        parts.append("<p class='muted' id='transfers'>nothing is being sent</p>")

    parts.append("<h2>Folders</h2><table id='folders'><tr><th>folder</th><th>target</th><th>watcher</th>"
                 "<th>last scan</th></tr>")
    for f in data["folders"]:
        watcher = f"UNAVAILABLE: {f['unavailable_reason']}" if not f["available"] else \
            f"{f['observer'] or '?'} " + ("ok" if f["alive"] else "DEAD")
        parts.append(f"<tr class='{'ok' if f['available'] and f['alive'] else 'bad'}'><td>{e(f['path'])}</td>"
                     f"<td>{e(f['target'])}</td><td>{e(watcher)}</td><td>{e(_when(f['last_scan'], now))}</td></tr>")
    parts.append("</table>")

    if data.get("timetables"):
        parts.append("<h2>Timetables</h2>")
        for t in data["timetables"]:
            parts.append(_timetable(t))

    parts.append("<h2>Recent failures</h2>")
    if data["failures"]:
        parts.append("<table id='failures'><tr><th>job</th><th>file</th><th>when</th><th>why</th></tr>" + "".join(
            f"<tr data-job='{f['id']}'><td>{f['id']}</td><td>{e(f['path'])}</td><td>{e(_when(f['updated_at'], now))}"
            f"</td><td>{e(f['last_error'] or f['reason'] or '')}</td></tr>" for f in data["failures"]) + "</table>"
            "<p class='muted'>Retry with <code>studio-watch retry --failed</code>.</p>")
    else:
        parts.append("<p class='muted' id='failures'>none</p>")
    parts.append("<p class='muted'>Machine-readable: <a href='/metrics'>/metrics</a> · <a href='/healthz'>"
                 "/healthz</a> · <a href='/readyz'>/readyz</a></p></body></html>")
    return "".join(parts)
