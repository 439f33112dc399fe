//! What other parts rely on to tell configs and rules apart: render, fingerprint, rule ids,
//! and the embedded default.

use super::{config, rule};
use crate::config::{Match, RateLimitConfig, RuleLimit};

const TWO_RULES: &str = r#"
domain: d
descriptors:
  - key: a
    value: "1"
    descriptors:
      - key: b
        rate_limit: {unit: minute, requests_per_unit: 10, burst: 20, name: nb}
  - key: c
    value: "x*"
    shadow_mode: true
    rate_limit: {unit: second, requests_per_unit: 5}
  - key: u
    rate_limit: {unlimited: true}
"#;

#[test]
fn render_prints_one_line_per_rule() {
    let c = config(TWO_RULES);
    assert_eq!(
        c.render(),
        "d.a_1.b: unit=MINUTE, requests_per_unit=10, burst=20, name=nb, shadow_mode=false\n\
         d.c_x*: unit=SECOND, requests_per_unit=5, shadow_mode=true\n\
         d.u: unlimited, shadow_mode=false\n"
    );
}

#[test]
fn render_lists_domains_in_sorted_order() {
    let files = [
        (
            "z.yaml".to_string(),
            "domain: z\ndescriptors:\n  - key: k\n    rate_limit: {unlimited: true}\n".to_string(),
        ),
        (
            "a.yaml".to_string(),
            "domain: a\ndescriptors:\n  - key: k\n    rate_limit: {unlimited: true}\n".to_string(),
        ),
    ];
    let c = RateLimitConfig::from_files(&files).unwrap();
    let domains: Vec<_> = c
        .render()
        .lines()
        .map(|l| l.split('.').next().unwrap().to_string())
        .collect();
    assert_eq!(domains, ["a", "z"]);
}

#[test]
fn fingerprint_is_stable_for_identical_inputs() {
    assert_eq!(
        config(TWO_RULES).fingerprint(),
        config(TWO_RULES).fingerprint()
    );
}

#[test]
fn fingerprint_ignores_file_names_and_file_order() {
    let a = ("a.yaml".to_string(), "domain: a\n".to_string());
    let b = ("b.yaml".to_string(), TWO_RULES.to_string());
    let renamed = ("other.yaml".to_string(), TWO_RULES.to_string());
    let one = RateLimitConfig::from_files(&[a.clone(), b]).unwrap();
    let two = RateLimitConfig::from_files(&[renamed, a]).unwrap();
    assert_eq!(one.fingerprint(), two.fingerprint());
}

#[test]
fn fingerprint_changes_when_a_limit_changes() {
    let changed = TWO_RULES.replace("requests_per_unit: 5", "requests_per_unit: 6");
    assert_ne!(
        config(TWO_RULES).fingerprint(),
        config(&changed).fingerprint()
    );
}

#[test]
fn fingerprint_changes_when_only_a_flag_changes() {
    let changed = TWO_RULES.replace("shadow_mode: true", "shadow_mode: false");
    assert_ne!(
        config(TWO_RULES).fingerprint(),
        config(&changed).fingerprint()
    );
}

#[test]
fn fingerprint_changes_when_a_whitelist_entry_is_added() {
    let changed = format!("{TWO_RULES}  - key: w\n    value: ok\n");
    assert_ne!(
        config(TWO_RULES).fingerprint(),
        config(&changed).fingerprint()
    );
}

#[test]
fn rule_id_is_unchanged_for_an_unchanged_rule_when_another_changes() {
    let before = config(TWO_RULES);
    let after = config(&TWO_RULES.replace("requests_per_unit: 5", "requests_per_unit: 6"));
    let kept = |c: &RateLimitConfig| rule(c, "d", &[("a", "1"), ("b", "v")]).id;
    let changed = |c: &RateLimitConfig| rule(c, "d", &[("c", "xy")]).id;
    assert_eq!(kept(&before), kept(&after));
    assert_ne!(changed(&before), changed(&after));
}

#[test]
fn rule_id_changes_when_only_burst_changes() {
    let before = config(TWO_RULES);
    let after = config(&TWO_RULES.replace("burst: 20", "burst: 21"));
    let id = |c: &RateLimitConfig| rule(c, "d", &[("a", "1"), ("b", "v")]).id;
    assert_ne!(id(&before), id(&after));
}

#[test]
fn rule_ids_differ_between_rules() {
    let c = config(TWO_RULES);
    let mut ids: Vec<_> = c.rules().map(|r| r.id).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 3);
}

#[test]
fn config_is_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<RateLimitConfig>();
}

#[test]
fn embedded_default_is_valid() {
    let files = [(
        "default.yaml".to_string(),
        crate::config::DEFAULT_YAML.to_string(),
    )];
    if let Err(errors) = RateLimitConfig::from_files(&files) {
        panic!("default.yaml is invalid:\n{errors}");
    }
}

#[test]
fn embedded_default_shows_each_feature_it_documents() {
    let c = RateLimitConfig::embedded_default();
    assert_eq!(c.domains().collect::<Vec<_>>(), ["api", "edge_proxy"]);
    let burst = rule(&c, "edge_proxy", &[("path", "/upload/a/b")]);
    assert!(matches!(
        burst.limit,
        RuleLimit::Limited {
            burst: Some(30),
            ..
        }
    ));
    assert_eq!(
        c.lookup("edge_proxy", [("remote_address", "10.0.0.1")]),
        Match::NoRule
    );
    let unlimited = rule(&c, "api", &[("tenant", "internal")]);
    assert_eq!(unlimited.limit, RuleLimit::Unlimited);
    assert!(rule(&c, "api", &[("tenant", "t"), ("user", "anonymous")]).shadow_mode);
    assert_eq!(
        rule(&c, "api", &[("tenant", "t"), ("user", "u")])
            .name
            .as_deref(),
        Some("per_user")
    );
}
