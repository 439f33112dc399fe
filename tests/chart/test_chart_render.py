"""The Helm chart lints strictly, renders, and its manifests say what the issue asks for.

Run: .venv/bin/python -m pytest tests/chart
"""

from __future__ import annotations

import base64
import json
import subprocess

import pytest
import yaml

from chart_support import (
    ALERTS_FILE,
    ALL_ON,
    CHART,
    CRD_KINDS,
    DASHBOARD_FILE,
    KUBE_VERSION,
    NAMESPACE,
    container,
    flag,
    helm,
    merged,
    only,
    render,
    render_templates,
)

FULLNAME = "rl-tollgate"
PEER_SERVICE = "rl-tollgate-peers"
SINGLE_POD = {
    "replicaCount": 1,
    "replication": {"enabled": False},
    "autoscaling": {"enabled": False},
    "podDisruptionBudget": {"minAvailable": "50%"},
    "networkPolicy": {"enabled": False},
    "serviceAccount": {"create": False},
    "topologySpread": {"enabled": False},
}
VALUE_SETS = {"defaults": {}, "every-toggle-on": ALL_ON, "single-pod-everything-off": SINGLE_POD}


# --- lint and render -----------------------------------------------------------------------


@pytest.mark.parametrize("values", VALUE_SETS.values(), ids=VALUE_SETS.keys())
def test_chart_lints_strictly(values):
    report = helm().lint(str(CHART), values, strict=True, kube_version=f"v{KUBE_VERSION}")
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert report["errors"] == [] and problems == [], json.dumps(report, indent=1)


def test_defaults_render_the_core_objects_and_no_crd_objects():
    kinds = sorted((d["kind"], d["metadata"]["name"]) for d in render())
    assert kinds == sorted(
        [
            ("ConfigMap", f"{FULLNAME}-limits"),
            ("Deployment", FULLNAME),
            ("HorizontalPodAutoscaler", FULLNAME),
            ("NetworkPolicy", FULLNAME),
            ("PodDisruptionBudget", FULLNAME),
            ("Secret", f"{FULLNAME}-cluster-secret"),
            ("Service", FULLNAME),
            ("Service", PEER_SERVICE),
            ("ServiceAccount", FULLNAME),
        ]
    )


def test_every_toggle_on_renders_every_optional_object():
    kinds = {(d["kind"], d["metadata"]["name"]) for d in render(ALL_ON)}
    for expected in [
        ("ServiceMonitor", FULLNAME),
        ("PrometheusRule", FULLNAME),
        ("ConfigMap", f"{FULLNAME}-dashboard"),
        ("ConfigMap", f"{FULLNAME}-prometheus-adapter"),
        ("Secret", f"{FULLNAME}-cluster-secret"),
        ("HorizontalPodAutoscaler", FULLNAME),
    ]:
        assert expected in kinds


def test_notes_tell_where_envoy_should_point():
    notes = render_templates()["tollgate/templates/NOTES.txt"]
    assert f"{FULLNAME}.{NAMESPACE}.svc.cluster.local:8081" in notes
    assert "example" in notes  # the domain of the default limits


