//! The example configs of envoyproxy/ratelimit's README ("Examples", Example 1 to 9), copied
//! unchanged (Apache-2.0, https://github.com/envoyproxy/ratelimit), with the behaviour the
//! README promises for each. If one of these stops loading, tollgate is no longer a drop-in.

use super::{config, requests_per_unit, rule};
use crate::config::{Match, RuleLimit};

const EXAMPLE_1: &str = r#"
domain: mongo_cps
descriptors:
  - key: database
    value: users
    rate_limit:
      unit: second
      requests_per_unit: 500

  - key: database
    value: default
    rate_limit:
      unit: second
      requests_per_unit: 500
"#;

const EXAMPLE_2: &str = r#"
domain: messaging
descriptors:
  # Only allow 5 marketing messages a day
  - key: message_type
    value: marketing
    descriptors:
      - key: to_number
        rate_limit:
          unit: day
          requests_per_unit: 5

  # Only allow 100 messages a day to any unique phone number
  - key: to_number
    rate_limit:
      unit: day
      requests_per_unit: 100
"#;

const EXAMPLE_3: &str = r#"
domain: edge_proxy_per_ip
descriptors:
  - key: remote_address
    rate_limit:
      unit: second
      requests_per_unit: 10

  # Black list IP
  - key: remote_address
    value: 50.0.0.5
    rate_limit:
      unit: second
      requests_per_unit: 0
"#;

const EXAMPLE_4_FLAT: &str = r#"
domain: example4
descriptors:
  - key: key
    value: value
    rate_limit:
      requests_per_unit: 300
      unit: second
"#;

const EXAMPLE_4_NESTED: &str = r#"
domain: example4
descriptors:
  - key: key
    value: value
    descriptors:
      - key: subkey
        rate_limit:
          requests_per_unit: 300
          unit: second
"#;

const EXAMPLE_5: &str = r#"
domain: internal
descriptors:
  - key: ldap
    rate_limit:
      unlimited: true

  - key: azure
    rate_limit:
      unit: minute
      requests_per_unit: 100
"#;

const EXAMPLE_6: &str = r#"
domain: example6
descriptors:
  - key: service
    descriptors:
      - key: user
        value: user-a
        rate_limit:
          requests_per_unit: 10
          unit: second
        shadow_mode: true
      - key: user
        value: user-b
        rate_limit:
          requests_per_unit: 20
          unit: second
"#;

const EXAMPLE_7: &str = r#"
domain: example7
descriptors:
  - key: key_1
    value: value_1
    descriptors:
      - key: user
        value: bkthomps
        rate_limit:
          name: specific_limit
          requests_per_unit: 5
          unit: second
  - key: key_2
    value: value_2
    descriptors:
      - key: user
        value: bkthomps
        rate_limit:
          replaces:
            - name: specific_limit
          requests_per_unit: 10
          unit: second
"#;

const EXAMPLE_8: &str = r#"
domain: example8
descriptors:
  - key: key1
    detailed_metric: true
    rate_limit:
      unit: minute
      requests_per_unit: 10
  - key: key1
    value: value1
    rate_limit:
      unit: minute
      requests_per_unit: 20
"#;

const EXAMPLE_9: &str = r#"
domain: example9
descriptors:
  - key: key1
    value: value*
    rate_limit:
      unit: minute
      requests_per_unit: 20
"#;

#[test]
fn every_readme_example_loads_unchanged() {
    for yaml in [
        EXAMPLE_1,
        EXAMPLE_2,
        EXAMPLE_3,
        EXAMPLE_4_FLAT,
        EXAMPLE_4_NESTED,
        EXAMPLE_5,
        EXAMPLE_6,
        EXAMPLE_7,
        EXAMPLE_8,
        EXAMPLE_9,
    ] {
        config(yaml);
    }
}

