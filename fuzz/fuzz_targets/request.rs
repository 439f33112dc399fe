//! Any bytes as a ShouldRateLimit request body: validated and decided, or refused with a
//! reason; never a panic.
#![no_main]

use std::sync::{Arc, OnceLock};

use envoy_types::pb::envoy::service::ratelimit::v3::RateLimitRequest;
use libfuzzer_sys::fuzz_target;
use prost::Message;
use tollgate::bucket::ReplicaId;
use tollgate::clock::SystemClock;
use tollgate::config::RateLimitConfig;
use tollgate::limiter::{Limiter, RequestBounds};
use tollgate::metrics::Metrics;
use tollgate::store::{Store, StoreConfig};

/// Rules of every kind a request can meet: nested, wildcard, unlimited, shadow, quota,
/// replaces, zero, on the domains the fuzzer most easily spells.
const CONFIG: &str = r#"
domain: d
descriptors:
  - key: k
    rate_limit: {unit: second, requests_per_unit: 5}
  - key: k
    value: v
    rate_limit: {unit: minute, requests_per_unit: 0}
  - key: w
    value: "a*"
    shadow_mode: true
    rate_limit: {unit: hour, requests_per_unit: 3}
  - key: q
    quota_mode: true
    rate_limit: {unit: day, requests_per_unit: 2}
  - key: u
    rate_limit: {unlimited: true}
  - key: n
    descriptors:
      - key: m
        rate_limit: {name: inner, unit: second, requests_per_unit: 1, replaces: [{name: outer}]}
  - key: o
    rate_limit: {name: outer, unit: second, requests_per_unit: 10}
"#;

fn limiter() -> &'static Limiter {
    static LIMITER: OnceLock<Limiter> = OnceLock::new();
    LIMITER.get_or_init(|| {
        let config = RateLimitConfig::from_files(&[("fuzz.yaml".to_string(), CONFIG.to_string())])
            .expect("the fuzz config is valid");
        Limiter::new(
            config,
            Arc::new(Store::new(StoreConfig::default(), ReplicaId(0))),
            Arc::new(SystemClock::new()),
            Metrics::new(),
            RequestBounds::default(),
            0.8,
        )
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(request) = RateLimitRequest::decode(data) else {
        return;
    };
    match limiter().should_rate_limit(&request) {
        Ok(response) => assert!(response.statuses.len() <= request.descriptors.len()),
        Err(e) => assert!(!e.to_string().is_empty()),
    }
});
