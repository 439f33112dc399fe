"""The metric contract the alert rules and the dashboard are written against, and a small PromQL
scanner that lists the metric names an expression reads.

The names are tollgate's public interface (README, issue 5): the Rust side exports them, the
alerts (helm/tollgate/files/alerts.yaml), the dashboard (files/dashboard.json) and the HPA's
prometheus-adapter rule read them. A name used here but not exported is a silent, always-empty
panel or an alert that can never fire, so the tests pin every expression to this list.
"""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
FILES = REPO / "helm" / "tollgate" / "files"
ALERTS_FILE = FILES / "alerts.yaml"
ALERTS_TEST_FILE = FILES / "alerts_test.yaml"
DASHBOARD_FILE = FILES / "dashboard.json"

TOKEN_BUCKET_GAUGES = {
    "token_bucket_capacity",
    "token_bucket_fill_rate",
    "token_bucket_current_usage",
    "token_bucket_refill_delay",
    "token_bucket_rejection_rate",
}
SERVICE_METRICS = {
    "tollgate_hits_total",
    "tollgate_over_limit_total",
    "tollgate_near_limit_total",
    "tollgate_within_limit_total",
    "tollgate_shadow_mode_total",
    "tollgate_requests_total",
    "tollgate_unknown_domain_total",
    "tollgate_config_loads_total",
    "tollgate_live_keys",
    "tollgate_keys_over_cap_total",
    "tollgate_rule_keys_over_budget_total",
    "tollgate_rule_live_keys",
    "tollgate_build_info",
    "tollgate_ready",
}
HISTOGRAMS = {"tollgate_request_duration_seconds"}
REPLICATION_METRICS = {
    "tollgate_peers",
    "tollgate_peers_connected",
    "tollgate_peer_up",
    "tollgate_replication_lag_seconds",
    "tollgate_peers_quarantined",
    "tollgate_peer_clock_offset_seconds",
    "tollgate_fair_share_mode",
    "tollgate_replication_frames_sent_total",
    "tollgate_replication_frames_received_total",
    "tollgate_replication_bytes_sent_total",
    "tollgate_replication_bytes_received_total",
    "tollgate_replication_keys_sent_total",
    "tollgate_replication_keys_received_total",
    "tollgate_replication_merges_total",
    "tollgate_replication_frames_refused_total",
    "tollgate_cluster_members",
    "tollgate_cluster_members_suspected",
    "tollgate_cluster_limit_hits_total",
}
# Prometheus' own per-target series.
PROMETHEUS_SERIES = {"up"}

KNOWN_METRICS = (
    TOKEN_BUCKET_GAUGES
    | SERVICE_METRICS
    | REPLICATION_METRICS
    | PROMETHEUS_SERIES
    | {f"{h}{suffix}" for h in HISTOGRAMS for suffix in ("_bucket", "_sum", "_count")}
)

_KEYWORDS = {"and", "or", "unless", "bool", "offset", "inf", "nan", "atan2"}


def metric_names(expr: str) -> set[str]:
    """Metric names an instant PromQL expression selects (functions, labels, keywords left out).

    Good enough for the expressions of this repository: strings, label matchers, ranges,
    grouping clauses and Grafana variables are removed first, then every remaining identifier
    not followed by "(" is a metric name.
    """
    e = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'', '""', expr)
    e = re.sub(r"\{[^{}]*\}", " ", e)
    e = re.sub(r"\[[^\]]*\]", " ", e)
    e = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", e)
    e = re.sub(r"\$\{?\w+\}?", " ", e)
    e = re.sub(r"(?<![A-Za-z_:])[0-9]+(ms|s|m|h|d|w|y)\b", " ", e)  # offset durations
    e = re.sub(r"(?<![A-Za-z_:])[0-9][0-9.eE+-]*", " ", e)
    names = set()
    for match in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", e):
        if e[match.end():].lstrip().startswith("("):
            continue  # a function or an aggregation
        if match.group(0) in _KEYWORDS:
            continue
        names.add(match.group(0))
    return names


def grafana_to_promql(expr: str) -> str:
    """A dashboard expression with Grafana's variables replaced, so Prometheus can parse it."""
    e = expr.replace("$__rate_interval", "1m").replace("$__interval", "1m").replace("$__range", "1h")
    return re.sub(r"\$\{?\w+\}?", ".*", e)
