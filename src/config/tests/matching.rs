//! Which rule a request descriptor gets: envoyproxy/ratelimit's matching order and depth rule.

use super::{config, requests_per_unit, rule};
use crate::config::{Match, RuleLimit};
use crate::unit::Unit;

const LEVELS: &str = r#"
domain: d
descriptors:
  - key: k
    rate_limit: {unit: second, requests_per_unit: 1}
  - key: k
    value: "foo*"
    rate_limit: {unit: second, requests_per_unit: 2}
  - key: k
    value: "fo*"
    rate_limit: {unit: second, requests_per_unit: 3}
  - key: k
    value: foobar
    rate_limit: {unit: second, requests_per_unit: 4}
"#;

#[test]
fn exact_value_wins_over_wildcard_and_key_only() {
    let c = config(LEVELS);
    assert_eq!(requests_per_unit(rule(&c, "d", &[("k", "foobar")])), 4);
}

#[test]
fn first_matching_wildcard_in_config_order_wins() {
    let c = config(LEVELS);
    // Both `foo*` and `fo*` match; `foo*` comes first in the file.
    assert_eq!(requests_per_unit(rule(&c, "d", &[("k", "foox")])), 2);
    assert_eq!(requests_per_unit(rule(&c, "d", &[("k", "fox")])), 3);
}

#[test]
fn key_only_descriptor_matches_values_nothing_else_matched() {
    let c = config(LEVELS);
    assert_eq!(requests_per_unit(rule(&c, "d", &[("k", "other")])), 1);
    assert_eq!(requests_per_unit(rule(&c, "d", &[("k", "")])), 1);
}

#[test]
fn wildcard_wins_over_key_only() {
    let c = config(LEVELS);
    assert_eq!(requests_per_unit(rule(&c, "d", &[("k", "foo")])), 2);
}

#[test]
fn other_key_matches_nothing() {
    let c = config(LEVELS);
    assert_eq!(c.lookup("d", [("other", "foobar")]), Match::NoRule);
}

#[test]
fn wildcard_stars_may_sit_anywhere_and_repeat() {
    let c = config(
        r#"
domain: d
descriptors:
  - key: path
    value: "bar*b"
    rate_limit: {unit: second, requests_per_unit: 1}
  - key: path
    value: "foo*bar*baz"
    rate_limit: {unit: second, requests_per_unit: 2}
  - key: path
    value: "*.pdf"
    rate_limit: {unit: second, requests_per_unit: 3}
"#,
    );
    assert_eq!(requests_per_unit(rule(&c, "d", &[("path", "bar-x-b")])), 1);
    assert_eq!(
        requests_per_unit(rule(&c, "d", &[("path", "foo1bar2baz")])),
        2
    );
    assert_eq!(requests_per_unit(rule(&c, "d", &[("path", "a/b.pdf")])), 3);
    assert_eq!(c.lookup("d", [("path", "foo1baz")]), Match::NoRule);
}

#[test]
fn wildcard_rule_keeps_its_pattern_in_the_stats_key() {
    let c = config(LEVELS);
    assert_eq!(rule(&c, "d", &[("k", "foox")]).stats_key, "k_foo*");
    assert_eq!(rule(&c, "d", &[("k", "zzz")]).stats_key, "k");
}

const NESTED: &str = r#"
domain: d
descriptors:
  - key: a
    value: "1"
    rate_limit: {unit: minute, requests_per_unit: 10}
    descriptors:
      - key: b
        rate_limit: {unit: minute, requests_per_unit: 20}
        descriptors:
          - key: c
            value: leaf
            rate_limit: {unit: minute, requests_per_unit: 30}
  - key: x
    rate_limit: {unit: minute, requests_per_unit: 40}
"#;

