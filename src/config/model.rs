//! The YAML file as envoyproxy/ratelimit defines it, plus tollgate's `rate_limit.burst`.
//!
//! These structs only describe shape; meaning (units, duplicates, replaces) is checked in
//! `build.rs`, where every problem can be reported instead of just the first one. Unknown keys
//! are refused here, as the reference refuses them, so a typo such as `requests_per_units`
//! fails loudly instead of silently dropping a limit; `schema.rs` then finds every other
//! unknown key and wrong-typed value of the document, trying each value against these same
//! structs, so one mistake does not hide the rest.
//!
//! Scalars are read the way the reference's YAML library (go-yaml v2) reads them, so files
//! written for it keep working: a string field takes any scalar as written (`value: 429` is the
//! string "429"), and booleans take the YAML 1.1 spellings (`yes`, `on`, ...) as well as `true`.

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;
use std::fmt;

use super::error::ConfigError;
use super::schema;

#[derive(Debug, Default, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a mapping with `domain` and `descriptors`"
)]
pub(crate) struct YamlRoot {
    #[serde(default)]
    pub domain: Option<String>,
    #[serde(default)]
    pub descriptors: Option<Vec<YamlDescriptor>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a descriptor mapping")]
pub(crate) struct YamlDescriptor {
    #[serde(default)]
    pub key: Option<String>,
    #[serde(default)]
    pub value: Option<String>,
    #[serde(default)]
    pub rate_limit: Option<YamlRateLimit>,
    /// tollgate's extension: several limits on one descriptor, all of which must pass
    /// (instead of `rate_limit`, never beside it).
    #[serde(default)]
    pub rate_limits: Option<Vec<YamlRateLimit>>,
    #[serde(default)]
    pub descriptors: Option<Vec<YamlDescriptor>>,
    #[serde(default, deserialize_with = "yaml11_bool")]
    pub shadow_mode: bool,
    #[serde(default, deserialize_with = "yaml11_bool")]
    pub detailed_metric: bool,
    #[serde(default, deserialize_with = "yaml11_bool")]
    pub value_to_metric: bool,
    #[serde(default, deserialize_with = "yaml11_bool")]
    pub share_threshold: bool,
    /// The reference's quota mode: this descriptor being over its limit only fails the request
    /// when every quota-mode descriptor of it is over.
    #[serde(default, deserialize_with = "yaml11_bool")]
    pub quota_mode: bool,
    /// Free-form annotations; merged into the response's dynamic metadata for the rules that
    /// passed, when that is enabled (the reference's `RESPONSE_DYNAMIC_METADATA`).
    #[serde(default)]
    pub metadata: Option<serde_yaml_ng::Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a rate_limit mapping")]
pub(crate) struct YamlRateLimit {
    #[serde(default)]
    pub requests_per_unit: Option<u32>,
    #[serde(default)]
    pub unit: Option<String>,
    #[serde(default, deserialize_with = "yaml11_bool")]
    pub unlimited: bool,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub replaces: Option<Vec<YamlReplaces>>,
    /// tollgate's extension: bucket capacity, when it should differ from `requests_per_unit`.
    #[serde(default)]
    pub burst: Option<u32>,
    /// tollgate's extension: the period is this many units (`unit: minute`,
    /// `unit_multiplier: 5`: five minutes). Read wide so that the builder can say what range
    /// it takes instead of a bare type error.
    #[serde(default)]
    pub unit_multiplier: Option<u64>,
    /// tollgate's extension: hits are charged even beyond what is left (usage reported after
    /// the fact), and a 0-hit query is over while the bucket is empty or in debt.
    #[serde(default, deserialize_with = "yaml11_bool")]
    pub charge_over_limit: bool,
    /// tollgate's extension: `is_negative_hits` gives tokens back (concurrency limits).
    #[serde(default, deserialize_with = "yaml11_bool")]
    pub allow_refunds: bool,
}

#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a replaces entry mapping with `name`"
)]
pub(crate) struct YamlReplaces {
    #[serde(default)]
    pub name: Option<String>,
}

