"""A real Prometheus scrapes a real tollgate with files/alerts.yaml loaded: over-limit traffic
makes TokenBucketRejectionRateHigh pending, on the values tollgate exports.

tollgate comes from the ``tollgate`` fixture (tests/conftest.py: target/release/tollgate on free
127.0.0.1 ports, stopped by pid); Prometheus (Debian's package) is started here on a free
127.0.0.1 port with a throw-away TSDB, scraping and evaluating every second, and stopped by pid.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.parse
from pathlib import Path

import pytest
import yaml

from alerts_support import ALERTS_FILE

DOMAIN = "e2e"
CONFIG = {
    "domain": DOMAIN,
    "descriptors": [
        # 10 per minute: 30 quick requests leave 20 rejected, a rejection rate of about 2/3.
        {"key": "user", "rate_limit": {"unit": "minute", "requests_per_unit": 10}},
        # Never called: its alerts must stay quiet.
        {"key": "idle", "rate_limit": {"unit": "minute", "requests_per_unit": 10}},
    ],
}
REQUEST = {"domain": DOMAIN, "descriptors": [{"entries": [{"key": "user", "value": "alice"}]}]}

PROMETHEUS_READY_S = 30.0
ALERT_PENDING_S = 90.0


class Prometheus:
    """A prometheus process of this test, stopped by its pid."""

    def __init__(self, binary: str, home: Path, port: int, target: str):
        self.home = home
        self.url = f"http://127.0.0.1:{port}"
        config = {
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(ALERTS_FILE)],
            # job "tollgate", as the chart's ServiceMonitor names it (TollgateInstanceDown uses it)
            "scrape_configs": [{"job_name": "tollgate", "static_configs": [{"targets": [target]}]}],
        }
        self.config_path = home / "prometheus.yml"
        self.config_path.write_text(yaml.safe_dump(config))
        self.log_path = home / "prometheus.log"
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [
                    binary,
                    f"--config.file={self.config_path}",
                    f"--web.listen-address=127.0.0.1:{port}",
                    f"--storage.tsdb.path={home / 'data'}",
                    "--log.level=warn",
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-6000:]

    def ensure_running(self) -> None:
        if self.proc.poll() is not None:
            pytest.fail(f"prometheus exited with code {self.proc.returncode}:\n{self.log()}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=15)


@pytest.fixture
def prometheus(tool, harness, tmp_path):
    started: list[Prometheus] = []

    def start(target: str) -> Prometheus:
        home = tmp_path / "prometheus"
        home.mkdir()
        prom = Prometheus(tool("prometheus"), home, harness.free_port(), target)
        started.append(prom)

        def ready() -> bool:
            prom.ensure_running()
            try:
                return harness.http_request(prom.url + "/-/ready", timeout=1.0).status == 200
            except OSError:
                return False

        harness.wait_until(ready, f"prometheus {prom.url}/-/ready", timeout=PROMETHEUS_READY_S, interval=0.2)
        return prom

    yield start
    for prom in started:
        prom.stop()


def _api(harness, prom: Prometheus, path: str, **params) -> dict:
    query = f"?{urllib.parse.urlencode(params)}" if params else ""
    resp = harness.http_request(f"{prom.url}/api/v1/{path}{query}", timeout=5.0)
    assert resp.status == 200, f"{path}: {resp.status} {resp.text()}"
    return resp.json()["data"]


def _diagnostics(harness, prom: Prometheus, tg) -> str:
    parts = []
    for path, params in [
        ("targets", {}),
        ("query", {"query": "token_bucket_rejection_rate"}),
        ("query", {"query": "up"}),
        ("alerts", {}),
    ]:
        try:
            parts.append(f"{path} {params}: {json.dumps(_api(harness, prom, path, **params))[:3000]}")
        except (AssertionError, OSError) as err:
            parts.append(f"{path}: {err}")
    try:
        metrics = tg.get("/metrics").text()
        parts.append("tollgate /metrics (token_bucket lines):\n" + "\n".join(
            line for line in metrics.splitlines() if line.startswith("token_bucket_")))
    except OSError as err:
        parts.append(f"tollgate /metrics: {err}")
    parts.append(f"prometheus log:\n{prom.log()}")
    return "\n\n".join(parts)


def test_over_limit_traffic_makes_the_rejection_rate_alert_pending(tollgate, prometheus, harness):
    tg = tollgate(CONFIG)
    prom = prometheus(f"127.0.0.1:{tg.http_port}")

    statuses = [tg.post_json("/json", REQUEST).status for _ in range(30)]
    assert set(statuses) <= {200, 429}, statuses
    assert statuses[:10] == [200] * 10 and statuses.count(429) >= 15, statuses

    deadline = time.monotonic() + ALERT_PENDING_S
    alert = None
    while alert is None:
        # keep the 60 s rejection window busy while Prometheus scrapes and evaluates
        assert tg.post_json("/json", REQUEST).status in (200, 429)
        prom.ensure_running()
        tg.process.ensure_running()
        alerts = _api(harness, prom, "alerts")["alerts"]
        alert = next(
            (a for a in alerts if a["labels"]["alertname"] == "TokenBucketRejectionRateHigh"), None
        )
        if alert is None:
            if time.monotonic() > deadline:
                pytest.fail(
                    f"TokenBucketRejectionRateHigh not pending after {ALERT_PENDING_S:.0f}s\n"
                    + _diagnostics(harness, prom, tg)
                )
            time.sleep(1.0)

    assert alert["state"] in ("pending", "firing"), alert  # `for: 5m`: pending for this test
    assert alert["labels"]["domain"] == DOMAIN and alert["labels"]["job"] == "tollgate", alert
    assert alert["labels"]["severity"] == "warning"
    assert 0.02 < float(alert["value"]) <= 1.0, alert
    assert DOMAIN in alert["annotations"]["summary"], alert

    active = _api(harness, prom, "alerts")["alerts"]
    for quiet in active:
        # the idle rule rejects nothing, and the scraped instance is up
        assert quiet["labels"].get("limit") != "idle", quiet
        assert quiet["labels"]["alertname"] != "TollgateInstanceDown", quiet
