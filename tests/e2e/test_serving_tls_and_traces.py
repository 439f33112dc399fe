"""TLS on tollgate's gRPC port and OpenTelemetry traces, end to end through a real Envoy.

    client --HTTP--> Envoy edge --(mTLS: UpstreamTlsContext with a client certificate)--> tollgate
                       |  traces (OpenTelemetry tracer, OTLP/gRPC)        | traces (OTLP/gRPC)
                       +-------------------> OTLP receiver <--------------+

The receiver is a real OTLP/gRPC server built in the test from the `opentelemetry-proto`
definitions (there is no collector binary here); it keeps what both processes export, so the
test can check that tollgate's ShouldRateLimit span belongs to Envoy's trace of the same
request. Clients that must be refused talk to tollgate directly with grpcio.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Iterator

import grpc
import pytest

from otlp_receiver import OtlpReceiver, ReceivedSpan
from pki_support import Ca
from test_envoy import RATELIMIT_CONFIG, USER_LIMIT, envoy_bootstrap

HOST = "127.0.0.1"
SHOULD_RATE_LIMIT = "/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit"
# RateLimitRequest{domain: "edge", descriptors: [{entries: [{key: "user", value: "bob"}]}]},
# serialized by hand (field tag, length, bytes): no generated stubs needed for one message.
_ENTRY = b"\x0a\x04user\x12\x03bob"
_DESCRIPTOR = b"\x0a" + bytes([len(_ENTRY)]) + _ENTRY
BOB_REQUEST = b"\x0a\x04edge\x12" + bytes([len(_DESCRIPTOR)]) + _DESCRIPTOR
TOLLGATE_SPAN = "envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit"


@pytest.fixture
def receiver(free_port) -> Iterator[OtlpReceiver]:
    r = OtlpReceiver(free_port())
    yield r
    r.stop()


@pytest.fixture
def pki(tmp_path: Path) -> dict:
    ca = Ca(tmp_path / "pki", "serving")
    return {
        "ca": ca,
        "server": ca.issue("tollgate"),
        "envoy": ca.issue("envoy"),
        "intruder": Ca(tmp_path / "pki-other", "intruder").issue("intruder"),
    }


def tls_args(pki: dict) -> list[str]:
    return [
        "--grpc-tls-cert",
        str(pki["server"].cert),
        "--grpc-tls-key",
        str(pki["server"].key),
        "--grpc-tls-client-ca",
        str(pki["ca"].path),
    ]


def with_upstream_tls(bootstrap: dict, pki: dict) -> dict:
    """Envoy's RLS cluster dials tollgate over TLS, presenting its own client certificate."""
    for cluster in bootstrap["static_resources"]["clusters"]:
        if cluster["name"] == "tollgate":
            cluster["transport_socket"] = {
                "name": "envoy.transport_sockets.tls",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3."
                    "UpstreamTlsContext",
                    "sni": "localhost",
                    "common_tls_context": {
                        "alpn_protocols": ["h2"],
                        "tls_certificates": [
                            {
                                "certificate_chain": {"filename": str(pki["envoy"].cert)},
                                "private_key": {"filename": str(pki["envoy"].key)},
                            }
                        ],
                        "validation_context": {
                            "trusted_ca": {"filename": str(pki["ca"].path)},
                            "match_typed_subject_alt_names": [
                                {"san_type": "DNS", "matcher": {"exact": "localhost"}}
                            ],
                        },
                    },
                },
            }
    return bootstrap


def with_tracing(bootstrap: dict, otlp_port: int) -> dict:
    """Envoy traces every request with its OpenTelemetry tracer, to the receiver."""
    listener = bootstrap["static_resources"]["listeners"][0]
    hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
    hcm["tracing"] = {
        "random_sampling": {"value": 100},
        "provider": {
            "name": "envoy.tracers.opentelemetry",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.config.trace.v3.OpenTelemetryConfig",
                "grpc_service": {"envoy_grpc": {"cluster_name": "otlp"}, "timeout": "2s"},
                "service_name": "envoy-edge",
            },
        },
    }
    bootstrap["static_resources"]["clusters"].append(
        {
            "name": "otlp",
            "type": "STATIC",
            "connect_timeout": "1s",
            "typed_extension_protocol_options": {
                "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                    "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3."
                    "HttpProtocolOptions",
                    "explicit_http_config": {"http2_protocol_options": {}},
                }
            },
            "load_assignment": {
                "cluster_name": "otlp",
                "endpoints": [
                    {
                        "lb_endpoints": [
                            {
                                "endpoint": {
                                    "address": {
                                        "socket_address": {"address": HOST, "port_value": otlp_port}
                                    }
                                }
                            }
                        ]
                    }
                ],
            },
        }
    )
    # Flush spans at once instead of every 5 s / 5 spans, so the test stays short.
    bootstrap["layered_runtime"] = {
        "layers": [
            {
                "name": "static",
                "static_layer": {
                    "tracing.opentelemetry.flush_interval_ms": 200,
                    "tracing.opentelemetry.min_flush_spans": 1,
                },
            }
        ]
    }
    return bootstrap