/// Parses one file into its domains: one per YAML document, with every problem found.
///
/// The reference reads only a file's first document; tollgate reads each `---`-separated
/// document as its own domain (so one file, such as the embedded default, can hold several).
/// Empty documents (a stray trailing `---`) are skipped, but a file with no document at all is
/// an empty root, which the builder refuses for its empty domain, as the reference does.
///
/// A document serde refuses (an unknown key, a value of the wrong type) is refused with every
/// such problem (`schema::recover`) and is still returned, read without them, so that the
/// builder reports its other problems too. A document that is not even a plain YAML tree (a
/// syntax error) stops the file there.
///
/// serde_yaml_ng 0.10 panics on some malformed input (fuzzing found "unexpected end of
/// mapping" in its `deserialize_option`): such a panic is caught and the file refused with an
/// error, so a bad file can neither stop the server at start nor kill the reload thread.
pub(crate) fn parse(file: &str, contents: &str) -> (Vec<YamlRoot>, Vec<ConfigError>) {
    std::panic::catch_unwind(|| parse_documents(file, contents)).unwrap_or_else(|panic| {
        let why = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "no message".to_string());
        let error = ConfigError::new(
            file,
            format!(
                "error loading config file: the YAML parser failed on this file ({why}); \
                 it is not valid YAML of the expected shape"
            ),
        );
        (Vec::new(), vec![error])
    })
}

fn parse_documents(file: &str, contents: &str) -> (Vec<YamlRoot>, Vec<ConfigError>) {
    let mut roots = Vec::new();
    let mut errors = Vec::new();
    for (index, document) in serde_yaml_ng::Deserializer::from_str(contents).enumerate() {
        match Option::<YamlRoot>::deserialize(document) {
            Ok(Some(root)) => roots.push(root),
            Ok(None) => {}
            Err(err) => {
                let first = ConfigError::from_yaml(file, &err);
                let unknown_key = first.message.contains("unknown field `");
                errors.push(first);
                match schema::recover(file, contents, index, &mut errors) {
                    Some(root) => roots.push(root),
                    // The later documents are still read after an unknown key, as they always
                    // were.
                    None if unknown_key => {}
                    // Not even a plain tree (a syntax error, say): the rest of the file
                    // cannot be read reliably.
                    None => return (roots, errors),
                }
            }
        }
    }
    if roots.is_empty() && errors.is_empty() {
        roots.push(YamlRoot::default());
    }
    (roots, errors)
}

