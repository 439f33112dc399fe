//! Files the reference refuses are refused here too, with its messages, naming the file.

use super::{config, errors};
use crate::config::RateLimitConfig;

/// The single error of a refused file.
fn only_error(yaml: &str) -> crate::config::ConfigError {
    let mut errs = errors(yaml).0;
    assert_eq!(errs.len(), 1, "{errs:?}");
    errs.remove(0)
}

#[test]
fn unknown_key_is_an_error_with_its_line() {
    let err = only_error("domain: d\ndescriptors:\n  - key: k\n    valu: v\n");
    assert_eq!(err.file, "test.yaml");
    assert_eq!(err.line, Some(4));
    assert!(err.message.contains("unknown field `valu`"), "{err}");
}

#[test]
fn unknown_key_inside_rate_limit_is_an_error() {
    let err = only_error(
        "domain: d\ndescriptors:\n  - key: k\n    rate_limit:\n      unit: second\n      requests_per_units: 5\n",
    );
    assert!(err.message.contains("requests_per_units"), "{err}");
    assert_eq!(err.line, Some(6));
}

#[test]
fn unknown_root_key_is_an_error() {
    let err = only_error("domain: d\nlimits: []\n");
    assert!(err.message.contains("unknown field `limits`"), "{err}");
}

#[test]
fn non_string_key_is_an_error() {
    let err = only_error("domain: d\ndescriptors:\n  - key: k\n    [1, 2]: v\n");
    assert_eq!(err.line, Some(4), "{err}");
    assert!(err.message.contains("expected a string key"), "{err}");
    let err = only_error("domain: d\n42: x\n");
    assert!(err.message.contains("42"), "{err}");
}

#[test]
fn yaml_syntax_error_carries_its_line() {
    let err = only_error("domain: d\ndescriptors:\n  - key: k\n   value: [unclosed\n");
    assert!(err.line.is_some(), "{err}");
    assert!(
        err.message.starts_with("error loading config file:"),
        "{err}"
    );
}

#[test]
fn wrong_type_is_an_error_with_its_line() {
    let err = only_error(
        "domain: d\ndescriptors:\n  - key: k\n    rate_limit: {unit: second, requests_per_unit: -1}\n",
    );
    assert_eq!(err.line, Some(4), "{err}");
}

#[test]
fn root_that_is_not_a_mapping_is_an_error() {
    let err = only_error("- a\n- b\n");
    assert!(
        err.message
            .contains("expected a mapping with `domain` and `descriptors`"),
        "{err}"
    );
}

#[test]
fn empty_domain_is_an_error() {
    let err = only_error("domain: \"\"\ndescriptors: []\n");
    assert_eq!(
        err.to_string(),
        "test.yaml: config file cannot have empty domain"
    );
}

#[test]
fn empty_file_is_refused_for_its_empty_domain_like_the_reference() {
    let err = only_error("");
    assert_eq!(err.message, "config file cannot have empty domain");
}

#[test]
fn file_with_a_domain_and_no_descriptors_is_valid() {
    let c = config("domain: quiet\n");
    assert_eq!(c.rules().count(), 0);
}

#[test]
fn duplicate_domain_across_files_names_both_files() {
    let files = [
        ("one.yaml".to_string(), "domain: d\n".to_string()),
        ("two.yaml".to_string(), "domain: d\n".to_string()),
    ];
    let errs = RateLimitConfig::from_files(&files).unwrap_err().0;
    assert_eq!(errs.len(), 1);
    assert_eq!(errs[0].file, "two.yaml");
    assert!(
        errs[0]
            .message
            .starts_with("duplicate domain 'd' in config file"),
        "{}",
        errs[0]
    );
    assert!(errs[0].message.contains("one.yaml"), "{}", errs[0]);
}

#[test]
fn empty_key_is_an_error() {
    let err = only_error("domain: d\ndescriptors:\n  - value: v\n");
    assert!(err.message.starts_with("descriptor has empty key"), "{err}");
}

#[test]
fn duplicate_composite_key_at_the_same_level_is_an_error() {
    let err = only_error(
        "domain: d\ndescriptors:\n  - key: a\n    descriptors:\n      - key: k\n        value: v\n      - key: k\n        value: v\n",
    );
    assert_eq!(err.message, "duplicate descriptor composite key 'd.a.k_v'");
}

