"""The Grafana dashboard (examples/grafana/kong-ship.json) and the Prometheus alert rules
(examples/prometheus/alerts.yml) against the code: promtool checks the rules and proves each alert fires (and
stays quiet when it should), and every metric either one queries must be one a real `kong-ship receive` serves
at /metrics, so that renaming a metric fails here rather than leaving an empty panel or an alert that never
fires."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import httpx
import pytest
import yaml

from conftest import ship_env, wait_until
from receiving import free_port, start_receive

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "examples" / "grafana" / "kong-ship.json"
ALERTS = ROOT / "examples" / "prometheus" / "alerts.yml"
ALERT_TESTS = ROOT / "tests" / "prometheus" / "alerts_test.yml"
# Series Prometheus itself adds to every scrape, not kong-ship's.
PROMETHEUS_OWN = {"up"}
PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "bool",
                "offset", "inf", "nan"}
# Grafana's variables, for promtool: any value that keeps the expression valid.
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$instance": ".*", "$sink": ".*"}


@pytest.fixture(scope="module")
def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        reason = "promtool is missing: apt-get install --no-install-recommends prometheus (.ci/run does)"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)  # CI installs it: missing there is a broken CI, not a reason to skip
        pytest.skip(f"NOT CHECKED: {reason}")
    return path


def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def dashboard_queries() -> list[str]:
    return [target["expr"] for panel in dashboard()["panels"] for target in panel.get("targets", [])]


def alert_rules() -> list[dict]:
    return [rule for group in yaml.safe_load(ALERTS.read_text())["groups"] for rule in group["rules"]]


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects: identifiers that are not functions or aggregations (followed
    by a parenthesis), keywords, label names (in braces and in by/on/… lists), durations or strings."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    expr = re.sub(r"\{[^}]*\}", "", expr)
    expr = re.sub(r"\[[^\]]*\]", "", expr)
    expr = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    names = set()
    for match in re.finditer(r"(?<![\w.$])[A-Za-z_:][A-Za-z0-9_:]*", expr):
        if expr[match.end():].lstrip().startswith("(") or match.group().lower() in PROMQL_WORDS:
            continue
        names.add(match.group())
    return names


def queried_metrics() -> dict[str, set[str]]:
    """Every metric name queried, with where: dashboard panels, its variables' label_values(), alert rules."""
    where: dict[str, set[str]] = {}
    for panel in dashboard()["panels"]:
        for target in panel.get("targets", []):
            for name in metric_names(target["expr"]):
                where.setdefault(name, set()).add(f"panel {panel['title']!r}")
    for variable in dashboard()["templating"]["list"]:
        for name in re.findall(r"label_values\(\s*([A-Za-z_:][A-Za-z0-9_:]*)", variable["query"]["query"]):
            where.setdefault(name, set()).add(f"variable {variable['name']!r}")
    for rule in alert_rules():
        for name in metric_names(rule["expr"]):
            where.setdefault(name, set()).add(f"alert {rule['alert']}")
    return where


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> set[str]:
    """The series names a real `kong-ship receive` (the pipeline's metrics and its listeners') serves, read from
    the # TYPE lines of its /metrics, with the suffixes PromQL sees: _total, _bucket/_sum/_count, _created."""
    from conftest import Shipper

    tmp = tmp_path_factory.mktemp("exporter")
    http_port, metrics_port = free_port(), free_port()
    started: list = []

    def shippers(*args, env=None):
        proc = Shipper(*args, env=env)
        started.append(proc)
        return proc

    proc = start_receive(shippers, [
        "--listen", f"127.0.0.1:{http_port}", "--sink", "segment", "--endpoint", f"http://127.0.0.1:{free_port()}",
        "--state-dir", str(tmp / "state"), "--metrics-addr", f"127.0.0.1:{metrics_port}",
    ], ship_env(SEGMENT_WRITE_KEY="test-key", KONG_SHIP_HTTP_LOG_TOKEN="dashboards-token"), http_port)
    try:
        def scrape():
            try:
                return httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).text
            except httpx.HTTPError:
                return None

        text = wait_until(scrape, timeout=10)
        assert text, "the metrics endpoint never answered"
    finally:
        proc.stop()
        for other in started:
            if other.proc.poll() is None:
                other.proc.kill()
                other.proc.wait(10)
    suffixes = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_sum", "_count", "_created"),
                "summary": ("", "_sum", "_count", "_created")}
    names = set()
    for name, kind in re.findall(r"^# TYPE (\S+) (\S+)$", text, re.M):
        base = name.removesuffix("_total") if kind == "counter" else name
        names.update(base + suffix for suffix in suffixes.get(kind, ("",)))
    return names


