use std::time::Duration;

use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::Code;

use crate::common::*;

const OK: i32 = Code::Ok as i32;
const OVER: i32 = Code::OverLimit as i32;

const CONFIG: &str = r#"
domain: edge
descriptors:
  - key: user
    rate_limit:
      name: per_user
      unit: second
      requests_per_unit: 10
  - key: user
    value: vip
    rate_limit:
      unlimited: true
  - key: user
    value: banned
    rate_limit:
      unit: second
      requests_per_unit: 0
  - key: user
    value: healthcheck
  - key: path
    value: /upload/*
    rate_limit:
      unit: minute
      requests_per_unit: 2
      burst: 5
  - key: tenant
    rate_limit:
      unit: hour
      requests_per_unit: 1000
    descriptors:
      - key: plan
        value: trial
        rate_limit:
          name: trial
          unit: minute
          requests_per_unit: 3
          replaces:
            - name: tenant_total
      - key: plan
        rate_limit:
          name: tenant_total
          unit: minute
          requests_per_unit: 100
  - key: shadowed
    shadow_mode: true
    rate_limit:
      unit: second
      requests_per_unit: 1
"#;

#[tokio::test]
async fn ten_per_second_admits_a_burst_of_ten_then_refills_continuously() {
    let mut h = Harness::start(CONFIG).await;
    for i in 0..10u32 {
        let r = h
            .ask(request("edge", vec![desc(&[("user", "alice")])]))
            .await;
        assert_eq!(r.overall_code, OK, "request {i}");
        let s = &r.statuses[0];
        assert_eq!(s.limit_remaining, 9 - i);
        let limit = s.current_limit.as_ref().expect("current_limit");
        assert_eq!(
            (limit.name.as_str(), limit.requests_per_unit, limit.unit),
            ("per_user", 10, 1)
        );
    }
    let r = h
        .ask(request("edge", vec![desc(&[("user", "alice")])]))
        .await;
    assert_eq!(r.overall_code, OVER);
    assert_eq!(r.statuses[0].code, OVER);
    let reset = r.statuses[0].duration_until_reset.expect("reset");
    assert_eq!((reset.seconds, reset.nanos), (1, 0), "full again in 1 s");

    h.clock.advance(Duration::from_millis(350));
    let r = h
        .ask(request(
            "edge",
            vec![with_hits(desc(&[("user", "alice")]), 0)],
        ))
        .await;
    assert_eq!(
        r.statuses[0].limit_remaining, 3,
        "3.5 tokens back after 0.35 s"
    );
    let reset = r.statuses[0].duration_until_reset.expect("reset");
    assert_eq!(
        (reset.seconds, reset.nanos),
        (0, 650_000_000),
        "time until full"
    );
}

#[tokio::test]
async fn every_descriptor_gets_a_status_in_order() {
    let mut h = Harness::start(CONFIG).await;
    let r = h
        .ask(request(
            "edge",
            vec![
                desc(&[("user", "vip")]),
                desc(&[("nothing", "here")]),
                desc(&[("user", "bob")]),
            ],
        ))
        .await;
    assert_eq!(r.statuses.len(), 3);
    assert_eq!(r.statuses[0].limit_remaining, u32::MAX, "unlimited");
    assert!(r.statuses[0].current_limit.is_none());
    assert!(
        r.statuses[1].current_limit.is_none(),
        "no rule: OK without a limit"
    );
    assert_eq!(r.statuses[1].code, OK);
    assert_eq!(r.statuses[2].limit_remaining, 9);
}

#[tokio::test]
async fn whitelisted_value_has_no_limit() {
    let mut h = Harness::start(CONFIG).await;
    for _ in 0..50 {
        let r = h
            .ask(request("edge", vec![desc(&[("user", "healthcheck")])]))
            .await;
        assert_eq!(r.overall_code, OK);
        assert!(r.statuses[0].current_limit.is_none());
    }
}

#[tokio::test]
async fn zero_requests_per_unit_blocks_everything_and_charges_nothing_else() {
    let mut h = Harness::start(CONFIG).await;
    let r = h
        .ask(request(
            "edge",
            vec![desc(&[("user", "alice")]), desc(&[("user", "banned")])],
        ))
        .await;
    assert_eq!(r.overall_code, OVER);
    assert_eq!(r.statuses[1].code, OVER);
    assert_eq!(
        r.statuses[1]
            .current_limit
            .as_ref()
            .map(|l| l.requests_per_unit),
        Some(0)
    );
    assert_eq!(
        h.remaining("edge", &[("user", "alice")]).await,
        10,
        "alice was not charged"
    );
}

#[tokio::test]
async fn a_request_over_one_limit_charges_none_of_its_descriptors() {
    let mut h = Harness::start(CONFIG).await;
    for _ in 0..2 {
        h.ask(request("edge", vec![desc(&[("path", "/upload/a")])]))
            .await;
    }
    // 3 of 5 burst tokens left on the upload path; ask for 4 together with alice's 1.
    let r = h
        .ask(request(
            "edge",
            vec![
                desc(&[("user", "alice")]),
                with_hits(desc(&[("path", "/upload/a")]), 4),
            ],
        ))
        .await;
    assert_eq!(r.overall_code, OVER);
    assert_eq!(r.statuses[0].code, OK, "alice's own bucket had room");
    assert_eq!(r.statuses[1].code, OVER);
    assert_eq!(
        h.remaining("edge", &[("user", "alice")]).await,
        10,
        "alice was not charged"
    );
}

#[tokio::test]
async fn burst_extension_sets_capacity_apart_from_the_refill_rate() {
    let mut h = Harness::start(CONFIG).await;
    let r = h
        .ask(request(
            "edge",
            vec![with_hits(desc(&[("path", "/upload/x")]), 5)],
        ))
        .await;
    assert_eq!(r.overall_code, OK, "a burst of 5 on a 2/minute rule");
    let limit = r.statuses[0].current_limit.as_ref().expect("limit");
    assert_eq!(limit.requests_per_unit, 2, "Envoy sees the refill rate");
    let r = h
        .ask(request("edge", vec![desc(&[("path", "/upload/x")])]))
        .await;
    assert_eq!(r.overall_code, OVER);
    h.clock.advance(Duration::from_secs(30));
    let r = h
        .ask(request("edge", vec![desc(&[("path", "/upload/x")])]))
        .await;
    assert_eq!(r.overall_code, OK, "one token every 30 s");
}

#[tokio::test]
async fn request_hits_addend_applies_unless_the_descriptor_has_its_own() {
    let mut h = Harness::start(CONFIG).await;
    let mut req = request(
        "edge",
        vec![desc(&[("user", "a")]), with_hits(desc(&[("user", "b")]), 1)],
    );
    req.hits_addend = 4;
    let r = h.ask(req).await;
    assert_eq!(r.statuses[0].limit_remaining, 6);
    assert_eq!(r.statuses[1].limit_remaining, 9);
}

#[tokio::test]
async fn descriptor_hits_addend_zero_queries_without_consuming() {
    let mut h = Harness::start(CONFIG).await;
    h.ask(request("edge", vec![desc(&[("user", "q")])])).await;
    for _ in 0..3 {
        let mut req = request("edge", vec![with_hits(desc(&[("user", "q")]), 0)]);
        req.hits_addend = 5;
        let r = h.ask(req).await;
        assert_eq!(r.statuses[0].limit_remaining, 9);
    }
}

#[tokio::test]
async fn limit_override_bypasses_the_config() {
    let mut h = Harness::start(CONFIG).await;
    // An unknown key with an override of 2 per minute.
    for expected in [OK, OK, OVER] {
        let r = h
            .ask(request(
                "edge",
                vec![with_override(desc(&[("api_key", "k1")]), 2, 2)],
            ))
            .await;
        assert_eq!(r.overall_code, expected);
        let l = r.statuses[0]
            .current_limit
            .as_ref()
            .expect("override is the current limit");
        assert_eq!((l.requests_per_unit, l.unit), (2, 2));
    }
    // The override replaces the matching rule (10/s for users).
    let r = h
        .ask(request(
            "edge",
            vec![with_override(desc(&[("user", "o")]), 1, 1)],
        ))
        .await;
    assert_eq!(r.statuses[0].limit_remaining, 0);
}

#[tokio::test]
async fn nested_rules_apply_at_their_own_depth_only() {
    let mut h = Harness::start(CONFIG).await;
    let r = h
        .ask(request("edge", vec![desc(&[("tenant", "t1")])]))
        .await;
    assert_eq!(
        r.statuses[0]
            .current_limit
            .as_ref()
            .map(|l| l.requests_per_unit),
        Some(1000)
    );
    let r = h
        .ask(request(
            "edge",
            vec![desc(&[("tenant", "t1"), ("plan", "gold")])],
        ))
        .await;
    assert_eq!(
        r.statuses[0]
            .current_limit
            .as_ref()
            .map(|l| l.name.as_str()),
        Some("tenant_total")
    );
    let r = h
        .ask(request(
            "edge",
            vec![desc(&[("tenant", "t1"), ("plan", "gold"), ("extra", "x")])],
        ))
        .await;
    assert!(
        r.statuses[0].current_limit.is_none(),
        "deeper than any rule: no limit"
    );
}

#[tokio::test]
async fn a_rule_named_in_replaces_is_dropped_for_that_request() {
    let mut h = Harness::start(CONFIG).await;
    let r = h
        .ask(request(
            "edge",
            vec![
                desc(&[("tenant", "t1"), ("plan", "trial")]),
                desc(&[("tenant", "t1"), ("plan", "other")]),
            ],
        ))
        .await;
    assert_eq!(
        r.statuses[0]
            .current_limit
            .as_ref()
            .map(|l| l.name.as_str()),
        Some("trial")
    );
    assert!(
        r.statuses[1].current_limit.is_none(),
        "tenant_total is replaced by trial"
    );
}

#[tokio::test]
async fn shadow_mode_answers_ok_when_over() {
    let mut h = Harness::start(CONFIG).await;
    for _ in 0..3 {
        let r = h
            .ask(request("edge", vec![desc(&[("shadowed", "s")])]))
            .await;
        assert_eq!(r.overall_code, OK);
        assert_eq!(r.statuses[0].code, OK);
    }
    let metrics = h.get_text("/metrics").await;
    assert!(
        metrics.contains("tollgate_shadow_mode_total{domain=\"edge\",limit=\"shadowed\"} 2"),
        "{metrics}"
    );
}

#[tokio::test]
async fn unknown_domain_is_ok_and_counted() {
    let mut h = Harness::start(CONFIG).await;
    let r = h.ask(request("nope", vec![desc(&[("user", "a")])])).await;
    assert_eq!(r.overall_code, OK);
    assert!(r.statuses[0].current_limit.is_none());
    let metrics = h.get_text("/metrics").await;
    assert!(
        metrics.contains("tollgate_unknown_domain_total 1"),
        "{metrics}"
    );
}
