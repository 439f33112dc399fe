//! Token budgets for LLM traffic, as Envoy drives them: a 0-hit pre-check before the request
//! goes upstream, the usage reported when the response stream ends (`charge_over_limit`),
//! several limits on one descriptor (`rate_limits`), periods of several units
//! (`unit_multiplier`) and refunds (`allow_refunds`).

use std::time::Duration;

use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::{Code, RateLimit};
use tonic::Code as GrpcCode;

use crate::common::*;

const OK: i32 = Code::Ok as i32;
const OVER: i32 = Code::OverLimit as i32;
const SECOND: i32 = 1;
const MINUTE: i32 = 2;

const CONFIG: &str = r#"
domain: llm
descriptors:
  - key: user
    rate_limit: {unit: minute, requests_per_unit: 1000, charge_over_limit: true}
  - key: plain_user
    rate_limit: {unit: minute, requests_per_unit: 1000}
  - key: tenant
    rate_limits:
      - {unit: second, requests_per_unit: 3}
      - {unit: hour, requests_per_unit: 5, name: tenant_hourly}
  - key: five_minutes
    rate_limit: {unit: minute, requests_per_unit: 1000, unit_multiplier: 5}
  - key: streams
    rate_limit: {unit: hour, requests_per_unit: 3, allow_refunds: true}
"#;

fn user(name: &str, hits: u64) -> envoy_types::pb::envoy::service::ratelimit::v3::RateLimitRequest {
    request("llm", vec![with_hits(desc(&[("user", name)]), hits)])
}

#[tokio::test]
async fn a_budget_charged_after_the_fact_refuses_the_call_after_the_one_that_overran_it() {
    let mut h = Harness::start(CONFIG).await;
    // 1,000 tokens a minute, each call uses 300: four calls start (the fourth with 100 left).
    for call in 1..=4 {
        let pre = h.ask(user("bob", 0)).await;
        assert_eq!(pre.overall_code, OK, "pre-check of call {call}");
        h.ask(user("bob", 300)).await;
    }
    // The fourth report went 200 into debt: the fifth call is refused before it starts.
    let fifth = h.ask(user("bob", 0)).await;
    assert_eq!(fifth.overall_code, OVER);
    assert_eq!(fifth.statuses[0].limit_remaining, 0);
    // 201 tokens at 1,000 a minute later (12.06 s) one whole token is back.
    h.clock.advance(Duration::from_millis(12_000));
    assert_eq!(h.ask(user("bob", 0)).await.overall_code, OVER);
    h.clock.advance(Duration::from_millis(100));
    assert_eq!(h.ask(user("bob", 0)).await.overall_code, OK);
}

#[tokio::test]
async fn a_usage_report_beyond_what_is_left_is_charged_and_answered_over() {
    let mut h = Harness::start(CONFIG).await;
    h.ask(user("ann", 500)).await;
    let report = h.ask(user("ann", 800)).await;
    // The tokens were not there, so the answer says over; they are charged anyway.
    assert_eq!(report.overall_code, OVER);
    assert_eq!(h.ask(user("ann", 0)).await.overall_code, OVER);
    // Debt is bounded to one capacity: a huge report leaves the bucket at -1,000 tokens,
    // full again two minutes later.
    h.ask(user("ann", 1_000_000)).await;
    let read = h.ask(user("ann", 0)).await;
    assert_eq!(
        read.statuses[0]
            .duration_until_reset
            .as_ref()
            .map(|d| d.seconds),
        Some(120)
    );
}

#[tokio::test]
async fn without_charge_over_limit_a_report_larger_than_what_is_left_charges_nothing() {
    let mut h = Harness::start(CONFIG).await;
    let plain = |hits| request("llm", vec![with_hits(desc(&[("plain_user", "bob")]), hits)]);
    h.ask(plain(500)).await;
    assert_eq!(h.ask(plain(800)).await.overall_code, OVER);
    // All or nothing: the 800 were not charged, and a pre-check passes.
    let pre = h.ask(plain(0)).await;
    assert_eq!(pre.overall_code, OK);
    assert_eq!(pre.statuses[0].limit_remaining, 500);
}

fn tenant(name: &str) -> envoy_types::pb::envoy::service::ratelimit::v3::RateLimitRequest {
    request("llm", vec![desc(&[("tenant", name)])])
}

#[tokio::test]
async fn several_limits_all_must_pass_and_the_status_reports_the_most_restrictive() {
    let mut h = Harness::start(CONFIG).await;
    // 3 a second and 5 an hour. After one call: 2 of 3 and 4 of 5 left: the per-second
    // limit has fewer left.
    let first = h.ask(tenant("acme")).await;
    assert_eq!(first.overall_code, OK);
    let s = &first.statuses[0];
    assert_eq!(s.limit_remaining, 2);
    assert_eq!(
        s.current_limit,
        Some(RateLimit {
            name: String::new(),
            requests_per_unit: 3,
            unit: SECOND,
        })
    );
    h.ask(tenant("acme")).await;
    h.ask(tenant("acme")).await;
    // The fourth is over the per-second limit: refused, and the hourly one is not charged.
    let fourth = h.ask(tenant("acme")).await;
    assert_eq!(fourth.overall_code, OVER);
    assert_eq!(
        fourth.statuses[0].current_limit.as_ref().map(|l| l.unit),
        Some(SECOND)
    );
    // A second later the per-second limit is full (3) and the hourly one has 2 left, not 1:
    // now the hourly one is the most restrictive.
    h.clock.advance(Duration::from_secs(1));
    let read = h
        .ask(request(
            "llm",
            vec![with_hits(desc(&[("tenant", "acme")]), 0)],
        ))
        .await;
    let s = &read.statuses[0];
    assert_eq!(s.limit_remaining, 2);
    assert_eq!(
        s.current_limit.as_ref().map(|l| l.name.as_str()),
        Some("tenant_hourly")
    );
    // Two more pass; then the hourly limit refuses although the per-second one has room.
    h.ask(tenant("acme")).await;
    h.ask(tenant("acme")).await;
    h.clock.advance(Duration::from_secs(1));
    let over = h.ask(tenant("acme")).await;
    assert_eq!(over.overall_code, OVER);
    assert_eq!(
        over.statuses[0]
            .current_limit
            .as_ref()
            .map(|l| l.name.as_str()),
        Some("tenant_hourly")
    );
}

