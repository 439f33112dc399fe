"""The exposition itself: a real scrape after traffic passes `promtool check metrics` clean."""

import subprocess

CONFIG = """\
domain: lint
descriptors:
  - key: user
    rate_limit: {unit: minute, requests_per_unit: 3}
  - key: vip
    rate_limit: {unlimited: true}
  - key: noisy
    shadow_mode: true
    detailed_metric: true
    rate_limit: {unit: second, requests_per_unit: 1}
"""


def _request(key: str, value: str) -> dict:
    return {"domain": "lint", "descriptors": [{"entries": [{"key": key, "value": value}]}]}


def test_a_scrape_after_traffic_passes_promtool_check_metrics(tollgate, tool):
    tg = tollgate(CONFIG)
    for _ in range(5):
        for key, value in (("user", "u1"), ("vip", "v"), ("noisy", "n"), ("other", "x")):
            assert tg.post_json("/json", _request(key, value)).status in (200, 429)
    assert tg.post_json("/json", {"domain": "", "descriptors": []}).status == 400
    scrape = tg.get("/metrics")
    assert scrape.status == 200
    text = scrape.text()
    # Traffic really reached the counters being linted.
    assert 'tollgate_over_limit_total{domain="lint",limit="user"} 2' in text, text
    assert "tollgate_request_duration_seconds_bucket" in text
    result = subprocess.run(
        [tool("promtool"), "check", "metrics"], input=text, capture_output=True, text=True, timeout=60
    )
    problems = (result.stdout + result.stderr).strip()
    assert result.returncode == 0 and problems == "", problems