#[test]
fn nested_rule_applies_at_its_own_depth() {
    let c = config(NESTED);
    let r = rule(&c, "d", &[("a", "1"), ("b", "any")]);
    assert_eq!(requests_per_unit(r), 20);
    assert_eq!(r.stats_key, "a_1.b");
    let leaf = rule(&c, "d", &[("a", "1"), ("b", "any"), ("c", "leaf")]);
    assert_eq!(leaf.stats_key, "a_1.b.c_leaf");
}

#[test]
fn parent_limit_does_not_apply_to_a_deeper_request() {
    let c = config(NESTED);
    // (a,1) has a limit and children, but the request goes one level past where it matches.
    assert_eq!(
        c.lookup("d", [("a", "1"), ("b", "v"), ("c", "other")]),
        Match::NoRule
    );
    // (x) has a limit and no children: a longer request stops there and gets nothing.
    assert_eq!(c.lookup("d", [("x", "v"), ("y", "w")]), Match::NoRule);
}

#[test]
fn request_shallower_than_a_rule_does_not_get_it() {
    let c = config(
        r#"
domain: d
descriptors:
  - key: a
    descriptors:
      - key: b
        rate_limit: {unit: minute, requests_per_unit: 20}
"#,
    );
    assert_eq!(c.lookup("d", [("a", "v")]), Match::NoRule);
}

#[test]
fn intermediate_level_without_a_match_is_no_rule() {
    let c = config(NESTED);
    assert_eq!(c.lookup("d", [("a", "2"), ("b", "v")]), Match::NoRule);
    assert_eq!(c.lookup("d", [("a", "1"), ("zz", "v")]), Match::NoRule);
}

#[test]
fn value_without_rate_limit_is_a_whitelist() {
    let c = config(
        r#"
domain: d
descriptors:
  - key: ip
    rate_limit: {unit: second, requests_per_unit: 5}
  - key: ip
    value: 10.0.0.1
"#,
    );
    assert_eq!(c.lookup("d", [("ip", "10.0.0.1")]), Match::NoRule);
    assert!(matches!(
        c.lookup("d", [("ip", "10.0.0.2")]),
        Match::Rule(_)
    ));
}

#[test]
fn unlimited_rule_matches_as_unlimited() {
    let c = config("domain: d\ndescriptors:\n  - key: k\n    rate_limit: {unlimited: true}\n");
    assert_eq!(rule(&c, "d", &[("k", "v")]).limit, RuleLimit::Unlimited);
}

#[test]
fn unknown_domain_is_reported_as_unknown() {
    let c = config(LEVELS);
    assert_eq!(c.lookup("nope", [("k", "foobar")]), Match::UnknownDomain);
}

#[test]
fn domain_without_descriptors_is_known_and_matches_nothing() {
    let c = config("domain: empty\n");
    assert_eq!(c.lookup("empty", [("k", "v")]), Match::NoRule);
    assert_eq!(c.domains().collect::<Vec<_>>(), ["empty"]);
}

#[test]
fn empty_request_descriptor_matches_nothing() {
    let c = config(LEVELS);
    assert_eq!(c.lookup("d", []), Match::NoRule);
}

#[test]
fn zero_requests_per_unit_is_a_rule_that_blocks() {
    let c = config(
        "domain: d\ndescriptors:\n  - key: k\n    rate_limit: {unit: second, requests_per_unit: 0}\n",
    );
    assert_eq!(requests_per_unit(rule(&c, "d", &[("k", "v")])), 0);
}

#[test]
fn burst_is_kept_apart_from_the_refill_rate() {
    let c = config(
        r#"
domain: d
descriptors:
  - key: k
    rate_limit: {unit: minute, requests_per_unit: 10, burst: 50}
  - key: j
    rate_limit: {unit: minute, requests_per_unit: 10}
"#,
    );
    let with_burst = RuleLimit::Limited {
        requests_per_unit: 10,
        unit: Unit::Minute,
        burst: Some(50),
        unit_multiplier: 1,
    };
    assert_eq!(rule(&c, "d", &[("k", "v")]).limit, with_burst);
    let without = RuleLimit::Limited {
        requests_per_unit: 10,
        unit: Unit::Minute,
        burst: None,
        unit_multiplier: 1,
    };
    assert_eq!(rule(&c, "d", &[("j", "v")]).limit, without);
}