/// A boolean as go-yaml v2 reads it: YAML 1.1 spellings included; `~`/null reads as false.
fn yaml11_bool<'de, D: Deserializer<'de>>(deserializer: D) -> Result<bool, D::Error> {
    struct Yaml11Bool;

    impl Visitor<'_> for Yaml11Bool {
        type Value = bool;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a boolean (true/false, yes/no, on/off)")
        }

        fn visit_bool<E: de::Error>(self, v: bool) -> Result<bool, E> {
            Ok(v)
        }

        fn visit_unit<E: de::Error>(self) -> Result<bool, E> {
            Ok(false)
        }

        fn visit_none<E: de::Error>(self) -> Result<bool, E> {
            Ok(false)
        }

        fn visit_str<E: de::Error>(self, v: &str) -> Result<bool, E> {
            match v {
                "y" | "Y" | "yes" | "Yes" | "YES" | "true" | "True" | "TRUE" | "on" | "On"
                | "ON" => Ok(true),
                "n" | "N" | "no" | "No" | "NO" | "false" | "False" | "FALSE" | "off" | "Off"
                | "OFF" | "~" | "null" | "Null" | "NULL" | "" => Ok(false),
                _ => Err(E::invalid_value(de::Unexpected::Str(v), &self)),
            }
        }
    }

    // From the text, asking for a string hands over the scalar exactly as written, whatever
    // YAML 1.2 thinks it is; from a recovered `Value` (see `schema::recover`) booleans and
    // nulls arrive already typed, which `deserialize_any` also accepts.
    deserializer.deserialize_any(Yaml11Bool)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_ok(yaml: &str) -> Vec<YamlRoot> {
        let (roots, errors) = parse("t.yaml", yaml);
        assert!(errors.is_empty(), "{errors:?}");
        roots
    }

    fn parse_err(yaml: &str) -> Vec<ConfigError> {
        let (_, errors) = parse("t.yaml", yaml);
        assert!(!errors.is_empty(), "accepted: {yaml}");
        errors
    }

    #[test]
    fn numeric_value_is_read_as_the_string_written() {
        let roots = parse_ok("domain: d\ndescriptors:\n  - key: code\n    value: 4.20\n");
        let d = &roots[0].descriptors.as_ref().unwrap()[0];
        assert_eq!(d.value.as_deref(), Some("4.20"));
    }

    #[test]
    fn yaml11_booleans_are_accepted() {
        let roots = parse_ok(
            "domain: d\ndescriptors:\n  - key: k\n    shadow_mode: yes\n    detailed_metric: On\n",
        );
        let d = &roots[0].descriptors.as_ref().unwrap()[0];
        assert!(d.shadow_mode && d.detailed_metric);
    }

    #[test]
    fn non_boolean_flag_is_an_error() {
        parse_err("domain: d\ndescriptors:\n  - key: k\n    shadow_mode: maybe\n");
    }

    #[test]
    fn file_without_documents_is_one_empty_root() {
        let roots = parse_ok("# only a comment\n");
        assert_eq!(roots.len(), 1);
        assert!(roots[0].domain.is_none() && roots[0].descriptors.is_none());
    }

    #[test]
    fn each_document_is_a_root_and_empty_ones_are_skipped() {
        let roots = parse_ok("domain: a\n---\ndomain: b\n---\n");
        let domains: Vec<_> = roots.iter().map(|r| r.domain.as_deref()).collect();
        assert_eq!(domains, [Some("a"), Some("b")]);
    }

    #[test]
    fn metadata_of_any_shape_is_ignored() {
        let yaml = "domain: d\ndescriptors:\n  - key: k\n    metadata:\n      owner: [a, {b: 1}]\n";
        let roots = parse_ok(yaml);
        let d = &roots[0].descriptors.as_ref().unwrap()[0];
        assert!(d.metadata.is_some());
    }

    #[test]
    fn every_unknown_key_of_a_document_is_reported_with_its_line() {
        let errors = parse_err(
            "domain: d\ndescriptors:\n  - key: a\n    valu: v\n  - key: b\n    rate_limit:\n      unit: second\n      requests_per_units: 5\n",
        );
        let found: Vec<_> = errors.iter().map(|e| (e.line, e.message.clone())).collect();
        assert_eq!(found.len(), 2, "{found:?}");
        assert_eq!(found[0].0, Some(4));
        assert!(found[0].1.contains("unknown field `valu`"), "{found:?}");
        assert_eq!(found[1].0, Some(8));
        assert!(
            found[1].1.contains("unknown field `requests_per_units`")
                && found[1].1.contains("descriptors[1].rate_limit"),
            "{found:?}"
        );
    }

    #[test]
    fn a_document_with_unknown_keys_is_still_read_for_its_other_problems() {
        let (roots, errors) = parse(
            "t.yaml",
            "domain: d\nbogus: 1\ndescriptors:\n  - key: k\n    value: 429\n    shadow_mode: yes\n",
        );
        assert_eq!(errors.len(), 1, "{errors:?}");
        let d = &roots[0].descriptors.as_ref().unwrap()[0];
        assert_eq!(d.value.as_deref(), Some("429"));
        assert!(d.shadow_mode);
    }

    #[test]
    fn token_budget_keys_are_read() {
        let roots = parse_ok(
            "domain: d\ndescriptors:\n  - key: k\n    rate_limits:\n      - {unit: minute, requests_per_unit: 9, unit_multiplier: 5, charge_over_limit: yes, allow_refunds: true}\n",
        );
        let d = &roots[0].descriptors.as_ref().unwrap()[0];
        let rl = &d.rate_limits.as_ref().unwrap()[0];
        assert_eq!(rl.unit_multiplier, Some(5));
        assert!(rl.charge_over_limit && rl.allow_refunds);
    }

    #[test]
    fn quota_mode_is_read() {
        let roots = parse_ok("domain: d\ndescriptors:\n  - key: k\n    quota_mode: true\n");
        assert!(roots[0].descriptors.as_ref().unwrap()[0].quota_mode);
    }
}
