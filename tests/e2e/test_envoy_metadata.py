"""What tollgate can add to Envoy's response, seen through a real Envoy: the reference's
`RESPONSE_DYNAMIC_METADATA` (with the rule that tripped, for the access log), its
`RateLimit-*` response headers, and `Retry-After` on a 429.

Same stack as test_envoy.py (its bootstrap, plus a file access log on the edge listener that
prints the rate limit filter's dynamic metadata).
"""

from __future__ import annotations

import re
import time
from pathlib import Path

from test_envoy import HOST, envoy_bootstrap

CONFIG = """\
domain: edge
descriptors:
  - key: user
    metadata:
      owner: edge-team
    rate_limit:
      name: per-user
      unit: minute
      requests_per_unit: 2
"""

NS = "envoy.filters.http.ratelimit"
LOG_FORMAT = (
    f"%RESPONSE_CODE% rule=%DYNAMIC_METADATA({NS}:trippedRule)% "
    f"index=%DYNAMIC_METADATA({NS}:trippedDescriptorIndex)% "
    f"domain=%DYNAMIC_METADATA({NS}:domain)% owner=%DYNAMIC_METADATA({NS}:metadata:owner)%\n"
)


def with_access_log(bootstrap: dict, path: Path) -> dict:
    edge = bootstrap["static_resources"]["listeners"][0]
    hcm = edge["filter_chains"][0]["filters"][0]["typed_config"]
    hcm["access_log"] = [
        {
            "name": "envoy.access_loggers.file",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
                "path": str(path),
                "log_format": {"text_format_source": {"inline_string": LOG_FORMAT}},
            },
        }
    ]
    return bootstrap


def test_access_log_names_the_rule_that_rejected_and_429_says_when_to_retry(
    tollgate, envoy, harness, tmp_path
) -> None:
    server = tollgate(
        CONFIG,
        extra_args=[
            "--response-dynamic-metadata",
            "true",
            "--response-headers",
            "true",
            "--retry-after",
            "true",
        ],
    )
    edge_port, upstream_port = harness.free_port(), harness.free_port()
    log = tmp_path / "access.log"
    envoy(
        with_access_log(envoy_bootstrap(edge_port, upstream_port, server.grpc_port), log),
        wait_ports=(edge_port, upstream_port),
    )
    harness.wait_for_port(server.grpc_port, "tollgate gRPC")
    url = f"http://{HOST}:{edge_port}/"

    responses = [harness.http_request(url, headers={"x-user-id": "alice"}) for _ in range(3)]

    assert [r.status for r in responses] == [200, 200, 429]
    admitted, rejected = responses[1], responses[2]
    assert admitted.headers.get("ratelimit-limit") == "2", admitted.headers
    assert admitted.headers.get("ratelimit-remaining") == "0", admitted.headers
    # 2 per minute: one token back every 30 s.
    assert rejected.headers.get("retry-after") == "30", rejected.headers
    assert rejected.headers.get("ratelimit-remaining") == "0", rejected.headers
    assert "x-ratelimit-limit" in rejected.headers, "Envoy's own headers still work"

    deadline = time.monotonic() + 10
    lines: list[str] = []
    while len(lines) < 3 and time.monotonic() < deadline:
        lines = log.read_text().splitlines() if log.exists() else []
        time.sleep(0.1)
    assert len(lines) == 3, lines
    assert lines[0].startswith("200 rule=- index=- domain=edge owner=edge-team"), lines
    assert re.match(r"429 rule=per-user index=0(\.0)? domain=edge owner=-$", lines[2]), lines
