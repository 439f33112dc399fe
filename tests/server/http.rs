use crate::common::*;

const CONFIG: &str = "domain: d\ndescriptors:\n  - key: k\n    rate_limit: {name: two, unit: minute, requests_per_unit: 2}\n";

async fn post_json(h: &Harness, body: &str) -> (u16, String) {
    let r = reqwest::Client::new()
        .post(h.http("/json"))
        .body(body.to_string())
        .send()
        .await
        .expect("answered");
    (r.status().as_u16(), r.text().await.expect("body"))
}

#[tokio::test]
async fn json_answers_200_within_the_limit_and_429_over_it() {
    let h = Harness::start(CONFIG).await;
    let body = r#"{"domain":"d","descriptors":[{"entries":[{"key":"k","value":"v"}]}]}"#;
    let (code, text) = post_json(&h, body).await;
    assert_eq!(code, 200, "{text}");
    let v: serde_json::Value = serde_json::from_str(&text).expect("json");
    assert_eq!(v["overallCode"], "OK");
    assert_eq!(v["statuses"][0]["limitRemaining"], 1);
    assert_eq!(v["statuses"][0]["currentLimit"]["name"], "two");
    assert_eq!(v["statuses"][0]["currentLimit"]["unit"], "MINUTE");
    assert_eq!(v["statuses"][0]["durationUntilReset"], "30s");
    post_json(&h, body).await;
    let (code, text) = post_json(&h, body).await;
    assert_eq!(code, 429, "{text}");
    assert!(text.contains("\"OVER_LIMIT\""), "{text}");
}

#[tokio::test]
async fn json_refuses_bad_input_with_400_and_a_reason() {
    let h = Harness::start(CONFIG).await;
    let (code, text) = post_json(&h, "{not json").await;
    assert_eq!(code, 400);
    assert!(text.contains("invalid RateLimitRequest JSON"), "{text}");
    let (code, text) = post_json(&h, r#"{"domain":"d","descriptors":[]}"#).await;
    assert_eq!(code, 400);
    assert!(text.contains("descriptor list must not be empty"), "{text}");
}

#[tokio::test]
async fn health_and_readiness_answer_200() {
    let h = Harness::start(CONFIG).await;
    for path in ["/healthz", "/readyz"] {
        let r = reqwest::get(h.http(path)).await.expect("answered");
        assert_eq!(r.status().as_u16(), 200, "{path}");
    }
}

#[tokio::test]
async fn grpc_health_reports_serving_overall_and_for_the_rls() {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::HealthCheckRequest;
    let h = Harness::start(CONFIG).await;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", h.server.grpc_addr))
        .expect("endpoint")
        .connect()
        .await
        .expect("connects");
    let mut client = HealthClient::new(channel);
    // "ratelimit" is the name the reference registers; probes written for it keep working.
    for service in [
        "",
        "envoy.service.ratelimit.v3.RateLimitService",
        "ratelimit",
    ] {
        let r = client
            .check(HealthCheckRequest {
                service: service.to_string(),
            })
            .await
            .expect("answered")
            .into_inner();
        assert_eq!(
            r.status,
            ServingStatus::Serving as i32,
            "service {service:?}"
        );
    }
}

#[tokio::test]
async fn rlconfig_shows_the_loaded_rules() {
    let h = Harness::start(CONFIG).await;
    let text = h.get_text("/rlconfig").await;
    assert!(text.contains("d.k:"), "{text}");
    assert!(text.contains("requests_per_unit=2"), "{text}");
}

#[tokio::test]
async fn shutdown_turns_readiness_off_before_closing() {
    let h = Harness::start(CONFIG).await;
    h.server.readiness.set_draining();
    let r = reqwest::get(h.http("/readyz")).await.expect("answered");
    assert_eq!(r.status().as_u16(), 503);
    // Still deciding correctly for requests already routed here.
    let (code, _) = post_json(
        &h,
        r#"{"domain":"d","descriptors":[{"entries":[{"key":"k","value":"v"}]}]}"#,
    )
    .await;
    assert_eq!(code, 200);
    h.server.shutdown().await.expect("clean shutdown");
}
