use std::time::Duration;

use crate::common::*;

const CONFIG: &str = "domain: d\ndescriptors:\n  - key: user\n    rate_limit: {unit: minute, requests_per_unit: 10}\n";

fn value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)
                .and_then(|rest| rest.trim().parse().ok())
        })
        .unwrap_or_else(|| panic!("no series {series} in:\n{text}"))
}

#[tokio::test]
async fn thirty_requests_on_ten_per_minute_read_true_at_scrape_time() {
    let mut h = Harness::start(CONFIG).await;
    for _ in 0..30 {
        h.ask(request("d", vec![desc(&[("user", "u1")])])).await;
        h.clock.advance(Duration::from_millis(100));
    }
    let text = h.get_text("/metrics").await;
    let l = "{domain=\"d\",limit=\"user\"}";
    assert_eq!(value(&text, &format!("token_bucket_capacity{l}")), 10.0);
    assert!((value(&text, &format!("token_bucket_fill_rate{l}")) - 10.0 / 60.0).abs() < 1e-9);
    assert!((value(&text, &format!("token_bucket_rejection_rate{l}")) - 2.0 / 3.0).abs() < 1e-9);
    // 3 s have passed: half a token is back, so all 10 are still in use.
    assert_eq!(
        value(&text, &format!("token_bucket_current_usage{l}")),
        10.0
    );
    // Empty since the 10th request, 0.9 s after the first; now is 3.0 s after it.
    assert!((value(&text, &format!("token_bucket_refill_delay{l}")) - 2.1).abs() < 1e-6);
    assert_eq!(value(&text, &format!("tollgate_hits_total{l}")), 30.0);
    assert_eq!(value(&text, &format!("tollgate_over_limit_total{l}")), 20.0);
    assert_eq!(
        value(&text, &format!("tollgate_within_limit_total{l}")),
        10.0
    );
    assert_eq!(value(&text, "tollgate_requests_total{code=\"OK\"}"), 30.0);
    assert_eq!(value(&text, "tollgate_live_keys"), 1.0);
    assert!(
        text.contains("tollgate_request_duration_seconds_bucket"),
        "latency histogram"
    );
    assert!(text.contains("tollgate_build_info{version="), "build info");

    // A minute later the bucket is full again: no usage, no delay.
    h.clock.advance(Duration::from_secs(60));
    let text = h.get_text("/metrics").await;
    assert_eq!(value(&text, &format!("token_bucket_current_usage{l}")), 0.0);
    assert_eq!(value(&text, &format!("token_bucket_refill_delay{l}")), 0.0);
}

#[tokio::test]
async fn near_limit_counts_admitted_hits_past_the_ratio() {
    let mut h = Harness::start(CONFIG).await;
    for _ in 0..10 {
        h.ask(request("d", vec![desc(&[("user", "u1")])])).await;
    }
    let text = h.get_text("/metrics").await;
    // Hits 8, 9 and 10 leave 80 %, 90 % and 100 % of the bucket in use.
    assert_eq!(
        value(
            &text,
            "tollgate_near_limit_total{domain=\"d\",limit=\"user\"}"
        ),
        3.0
    );
}