#[tokio::test]
async fn a_period_of_five_minutes_refills_over_five_minutes_and_reports_the_rate_per_minute() {
    let mut h = Harness::start(CONFIG).await;
    let ask = |hits| {
        request(
            "llm",
            vec![with_hits(desc(&[("five_minutes", "bob")]), hits)],
        )
    };
    let full = h.ask(ask(1000)).await;
    assert_eq!(full.overall_code, OK);
    // What Envoy's x-ratelimit-limit is built from: the same rate in a whole unit.
    assert_eq!(
        full.statuses[0]
            .current_limit
            .as_ref()
            .map(|l| (l.requests_per_unit, l.unit)),
        Some((200, MINUTE))
    );
    assert_eq!(
        full.statuses[0]
            .duration_until_reset
            .as_ref()
            .map(|d| d.seconds),
        Some(300)
    );
    // One minute refills a fifth: 200 tokens.
    h.clock.advance(Duration::from_secs(60));
    assert_eq!(h.remaining("llm", &[("five_minutes", "bob")]).await, 200);
}

fn stream(
    name: &str,
    negative: bool,
) -> envoy_types::pb::envoy::service::ratelimit::v3::RateLimitRequest {
    let mut d = desc(&[("streams", name)]);
    d.is_negative_hits = negative;
    request("llm", vec![d])
}

#[tokio::test]
async fn refunds_on_an_opted_in_rule_bound_what_is_in_flight_and_never_exceed_the_capacity() {
    let mut h = Harness::start(CONFIG).await;
    // At most 3 streams in flight: +1 when one starts, -1 (is_negative_hits) when it ends.
    for _ in 0..3 {
        assert_eq!(h.ask(stream("bob", false)).await.overall_code, OK);
    }
    assert_eq!(h.ask(stream("bob", false)).await.overall_code, OVER);
    let back = h.ask(stream("bob", true)).await;
    assert_eq!(back.overall_code, OK);
    assert_eq!(back.statuses[0].limit_remaining, 1);
    assert_eq!(h.ask(stream("bob", false)).await.overall_code, OK);
    // More refunds than streams: the bucket stops at its capacity.
    for _ in 0..5 {
        h.ask(stream("bob", true)).await;
    }
    assert_eq!(h.remaining("llm", &[("streams", "bob")]).await, 3);
}

#[tokio::test]
async fn a_refund_on_a_rule_that_does_not_take_them_is_refused_naming_the_rule() {
    let mut h = Harness::start(CONFIG).await;
    let mut d = desc(&[("plain_user", "bob")]);
    d.is_negative_hits = true;
    let s = h
        .client
        .should_rate_limit(request("llm", vec![d]))
        .await
        .expect_err("refused");
    assert_eq!(s.code(), GrpcCode::InvalidArgument);
    assert!(
        s.message()
            .contains("is_negative_hits is not supported on rule 'llm.plain_user'")
            && s.message().contains("allow_refunds"),
        "{}",
        s.message()
    );
    // The server keeps serving.
    assert_eq!(h.ask(user("bob", 0)).await.overall_code, OK);
}

#[tokio::test]
async fn a_budget_in_debt_rejects_the_whole_request_and_charges_its_plain_limits_nothing() {
    let mut h = Harness::start(CONFIG).await;
    h.ask(user("eve", 1500)).await;
    let both = request(
        "llm",
        vec![
            with_hits(desc(&[("user", "eve")]), 0),
            desc(&[("plain_user", "eve")]),
        ],
    );
    let answer = h.ask(both).await;
    assert_eq!(answer.overall_code, OVER);
    assert_eq!(answer.statuses[0].code, OVER);
    assert_eq!(h.remaining("llm", &[("plain_user", "eve")]).await, 1000);
}

const BIN: &str = env!("CARGO_BIN_EXE_tollgate");

#[test]
fn check_config_accepts_the_budget_keys_and_refuses_bad_ones_with_where() {
    let dir = tempfile::tempdir().expect("tmp");
    let good = dir.path().join("good.yaml");
    std::fs::write(&good, CONFIG).expect("write");
    let out = std::process::Command::new(BIN)
        .arg("check-config")
        .arg(&good)
        .output()
        .expect("runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "domain: d\ndescriptors:\n  - key: k\n    rate_limit: {unit: minute, requests_per_unit: 1, unit_multiplier: 0}\n  - key: j\n    rate_limit: {unit: minute, requests_per_unit: 1}\n    rate_limits: [{unit: minute, requests_per_unit: 1}]\n",
    )
    .expect("write");
    let out = std::process::Command::new(BIN)
        .arg("check-config")
        .arg(&bad)
        .output()
        .expect("runs");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad.yaml") && err.contains("unit_multiplier must be"),
        "{err}"
    );
    assert!(
        err.contains("rate_limit and rate_limits cannot both be set"),
        "{err}"
    );
}