#[test]
fn readme_examples_load_together_as_one_directory_would() {
    let files: Vec<_> = [
        EXAMPLE_1,
        EXAMPLE_2,
        EXAMPLE_3,
        EXAMPLE_4_NESTED,
        EXAMPLE_5,
        EXAMPLE_6,
        EXAMPLE_7,
        EXAMPLE_8,
        EXAMPLE_9,
    ]
    .iter()
    .enumerate()
    .map(|(i, yaml)| (format!("example{i}.yaml"), yaml.to_string()))
    .collect();
    let c = crate::config::RateLimitConfig::from_files(&files).unwrap();
    assert_eq!(c.domains().count(), 9);
}

#[test]
fn example_1_each_value_gets_its_limit() {
    let c = config(EXAMPLE_1);
    assert_eq!(
        requests_per_unit(rule(&c, "mongo_cps", &[("database", "users")])),
        500
    );
    assert_eq!(
        c.lookup("mongo_cps", [("database", "other")]),
        Match::NoRule
    );
}

#[test]
fn example_2_nested_and_top_level_rules_apply_at_their_depths() {
    let c = config(EXAMPLE_2);
    let marketing = [("message_type", "marketing"), ("to_number", "2061111111")];
    assert_eq!(requests_per_unit(rule(&c, "messaging", &marketing)), 5);
    assert_eq!(
        requests_per_unit(rule(&c, "messaging", &[("to_number", "2061111111")])),
        100
    );
}

#[test]
fn example_3_specific_value_beats_key_only() {
    let c = config(EXAMPLE_3);
    assert_eq!(
        requests_per_unit(rule(
            &c,
            "edge_proxy_per_ip",
            &[("remote_address", "50.0.0.1")]
        )),
        10
    );
    assert_eq!(
        requests_per_unit(rule(
            &c,
            "edge_proxy_per_ip",
            &[("remote_address", "50.0.0.5")]
        )),
        0
    );
}

#[test]
fn example_4_request_must_be_as_deep_as_the_rule() {
    let request = [("key", "value"), ("subkey", "subvalue")];
    assert_eq!(
        config(EXAMPLE_4_FLAT).lookup("example4", request),
        Match::NoRule
    );
    assert_eq!(
        requests_per_unit(rule(&config(EXAMPLE_4_NESTED), "example4", &request)),
        300
    );
}

#[test]
fn example_5_unlimited_descriptor() {
    let c = config(EXAMPLE_5);
    assert_eq!(
        rule(&c, "internal", &[("ldap", "x")]).limit,
        RuleLimit::Unlimited
    );
    assert_eq!(
        requests_per_unit(rule(&c, "internal", &[("azure", "x")])),
        100
    );
}

#[test]
fn example_6_shadow_mode_rule() {
    let c = config(EXAMPLE_6);
    let a = rule(
        &c,
        "example6",
        &[("service", "auth-service"), ("user", "user-a")],
    );
    let b = rule(
        &c,
        "example6",
        &[("service", "auth-service"), ("user", "user-b")],
    );
    assert!(a.shadow_mode && !b.shadow_mode);
}

#[test]
fn example_7_replaces_names_the_rule_it_replaces() {
    let c = config(EXAMPLE_7);
    let replaced = rule(
        &c,
        "example7",
        &[("key_1", "value_1"), ("user", "bkthomps")],
    );
    let replacing = rule(
        &c,
        "example7",
        &[("key_2", "value_2"), ("user", "bkthomps")],
    );
    assert_eq!(replaced.name.as_deref(), Some("specific_limit"));
    assert_eq!(replacing.replaces, ["specific_limit"]);
}

#[test]
fn example_8_detailed_metric_flag() {
    let c = config(EXAMPLE_8);
    assert!(rule(&c, "example8", &[("key1", "unspecified_value")]).detailed_metric);
    assert_eq!(
        requests_per_unit(rule(&c, "example8", &[("key1", "value1")])),
        20
    );
}

#[test]
fn example_9_wildcard_value() {
    let c = config(EXAMPLE_9);
    assert_eq!(
        requests_per_unit(rule(&c, "example9", &[("key1", "value_1")])),
        20
    );
    assert_eq!(
        requests_per_unit(rule(&c, "example9", &[("key1", "value_2")])),
        20
    );
}