#[test]
fn same_composite_key_at_different_levels_is_fine() {
    config("domain: d\ndescriptors:\n  - key: k\n    descriptors:\n      - key: k\n");
}

#[test]
fn missing_unit_on_a_limited_rule_is_an_error() {
    let err =
        only_error("domain: d\ndescriptors:\n  - key: k\n    rate_limit: {requests_per_unit: 5}\n");
    assert!(
        err.message.starts_with("invalid rate limit unit ''"),
        "{err}"
    );
}

#[test]
fn bad_unit_is_an_error_naming_it_and_the_descriptor() {
    let err = only_error(
        "domain: d\ndescriptors:\n  - key: k\n    value: v\n    rate_limit: {unit: fortnight, requests_per_unit: 5}\n",
    );
    assert!(
        err.message
            .starts_with("invalid rate limit unit 'fortnight'"),
        "{err}"
    );
    assert!(err.message.contains("'d.k_v'"), "{err}");
}

#[test]
fn unit_is_case_insensitive_and_includes_week() {
    config(
        "domain: d\ndescriptors:\n  - key: a\n    rate_limit: {unit: SECOND, requests_per_unit: 1}\n  - key: b\n    rate_limit: {unit: Week, requests_per_unit: 1}\n",
    );
}

#[test]
fn unlimited_with_a_unit_is_an_error() {
    let err = only_error(
        "domain: d\ndescriptors:\n  - key: k\n    rate_limit: {unlimited: true, unit: second}\n",
    );
    assert!(
        err.message
            .starts_with("should not specify rate limit unit when unlimited"),
        "{err}"
    );
}

#[test]
fn burst_of_zero_is_an_error() {
    let err = only_error(
        "domain: d\ndescriptors:\n  - key: k\n    rate_limit: {unit: second, requests_per_unit: 1, burst: 0}\n",
    );
    assert!(err.message.starts_with("burst must be at least 1"), "{err}");
}

#[test]
fn burst_with_unlimited_is_an_error() {
    let err = only_error(
        "domain: d\ndescriptors:\n  - key: k\n    rate_limit: {unlimited: true, burst: 5}\n",
    );
    assert!(
        err.message
            .starts_with("should not specify burst when unlimited"),
        "{err}"
    );
}

#[test]
fn empty_replaces_entry_is_an_error() {
    let err = only_error(
        "domain: d\ndescriptors:\n  - key: k\n    rate_limit:\n      unit: second\n      requests_per_unit: 1\n      replaces: [{name: \"\"}]\n",
    );
    assert!(
        err.message
            .starts_with("should not have an empty replaces entry"),
        "{err}"
    );
}

#[test]
fn replaces_naming_its_own_rule_is_an_error() {
    let err = only_error(
        "domain: d\ndescriptors:\n  - key: k\n    rate_limit:\n      name: me\n      unit: second\n      requests_per_unit: 1\n      replaces: [{name: me}]\n",
    );
    assert!(
        err.message
            .starts_with("replaces should not contain name of same descriptor"),
        "{err}"
    );
}

#[test]
fn share_threshold_without_a_wildcard_value_is_an_error() {
    let err = only_error(
        "domain: d\ndescriptors:\n  - key: k\n    value: plain\n    share_threshold: true\n    rate_limit: {unit: second, requests_per_unit: 1}\n",
    );
    assert!(
        err.message
            .starts_with("share_threshold can only be used with wildcard values"),
        "{err}"
    );
}

#[test]
fn every_error_in_every_file_is_reported() {
    let files = [
        (
            "a.yaml".to_string(),
            "domain: a\ndescriptors:\n  - key: \"\"\n  - key: k\n    rate_limit: {unit: nope}\n  - key: j\n    rate_limit: {unlimited: true, unit: day}\n".to_string(),
        ),
        ("b.yaml".to_string(), "domain: b\n  bad: [\n".to_string()),
        ("c.yaml".to_string(), "descriptors: []\n".to_string()),
    ];
    let errs = RateLimitConfig::from_files(&files).unwrap_err();
    let files_named: Vec<_> = errs.0.iter().map(|e| e.file.as_str()).collect();
    assert_eq!(
        files_named,
        ["b.yaml", "c.yaml", "a.yaml", "a.yaml", "a.yaml"],
        "{errs}"
    );
    assert_eq!(errs.to_string().lines().count(), 5);
}

