"""contrib/prometheus/alerts.yml and contrib/grafana/studio-watch.json against Prometheus's own checker and a
real daemon's /metrics: the rules parse and fire when they should (promtool test rules), and every series they
and the dashboard read is one the daemon serves."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
import yaml

from studio_watch.sandbox.server import Sandbox

from ..conftest import wait_until, write_config, write_media
from .test_statuspage import free_port

REPO = Path(__file__).resolve().parents[2]
RULES = REPO / "contrib" / "prometheus" / "alerts.yml"
DASHBOARD = REPO / "contrib" / "grafana" / "studio-watch.json"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="no promtool here (Debian: apt-get install "
                                                             "prometheus; listed in .ci/apt-packages)")


def promtool(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run([PROMTOOL, *args], cwd=cwd, capture_output=True, text=True, timeout=60)


@needs_promtool
def test_alert_rules_pass_promtool_check_and_their_unit_tests() -> None:
    checked = promtool("check", "rules", str(RULES), cwd=RULES.parent)
    assert checked.returncode == 0 and "SUCCESS: 8 rules found" in checked.stdout, checked.stdout + checked.stderr
    tested = promtool("test", "rules", "alerts.test.yml", cwd=RULES.parent)
    assert tested.returncode == 0 and "SUCCESS" in tested.stdout, tested.stdout + tested.stderr


def dashboard_exprs() -> list[str]:
    return [t["expr"] for p in json.loads(DASHBOARD.read_text())["panels"] for t in p["targets"]]


@needs_promtool
def test_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    """Each query, as a recording rule, through promtool's parser ($instance becomes a regex string)."""
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:query{i}", "expr": expr.replace("$instance", ".*")}
        for i, expr in enumerate(dashboard_exprs())]}]}
    (tmp_path / "dashboard.yml").write_text(yaml.safe_dump(rules))
    checked = promtool("check", "rules", "dashboard.yml", cwd=tmp_path)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_dashboard_is_what_its_generator_writes(tmp_path: Path) -> None:
    before = DASHBOARD.read_text()
    subprocess.run([sys.executable, str(DASHBOARD.with_name("gen_dashboard.py"))], check=True, timeout=60)
    assert DASHBOARD.read_text() == before, "contrib/grafana/studio-watch.json is stale: run gen_dashboard.py"


_FUNCS = {"max", "min", "sum", "count", "rate", "increase", "time", "vector", "histogram_quantile", "by", "on",
          "and", "or", "unless", "le", "up"}


def series_names(expr: str) -> set[str]:
    """The metric names an expression reads (identifiers followed by a selector or standing alone)."""
    expr = re.sub(r'"[^"]*"', '""', expr)  # label values
    expr = re.sub(r"\{[^}]*\}", "{}", expr)  # selectors' insides
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # ranges
    expr = re.sub(r"\b(by|on)\s*\([^)]*\)", "", expr)  # grouping labels
    return {name for name in re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", expr) if name not in _FUNCS}


def test_every_series_the_rules_and_dashboard_read_is_served(tmp_path: Path, daemons) -> None:
    port = free_port()
    with Sandbox() as sandbox:
        config = write_config(tmp_path, sandbox.url, [{"path": "in", "settle_seconds": 0.1}],
                              metrics={"listen": f"127.0.0.1:{port}"})
        daemon = daemons(config)
        daemon.wait_ready()
        write_media(tmp_path / "in" / "talk.mp4", 10_000)
        assert wait_until(lambda: len(sandbox.completed()) == 1, 20)
        url = f"http://127.0.0.1:{port}/metrics"
        assert wait_until(lambda: b"studio_watch_upload_seconds_bucket" in urllib.request.urlopen(url).read(), 10)
        text = urllib.request.urlopen(url, timeout=5).read().decode()
        assert daemon.stop() == 0
    served = {line.split("{")[0].split()[0] for line in text.splitlines() if line and not line.startswith("#")}
    served.add("studio_watch_failures_total")  # a counter with labels appears once something failed
    served.add("studio_watch_recordings_missing_total")  # only for folders with a timetable (expect:)
    assert f'studio_watch_folder_available{{folder="{tmp_path / "in"}"}} 1.0' in text
    last = next(line for line in text.splitlines() if line.startswith("studio_watch_last_upload_timestamp_seconds"))
    assert float(last.split()[-1]) > 1.7e9
    rules = yaml.safe_load(RULES.read_text())["groups"][0]["rules"]
    wanted: set[str] = set()
    for expr in [r["expr"] for r in rules] + dashboard_exprs():
        wanted |= series_names(expr)
    missing = sorted(wanted - served)
    assert missing == [], f"read by alerts.yml or the dashboard but not served: {missing}"
