"""The alert rules load in Prometheus, their promtool unit tests pass, and they say what issue 5 asks.

Run: .venv/bin/python -m pytest tests/alerts
"""

from __future__ import annotations

import subprocess

import pytest
import yaml

from alerts_support import ALERTS_FILE, ALERTS_TEST_FILE, KNOWN_METRICS, metric_names


def _rules() -> dict[str, dict]:
    groups = yaml.safe_load(ALERTS_FILE.read_text())["groups"]
    return {rule["alert"]: rule for group in groups for rule in group["rules"] if "alert" in rule}


def _run(args: list[str], cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, timeout=120, cwd=cwd)


def test_promtool_check_rules_accepts_the_alerts_file(tool):
    result = _run([tool("promtool"), "check", "rules", str(ALERTS_FILE)])
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(_rules())} rules found" in result.stdout


def test_promtool_unit_tests_pass(tool):
    # rule_files in alerts_test.yaml is relative to the test file's directory.
    result = _run([tool("promtool"), "test", "rules", ALERTS_TEST_FILE.name], cwd=ALERTS_TEST_FILE.parent)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


# (alert, severity, comparison the expression must end with, `for` duration or None)
REQUIRED = [
    ("TokenBucketHighUsage", "warning", "> 0.7", "2m"),
    ("TokenBucketCriticalUsage", "critical", "> 0.9", "1m"),
    ("TokenBucketRefillDelay", "warning", "> 5", "3m"),
    ("TokenBucketRefillDelayCritical", "critical", "> 15", None),
    ("TokenBucketRejectionRateHigh", "warning", "> 0.02", "5m"),
    ("TokenBucketRejectionRateCritical", "critical", "> 0.05", None),
    ("TollgatePeerUnreachable", "warning", "== 0", None),
    ("TollgatePeerQuarantined", "warning", "> 0", None),
    ("TollgateFairShareMode", "warning", "== 1", None),
    ("TollgateReplicationLagHigh", "warning", None, None),
    ("TollgateConfigReloadFailing", "warning", "> 0", None),
    ("TollgateInstanceDown", "critical", "== 0", None),
]


@pytest.mark.parametrize("alert, severity, comparison, duration", REQUIRED, ids=[r[0] for r in REQUIRED])
def test_required_alert_has_its_threshold_severity_and_duration(alert, severity, comparison, duration):
    rules = _rules()
    assert alert in rules, f"{alert} missing from {ALERTS_FILE}"
    rule = rules[alert]
    assert rule["labels"]["severity"] == severity
    if comparison:
        assert rule["expr"].strip().endswith(comparison), rule["expr"]
    if duration:
        assert rule.get("for") == duration


def test_every_alert_tells_the_on_call_what_to_check():
    for name, rule in _rules().items():
        annotations = rule.get("annotations", {})
        assert annotations.get("summary") and annotations.get("description"), name
        assert "$labels." in annotations["summary"] + annotations["description"], name
        assert rule["labels"]["severity"] in {"warning", "critical"}, name


def test_every_alert_reads_only_exported_metrics():
    for name, rule in _rules().items():
        unknown = metric_names(rule["expr"]) - KNOWN_METRICS
        assert not unknown, f"{name} reads metrics tollgate does not export: {sorted(unknown)}"
        assert metric_names(rule["expr"]), f"{name} reads no metric at all"


def test_every_alert_has_unit_tests_that_fire_and_stay_quiet():
    tests = yaml.safe_load(ALERTS_TEST_FILE.read_text())["tests"]
    fired: set[str] = set()
    quiet: set[str] = set()
    for case in tests:
        for check in case.get("alert_rule_test", []):
            (fired if check.get("exp_alerts") else quiet).add(check["alertname"])
    alerts = set(_rules())
    assert alerts - fired == set(), "alerts never shown firing in alerts_test.yaml"
    assert alerts - quiet == set(), "alerts never shown staying quiet in alerts_test.yaml"