#[test]
fn errors_in_a_refused_duplicate_domain_are_reported_too() {
    let files = [
        ("one.yaml".to_string(), "domain: d\n".to_string()),
        (
            "two.yaml".to_string(),
            "domain: d\ndescriptors:\n  - key: \"\"\n".to_string(),
        ),
    ];
    let errs = RateLimitConfig::from_files(&files).unwrap_err().0;
    assert_eq!(errs.len(), 2, "{errs:?}");
}

#[test]
fn duplicate_domain_within_one_file_is_an_error() {
    let err = only_error("domain: d\n---\ndomain: d\n");
    assert!(
        err.message
            .starts_with("duplicate domain 'd' in config file"),
        "{err}"
    );
}

#[test]
fn unlimited_with_an_unrecognised_unit_is_accepted_like_the_reference() {
    // The reference only refuses a *valid* unit next to `unlimited: true`.
    config(
        "domain: d\ndescriptors:\n  - key: k\n    rate_limit: {unlimited: true, unit: whenever}\n",
    );
}

#[test]
fn limited_rule_without_requests_per_unit_means_zero_like_the_reference() {
    let c = config("domain: d\ndescriptors:\n  - key: k\n    rate_limit: {unit: second}\n");
    assert_eq!(
        super::requests_per_unit(super::rule(&c, "d", &[("k", "v")])),
        0
    );
}

#[test]
fn composite_keys_that_collide_are_duplicates_like_the_reference() {
    // `a` + `b_c` and `a_b` + `c` both read `a_b_c`: one stats key, so one must go.
    let err = only_error(
        "domain: d\ndescriptors:\n  - key: a\n    value: b_c\n  - key: a_b\n    value: c\n",
    );
    assert_eq!(err.message, "duplicate descriptor composite key 'd.a_b_c'");
}

#[test]
fn every_unknown_key_and_the_other_problems_of_a_file_are_reported_together() {
    let errs = errors(
        "domain: d\ndescriptors:\n  - key: a\n    valu: v\n    rate_limit: {unit: fortnight, requests_per_unit: 1}\n  - key: b\n    shadow: true\n",
    )
    .0;
    let messages: Vec<_> = errs.iter().map(|e| (e.line, e.message.as_str())).collect();
    assert_eq!(errs.len(), 3, "{messages:?}");
    assert!(messages[0].1.contains("unknown field `valu`") && messages[0].0 == Some(4));
    assert!(messages[1].1.contains("unknown field `shadow`") && messages[1].0 == Some(7));
    assert!(messages[2].1.contains("fortnight"), "{messages:?}");
}

#[test]
fn merged_domains_join_their_descriptors_and_still_refuse_duplicates() {
    use crate::config::BuildOptions;
    let files = [
        (
            "one.yaml".to_string(),
            "domain: d\ndescriptors:\n  - key: a\n    rate_limit: {unit: second, requests_per_unit: 1}\n".to_string(),
        ),
        (
            "two.yaml".to_string(),
            "domain: d\ndescriptors:\n  - key: b\n    rate_limit: {unit: second, requests_per_unit: 2}\n".to_string(),
        ),
    ];
    let merge = BuildOptions {
        merge_domains: true,
    };
    let c = RateLimitConfig::from_files_with(&files, merge).expect("merged");
    assert_eq!(
        super::requests_per_unit(super::rule(&c, "d", &[("b", "x")])),
        2
    );
    assert_eq!(
        super::requests_per_unit(super::rule(&c, "d", &[("a", "x")])),
        1
    );
    assert!(
        RateLimitConfig::from_files(&files).is_err(),
        "refused without the option"
    );
    let dup = [
        files[0].clone(),
        ("three.yaml".to_string(), files[0].1.clone()),
    ];
    let errs = RateLimitConfig::from_files_with(&dup, merge).unwrap_err();
    assert!(
        errs.0[0]
            .message
            .contains("duplicate descriptor composite key"),
        "{errs}"
    );
}

