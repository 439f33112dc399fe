"""The Grafana dashboard is valid JSON, picks its Prometheus through a datasource variable, shows
what issue 5 asks for, and every expression reads only metrics tollgate exports and parses.
"""

from __future__ import annotations

import json
import re
import subprocess

import pytest
import yaml

from alerts_support import DASHBOARD_FILE, KNOWN_METRICS, grafana_to_promql, metric_names


@pytest.fixture(scope="module")
def dashboard() -> dict:
    try:
        return json.loads(DASHBOARD_FILE.read_text())
    except json.JSONDecodeError as err:
        pytest.fail(f"{DASHBOARD_FILE} is not valid JSON: {err}")


def _panels(dashboard: dict) -> list[dict]:
    out = []
    for panel in dashboard["panels"]:
        out.append(panel)
        out.extend(panel.get("panels", []))  # collapsed rows hold their panels
    return out


def _targets(dashboard: dict) -> list[tuple[str, dict]]:
    return [(p["title"], t) for p in _panels(dashboard) for t in p.get("targets", [])]


def _variable_queries(dashboard: dict) -> list[str]:
    out = []
    for var in dashboard["templating"]["list"]:
        if var["type"] == "query":
            query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
            out.append(query)
    return out


def test_has_a_prometheus_datasource_variable_used_by_every_panel(dashboard):
    (ds,) = [v for v in dashboard["templating"]["list"] if v["name"] == "datasource"]
    assert ds["type"] == "datasource" and ds["query"] == "prometheus"
    for panel in _panels(dashboard):
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]
    for var in dashboard["templating"]["list"]:
        if var["type"] == "query":
            assert var["datasource"]["uid"] == "${datasource}", var["name"]


def test_panel_ids_are_unique_and_panels_fit_the_grid(dashboard):
    ids = [p["id"] for p in _panels(dashboard)]
    assert len(ids) == len(set(ids))
    for panel in _panels(dashboard):
        pos = panel["gridPos"]
        assert 0 <= pos["x"] and pos["x"] + pos["w"] <= 24, panel["title"]
    assert dashboard["uid"] and dashboard["title"]


def test_every_expression_reads_only_exported_metrics(dashboard):
    exprs = [(title, t["expr"]) for title, t in _targets(dashboard)]
    assert exprs, "the dashboard has no queries"
    for title, expr in exprs:
        names = metric_names(expr)
        assert names, f"panel {title!r} reads no metric: {expr}"
        assert names <= KNOWN_METRICS, f"panel {title!r} reads unknown {sorted(names - KNOWN_METRICS)}"
    for query in _variable_queries(dashboard):
        (metric,) = re.findall(r"label_values\(\s*([A-Za-z_:][A-Za-z0-9_:]*)", query)
        assert metric in KNOWN_METRICS, query


def test_every_expression_parses_as_promql(dashboard, tool, tmp_path):
    # promtool has no "check expression": load each one as a recording rule instead.
    rules = [
        {"record": f"dashboard:expr_{i}", "expr": grafana_to_promql(t["expr"])}
        for i, (_, t) in enumerate(_targets(dashboard))
    ]
    path = tmp_path / "dashboard-exprs.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = subprocess.run(
        [tool("promtool"), "check", "rules", str(path)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_shows_what_operators_need(dashboard):
    exprs = " ".join(t["expr"] for _, t in _targets(dashboard))
    used = set().union(*(metric_names(t["expr"]) for _, t in _targets(dashboard)))
    # decisions per second by outcome
    assert {"tollgate_within_limit_total", "tollgate_near_limit_total", "tollgate_over_limit_total"} <= used
    # rejection rate, usage / capacity per rule, refill delay
    assert {"token_bucket_rejection_rate", "token_bucket_refill_delay"} <= used
    assert re.search(r"token_bucket_current_usage\{[^}]*\} / \(token_bucket_capacity", exprs)
    # p50 and p99 from the histogram
    assert "histogram_quantile(0.5, " in exprs and "histogram_quantile(0.99, " in exprs
    assert "tollgate_request_duration_seconds_bucket" in used
    # live keys and replication health
    assert {"tollgate_live_keys", "tollgate_peer_up", "tollgate_replication_lag_seconds"} <= used
    assert {"tollgate_peers_connected", "tollgate_fair_share_mode", "tollgate_peers_quarantined"} <= used
