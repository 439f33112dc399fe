//! The token-budget keys: `rate_limits`, `unit_multiplier`, `charge_over_limit` and
//! `allow_refunds`, read, checked and kept apart in ids, fingerprints and the dump.

use super::{config, errors, rule, RuleLimit};
use crate::config::RateLimitConfig;
use crate::unit::Unit;

const BUDGET: &str = r#"
domain: llm
descriptors:
  - key: user
    rate_limits:
      - {unit: second, requests_per_unit: 100}
      - {unit: minute, requests_per_unit: 1000, unit_multiplier: 5, charge_over_limit: true, name: tokens}
  - key: streams
    rate_limit: {unit: hour, requests_per_unit: 3, allow_refunds: true}
"#;

fn only_message(yaml: &str) -> String {
    let errs = errors(yaml).0;
    assert_eq!(errs.len(), 1, "{errs:?}");
    errs[0].to_string()
}

#[test]
fn rate_limits_give_one_rule_each_in_list_order() {
    let c = config(BUDGET);
    let domain = c.domain("llm").expect("configured");
    let (first, rules) = domain.lookup([("user", "bob")]).expect("matched");
    assert_eq!(first, 0);
    assert_eq!(rules.len(), 2);
    assert_eq!(rules[0].position, Some(0));
    assert!(!rules[0].charge_over_limit);
    assert_eq!(
        rules[1].limit,
        RuleLimit::Limited {
            requests_per_unit: 1000,
            unit: Unit::Minute,
            burst: None,
            unit_multiplier: 5,
        }
    );
    assert!(rules[1].charge_over_limit);
    assert_ne!(rules[0].id, rules[1].id);
    // Labels keep the limits of one descriptor apart.
    assert_eq!(rules[0].label(), "user[0]");
    assert_eq!(rules[1].label(), "tokens");
    let streams = rule(&c, "llm", &[("streams", "x")]);
    assert!(streams.allow_refunds && streams.position.is_none());
}

#[test]
fn two_equal_limits_of_one_descriptor_keep_two_buckets() {
    let c = config(
        "domain: d\ndescriptors:\n  - key: k\n    rate_limits:\n      - {unit: second, requests_per_unit: 1}\n      - {unit: second, requests_per_unit: 1}\n",
    );
    let (_, rules) = c.domain("d").unwrap().lookup([("k", "v")]).unwrap();
    assert_ne!(rules[0].id, rules[1].id);
}

#[test]
fn rate_limit_and_rate_limits_together_are_refused() {
    let msg = only_message(
        "domain: d\ndescriptors:\n  - key: k\n    rate_limit: {unit: second, requests_per_unit: 1}\n    rate_limits:\n      - {unit: second, requests_per_unit: 1}\n",
    );
    assert!(
        msg.contains("rate_limit and rate_limits cannot both be set") && msg.contains("'d.k'"),
        "{msg}"
    );
}

#[test]
fn an_empty_rate_limits_list_is_refused() {
    let msg = only_message("domain: d\ndescriptors:\n  - key: k\n    rate_limits: []\n");
    assert!(
        msg.contains("rate_limits must list at least one limit"),
        "{msg}"
    );
}

#[test]
fn a_bad_entry_of_rate_limits_is_named_by_its_place() {
    let msg = only_message(
        "domain: d\ndescriptors:\n  - key: k\n    rate_limits:\n      - {unit: second, requests_per_unit: 1}\n      - {unit: fortnight, requests_per_unit: 1}\n",
    );
    assert!(
        msg.contains("'fortnight'") && msg.contains("rate_limits[1]"),
        "{msg}"
    );
}

#[test]
fn unknown_keys_inside_rate_limits_are_refused_each_with_its_line() {
    let errs = errors(
        "domain: d\ndescriptors:\n  - key: k\n    rate_limits:\n      - unit: second\n        requests_per_unit: 1\n        charge_over_limits: true\n      - unit: second\n        requests_per_unit: 1\n        refunds: true\n",
    )
    .0;
    let found: Vec<_> = errs.iter().map(|e| (e.line, e.message.clone())).collect();
    assert_eq!(found.len(), 2, "{found:?}");
    assert_eq!(found[0].0, Some(7));
    assert!(found[0].1.contains("charge_over_limits"), "{found:?}");
    assert_eq!(found[1].0, Some(10));
    assert!(
        found[1].1.contains("`refunds`") && found[1].1.contains("descriptors[0].rate_limits[1]"),
        "{found:?}"
    );
}