#[test]
fn a_file_on_which_the_yaml_parser_panics_is_refused_with_an_error() {
    // Found by `scripts/fuzz config_parse`: serde_yaml_ng 0.10 panics ("unexpected end of
    // mapping") on this file, read as the fuzz target reads it (lossy UTF-8).
    let bytes = include_bytes!("fuzz_found/mapping_end_panic.bin");
    let text = String::from_utf8_lossy(bytes).into_owned();
    let err = RateLimitConfig::from_files(&[("bad.yaml".to_string(), text)]).unwrap_err();
    let shown = err.to_string();
    assert!(
        shown.contains("bad.yaml") && shown.contains("the YAML parser failed on this file"),
        "{shown}"
    );
}

/// `(line, message)` of each error, for readable assertions.
fn lines_and_messages(yaml: &str) -> Vec<(Option<usize>, String)> {
    errors(yaml)
        .0
        .into_iter()
        .map(|e| (e.line, e.message))
        .collect()
}

#[test]
fn every_type_error_of_a_file_is_reported_with_its_place_and_line() {
    let found = lines_and_messages(
        "domain: d\ndescriptors:\n  - key: a\n    rate_limit:\n      unit: second\n      requests_per_unit: lots\n  - key: b\n    rate_limit: {unit: second, requests_per_unit: 5}\n    descriptors: 5\n  - key: c\n    shadow_mode: maybe\n  - key: e\n    rate_limit: {unit: second, requests_per_unit: -2}\n",
    );
    let expected = [
        (
            6,
            "descriptors[0].rate_limit.requests_per_unit: invalid type",
        ),
        (9, "descriptors[1].descriptors: invalid type"),
        (11, "descriptors[2].shadow_mode: invalid value"),
        (
            13,
            "descriptors[3].rate_limit.requests_per_unit: invalid value",
        ),
    ];
    assert_eq!(found.len(), expected.len(), "{found:#?}");
    for ((line, message), (want_line, want)) in found.iter().zip(expected) {
        assert_eq!(*line, Some(want_line), "{found:#?}");
        assert!(message.contains(want), "{message} lacks {want}");
    }
}

#[test]
fn a_type_error_an_unknown_key_and_a_rule_error_of_one_file_are_all_reported() {
    let found = lines_and_messages(
        "domain: d\ndescriptors:\n  - key: a\n    rate_limit: {unit: second, requests_per_unit: 1, burst: many}\n  - key: b\n    valu: v\n  - key: c\n    rate_limit: {unit: fortnight, requests_per_unit: 1}\n",
    );
    assert_eq!(found.len(), 3, "{found:#?}");
    assert_eq!(found[0].0, Some(4), "{found:#?}");
    assert!(
        found[0].1.contains("descriptors[0].rate_limit.burst"),
        "{found:#?}"
    );
    assert_eq!(found[1].0, Some(6), "{found:#?}");
    assert!(found[1].1.contains("unknown field `valu`"), "{found:#?}");
    assert!(found[2].1.contains("'fortnight'"), "{found:#?}");
}

#[test]
fn a_list_item_that_is_not_a_mapping_is_reported_and_the_others_still_checked() {
    let found = lines_and_messages(
        "domain: d\ndescriptors:\n  - key: a\n    rate_limit: {unit: hourly, requests_per_unit: 1}\n  - 5\n  - key: b\n    rate_limits: [[1]]\n",
    );
    assert_eq!(found.len(), 3, "{found:#?}");
    assert_eq!(found[0].0, Some(5), "{found:#?}");
    assert!(
        found[0].1.contains("descriptors[1]: invalid type"),
        "{found:#?}"
    );
    assert_eq!(found[1].0, Some(7), "{found:#?}");
    assert!(
        found[1].1.contains("descriptors[2].rate_limits[0]"),
        "{found:#?}"
    );
    assert!(found[2].1.contains("'hourly'"), "{found:#?}");
}

#[test]
fn type_errors_in_two_documents_of_a_file_are_each_reported() {
    let found = lines_and_messages(
        "domain: a\ndescriptors:\n  - key: k\n    detailed_metric: sometimes\n---\ndomain: b\ndescriptors:\n  - key: k\n    value: [x]\n",
    );
    assert_eq!(found.len(), 2, "{found:#?}");
    assert_eq!((found[0].0, found[1].0), (Some(4), Some(9)), "{found:#?}");
    assert!(found[1].1.contains("descriptors[0].value"), "{found:#?}");
}
