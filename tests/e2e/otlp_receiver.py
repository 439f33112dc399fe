"""A real OTLP/gRPC receiver for tests, from the `opentelemetry-proto` service definitions: it
serves the TraceService and the MetricsService and keeps every span and every metric data point
exported to it, flattened for assertions."""

from __future__ import annotations

import threading
import time
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any, Callable

import grpc
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2, metrics_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc


def _value(v: Any) -> Any:
    kind = v.WhichOneof("value")
    if kind == "array_value":
        return [_value(x) for x in v.array_value.values]
    return getattr(v, kind) if kind else None


def _attributes(attrs: Any) -> dict[str, Any]:
    return {a.key: _value(a.value) for a in attrs}


@dataclass
class ReceivedSpan:
    service: str
    name: str
    trace_id: str
    span_id: str
    parent_span_id: str
    attributes: dict[str, Any]


@dataclass
class ReceivedPoint:
    """One data point of one metric, from one export request (``export`` numbers them)."""

    export: int
    service: str
    name: str
    kind: str  # "sum", "gauge" or "histogram"
    monotonic: bool
    attributes: dict[str, Any]
    value: float | None  # sums and gauges
    bucket_counts: list[int] = field(default_factory=list)  # histograms, per bucket
    explicit_bounds: list[float] = field(default_factory=list)
    count: int = 0
    sum: float = 0.0


@dataclass
class Received:
    spans: list[ReceivedSpan] = field(default_factory=list)
    points: list[ReceivedPoint] = field(default_factory=list)
    exports: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


def _number(p: Any) -> float:
    return float(p.as_int) if p.WhichOneof("value") == "as_int" else p.as_double


class _Traces(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, received: Received) -> None:
        self.received = received

    def Export(self, request, context):  # noqa: N802 (gRPC's name)
        spans = []
        for rs in request.resource_spans:
            service = str(_attributes(rs.resource.attributes).get("service.name", ""))
            for ss in rs.scope_spans:
                for s in ss.spans:
                    spans.append(
                        ReceivedSpan(
                            service,
                            s.name,
                            s.trace_id.hex(),
                            s.span_id.hex(),
                            s.parent_span_id.hex(),
                            _attributes(s.attributes),
                        )
                    )
        with self.received.lock:
            self.received.spans.extend(spans)
        return trace_service_pb2.ExportTraceServiceResponse()


class _Metrics(metrics_service_pb2_grpc.MetricsServiceServicer):
    def __init__(self, received: Received) -> None:
        self.received = received

    def Export(self, request, context):  # noqa: N802 (gRPC's name)
        with self.received.lock:
            self.received.exports += 1
            export = self.received.exports
        points = []
        for rm in request.resource_metrics:
            service = str(_attributes(rm.resource.attributes).get("service.name", ""))
            for sm in rm.scope_metrics:
                for m in sm.metrics:
                    points.extend(_points(export, service, m))
        with self.received.lock:
            self.received.points.extend(points)
        return metrics_service_pb2.ExportMetricsServiceResponse()


def _points(export: int, service: str, m: Any) -> list[ReceivedPoint]:
    kind = m.WhichOneof("data")
    if kind in ("sum", "gauge"):
        data = getattr(m, kind)
        monotonic = kind == "sum" and data.is_monotonic
        return [
            ReceivedPoint(export, service, m.name, kind, monotonic, _attributes(p.attributes), _number(p))
            for p in data.data_points
        ]
    if kind == "histogram":
        return [
            ReceivedPoint(
                export,
                service,
                m.name,
                kind,
                False,
                _attributes(p.attributes),
                None,
                list(p.bucket_counts),
                list(p.explicit_bounds),
                p.count,
                p.sum,
            )
            for p in m.histogram.data_points
        ]
    raise AssertionError(f"metric {m.name} has unexpected data {kind!r}")


class OtlpReceiver:
    """Serves OTLP traces and metrics on 127.0.0.1:``port`` until ``stop()``."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.received = Received()
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(
            _Traces(self.received), self.server
        )
        metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(
            _Metrics(self.received), self.server
        )
        self.server.add_insecure_port(f"127.0.0.1:{port}")
        self.server.start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def spans(self) -> list[ReceivedSpan]:
        with self.received.lock:
            return list(self.received.spans)

    def wait_for_spans(
        self, predicate: Callable[[list[ReceivedSpan]], bool], what: str, timeout: float = 15.0
    ) -> list[ReceivedSpan]:
        deadline = time.monotonic() + timeout
        while True:
            spans = self.spans()
            if predicate(spans):
                return spans
            if time.monotonic() >= deadline:
                names = sorted({(s.service, s.name) for s in spans})
                raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}; got {names}")
            time.sleep(0.1)

    def points(self) -> list[ReceivedPoint]:
        with self.received.lock:
            return list(self.received.points)

    def wait_for_points(
        self, predicate: Callable[[list[ReceivedPoint]], bool], what: str, timeout: float = 15.0
    ) -> list[ReceivedPoint]:
        deadline = time.monotonic() + timeout
        while True:
            points = self.points()
            if predicate(points):
                return points
            if time.monotonic() >= deadline:
                names = sorted({p.name for p in points})
                raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}; got {names}")
            time.sleep(0.1)

    def stop(self) -> None:
        self.server.stop(grace=1).wait(timeout=5)