def call_directly(port: int, pki: dict, identity: str | None) -> grpc.StatusCode:
    """One ShouldRateLimit on tollgate's port with grpcio: over TLS presenting ``identity``'s
    certificate (None: no certificate), or plaintext when ``identity`` is "plaintext"."""
    target = f"{HOST}:{port}"
    if identity == "plaintext":
        channel = grpc.insecure_channel(target)
    else:
        leaf = pki[identity] if identity else None
        creds = grpc.ssl_channel_credentials(
            root_certificates=pki["ca"].pem(),
            private_key=leaf.key_pem() if leaf else None,
            certificate_chain=leaf.cert_pem() if leaf else None,
        )
        channel = grpc.secure_channel(
            target, creds, options=[("grpc.ssl_target_name_override", "localhost")]
        )
    with channel:
        call = channel.unary_unary(SHOULD_RATE_LIMIT)
        try:
            call(BOB_REQUEST, timeout=5)
            return grpc.StatusCode.OK
        except grpc.RpcError as err:
            return err.code()


def test_envoy_with_a_client_certificate_is_served_and_others_are_refused(
    tollgate, envoy, harness, pki
) -> None:
    server = tollgate(RATELIMIT_CONFIG, extra_args=tls_args(pki))
    edge, upstream = harness.free_port(), harness.free_port()
    proxy = envoy(
        with_upstream_tls(envoy_bootstrap(edge, upstream, server.grpc_port), pki),
        wait_ports=(edge, upstream),
    )
    codes = [
        harness.http_request(f"http://{HOST}:{edge}/", headers={"x-user-id": "alice"}).status
        for _ in range(USER_LIMIT + 1)
    ]
    assert codes == [200] * USER_LIMIT + [429]
    stats = proxy.stats()
    # Every request was decided by tollgate over TLS, none let through by failure mode.
    assert stats.get("cluster.upstream.ratelimit.ok", 0) == USER_LIMIT
    assert stats.get("cluster.upstream.ratelimit.over_limit", 0) == 1
    assert stats.get("cluster.upstream.ratelimit.failure_mode_allowed", 0) == 0
    assert stats.get("cluster.tollgate.ssl.handshake", 0) >= 1

    assert call_directly(server.grpc_port, pki, "envoy") == grpc.StatusCode.OK
    assert call_directly(server.grpc_port, pki, "intruder") == grpc.StatusCode.UNAVAILABLE
    assert call_directly(server.grpc_port, pki, None) == grpc.StatusCode.UNAVAILABLE
    assert call_directly(server.grpc_port, pki, "plaintext") == grpc.StatusCode.UNAVAILABLE
    metrics = server.get("/metrics").text()
    failures = re.search(r'^tollgate_tls_handshake_failures_total\{listener="grpc"\} (\d+)$', metrics, re.M)
    # At least one refused handshake per refused client (gRPC clients may retry).
    assert failures and int(failures.group(1)) >= 3, metrics


def _by_trace(spans: list[ReceivedSpan]) -> dict[str, list[ReceivedSpan]]:
    out: dict[str, list[ReceivedSpan]] = {}
    for s in spans:
        out.setdefault(s.trace_id, []).append(s)
    return out


def _shared_traces(spans: list[ReceivedSpan]) -> list[list[ReceivedSpan]]:
    """Traces holding both tollgate's ShouldRateLimit span and at least one of Envoy's."""
    return [
        t
        for t in _by_trace(spans).values()
        if any(s.service == "tollgate" and s.name == TOLLGATE_SPAN for s in t)
        and any(s.service == "envoy-edge" for s in t)
    ]


def test_tollgate_span_joins_envoys_trace_of_the_same_request(
    tollgate, envoy, harness, pki, receiver
) -> None:
    server = tollgate(
        RATELIMIT_CONFIG,
        extra_args=[*tls_args(pki), "--otlp-endpoint", receiver.endpoint],
    )
    edge, upstream = harness.free_port(), harness.free_port()
    bootstrap = with_tracing(
        with_upstream_tls(envoy_bootstrap(edge, upstream, server.grpc_port), pki), receiver.port
    )
    envoy(bootstrap, wait_ports=(edge, upstream))
    codes = [
        harness.http_request(f"http://{HOST}:{edge}/", headers={"x-user-id": "alice"}).status
        for _ in range(USER_LIMIT + 1)
    ]
    assert codes == [200] * USER_LIMIT + [429]

    spans = receiver.wait_for_spans(
        lambda s: len(_shared_traces(s)) == USER_LIMIT + 1,
        f"{USER_LIMIT + 1} traces with both Envoy's and tollgate's spans",
    )
    outcomes = []
    for trace in _shared_traces(spans):
        ours = next(s for s in trace if s.service == "tollgate" and s.name == TOLLGATE_SPAN)
        envoy_ids = {s.span_id for s in trace if s.service == "envoy-edge"}
        # A child of one of Envoy's spans (its RLS egress span), not merely the same trace.
        assert ours.parent_span_id in envoy_ids, (ours, trace)
        assert ours.attributes["ratelimit.domain"] == "edge"
        assert ours.attributes["ratelimit.rules"] == ["user"]
        outcomes.append(ours.attributes["ratelimit.outcome"])
    assert sorted(outcomes) == ["OK"] * USER_LIMIT + ["OVER_LIMIT"]


def test_a_config_reload_is_traced(tollgate, receiver) -> None:
    server = tollgate(RATELIMIT_CONFIG, extra_args=["--otlp-endpoint", receiver.endpoint])
    server.write_config("config.yaml", RATELIMIT_CONFIG.replace("requests_per_unit: 10", "requests_per_unit: 11"))
    spans = receiver.wait_for_spans(
        lambda s: any(x.service == "tollgate" and x.name == "config_reload" for x in s),
        "a config_reload span",
    )
    reload = next(s for s in spans if s.name == "config_reload")
    assert reload.attributes.get("result") == "ok", reload