#[test]
fn unit_multiplier_out_of_range_is_refused_with_the_range() {
    for bad in ["0", "1001", "70000"] {
        let msg = only_message(&format!(
            "domain: d\ndescriptors:\n  - key: k\n    rate_limit: {{unit: minute, requests_per_unit: 1, unit_multiplier: {bad}}}\n"
        ));
        assert!(
            msg.contains("unit_multiplier must be a whole number from 1 to 1000")
                && msg.contains(&format!("got {bad}"))
                && msg.contains("'d.k'"),
            "{msg}"
        );
    }
    // 1000 years is in range as a number but too long a period.
    let msg = only_message(
        "domain: d\ndescriptors:\n  - key: k\n    rate_limit: {unit: year, requests_per_unit: 1, unit_multiplier: 1000}\n",
    );
    assert!(msg.contains("at most 100 years"), "{msg}");
    // Not a number at all: the parser says so, with the line.
    let errs = errors(
        "domain: d\ndescriptors:\n  - key: k\n    rate_limit: {unit: minute, requests_per_unit: 1, unit_multiplier: five}\n",
    )
    .0;
    assert_eq!(errs[0].line, Some(4), "{errs:?}");
}

#[test]
fn budget_options_next_to_unlimited_are_refused() {
    let errs = errors(
        "domain: d\ndescriptors:\n  - key: k\n    rate_limit: {unlimited: true, unit_multiplier: 2, charge_over_limit: true, allow_refunds: true}\n",
    )
    .0;
    let msgs: Vec<String> = errs.iter().map(|e| e.message.clone()).collect();
    for key in ["unit_multiplier", "charge_over_limit", "allow_refunds"] {
        assert!(
            msgs.iter()
                .any(|m| m.contains(&format!("should not specify {key} when unlimited"))),
            "{msgs:?}"
        );
    }
}

#[test]
fn rules_without_the_new_keys_keep_their_ids_and_fingerprint() {
    // The id of a plain rule does not depend on whether this build knows the new keys: it is
    // the hash of the same fields as before (pinned against a multiplier of 1 written out).
    let plain = config("domain: d\ndescriptors:\n  - key: k\n    rate_limit: {unit: minute, requests_per_unit: 5}\n");
    let explicit = config(
        "domain: d\ndescriptors:\n  - key: k\n    rate_limit: {unit: minute, requests_per_unit: 5, unit_multiplier: 1, charge_over_limit: false}\n",
    );
    assert_eq!(plain.fingerprint(), explicit.fingerprint());
    let id = |c: &RateLimitConfig| rule(c, "d", &[("k", "v")]).id;
    assert_eq!(id(&plain), id(&explicit));
}

#[test]
fn each_new_key_changes_the_fingerprint_and_the_period_changes_the_id() {
    let base =
        "domain: d\ndescriptors:\n  - key: k\n    rate_limit: {unit: minute, requests_per_unit: 5";
    let with = |extra: &str| config(&format!("{base}{extra}}}\n"));
    let plain = with("");
    for extra in [
        ", unit_multiplier: 5",
        ", charge_over_limit: true",
        ", allow_refunds: true",
    ] {
        assert_ne!(plain.fingerprint(), with(extra).fingerprint(), "{extra}");
    }
    let id = |c: &RateLimitConfig| rule(c, "d", &[("k", "v")]).id;
    assert_ne!(id(&plain), id(&with(", unit_multiplier: 5")));
    // A flag keeps the bucket: flipping it must not reset what was used.
    assert_eq!(id(&plain), id(&with(", charge_over_limit: true")));
}

#[test]
fn the_dump_shows_the_new_keys() {
    let dump = config(BUDGET).render();
    assert!(
        dump.contains(
            "llm.user: unit=SECOND, requests_per_unit=100, rate_limits[0], shadow_mode=false"
        ),
        "{dump}"
    );
    assert!(
        dump.contains("llm.user: unit=MINUTE, requests_per_unit=1000, unit_multiplier=5, name=tokens, rate_limits[1], charge_over_limit=true"),
        "{dump}"
    );
    assert!(
        dump.contains("llm.streams: unit=HOUR, requests_per_unit=3, allow_refunds=true"),
        "{dump}"
    );
}
