//! The decision path with budgets charged after the fact, several limits per descriptor,
//! multi-unit periods and refunds, on one in-process store and a manual clock.

use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::Entry;
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::Code;
use envoy_types::pb::envoy::service::ratelimit::v3::RateLimitRequest;
use envoy_types::pb::google::protobuf::UInt64Value;

use super::{Limiter, RequestBounds, RequestError};
use crate::bucket::ReplicaId;
use crate::clock::ManualClock;
use crate::config::RateLimitConfig;
use crate::metrics::Metrics;
use crate::store::{Store, StoreConfig};

const T0: i64 = 1_700_000_000_000_000_000;
const OK: i32 = Code::Ok as i32;
const OVER: i32 = Code::OverLimit as i32;

const CONFIG: &str = r#"
domain: llm
descriptors:
  - key: user
    rate_limit: {unit: minute, requests_per_unit: 1000, charge_over_limit: true}
  - key: mixed
    rate_limits:
      - {unit: minute, requests_per_unit: 10, name: plain}
      - {unit: minute, requests_per_unit: 100, charge_over_limit: true, name: usage}
  - key: both
    rate_limits:
      - {unit: second, requests_per_unit: 2}
      - {unit: minute, requests_per_unit: 3}
  - key: quota
    quota_mode: true
    rate_limits:
      - {unit: minute, requests_per_unit: 1}
      - {unit: minute, requests_per_unit: 5}
  - key: streams
    rate_limit: {unit: hour, requests_per_unit: 2, allow_refunds: true}
  - key: slow
    rate_limit: {unit: second, requests_per_unit: 10, unit_multiplier: 30}
"#;

fn limiter() -> (Limiter, ManualClock) {
    let config =
        RateLimitConfig::from_files(&[("t.yaml".into(), CONFIG.into())]).expect("valid config");
    let clock = ManualClock::new(T0);
    let store = Arc::new(Store::new(StoreConfig::default(), ReplicaId(0)));
    let limiter = Limiter::new(
        config,
        store,
        Arc::new(clock.clone()),
        Metrics::new(),
        RequestBounds::default(),
        0.8,
    );
    (limiter, clock)
}

fn desc(key: &str, value: &str, hits: Option<u64>, negative: bool) -> RateLimitDescriptor {
    RateLimitDescriptor {
        entries: vec![Entry {
            key: key.into(),
            value: value.into(),
        }],
        hits_addend: hits.map(|value| UInt64Value { value }),
        is_negative_hits: negative,
        ..Default::default()
    }
}

fn ask(l: &Limiter, descriptors: Vec<RateLimitDescriptor>) -> (i32, Vec<(i32, u32, String)>) {
    let req = RateLimitRequest {
        domain: "llm".into(),
        descriptors,
        hits_addend: 0,
    };
    let resp = l.should_rate_limit(&req).expect("valid request");
    let statuses = resp
        .statuses
        .iter()
        .map(|s| {
            let name = s
                .current_limit
                .as_ref()
                .map(|c| c.name.clone())
                .unwrap_or_default();
            (s.code, s.limit_remaining, name)
        })
        .collect();
    (resp.overall_code, statuses)
}

#[test]
fn a_precheck_passes_while_a_token_is_left_and_usage_goes_into_debt() {
    let (l, clock) = limiter();
    assert_eq!(ask(&l, vec![desc("user", "a", Some(0), false)]).0, OK);
    assert_eq!(ask(&l, vec![desc("user", "a", Some(999), false)]).0, OK);
    // One token left: the pre-check passes.
    assert_eq!(ask(&l, vec![desc("user", "a", Some(0), false)]).0, OK);
    // 300 used with 1 left: charged, 299 into debt, answered over.
    assert_eq!(ask(&l, vec![desc("user", "a", Some(300), false)]).0, OVER);
    assert_eq!(ask(&l, vec![desc("user", "a", Some(0), false)]).0, OVER);
    // Repaid at the refill rate: 300 tokens (18 s at 1,000 a minute) to get one back.
    clock.advance(Duration::from_millis(17_900));
    assert_eq!(ask(&l, vec![desc("user", "a", Some(0), false)]).0, OVER);
    clock.advance(Duration::from_millis(200));
    assert_eq!(ask(&l, vec![desc("user", "a", Some(0), false)]).0, OK);
}

#[test]
fn usage_is_charged_even_when_a_plain_limit_of_the_same_descriptor_refuses() {
    let (l, _) = limiter();
    // 20 hits: over the plain 10, within the usage 100. The request is over; the plain limit
    // charges nothing (all or nothing), the usage limit charges its 20 anyway.
    let (code, statuses) = ask(&l, vec![desc("mixed", "m", Some(20), false)]);
    assert_eq!(code, OVER);
    assert_eq!(statuses[0].2, "plain");
    let (_, read) = ask(&l, vec![desc("mixed", "m", Some(0), false)]);
    // Most restrictive when both are within: the fewest left, which is the plain 10.
    assert_eq!(read[0], (OK, 10, "plain".into()));
    // 95 more of usage: the usage limit goes into debt and refuses; the plain one is read.
    let (code, statuses) = ask(&l, vec![desc("mixed", "m", Some(95), false)]);
    assert_eq!(code, OVER);
    assert_eq!(statuses[0].2, "usage");
    let (code, statuses) = ask(&l, vec![desc("mixed", "m", None, false)]);
    assert_eq!(code, OVER);
    assert_eq!(statuses[0].2, "usage");
}

