"""The Envoy snippet in the chart README is a config Envoy accepts (`envoy --mode validate`)."""

from __future__ import annotations

import re
import subprocess

import yaml

from chart_support import CHART, RELEASE, NAMESPACE

README = CHART / "README.md"


def _yaml_blocks() -> list[str]:
    return re.findall(r"```yaml\n(.*?)```", README.read_text(), re.S)


def test_readme_envoy_filter_and_cluster_validate_in_envoy(tool, tmp_path):
    (snippet,) = [b for b in _yaml_blocks() if "http_filters:" in b]
    parts = yaml.safe_load(snippet)
    (cluster,) = parts["clusters"]
    address = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
    assert address["socket_address"] == {
        "address": f"{RELEASE}-tollgate.{NAMESPACE}.svc.cluster.local",
        "port_value": 8081,
    }
    hcm = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3"
        ".HttpConnectionManager",
        "stat_prefix": "ingress",
        "http_filters": parts["http_filters"],
        "route_config": {
            "virtual_hosts": [
                {
                    "name": "api",
                    "domains": ["*"],
                    "routes": [
                        {
                            "match": {"prefix": "/"},
                            "route": {
                                "cluster": "tollgate",
                                "rate_limits": [
                                    {"actions": [{"request_headers": {"header_name": "x-user-id", "descriptor_key": "user"}}]}
                                ],
                            },
                        }
                    ],
                }
            ]
        },
    }
    bootstrap = {
        "static_resources": {
            "listeners": [
                {
                    "name": "ingress",
                    "address": {"socket_address": {"address": "127.0.0.1", "port_value": 10000}},
                    "filter_chains": [
                        {"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}]}
                    ],
                }
            ],
            "clusters": parts["clusters"],
        }
    }
    config = tmp_path / "envoy.yaml"
    config.write_text(yaml.safe_dump(bootstrap, sort_keys=False))
    result = subprocess.run(
        [tool("envoy"), "--mode", "validate", "-c", str(config), "-l", "warning"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]


def test_readme_adapter_rule_matches_the_chart_rule():
    (snippet,) = [b for b in _yaml_blocks() if "rules:\n  custom:" in b]
    (rule,) = yaml.safe_load(snippet)["rules"]["custom"]
    chart_rule = (CHART / "templates" / "prometheus-adapter-configmap.yaml").read_text()
    assert rule["seriesQuery"] in chart_rule
    assert rule["name"]["as"] == "tollgate_requests_per_second"
    assert "sum(rate(<<.Series>>{<<.LabelMatchers>>}[2m])) by (<<.GroupBy>>)" == rule["metricsQuery"]
