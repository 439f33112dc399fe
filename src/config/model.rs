//! The YAML file as envoyproxy/ratelimit defines it, plus tollgate's `rate_limit.burst`.
//!
//! These structs only describe shape; meaning (units, duplicates, replaces) is checked in
//! `build.rs`, where every problem can be reported instead of just the first one. Unknown keys
//! are refused here, as the reference refuses them, so a typo such as `requests_per_units`
//! fails loudly instead of silently dropping a limit.
//!
//! Scalars are read the way the reference's YAML library (go-yaml v2) reads them, so files
//! written for it keep working: a string field takes any scalar as written (`value: 429` is the
//! string "429"), and booleans take the YAML 1.1 spellings (`yes`, `on`, ...) as well as `true`.

use serde::de::{self, Deserializer, IgnoredAny, Visitor};
use serde::Deserialize;
use std::fmt;

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
    /// Free-form annotations for humans and tools; accepted so such files load, never read.
    #[serde(default, rename = "metadata")]
    pub _metadata: Option<IgnoredAny>,
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

/// Parses one file into its domains: one per YAML document.
///
/// The reference reads only a file's first document; tollgate reads each `---`-separated
/// document as its own domain (so one file, such as the embedded default, can hold several).
/// Empty documents (a stray trailing `---`) are skipped, but a file with no document at all is
/// an empty root, which the builder refuses for its empty domain, as the reference does.
pub(crate) fn parse(contents: &str) -> Result<Vec<YamlRoot>, serde_yaml_ng::Error> {
    let mut roots = Vec::new();
    for document in serde_yaml_ng::Deserializer::from_str(contents) {
        if let Some(root) = Option::<YamlRoot>::deserialize(document)? {
            roots.push(root);
        }
    }
    if roots.is_empty() {
        roots.push(YamlRoot::default());
    }
    Ok(roots)
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

    // Asking for a string hands over the scalar exactly as written, whatever YAML 1.2 thinks it is.
    deserializer.deserialize_str(Yaml11Bool)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numeric_value_is_read_as_the_string_written() {
        let roots = parse("domain: d\ndescriptors:\n  - key: code\n    value: 4.20\n").unwrap();
        let d = &roots[0].descriptors.as_ref().unwrap()[0];
        assert_eq!(d.value.as_deref(), Some("4.20"));
    }

    #[test]
    fn yaml11_booleans_are_accepted() {
        let roots = parse(
            "domain: d\ndescriptors:\n  - key: k\n    shadow_mode: yes\n    detailed_metric: On\n",
        )
        .unwrap();
        let d = &roots[0].descriptors.as_ref().unwrap()[0];
        assert!(d.shadow_mode && d.detailed_metric);
    }

    #[test]
    fn non_boolean_flag_is_an_error() {
        assert!(parse("domain: d\ndescriptors:\n  - key: k\n    shadow_mode: maybe\n").is_err());
    }

    #[test]
    fn file_without_documents_is_one_empty_root() {
        let roots = parse("# only a comment\n").unwrap();
        assert_eq!(roots.len(), 1);
        assert!(roots[0].domain.is_none() && roots[0].descriptors.is_none());
    }

    #[test]
    fn each_document_is_a_root_and_empty_ones_are_skipped() {
        let roots = parse("domain: a\n---\ndomain: b\n---\n").unwrap();
        let domains: Vec<_> = roots.iter().map(|r| r.domain.as_deref()).collect();
        assert_eq!(domains, [Some("a"), Some("b")]);
    }

    #[test]
    fn metadata_of_any_shape_is_ignored() {
        let yaml = "domain: d\ndescriptors:\n  - key: k\n    metadata:\n      owner: [a, {b: 1}]\n";
        assert!(parse(yaml).is_ok());
    }
}