#[test]
fn several_plain_limits_are_all_or_nothing() {
    let (l, clock) = limiter();
    // 2 a second, 3 a minute.
    assert_eq!(ask(&l, vec![desc("both", "b", None, false)]).0, OK);
    assert_eq!(ask(&l, vec![desc("both", "b", None, false)]).0, OK);
    assert_eq!(ask(&l, vec![desc("both", "b", None, false)]).0, OVER);
    clock.advance(Duration::from_secs(1));
    // The refused third call took nothing from the minute limit: one is left.
    assert_eq!(ask(&l, vec![desc("both", "b", None, false)]).0, OK);
    assert_eq!(ask(&l, vec![desc("both", "b", None, false)]).0, OVER);
}

#[test]
fn a_quota_descriptor_with_several_limits_counts_once_and_is_over_if_any_is() {
    let (l, _) = limiter();
    assert_eq!(ask(&l, vec![desc("quota", "q", None, false)]).0, OK);
    // Its first limit (1 a minute) is over: the only quota descriptor is over, so the
    // request is.
    let (code, statuses) = ask(&l, vec![desc("quota", "q", None, false)]);
    assert_eq!(code, OVER);
    assert_eq!(statuses[0].0, OVER);
    // Beside an over quota descriptor, a within one makes the request pass.
    let (code, _) = ask(
        &l,
        vec![
            desc("quota", "q", None, false),
            desc("quota", "r", None, false),
        ],
    );
    assert_eq!(code, OK);
}

/// A plain limit no request reaches, a quota descriptor spent from the start and a quota
/// descriptor that holds one token at a time, refilled every millisecond.
const QUOTA_RACE: &str = r#"
domain: race
descriptors:
  - key: plain
    rate_limit: {unit: hour, requests_per_unit: 1000000000}
  - key: spent
    quota_mode: true
    rate_limit: {unit: hour, requests_per_unit: 1}
  - key: hot
    quota_mode: true
    rate_limit: {unit: second, requests_per_unit: 1000, burst: 1}
"#;

#[test]
fn many_threads_on_one_quota_key_never_admit_more_than_it_holds_nor_charge_a_rejection() {
    let config =
        RateLimitConfig::from_files(&[("t.yaml".into(), QUOTA_RACE.into())]).expect("valid config");
    let clock = ManualClock::new(T0);
    let store = Arc::new(Store::new(StoreConfig::default(), ReplicaId(0)));
    let l = Limiter::new(
        config,
        store.clone(),
        Arc::new(clock.clone()),
        Metrics::new(),
        RequestBounds::default(),
        0.8,
    );
    let request = |descriptors: Vec<RateLimitDescriptor>| RateLimitRequest {
        domain: "race".into(),
        descriptors,
        hits_addend: 0,
    };
    let code = |r: &RateLimitRequest| l.should_rate_limit(r).expect("valid request").overall_code;
    assert_eq!(code(&request(vec![desc("spent", "s", None, false)])), OK);
    // From here on "spent" is over: each request passes iff "hot" has its token, and then
    // charges "plain" and "hot"; a rejected one charges nothing.
    let req = request(vec![
        desc("plain", "p", None, false),
        desc("spent", "s", None, false),
        desc("hot", "h", None, false),
    ]);
    let admitted: u64 = std::thread::scope(|scope| {
        let threads: Vec<_> = (0..8)
            .map(|_| {
                scope.spawn(|| {
                    let mut admitted = 0u64;
                    for _ in 0..10_000 {
                        // 1 µs per request across all threads: a token every 1,000 requests,
                        // each one contended by every thread.
                        clock.advance(Duration::from_micros(1));
                        admitted += u64::from(code(&req) == OK);
                    }
                    admitted
                })
            })
            .collect();
        threads.into_iter().map(|t| t.join().expect("thread")).sum()
    });
    let elapsed_s = (crate::clock::Clock::now(&clock) - T0) as f64 / 1e9;
    assert!(
        admitted as f64 <= 1.0 + 1_000.0 * elapsed_s,
        "admitted {admitted} in {elapsed_s} s"
    );
    assert!(admitted > 0);
    // What each bucket was charged, told apart by its limit.
    let consumed = |capacity: u32| {
        let mut total = 0;
        store.for_each(|_, limit, state| {
            if limit.capacity() == capacity {
                total += state.consumed_by(ReplicaId(0));
            }
        });
        total
    };
    assert_eq!(
        consumed(1_000_000_000),
        admitted,
        "plain charged by rejections"
    );
    assert_eq!(consumed(1), admitted + 1, "hot (and spent's first token)");
}

