//! Token budgets across three nodes: pre-checks on one node, usage reports on another (as two
//! Envoys, or one Envoy's two calls on two connections, would send them), and refunds given on
//! several nodes at once.

use envoy_types::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::Entry;
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
use envoy_types::pb::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};
use envoy_types::pb::google::protobuf::UInt64Value;

use crate::common::*;

const BUDGET: &str = "domain: llm\ndescriptors:\n  - key: user\n    rate_limit: {unit: minute, requests_per_unit: 1000, charge_over_limit: true}\n  - key: streams\n    rate_limit: {unit: hour, requests_per_unit: 2, allow_refunds: true}\n";

const OK: i32 = 1;
const OVER: i32 = 2;

fn ask(key: &str, value: &str, hits: Option<u64>, negative: bool) -> RateLimitRequest {
    RateLimitRequest {
        domain: "llm".into(),
        descriptors: vec![RateLimitDescriptor {
            entries: vec![Entry {
                key: key.into(),
                value: value.into(),
            }],
            hits_addend: hits.map(|value| UInt64Value { value }),
            is_negative_hits: negative,
            ..Default::default()
        }],
        hits_addend: 0,
    }
}

async fn send(node: &mut Node, req: RateLimitRequest) -> RateLimitResponse {
    node.client
        .should_rate_limit(req)
        .await
        .expect("answered")
        .into_inner()
}

/// A pre-check (0 hits) of `user` on `node`: its code and the tokens it reports left.
async fn precheck(node: &mut Node, user: &str) -> (i32, u32) {
    let r = send(node, ask("user", user, Some(0), false)).await;
    (r.overall_code, r.statuses[0].limit_remaining)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_reported_to_one_node_is_enforced_by_the_pre_checks_of_the_others() {
    let mut c = Cluster::start_with_config(3, BUDGET, |_| {}).await;
    // 1,000 tokens a minute, 300 a call: pre-checks on n0, reports on n1.
    for call in 1..=4u32 {
        assert_eq!(
            precheck(&mut c.nodes[0], "alice").await.0,
            OK,
            "call {call}"
        );
        send(&mut c.nodes[1], ask("user", "alice", Some(300), false)).await;
        // Within the replication delay n0 sees the report.
        let left = 1000u32.saturating_sub(300 * call);
        let n0 = &mut c.nodes[0];
        eventually(&format!("n0 sees report {call}"), async || {
            let (code, remaining) = precheck(n0, "alice").await;
            if left == 0 {
                code == OVER
            } else {
                remaining == left
            }
        })
        .await;
    }
    // The fourth report left 200 of debt: the fifth call is refused by every node.
    for n in c.nodes.iter_mut() {
        assert_eq!(precheck(n, "alice").await, (OVER, 0), "on {}", n.name);
    }
    // Debt crossing nodes is debt everywhere: one more token of usage reported on n2
    // still leaves every node refusing, and a fresh user is untouched.
    send(&mut c.nodes[2], ask("user", "alice", Some(1), false)).await;
    c.converged().await;
    for n in c.nodes.iter_mut() {
        assert_eq!(precheck(n, "alice").await.0, OVER, "on {}", n.name);
        assert_eq!(precheck(n, "bob").await, (OK, 1000), "on {}", n.name);
    }
}

/// Each replica's refunds of the `streams` key on `node`, by node name.
fn refunds_on(node: &Node) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    node.server.limiter.store().for_each(|_, limit, s| {
        if limit.capacity() == 2 {
            for r in s.refunds() {
                let who = node.server.replicas.get(r.replica).expect("known replica");
                out.push((who.node, r.refunded));
            }
        }
    });
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refunds_given_on_two_nodes_both_count_everywhere_and_never_exceed_the_capacity() {
    let mut c = Cluster::start_with_config(3, BUDGET, |_| {}).await;
    // Two streams start on n0: the limit of 2 in flight is reached on every node.
    for _ in 0..2 {
        let r = send(&mut c.nodes[0], ask("streams", "bob", None, false)).await;
        assert_eq!(r.overall_code, OK);
    }
    c.settled().await;
    let r = send(&mut c.nodes[2], ask("streams", "bob", None, false)).await;
    assert_eq!(r.overall_code, OVER);
    // They end on two other nodes, each giving one back, before either hears of the other.
    send(&mut c.nodes[1], ask("streams", "bob", None, true)).await;
    send(&mut c.nodes[2], ask("streams", "bob", None, true)).await;
    // Refunds are a counter per replica that only grows: both count, on every node.
    let want = vec![("n1".to_string(), 1), ("n2".to_string(), 1)];
    for i in 0..3 {
        let node = &c.nodes[i];
        eventually(&format!("{} holds both refunds", node.name), async || {
            refunds_on(node) == want
        })
        .await;
    }
    for n in c.nodes.iter_mut() {
        let r = send(n, ask("streams", "bob", Some(0), false)).await;
        assert_eq!(r.statuses[0].limit_remaining, 2, "on {}", n.name);
    }
    // More refunds than streams in flight give nothing more back: still 2, on every node.
    send(&mut c.nodes[0], ask("streams", "bob", None, true)).await;
    c.converged().await;
    let r = send(&mut c.nodes[1], ask("streams", "bob", Some(0), false)).await;
    assert_eq!(r.statuses[0].limit_remaining, 2);
    // Two new streams fit, a third does not.
    for expect in [OK, OK, OVER] {
        let r = send(&mut c.nodes[1], ask("streams", "bob", None, false)).await;
        assert_eq!(r.overall_code, expect);
    }
}
