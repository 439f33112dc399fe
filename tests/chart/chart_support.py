"""Shared helpers for the Helm chart tests: locate the chart and the tools, render, pick manifests.

The chart cannot be installed here (no cluster), so it is checked offline: helm-python-sdk
(Helm v4 as a library) lints and renders it, kubernetes-validate checks the manifests against
Kubernetes' own schemas, promtool checks the alert rules. Command-line tools come from the
``tool`` fixture of tests/conftest.py. A missing tool is a test failure that says how to install
it, never a skip.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "tollgate"
ALERTS_FILE = CHART / "files" / "alerts.yaml"
DASHBOARD_FILE = CHART / "files" / "dashboard.json"

RELEASE = "rl"
NAMESPACE = "edge"
KUBE_VERSION = "1.30.0"

SETUP_HINT = "run ./scripts/test (or scripts/setup-tools), which installs it into .venv"

# Values that switch every optional part of the chart on.
ALL_ON: dict = {
    "podAnnotations": {"example.com/team": "edge"},
    "podLabels": {"example.com/tier": "ratelimit"},
    "priorityClassName": "system-cluster-critical",
    "imagePullSecrets": [{"name": "regcred"}],
    "server": {
        "logLevel": "debug",
        "extraArgs": ["--peers=tollgate-legacy.edge.svc.cluster.local:8082"],
        "extraEnv": [{"name": "RUST_BACKTRACE", "value": "1"}],
    },
    "replication": {
        "clusterId": "edge-limits",
        "clusterSecret": {"value": "s3cret"},
        "tls": {"enabled": True, "secretName": "tollgate-peer-tls"},
    },
    "grpcTls": {"enabled": True, "secretName": "tollgate-serving-tls"},
    "otlp": {
        "endpoint": "http://otel-collector.observability:4317",
        "samplingRatio": 0.1,
        "metricsEndpoint": "http://otel-collector.observability:4317",
        "metricsInterval": "30s",
    },
    "service": {"annotations": {"example.com/owner": "edge"}},
    "peerService": {"annotations": {"example.com/owner": "edge"}},
    "serviceAccount": {"annotations": {"example.com/role": "tollgate"}},
    "nodeSelector": {"kubernetes.io/os": "linux"},
    "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "edge", "effect": "NoSchedule"}],
    "affinity": {
        "nodeAffinity": {
            "preferredDuringSchedulingIgnoredDuringExecution": [
                {
                    "weight": 1,
                    "preference": {
                        "matchExpressions": [
                            {"key": "example.com/pool", "operator": "In", "values": ["edge"]}
                        ]
                    },
                }
            ]
        }
    },
    "prometheusAdapter": {"configMap": {"enabled": True}},
    "networkPolicy": {
        "enabled": True,
        "allowedClients": [
            {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "envoy"}}},
            {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}},
        ],
    },
    "serviceMonitor": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}},
    "prometheusRule": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}},
    "dashboard": {"enabled": True, "annotations": {"grafana_folder": "Edge"}},
}

# Kinds whose schema belongs to a CRD, which kubernetes-validate does not know.
CRD_KINDS = {"ServiceMonitor", "PrometheusRule"}


def helm():
    """The helm_python module (helm-python-sdk), or a failure that says how to get it."""
    try:
        import helm_python
    except ImportError as exc:  # pragma: no cover - depends on the machine
        pytest.fail(f"helm-python-sdk is not installed ({exc}): {SETUP_HINT}", pytrace=False)
    return helm_python


def merged(*overrides: dict) -> dict:
    """Deep merge of value dicts (later wins), without touching the inputs."""
    out: dict = {}
    for override in overrides:
        _merge_into(out, copy.deepcopy(override))
    return out


def _merge_into(base: dict, extra: dict) -> None:
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge_into(base[key], value)
        else:
            base[key] = value


def render_templates(values: dict | None = None) -> dict[str, str]:
    """Template path -> rendered text, as `helm template` would produce them."""
    chart = helm().Chart.load(str(CHART))
    return chart.render(values or {}, name=RELEASE, namespace=NAMESPACE, is_install=True)


def render(values: dict | None = None) -> list[dict]:
    """Every rendered Kubernetes object (NOTES.txt and empty documents left out)."""
    docs = []
    for path, text in sorted(render_templates(values).items()):
        if not path.endswith((".yaml", ".yml")):
            continue
        docs.extend(doc for doc in yaml.safe_load_all(text) if doc)
    return docs


def only(docs: list[dict], kind: str, name: str | None = None) -> dict:
    """The single object of that kind (and name), failing clearly when there is not exactly one."""
    found = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, got {[d['metadata']['name'] for d in found]}"
    return found[0]


def container(docs: list[dict]) -> dict:
    deployment = only(docs, "Deployment")
    (tollgate,) = [c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == "tollgate"]
    return tollgate


def flag(args: list[str], name: str) -> str:
    """Value of a `--name=value` argument; fails when absent or repeated."""
    values = [a.split("=", 1)[1] for a in args if a.startswith(f"--{name}=")]
    assert len(values) == 1, f"--{name} appears {len(values)} times in {args}"
    return values[0]
