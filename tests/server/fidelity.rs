//! Drop-in fidelity with envoyproxy/ratelimit: what its users configure and rely on, beyond the
//! basic decisions (quota mode, global shadow mode, metric labels, response headers, dynamic
//! metadata, merged domains, the reference's health name).

use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::Code;
use envoy_types::pb::envoy::service::ratelimit::v3::RateLimitResponse;
use envoy_types::pb::google::protobuf::value::Kind;

use crate::common::*;

const OK: i32 = Code::Ok as i32;
const OVER: i32 = Code::OverLimit as i32;

const CONFIG: &str = r#"
domain: fid
descriptors:
  - key: model
    quota_mode: true
    rate_limit: {unit: minute, requests_per_unit: 1}
  - key: user
    metadata: {team: core, tier: {name: free}}
    rate_limit: {name: per_user, unit: minute, requests_per_unit: 3}
  - key: route
    value_to_metric: true
    descriptors:
      - key: method
        rate_limit: {unit: minute, requests_per_unit: 100}
  - key: tenant
    detailed_metric: true
    descriptors:
      - key: path
        value: /files/*
        share_threshold: true
        detailed_metric: true
        rate_limit: {unit: minute, requests_per_unit: 100}
"#;

fn header<'a>(r: &'a RateLimitResponse, name: &str) -> Option<&'a str> {
    r.response_headers_to_add
        .iter()
        .find(|h| h.key.eq_ignore_ascii_case(name))
        .map(|h| h.value.as_str())
}

fn field<'a>(r: &'a RateLimitResponse, name: &str) -> Option<&'a Kind> {
    r.dynamic_metadata.as_ref()?.fields.get(name)?.kind.as_ref()
}

#[tokio::test]
async fn quota_mode_is_over_only_when_every_quota_descriptor_is_over() {
    let mut h = Harness::start(CONFIG).await;
    let both =
        |a: &str, b: &str| request("fid", vec![desc(&[("model", a)]), desc(&[("model", b)])]);
    let r = h.ask(both("a", "b")).await;
    assert_eq!(r.overall_code, OK);
    // a is spent: one quota descriptor over, the other within: the request passes, and b
    // is charged.
    let r = h.ask(both("a", "c")).await;
    assert_eq!((r.overall_code, r.statuses[0].code), (OK, OVER));
    assert_eq!(h.remaining("fid", &[("model", "c")]).await, 0, "c charged");
    // Every quota descriptor over: rejected.
    let r = h.ask(both("a", "b")).await;
    assert_eq!(r.overall_code, OVER);
    // A non-quota descriptor over rejects whatever the quota ones say, and charges nothing.
    for _ in 0..3 {
        h.ask(request("fid", vec![desc(&[("user", "u")])])).await;
    }
    let r = h
        .ask(request(
            "fid",
            vec![desc(&[("user", "u")]), desc(&[("model", "fresh")])],
        ))
        .await;
    assert_eq!(r.overall_code, OVER);
    assert_eq!(h.remaining("fid", &[("model", "fresh")]).await, 1);
}

#[tokio::test]
async fn global_quota_mode_puts_every_descriptor_in_quota_mode() {
    let mut h = Harness::start_with(CONFIG, |s| s.quota_mode = true).await;
    for _ in 0..3 {
        h.ask(request("fid", vec![desc(&[("user", "u")])])).await;
    }
    let r = h
        .ask(request(
            "fid",
            vec![desc(&[("user", "u")]), desc(&[("user", "v")])],
        ))
        .await;
    assert_eq!((r.overall_code, r.statuses[0].code), (OK, OVER));
}

#[tokio::test]
async fn global_shadow_mode_answers_ok_and_counts_it() {
    let mut h = Harness::start_with(CONFIG, |s| s.shadow_mode = true).await;
    for _ in 0..3 {
        h.ask(request("fid", vec![desc(&[("user", "s")])])).await;
    }
    let r = h.ask(request("fid", vec![desc(&[("user", "s")])])).await;
    assert_eq!(r.overall_code, OK, "shadowed");
    assert_eq!(
        r.statuses[0].code, OVER,
        "the descriptor still says what it is"
    );
    let metrics = h.get_text("/metrics").await;
    assert!(
        metrics.contains("tollgate_global_shadow_mode_total 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn an_over_limit_descriptor_reports_zero_remaining() {
    let mut h = Harness::start(CONFIG).await;
    h.ask(request("fid", vec![with_hits(desc(&[("user", "z")]), 2)]))
        .await;
    // 1 left, 3 asked.
    let r = h
        .ask(request("fid", vec![with_hits(desc(&[("user", "z")]), 3)]))
        .await;
    assert_eq!(r.statuses[0].code, OVER);
    assert_eq!(r.statuses[0].limit_remaining, 0);
    assert_eq!(
        h.remaining("fid", &[("user", "z")]).await,
        1,
        "nothing taken"
    );
}

#[tokio::test]
async fn an_empty_descriptor_is_ok_and_the_others_are_decided() {
    let mut h = Harness::start(CONFIG).await;
    let r = h
        .ask(request("fid", vec![desc(&[]), desc(&[("user", "e")])]))
        .await;
    assert_eq!(r.overall_code, OK);
    assert_eq!(r.statuses[0].code, OK);
    assert!(r.statuses[0].current_limit.is_none());
    assert_eq!(r.statuses[1].limit_remaining, 2);
}

#[tokio::test]
async fn a_limit_override_on_an_unknown_domain_gives_no_limit() {
    let mut h = Harness::start(CONFIG).await;
    for _ in 0..3 {
        let r = h
            .ask(request(
                "elsewhere",
                vec![with_override(desc(&[("k", "v")]), 1, 1)],
            ))
            .await;
        assert_eq!(r.overall_code, OK);
        assert!(r.statuses[0].current_limit.is_none());
    }
}

#[tokio::test]
async fn value_to_metric_and_shared_detailed_labels() {
    let mut h = Harness::start(CONFIG).await;
    h.ask(request(
        "fid",
        vec![desc(&[("route", "/api"), ("method", "GET")])],
    ))
    .await;
    for p in ["/files/a", "/files/b"] {
        h.ask(request("fid", vec![desc(&[("tenant", "t1"), ("path", p)])]))
            .await;
    }
    let metrics = h.get_text("/metrics").await;
    assert!(
        metrics.contains("tollgate_hits_total{domain=\"fid\",limit=\"route_/api.method\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("tollgate_hits_total{domain=\"fid\",limit=\"tenant_t1.path_/files/*\"} 2"),
        "{metrics}"
    );
    assert!(!metrics.contains("path_/files/a"), "{metrics}");
}

#[tokio::test]
async fn response_headers_come_from_the_descriptor_closest_to_its_limit() {
    let mut h = Harness::start_with(CONFIG, |s| {
        s.response_headers = true;
        s.retry_after = true;
        s.limit_header = "X-Limit".into();
    })
    .await;
    h.ask(request("fid", vec![with_hits(desc(&[("user", "h")]), 2)]))
        .await;
    let r = h
        .ask(request(
            "fid",
            vec![
                desc(&[("route", "/r"), ("method", "GET")]),
                desc(&[("user", "h")]),
            ],
        ))
        .await;
    assert_eq!(header(&r, "X-Limit"), Some("3"), "{r:?}");
    assert_eq!(header(&r, "RateLimit-Remaining"), Some("0"));
    assert_eq!(header(&r, "RateLimit-Reset"), Some("60"));
    assert_eq!(header(&r, "Retry-After"), None, "admitted");
    let r = h.ask(request("fid", vec![desc(&[("user", "h")])])).await;
    assert_eq!(r.overall_code, OVER);
    // 3 per minute: one token every 20 s.
    assert_eq!(header(&r, "Retry-After"), Some("20"), "{r:?}");
}

#[tokio::test]
async fn dynamic_metadata_names_the_request_the_passed_rules_and_what_tripped() {
    let mut h = Harness::start_with(CONFIG, |s| s.response_dynamic_metadata = true).await;
    let r = h
        .ask(request(
            "fid",
            vec![
                desc(&[("user", "m")]),
                with_hits(desc(&[("model", "x")]), 5),
            ],
        ))
        .await;
    assert_eq!(r.overall_code, OVER);
    assert!(matches!(field(&r, "domain"), Some(Kind::StringValue(d)) if d == "fid"));
    let Some(Kind::ListValue(ds)) = field(&r, "descriptors") else {
        panic!("{r:?}")
    };
    assert_eq!(ds.values.len(), 2);
    assert!(matches!(field(&r, "trippedDescriptorIndex"), Some(Kind::NumberValue(n)) if *n == 1.0));
    assert!(matches!(field(&r, "trippedRule"), Some(Kind::StringValue(n)) if n == "model"));
    let Some(Kind::StructValue(m)) = field(&r, "metadata") else {
        panic!("the passed rule's metadata: {r:?}")
    };
    assert!(m.fields.contains_key("team") && m.fields.contains_key("tier"));
}

#[tokio::test]
async fn merge_domain_config_joins_files_of_one_domain() {
    let mut h = Harness::start_with(CONFIG, |s| s.merge_domain_config = true).await;
    write(
        h.dir.path(),
        "more.yaml",
        "domain: fid\ndescriptors:\n  - key: extra\n    rate_limit: {unit: second, requests_per_unit: 7}\n",
    );
    eventually("the second file is merged in", async || {
        h.ask(request("fid", vec![desc(&[("extra", "e")])]))
            .await
            .statuses[0]
            .current_limit
            .as_ref()
            .is_some_and(|l| l.requests_per_unit == 7)
    })
    .await;
    let r = h
        .ask(request("fid", vec![desc(&[("user", "still")])]))
        .await;
    assert_eq!(
        r.statuses[0].limit_remaining, 2,
        "the first file's rules stay"
    );
}
