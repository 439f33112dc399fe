"""The /metrics series pushed over OTLP/gRPC (--otlp-metrics-endpoint), end to end.

    grpcio client --ShouldRateLimit--> tollgate --OTLP/gRPC MetricsService--> receiver
                                          |
                                          +-- /metrics (scraped by the test)

The receiver is a real OTLP/gRPC server built from the `opentelemetry-proto` definitions
(tests/e2e/otlp_receiver.py). The test compares what was pushed with what /metrics serves.
"""

from __future__ import annotations

import re
import time
from typing import Iterator

import grpc
import pytest

from otlp_receiver import OtlpReceiver, ReceivedPoint
from test_envoy import RATELIMIT_CONFIG

HOST = "127.0.0.1"
SHOULD_RATE_LIMIT = "/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit"
# RateLimitRequest{domain: "edge", descriptors: [{entries: [{key: "user", value: "bob"}]}]},
# serialized by hand (field tag, length, bytes): no generated stubs needed for one message.
_ENTRY = b"\x0a\x04user\x12\x03bob"
_DESCRIPTOR = b"\x0a" + bytes([len(_ENTRY)]) + _ENTRY
BOB_REQUEST = b"\x0a\x04edge\x12" + bytes([len(_DESCRIPTOR)]) + _DESCRIPTOR
REQUESTS = 12  # bob's limit is 10 a minute: 10 admitted, 2 over the limit, all answered OK
PUSH_EVERY = ["--otlp-metrics-interval", "1s"]


@pytest.fixture
def receiver(free_port) -> Iterator[OtlpReceiver]:
    r = OtlpReceiver(free_port())
    yield r
    r.stop()


def ask(port: int, n: int) -> None:
    with grpc.insecure_channel(f"{HOST}:{port}") as channel:
        call = channel.unary_unary(SHOULD_RATE_LIMIT)
        for _ in range(n):
            call(BOB_REQUEST, timeout=5)


def scraped(server) -> tuple[set[str], dict[str, float]]:
    """The family names /metrics declares, and each sample line's value by its series."""
    text = server.get("/metrics").text()
    names = set(re.findall(r"^# TYPE (\S+) \S+$", text, re.M))
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            series, value = line.rsplit(" ", 1)
            values[series] = float(value)
    return names, values


def by_export(points: list[ReceivedPoint]) -> dict[int, list[ReceivedPoint]]:
    exports: dict[int, list[ReceivedPoint]] = {}
    for p in points:
        exports.setdefault(p.export, []).append(p)
    return exports


def point(points: list[ReceivedPoint], name: str, **attributes: str) -> ReceivedPoint | None:
    return next(
        (p for p in points if p.name == name and all(p.attributes.get(k) == v for k, v in attributes.items())),
        None,
    )


def requests_ok(points: list[ReceivedPoint]) -> float | None:
    p = point(points, "tollgate_requests_total", code="OK")
    return p.value if p else None


def test_pushed_metrics_carry_the_same_series_as_the_scrape_endpoint(tollgate, receiver) -> None:
    server = tollgate(
        RATELIMIT_CONFIG,
        extra_args=["--otlp-metrics-endpoint", receiver.endpoint, *PUSH_EVERY],
    )
    ask(server.grpc_port, REQUESTS)
    # A push taken after the last request: the counts no longer move.
    receiver.wait_for_points(
        lambda ps: any(requests_ok(e) == REQUESTS for e in by_export(ps).values()),
        f"a push with tollgate_requests_total{{code=OK}} = {REQUESTS}",
    )
    names, values = scraped(server)
    assert values['tollgate_requests_total{code="OK"}'] == REQUESTS
    after = max(by_export(receiver.points()))

    def same_names(ps: list[ReceivedPoint]) -> bool:
        return any(
            n > after and {p.name for p in e} == names for n, e in by_export(ps).items()
        )

    points = receiver.wait_for_points(same_names, f"a push of the same series as /metrics: {sorted(names)}")
    export = next(e for n, e in sorted(by_export(points).items()) if n > after and {p.name for p in e} == names)
    assert {p.service for p in export} == {"tollgate"}

    ok = point(export, "tollgate_requests_total", code="OK")
    assert ok and ok.kind == "sum" and ok.monotonic and ok.value == REQUESTS, ok

    capacity = point(export, "token_bucket_capacity", domain="edge", limit="user")
    assert capacity and capacity.kind == "gauge", capacity
    assert capacity.value == values['token_bucket_capacity{domain="edge",limit="user"}'] == 10
    trial = point(export, "token_bucket_capacity", domain="edge", limit="trial-users")
    assert trial and trial.value == 3, trial

    latency = point(export, "tollgate_request_duration_seconds")
    assert latency and latency.kind == "histogram", latency
    assert latency.count == REQUESTS == values["tollgate_request_duration_seconds_count"]
    assert sum(latency.bucket_counts) == REQUESTS
    assert len(latency.bucket_counts) == len(latency.explicit_bounds) + 1
    assert latency.explicit_bounds[0] == pytest.approx(0.000025)
    assert latency.sum == pytest.approx(values["tollgate_request_duration_seconds_sum"])


def test_an_unreachable_collector_costs_no_request_and_is_counted_and_logged_once(
    tollgate, free_port, harness
) -> None:
    nobody = f"http://{HOST}:{free_port()}"
    server = tollgate(RATELIMIT_CONFIG, extra_args=["--otlp-metrics-endpoint", nobody, *PUSH_EVERY])

    def failed() -> float:
        return scraped(server)[1].get('tollgate_otlp_metrics_exports_total{result="failed"}', 0)

    deadline = time.monotonic() + 15
    while failed() < 3:
        assert time.monotonic() < deadline, "three failed pushes within 15 s"
        ask(server.grpc_port, 5)  # every call answered (grpcio raises otherwise)
        time.sleep(0.2)
    assert scraped(server)[1].get('tollgate_otlp_metrics_exports_total{result="ok"}', 0) == 0
    assert server.get("/readyz").status == 200
    log = server.log()
    assert log.count("OTLP metrics export failed") == 1, log
    assert nobody in log


def test_the_final_counts_are_pushed_on_shutdown(tollgate, receiver) -> None:
    # An hour between pushes: the only push this test can see is the one made when stopping.
    server = tollgate(
        RATELIMIT_CONFIG,
        extra_args=["--otlp-metrics-endpoint", receiver.endpoint, "--otlp-metrics-interval", "1h"],
    )
    ask(server.grpc_port, REQUESTS)
    assert receiver.points() == []
    assert server.stop() == 0
    points = receiver.wait_for_points(lambda ps: bool(ps), "the push made at shutdown", timeout=5)
    assert len(by_export(points)) == 1
    assert requests_ok(points) == REQUESTS
