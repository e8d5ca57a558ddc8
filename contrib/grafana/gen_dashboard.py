"""Writes studio-watch.json, the Grafana dashboard: `python contrib/grafana/gen_dashboard.py` (kept in step with
the documented metrics by tests/e2e/test_monitoring.py, which checks every query against a real /metrics)."""

import json
from pathlib import Path

DS = {"type": "prometheus", "uid": "${datasource}"}


def panel(pid, title, kind, exprs, x, y, w=12, h=8, unit=None, legend=None, thresholds=None):
    p = {"id": pid, "title": title, "type": kind, "datasource": DS, "gridPos": {"x": x, "y": y, "w": w, "h": h},
         "targets": [{"refId": chr(65 + i), "expr": e, "legendFormat": (legend or [""] * len(exprs))[i],
                      "datasource": DS} for i, e in enumerate(exprs)],
         "fieldConfig": {"defaults": {}, "overrides": []}, "options": {}}
    if unit:
        p["fieldConfig"]["defaults"]["unit"] = unit
    if thresholds:
        p["fieldConfig"]["defaults"]["thresholds"] = {"mode": "absolute", "steps": thresholds}
    return p


SEL = 'instance=~"$instance"'
panels = [
    panel(1, "Queue paused", "stat", [f"max(studio_watch_queue_paused{{{SEL}}})"], 0, 0, 6, 4,
          thresholds=[{"color": "green", "value": None}, {"color": "red", "value": 1}]),
    panel(2, "Oldest waiting", "stat", [f"max(studio_watch_oldest_waiting_seconds{{{SEL}}})"], 6, 0, 6, 4, unit="s",
          thresholds=[{"color": "green", "value": None}, {"color": "orange", "value": 3600},
                      {"color": "red", "value": 21600}]),
    panel(3, "Failed jobs", "stat", [f'sum(studio_watch_jobs{{{SEL}, state="failed"}})'], 12, 0, 6, 4,
          thresholds=[{"color": "green", "value": None}, {"color": "red", "value": 1}]),
    panel(4, "Folders not watched", "stat", [f"count(studio_watch_folder_available{{{SEL}}} == 0) or vector(0)"], 18, 0, 6, 4,
          thresholds=[{"color": "green", "value": None}, {"color": "red", "value": 1}]),
    panel(5, "Jobs by state", "timeseries", [f"sum by (state) (studio_watch_jobs{{{SEL}}})"], 0, 4,
          legend=["{{state}}"]),
    panel(6, "Upload throughput", "timeseries", [f"sum(rate(studio_watch_uploaded_bytes_total{{{SEL}}}[5m]))"], 12, 4,
          unit="Bps", legend=["bytes/s"]),
    panel(7, "Upload duration (PUT)", "timeseries",
          [f"histogram_quantile(0.5, sum by (le) (rate(studio_watch_upload_seconds_bucket{{{SEL}}}[1h])))",
           f"histogram_quantile(0.95, sum by (le) (rate(studio_watch_upload_seconds_bucket{{{SEL}}}[1h])))"],
          0, 12, unit="s", legend=["p50", "p95"]),
    panel(8, "Failures by reason", "timeseries", [f"sum by (reason) (increase(studio_watch_failures_total{{{SEL}}}[1h]))"],
          12, 12, legend=["{{reason}}"]),
    panel(9, "Since the last completed upload", "timeseries",
          [f"time() - max(studio_watch_last_upload_timestamp_seconds{{{SEL}}} > 0)"], 0, 20, unit="s",
          legend=["seconds"]),
    panel(10, "Folders", "table", [f"studio_watch_folder_available{{{SEL}}}"], 12, 20, legend=["{{folder}}"]),
]
dashboard = {
    "title": "studio-watch", "uid": "studio-watch", "schemaVersion": 39, "version": 1, "editable": True,
    "tags": ["studio-watch"], "time": {"from": "now-24h", "to": "now"}, "refresh": "1m",
    "templating": {"list": [
        {"name": "datasource", "type": "datasource", "query": "prometheus", "label": "Prometheus"},
        {"name": "instance", "type": "query", "datasource": DS, "label": "instance", "multi": True,
         "includeAll": True, "allValue": ".*", "refresh": 2,
         "query": {"query": "label_values(studio_watch_jobs, instance)", "refId": "instances"},
         "definition": "label_values(studio_watch_jobs, instance)"}]},
    "panels": panels,
}
out = Path(__file__).with_name("studio-watch.json")
out.write_text(json.dumps(dashboard, indent=2) + "\n")