#[test]
fn refunds_give_back_what_is_in_use_and_no_more() {
    let (l, _) = limiter();
    ask(&l, vec![desc("streams", "s", None, false)]);
    ask(&l, vec![desc("streams", "s", None, false)]);
    assert_eq!(ask(&l, vec![desc("streams", "s", None, false)]).0, OVER);
    let (code, statuses) = ask(&l, vec![desc("streams", "s", None, true)]);
    assert_eq!(code, OK);
    assert_eq!(statuses[0].1, 1);
    for _ in 0..3 {
        ask(&l, vec![desc("streams", "s", None, true)]);
    }
    assert_eq!(
        ask(&l, vec![desc("streams", "s", Some(0), false)]).1[0].1,
        2
    );
}

#[test]
fn a_refund_is_refused_on_a_rule_without_allow_refunds_and_on_an_override() {
    let (l, _) = limiter();
    let req = |d| RateLimitRequest {
        domain: "llm".into(),
        descriptors: vec![d],
        hits_addend: 0,
    };
    let err = l
        .should_rate_limit(&req(desc("user", "u", None, true)))
        .expect_err("refused");
    assert!(
        matches!(&err, RequestError::NegativeHits { index: 0, on } if on == "on rule 'llm.user'"),
        "{err}"
    );
    let mut over = desc("user", "u", None, true);
    over.limit = Some(
        envoy_types::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::RateLimitOverride {
            requests_per_unit: 5,
            unit: 1,
        },
    );
    let err = l.should_rate_limit(&req(over)).expect_err("refused");
    assert!(err.to_string().contains("on a limit override"), "{err}");
    // A refund on a descriptor no rule matches has nothing to give back: OK.
    assert_eq!(ask(&l, vec![desc("nobody", "n", None, true)]).0, OK);
}

#[test]
fn a_multi_unit_period_refills_over_the_whole_period() {
    let (l, clock) = limiter();
    // 10 every 30 seconds: reported as 1 a... 10/30 s is whole per minute (20).
    let req = RateLimitRequest {
        domain: "llm".into(),
        descriptors: vec![desc("slow", "x", Some(10), false)],
        hits_addend: 0,
    };
    let resp = l.should_rate_limit(&req).expect("valid");
    let limit = resp.statuses[0].current_limit.clone().expect("limited");
    assert_eq!((limit.requests_per_unit, limit.unit), (20, 2));
    assert_eq!(
        resp.statuses[0]
            .duration_until_reset
            .as_ref()
            .map(|d| d.seconds),
        Some(30)
    );
    clock.advance(Duration::from_secs(3));
    assert_eq!(ask(&l, vec![desc("slow", "x", Some(0), false)]).1[0].1, 1);
}

/// A config's rule in a domain of its own that replaces a rule by name: the limiter then takes
/// the two-pass path of `resolve` for every request, even in `llm`, where nothing is replaced.
const REPLACING: &str = r#"
domain: elsewhere
descriptors:
  - key: k
    rate_limit: {unit: second, requests_per_unit: 1, replaces: [{name: nothing}]}
"#;

fn limiter_of(files: &[(String, String)]) -> Limiter {
    let config = RateLimitConfig::from_files(files).expect("valid config");
    let store = Arc::new(Store::new(StoreConfig::default(), ReplicaId(0)));
    let clock = Arc::new(ManualClock::new(T0));
    Limiter::new(
        config,
        store,
        clock,
        Metrics::new(),
        RequestBounds::default(),
        0.8,
    )
}

#[test]
fn the_one_pass_resolve_answers_as_the_two_pass_one() {
    let one = limiter_of(&[("t.yaml".into(), CONFIG.into())]);
    let two = limiter_of(&[
        ("t.yaml".into(), CONFIG.into()),
        ("r.yaml".into(), REPLACING.into()),
    ]);
    let requests = [
        vec![
            desc("user", "a", None, false),
            desc("mixed", "b", Some(4), false),
        ],
        vec![
            desc("both", "c", Some(2), false),
            desc("quota", "d", None, false),
        ],
        vec![
            desc("both", "c", Some(2), false),
            desc("nothing", "e", None, false),
        ],
        vec![
            desc("streams", "f", Some(1), true),
            desc("slow", "g", Some(7), false),
        ],
        // Refused: a refund on a rule that takes none.
        vec![
            desc("user", "a", Some(1), false),
            desc("mixed", "b", Some(1), true),
        ],
        vec![
            desc("quota", "d", Some(3), false),
            desc("user", "a", Some(0), false),
        ],
    ];
    for _ in 0..3 {
        for descriptors in &requests {
            let req = RateLimitRequest {
                domain: "llm".into(),
                descriptors: descriptors.clone(),
                hits_addend: 0,
            };
            let answer = |l: &Limiter| format!("{:?}", l.should_rate_limit(&req));
            assert_eq!(answer(&one), answer(&two));
        }
    }
}