#[test]
fn rule_carries_the_descriptor_flags_name_and_replaces() {
    let c = config(
        r#"
domain: d
descriptors:
  - key: k
    value: "v*"
    shadow_mode: true
    detailed_metric: true
    value_to_metric: true
    share_threshold: true
    rate_limit:
      unit: HOUR
      requests_per_unit: 7
      name: mine
      replaces: [{name: other}]
"#,
    );
    let r = rule(&c, "d", &[("k", "vv")]);
    assert_eq!(r.domain, "d");
    assert_eq!(r.name.as_deref(), Some("mine"));
    assert_eq!(r.replaces, ["other"]);
    assert!(r.shadow_mode && r.detailed_metric && r.value_to_metric && r.share_threshold);
}

#[test]
fn empty_value_in_config_means_key_only() {
    let c = config(
        "domain: d\ndescriptors:\n  - key: k\n    value: \"\"\n    rate_limit: {unit: second, requests_per_unit: 1}\n",
    );
    assert_eq!(rule(&c, "d", &[("k", "anything")]).stats_key, "k");
}

#[test]
fn rules_lists_only_descriptors_with_a_rate_limit() {
    let c = config(NESTED);
    let keys: Vec<_> = c.rules().map(|r| r.stats_key.as_str()).collect();
    assert_eq!(keys, ["a_1", "a_1.b", "a_1.b.c_leaf", "x"]);
}

mod allocation {
    //! Proof that a lookup allocates nothing: a counting allocator, per thread so that other
    //! tests running in parallel do not disturb the count.

    use super::{config, LEVELS, NESTED};
    use std::alloc::{GlobalAlloc, Layout, System};
    use std::cell::Cell;

    struct Counting;

    thread_local! {
        static ALLOCATIONS: Cell<usize> = const { Cell::new(0) };
    }

    // SAFETY: forwards to the system allocator unchanged; only counts calls.
    unsafe impl GlobalAlloc for Counting {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
            // SAFETY: same contract as the caller's.
            unsafe { System.alloc(layout) }
        }

        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            // SAFETY: same contract as the caller's.
            unsafe { System.dealloc(ptr, layout) }
        }
    }

    #[global_allocator]
    static GLOBAL: Counting = Counting;

    #[test]
    fn lookup_does_not_allocate() {
        let flat = config(LEVELS);
        let nested = config(NESTED);
        let before = ALLOCATIONS.with(Cell::get);
        for _ in 0..100 {
            std::hint::black_box(flat.lookup("d", [("k", "foobar")]));
            std::hint::black_box(flat.lookup("d", [("k", "foox")]));
            std::hint::black_box(flat.lookup("d", [("k", "zzz")]));
            std::hint::black_box(flat.lookup("nope", [("k", "v")]));
            std::hint::black_box(nested.lookup("d", [("a", "1"), ("b", "v"), ("c", "leaf")]));
        }
        assert_eq!(ALLOCATIONS.with(Cell::get), before);
    }
}

#[test]
fn no_files_is_an_empty_config_where_every_domain_is_unknown() {
    let c = crate::config::RateLimitConfig::from_files(&[]).unwrap();
    assert_eq!(c.domains().count(), 0);
    assert_eq!(c.lookup("any", [("k", "v")]), Match::UnknownDomain);
}

#[test]
fn each_yaml_document_of_a_file_is_its_own_domain() {
    let c = config(
        "domain: a\n---\ndomain: b\ndescriptors:\n  - key: k\n    rate_limit: {unlimited: true}\n",
    );
    assert_eq!(c.domains().collect::<Vec<_>>(), ["a", "b"]);
    assert_eq!(rule(&c, "b", &[("k", "v")]).limit, RuleLimit::Unlimited);
}