def test_the_metric_name_finder_reads_promql():
    """The finder the name check relies on: functions, label names, durations and keywords are not metrics."""
    expr = ('histogram_quantile(0.95, sum by (sink, le) (rate(kong_ship_request_duration_seconds_bucket'
            '{instance=~"$instance", sink=~"a|b"}[$__rate_interval]))) / on (job) group_left(x) max(other:rule) '
            'offset 5m and up{job="kong-ship"} == 0 or absent(up) unless 1e3 > bool 0.5')
    assert metric_names(expr) == {"kong_ship_request_duration_seconds_bucket", "other:rule", "up"}


def test_every_queried_metric_is_exported(exported):
    """A metric renamed or removed in the code fails here, naming the panel or alert that queries it."""
    where = queried_metrics()
    assert {"kong_ship_events_acknowledged_total", "kong_ship_file_seconds_behind", "kong_ship_dead_letters_total",
            "kong_ship_request_duration_seconds_bucket", "kong_ship_queue_capacity_events",
            "kong_ship_requests_retried_total", "up"} <= where.keys()  # the finder found the queries
    unknown = {name: sorted(places) for name, places in where.items() if name not in exported | PROMETHEUS_OWN}
    assert not unknown, f"queried but not exported by kong-ship: {unknown}"


def test_a_renamed_metric_would_be_caught(exported):
    """The check above, on a metric as a rename would leave it: not among the exported names."""
    assert "kong_ship_events_acknowledged_total" in exported
    assert not metric_names("rate(kong_ship_events_acked_total[5m])") <= exported | PROMETHEUS_OWN


def test_dashboard_is_importable_and_each_panel_has_a_query():
    board = dashboard()
    assert board["schemaVersion"] >= 39 and board["uid"] and board["title"]
    assert [i["name"] for i in board["__inputs"]] == ["DS_PROMETHEUS"]
    assert {v["name"] for v in board["templating"]["list"]} == {"instance", "sink"}
    ids = [panel["id"] for panel in board["panels"]]
    assert len(ids) == len(set(ids))
    graphs = [panel for panel in board["panels"] if panel["type"] != "row"]
    assert len(graphs) >= 12
    for panel in graphs:
        assert panel["datasource"] == {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}, panel["title"]
        assert panel["targets"] and all(t["expr"].strip() for t in panel["targets"]), panel["title"]
        assert {"x", "y", "w", "h"} <= panel["gridPos"].keys(), panel["title"]
    for panel in board["panels"]:  # every per-sink panel follows the sink variable
        for target in panel.get("targets", []):
            if "sink" in target.get("legendFormat", "") and "kong_ship_" in target["expr"]:
                assert 'sink=~"$sink"' in target["expr"], (panel["title"], target["expr"])


def test_dashboard_queries_are_valid_promql(promtool, tmp_path):
    """Each panel's query, Grafana's variables replaced, as a recording rule that promtool parses."""
    def concrete(expr: str) -> str:
        for variable, value in GRAFANA_VARIABLES.items():
            expr = expr.replace(variable, value)
        assert "$" not in expr, expr
        return expr

    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:query{n}", "expr": concrete(expr)} for n, expr in enumerate(dashboard_queries())]}]}
    path = tmp_path / "dashboard-rules.yml"
    path.write_text(yaml.safe_dump(rules))
    result = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(dashboard_queries())} rules found" in result.stdout


def test_alert_rules_pass_promtool_check(promtool):
    result = subprocess.run([promtool, "check", "rules", str(ALERTS)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in result.stdout


def test_alerts_fire_on_their_series_and_stay_quiet_otherwise(promtool):
    """tests/prometheus/alerts_test.yml: series in, the alerts expected out, for every rule."""
    tested = set(re.findall(r"alertname: (\w+)", ALERT_TESTS.read_text()))
    assert tested == {rule["alert"] for rule in alert_rules()}
    result = subprocess.run([promtool, "test", "rules", str(ALERT_TESTS)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_alerts_have_severity_summary_and_a_runbook_in_the_readme():
    readme = (ROOT / "README.md").read_text()
    assert "## Dashboard and alerts" in readme
    for rule in alert_rules():
        assert rule["labels"]["severity"] in {"critical", "warning"}, rule["alert"]
        assert rule["for"] and {"summary", "description", "runbook"} <= rule["annotations"].keys(), rule["alert"]
        assert "README.md#dashboard-and-alerts" in rule["annotations"]["runbook"], rule["alert"]
        assert f"`{rule['alert']}`" in readme, f"{rule['alert']} is not explained in the README"