@pytest.mark.parametrize("values", VALUE_SETS.values(), ids=VALUE_SETS.keys())
def test_core_manifests_pass_kubernetes_validate_strict(values, tmp_path, tool):
    docs = [d for d in render(values) if d["kind"] not in CRD_KINDS]
    manifest = tmp_path / "rendered.yaml"
    manifest.write_text(yaml.safe_dump_all(docs, sort_keys=False))
    result = subprocess.run(
        [tool("kubernetes-validate"), "-k", KUBE_VERSION, "--strict", str(manifest)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0 and "ERROR" not in output, output
    for doc in docs:  # every object was really checked, none skipped as unknown
        assert f"passed for resource {doc['kind'].lower()}/{doc['metadata']['name']}" in output, output


def test_prometheus_rule_spec_is_the_alerts_file_and_passes_promtool(tmp_path, tool):
    rule = only(render(ALL_ON), "PrometheusRule")
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert rule["spec"] == yaml.safe_load(ALERTS_FILE.read_text())  # one source of truth
    rules_file = tmp_path / "prometheusrule-spec.yaml"
    rules_file.write_text(yaml.safe_dump(rule["spec"]))
    result = subprocess.run(
        [tool("promtool"), "check", "rules", str(rules_file)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_dashboard_configmap_carries_the_sidecar_label_and_the_dashboard():
    cm = only(render(ALL_ON), "ConfigMap", f"{FULLNAME}-dashboard")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert cm["metadata"]["annotations"] == {"grafana_folder": "Edge"}
    assert json.loads(cm["data"]["tollgate.json"]) == json.loads(DASHBOARD_FILE.read_text())


# --- values.schema.json and the chart's own checks ----------------------------------------


@pytest.mark.parametrize(
    "bad, complaint",
    [
        ({"replicaCount": "three"}, "/replicaCount"),
        ({"replicaCountt": 3}, "replicaCountt"),
        ({"server": {"logFormat": "xml"}}, "/server/logFormat"),
        ({"ports": {"peer": 70000}}, "/ports/peer"),
        ({"autoscaling": {"enabled": "yes"}}, "/autoscaling/enabled"),
        ({"limits": {"files": {"limits.txt": {"domain": "x"}}}}, "limits.txt"),
    ],
    ids=["wrong-type", "unknown-key", "bad-enum", "port-range", "bool-as-string", "limits-file-name"],
)
def test_schema_rejects_bad_values(bad, complaint):
    h = helm()
    with pytest.raises(h.HelmValuesError) as failure:
        render(bad)
    assert complaint in str(failure.value)
    report = h.lint(str(CHART), bad, strict=True, kube_version=f"v{KUBE_VERSION}")
    assert any(complaint in e for e in report["errors"]), report


@pytest.mark.parametrize(
    "bad, complaint",
    [
        ({"terminationGracePeriodSeconds": 15}, "terminationGracePeriodSeconds (15) must exceed"),
        ({"replication": {"enabled": False}}, "replication.enabled=false"),
        ({"replication": {"tls": {"enabled": True}}}, "replication.tls.secretName"),
        ({"autoscaling": {"minReplicas": 5, "maxReplicas": 4}}, "minReplicas"),
    ],
    ids=["grace-too-short", "replicas-without-replication", "tls-without-secret", "min-over-max"],
)
def test_chart_refuses_unsafe_combinations(bad, complaint):
    h = helm()
    with pytest.raises(h.HelmRenderError) as failure:
        render(bad)
    assert complaint in str(failure.value)


def test_single_pod_without_replication_is_allowed():
    docs = render({"replication": {"enabled": False}, "replicaCount": 1, "autoscaling": {"enabled": False}})
    args = container(docs)["args"]
    assert not [a for a in args if a.startswith("--peer")]
    assert not [d for d in docs if d["kind"] == "Service" and d["metadata"]["name"] == PEER_SERVICE]
    assert only(docs, "Deployment")["spec"]["replicas"] == 1


# --- what the manifests must say -----------------------------------------------------------


def test_headless_peer_service_publishes_not_ready_addresses():
    svc = only(render(), "Service", PEER_SERVICE)
    assert svc["spec"]["clusterIP"] == "None"
    assert svc["spec"]["publishNotReadyAddresses"] is True
    assert [(p["name"], p["port"]) for p in svc["spec"]["ports"]] == [("peer", 8082)]
    assert svc["spec"]["selector"] == only(render(), "Deployment")["spec"]["selector"]["matchLabels"]


def test_client_service_is_cluster_ip_with_grpc_and_http():
    svc = only(render(), "Service", FULLNAME)
    assert svc["spec"]["type"] == "ClusterIP"
    assert "clusterIP" not in svc["spec"]
    assert {p["name"]: p["port"] for p in svc["spec"]["ports"]} == {"grpc": 8081, "http": 8080}


def test_probes_liveness_healthz_readiness_readyz_and_startup():
    c = container(render())
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert c["startupProbe"]["httpGet"]["path"] == "/healthz"
    assert {p["name"]: p["containerPort"] for p in c["ports"]} == {"grpc": 8081, "http": 8080, "peer": 8082}


def test_peer_dns_points_at_the_headless_service_and_peer_port():
    args = container(render())["args"]
    assert args[0] == "serve"
    assert flag(args, "peer-dns") == f"{PEER_SERVICE}.{NAMESPACE}.svc.cluster.local:8082"
    assert flag(args, "peer-addr") == "0.0.0.0:8082"
    assert flag(args, "grpc-addr") == "0.0.0.0:8081"
    assert flag(args, "http-addr") == "0.0.0.0:8080"
    assert flag(args, "cluster-id") == FULLNAME


def test_node_id_comes_from_the_pod_name():
    env = {e["name"]: e for e in container(render())["env"]}
    assert env["TOLLGATE_NODE_ID"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"


def test_limits_configmap_is_mounted_as_a_directory_at_the_config_path():
    docs = render()
    c = container(docs)
    config_path = flag(c["args"], "config")
    (mount,) = [m for m in c["volumeMounts"] if m["mountPath"] == config_path]
    assert "subPath" not in mount and "subPathExpr" not in mount  # symlink swap must be visible
    volumes = {v["name"]: v for v in only(docs, "Deployment")["spec"]["template"]["spec"]["volumes"]}
    cm_name = volumes[mount["name"]]["configMap"]["name"]
    cm = only(docs, "ConfigMap", cm_name)
    assert yaml.safe_load(cm["data"]["example.yaml"])["domain"] == "example"
    annotations = only(docs, "Deployment")["spec"]["template"]["metadata"].get("annotations", {})
    assert not [k for k in annotations if k.startswith("checksum/")]  # hot reload, no restart


def test_limits_from_values_render_as_yaml_files():
    files = {
        "api.yaml": {
            "domain": "api",
            "descriptors": [{"key": "user", "rate_limit": {"unit": "minute", "requests_per_unit": 10}}],
        },
        "raw.yml": "domain: raw\ndescriptors: []\n",
    }
    # Values maps merge with the defaults: null removes the chart's example file.
    docs = render({"limits": {"files": {**files, "example.yaml": None}}})
    cm = only(docs, "ConfigMap", f"{FULLNAME}-limits")
    assert {k: yaml.safe_load(v) for k, v in cm["data"].items()} == {
        "api.yaml": files["api.yaml"],
        "raw.yml": {"domain": "raw", "descriptors": []},
    }


def test_an_existing_limits_configmap_is_mounted_instead():
    docs = render({"limits": {"existingConfigMap": "my-limits"}})
    assert not [d for d in docs if d["kind"] == "ConfigMap"]
    volumes = only(docs, "Deployment")["spec"]["template"]["spec"]["volumes"]
    assert {"name": "limits", "configMap": {"name": "my-limits"}} in volumes


def test_hpa_scales_on_the_pods_metric_and_cpu_and_scales_down_slowly():
    docs = render()
    hpa = only(docs, "HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": FULLNAME}
    pods = [m for m in hpa["spec"]["metrics"] if m["type"] == "Pods"]
    assert pods == [
        {
            "type": "Pods",
            "pods": {
                "metric": {"name": "tollgate_requests_per_second"},
                "target": {"type": "AverageValue", "averageValue": "5000"},
            },
        }
    ]
    cpu = [m for m in hpa["spec"]["metrics"] if m["type"] == "Resource"]
    assert cpu[0]["resource"]["name"] == "cpu"
    down = hpa["spec"]["behavior"]["scaleDown"]
    assert down["stabilizationWindowSeconds"] >= 300
    assert all(p["type"] == "Pods" and p["value"] == 1 for p in down["policies"])
    assert "replicas" not in only(docs, "Deployment")["spec"]  # the HPA owns the count


def test_prometheus_adapter_rule_produces_the_hpa_metric_from_requests_total():
    docs = render(ALL_ON)
    adapter = yaml.safe_load(only(docs, "ConfigMap", f"{FULLNAME}-prometheus-adapter")["data"]["config.yaml"])
    (rule,) = adapter["rules"]
    assert rule["seriesQuery"].startswith("tollgate_requests_total{")
    assert rule["resources"]["overrides"] == {"namespace": {"resource": "namespace"}, "pod": {"resource": "pod"}}
    assert rule["name"]["as"] == only(docs, "HorizontalPodAutoscaler")["spec"]["metrics"][0]["pods"]["metric"]["name"]
    assert rule["metricsQuery"] == "sum(rate(<<.Series>>{<<.LabelMatchers>>}[2m])) by (<<.GroupBy>>)"


def test_servicemonitor_scrapes_metrics_on_the_http_port_as_job_tollgate():
    docs = render(ALL_ON)
    sm = only(docs, "ServiceMonitor")
    assert sm["spec"]["endpoints"][0]["port"] == "http" and sm["spec"]["endpoints"][0]["path"] == "/metrics"
    # TollgateInstanceDown matches up{job="tollgate"}: the job label comes from this Service label.
    client = only(docs, "Service", FULLNAME)
    assert client["metadata"]["labels"][sm["spec"]["jobLabel"]] == "tollgate"
    selected = sm["spec"]["selector"]["matchLabels"]
    assert selected.items() <= client["metadata"]["labels"].items()
    assert not selected.items() <= only(docs, "Service", PEER_SERVICE)["metadata"]["labels"].items()


def test_pod_runs_non_root_on_a_read_only_root_filesystem_without_capabilities():
    docs = render()
    pod = only(docs, "Deployment")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
    sc = container(docs)["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert pod["automountServiceAccountToken"] is False
    assert pod["serviceAccountName"] == only(docs, "ServiceAccount")["metadata"]["name"]
    assert container(docs)["resources"]["requests"]["cpu"]


def test_grace_period_covers_pre_stop_and_the_shutdown_handoff():
    """The process's worst case after SIGTERM is --shutdown-timeout itself, drain and handoff
    included (one deadline: the cluster test
    one_deadline_bounds_the_whole_shutdown_with_a_held_request_and_a_frozen_peer measures it
    with a request that never ends and a frozen peer). Before SIGTERM comes the preStop sleep."""
    docs = render()
    pod = only(docs, "Deployment")["spec"]["template"]["spec"]
    c = container(docs)
    shutdown = int(flag(c["args"], "shutdown-timeout").rstrip("s"))
    sleep = c["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert pod["terminationGracePeriodSeconds"] > sleep + shutdown


def test_pods_spread_across_nodes_and_zones():
    docs = render()
    spread = only(docs, "Deployment")["spec"]["template"]["spec"]["topologySpreadConstraints"]
    assert [s["topologyKey"] for s in spread] == ["kubernetes.io/hostname", "topology.kubernetes.io/zone"]
    selector = only(docs, "Deployment")["spec"]["selector"]["matchLabels"]
    assert all(s["labelSelector"]["matchLabels"] == selector for s in spread)


def test_pdb_keeps_all_but_one_pod():
    docs = render()
    pdb = only(docs, "PodDisruptionBudget")
    assert pdb["spec"]["maxUnavailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"] == only(docs, "Deployment")["spec"]["selector"]["matchLabels"]


def test_network_policy_opens_the_peer_port_only_to_pods_of_the_release():
    docs = render(ALL_ON)
    policy = only(docs, "NetworkPolicy")["spec"]
    selector = only(docs, "Deployment")["spec"]["selector"]["matchLabels"]
    assert policy["podSelector"]["matchLabels"] == selector
    assert policy["policyTypes"] == ["Ingress"]
    peer_rules = [r for r in policy["ingress"] if {"port": "peer", "protocol": "TCP"} in r["ports"]]
    assert peer_rules == [
        {"ports": [{"port": "peer", "protocol": "TCP"}], "from": [{"podSelector": {"matchLabels": selector}}]}
    ]
    client_rules = [r for r in policy["ingress"] if r not in peer_rules]
    assert client_rules[0]["from"] == ALL_ON["networkPolicy"]["allowedClients"]
    assert {p["port"] for p in client_rules[0]["ports"]} == {"grpc", "http"}


def test_mtls_secret_is_mounted_and_passed_to_the_peer_flags():
    docs = render(ALL_ON)
    c = container(docs)
    assert flag(c["args"], "peer-tls-cert") == "/etc/tollgate/peer-tls/tls.crt"
    assert flag(c["args"], "peer-tls-key") == "/etc/tollgate/peer-tls/tls.key"
    assert flag(c["args"], "peer-tls-ca") == "/etc/tollgate/peer-tls/ca.crt"
    # Peers are dialed at pod IPs: the certificate is checked against the peer Service's name.
    assert flag(c["args"], "peer-tls-server-name") == f"{PEER_SERVICE}.{NAMESPACE}.svc.cluster.local"
    volumes = {v["name"]: v for v in only(docs, "Deployment")["spec"]["template"]["spec"]["volumes"]}
    assert volumes["peer-tls"]["secret"]["secretName"] == "tollgate-peer-tls"
    assert {"name": "peer-tls", "mountPath": "/etc/tollgate/peer-tls", "readOnly": True} in c["volumeMounts"]


def test_mtls_server_name_can_be_set_and_is_absent_without_tls():
    named = render(merged(ALL_ON, {"replication": {"tls": {"serverName": "peers.example.internal"}}}))
    assert flag(container(named)["args"], "peer-tls-server-name") == "peers.example.internal"
    assert not [a for a in container(render({}))["args"] if a.startswith("--peer-tls")]


def test_chart_made_cluster_secret_is_mounted_and_rolls_the_pods_when_changed():
    docs = render(ALL_ON)
    c = container(docs)
    assert flag(c["args"], "cluster-secret-file") == "/etc/tollgate/cluster-secret/cluster-secret"
    assert flag(c["args"], "cluster-id") == "edge-limits"
    secret = only(docs, "Secret")
    assert set(secret["data"]) == {"cluster-secret"}
    checksum = only(docs, "Deployment")["spec"]["template"]["metadata"]["annotations"]["checksum/cluster-secret"]
    changed = render(merged(ALL_ON, {"replication": {"clusterSecret": {"value": "other"}}}))
    assert only(changed, "Deployment")["spec"]["template"]["metadata"]["annotations"]["checksum/cluster-secret"] != checksum


def test_a_cluster_secret_is_generated_by_default_and_mounted():
    docs = render({})
    secret = only(docs, "Secret")
    assert secret["metadata"]["name"] == f"{FULLNAME}-cluster-secret"
    value = base64.b64decode(secret["data"]["cluster-secret"])
    assert len(value) == 48
    assert flag(container(docs)["args"], "cluster-secret-file") == "/etc/tollgate/cluster-secret/cluster-secret"
    # A generated secret does not roll the pods at every upgrade through a checksum.
    annotations = only(docs, "Deployment")["spec"]["template"]["metadata"].get("annotations") or {}
    assert "checksum/cluster-secret" not in annotations
    # Two installs do not share a secret.
    assert base64.b64decode(only(render({}), "Secret")["data"]["cluster-secret"]) != value


def test_no_cluster_secret_only_when_asked():
    docs = render({"replication": {"clusterSecret": {"generate": False}}})
    assert not [d for d in docs if d["kind"] == "Secret"]
    assert not [a for a in container(docs)["args"] if a.startswith("--cluster-secret-file")]


def test_an_existing_cluster_secret_is_mounted_without_creating_one():
    docs = render({"replication": {"clusterSecret": {"existingSecret": "peers", "key": "token"}}})
    assert not [d for d in docs if d["kind"] == "Secret"]
    assert flag(container(docs)["args"], "cluster-secret-file") == "/etc/tollgate/cluster-secret/token"
    volumes = {v["name"]: v for v in only(docs, "Deployment")["spec"]["template"]["spec"]["volumes"]}
    assert volumes["cluster-secret"]["secret"]["secretName"] == "peers"


def test_image_defaults_to_the_app_version_and_a_digest_wins():
    app_version = yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"]
    assert container(render())["image"].endswith(f":{app_version}")
    digest = "sha256:" + "a" * 64
    assert container(render({"image": {"digest": digest}}))["image"].endswith(f"@{digest}")


def test_the_peer_service_declares_tls_only_when_mtls_is_on():
    def peer_port(values):
        headless = [d for d in render(values) if d["kind"] == "Service" and d["spec"].get("clusterIP") == "None"]
        assert len(headless) == 1
        return headless[0]["spec"]["ports"][0]

    assert peer_port({})["appProtocol"] == "kubernetes.io/h2c"
    assert peer_port(ALL_ON)["appProtocol"] == "https"


# --- serving TLS and OpenTelemetry ---------------------------------------------------------

GRPC_TLS = {"grpcTls": {"enabled": True, "secretName": "tollgate-serving-tls"}}


def test_grpc_tls_secret_is_mounted_as_a_directory_and_passed_to_the_flags():
    docs = render(GRPC_TLS)
    c = container(docs)
    assert flag(c["args"], "grpc-tls-cert") == "/etc/tollgate/grpc-tls/tls.crt"
    assert flag(c["args"], "grpc-tls-key") == "/etc/tollgate/grpc-tls/tls.key"
    assert flag(c["args"], "grpc-tls-client-ca") == "/etc/tollgate/grpc-tls/ca.crt"
    volumes = {v["name"]: v for v in only(docs, "Deployment")["spec"]["template"]["spec"]["volumes"]}
    assert volumes["grpc-tls"]["secret"]["secretName"] == "tollgate-serving-tls"
    # No subPath: a rotation swaps the Secret's ..data symlink, which tollgate watches.
    mount = next(m for m in c["volumeMounts"] if m["name"] == "grpc-tls")
    assert mount == {"name": "grpc-tls", "mountPath": "/etc/tollgate/grpc-tls", "readOnly": True}
    client = next(d for d in docs if d["kind"] == "Service" and d["metadata"]["name"] == FULLNAME)
    grpc_port = next(p for p in client["spec"]["ports"] if p["name"] == "grpc")
    assert grpc_port["appProtocol"] == "https"


def test_grpc_tls_without_client_certificates_and_absent_by_default():
    docs = render(merged(GRPC_TLS, {"grpcTls": {"requireClientCertificate": False}}))
    assert not [a for a in container(docs)["args"] if a.startswith("--grpc-tls-client-ca")]
    defaults = render()
    assert not [a for a in container(defaults)["args"] if a.startswith("--grpc-tls")]
    client = next(d for d in defaults if d["kind"] == "Service" and d["metadata"]["name"] == FULLNAME)
    assert next(p for p in client["spec"]["ports"] if p["name"] == "grpc")["appProtocol"] == "kubernetes.io/h2c"


def test_grpc_tls_without_a_secret_is_refused():
    h = helm()
    with pytest.raises(h.HelmRenderError) as failure:
        render({"grpcTls": {"enabled": True}})
    assert "grpcTls.secretName" in str(failure.value)


def test_otlp_endpoint_and_sampling_ratio_become_flags():
    docs = render({"otlp": {"endpoint": "http://otel-collector.observability:4317", "samplingRatio": 0.25}})
    args = container(docs)["args"]
    assert flag(args, "otlp-endpoint") == "http://otel-collector.observability:4317"
    assert flag(args, "otlp-sampling-ratio") == "0.25"
    assert not [a for a in container(render())["args"] if a.startswith("--otlp")]


def test_otlp_metrics_endpoint_and_interval_become_flags_apart_from_traces():
    docs = render({"otlp": {"metricsEndpoint": "http://otel-collector.observability:4317", "metricsInterval": "15s"}})
    args = container(docs)["args"]
    assert flag(args, "otlp-metrics-endpoint") == "http://otel-collector.observability:4317"
    assert flag(args, "otlp-metrics-interval") == "15s"
    assert not [a for a in args if a.startswith(("--otlp-endpoint", "--otlp-sampling-ratio"))]
    defaults = container(render({"otlp": {"metricsEndpoint": "http://c:4317"}}))["args"]
    assert flag(defaults, "otlp-metrics-interval") == "60s"


@pytest.mark.parametrize(
    "bad, complaint",
    [
        ({"otlp": {"endpoint": "otel-collector:4317"}}, "/otlp/endpoint"),
        ({"otlp": {"endpoint": "https://otel-collector:4317"}}, "/otlp/endpoint"),
        ({"otlp": {"samplingRatio": 2}}, "/otlp/samplingRatio"),
        ({"otlp": {"metricsEndpoint": "https://otel-collector:4317"}}, "/otlp/metricsEndpoint"),
        ({"otlp": {"metricsInterval": "soon"}}, "/otlp/metricsInterval"),
        ({"grpcTls": {"certFile": "x"}}, "certFile"),
    ],
    ids=["endpoint-not-a-url", "endpoint-https", "ratio-over-one", "metrics-endpoint-https", "interval-not-a-duration", "unknown-key"],
)
def test_schema_rejects_bad_tls_and_otlp_values(bad, complaint):
    h = helm()
    with pytest.raises(h.HelmValuesError) as failure:
        render(bad)
    assert complaint in str(failure.value)
