//! Everything derived from a request descriptor's entries, in one place: the bucket key of a
//! rule or an override, and the per-request `limit` label of rules that ask for one.
//!
//! A key must be the same on every replica and across reloads of an unchanged rule, so it is
//! built from the rule's stable id and the request's strings only.

use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;

use crate::config::{MetricPath, Rule};
use crate::store::{KeyBuilder, KeyId};
use crate::unit::Unit;

/// The bucket of a configured rule: one per distinct descriptor, or one for all the values of a
/// `share_threshold` rule.
pub(crate) fn rule_key(domain: &str, rule: &Rule, d: &RateLimitDescriptor) -> KeyId {
    let mut k = KeyBuilder::empty();
    k.str(domain).u64(rule.id);
    if !rule.share_threshold {
        push_entries(&mut k, d);
    }
    k.finish()
}

/// The bucket of a request's limit override: its limit is part of the key, so two overrides
/// with different limits never share a bucket.
pub(crate) fn override_key(
    domain: &str,
    requests_per_unit: u32,
    unit: Unit,
    d: &RateLimitDescriptor,
) -> KeyId {
    let mut k = KeyBuilder::empty();
    k.str(domain)
        .str("\0override")
        .u64(u64::from(requests_per_unit))
        .u64(unit.nanos());
    push_entries(&mut k, d);
    k.finish()
}

fn push_entries(k: &mut KeyBuilder, d: &RateLimitDescriptor) {
    for e in &d.entries {
        k.str(&e.key).str(&e.value);
    }
}

/// The `limit` label for a request matched by a rule with a [`MetricPath`], the way the
/// reference builds its stats key: levels joined by `.`, each `key_value` or `key`.
///
/// - `detailed_metric`: every level shows the request's value;
/// - `value_to_metric` on a level: that level shows the request's value, the others their
///   configured one;
/// - `share_threshold` on a level: it shows its pattern whatever the request sent, since all
///   those values share one bucket (one series per raw value would defeat the sharing).
///
/// `position` (a `rate_limits` entry's place) is appended as `[i]`, as in the rule's own label,
/// so the limits of one descriptor keep their series apart.
pub(crate) fn metric_label(
    path: &MetricPath,
    d: &RateLimitDescriptor,
    position: Option<usize>,
) -> String {
    let mut out = String::new();
    for (level, entry) in path.levels.iter().zip(&d.entries) {
        if !out.is_empty() {
            out.push('.');
        }
        out.push_str(&level.key);
        let from_request = !level.shared && (path.detailed || level.value_to_metric);
        let value = if from_request {
            Some(entry.value.as_str())
        } else {
            level.value.as_deref()
        };
        if let Some(v) = value.filter(|v| !v.is_empty()) {
            out.push('_');
            out.push_str(v);
        }
    }
    if let Some(i) = position {
        use std::fmt::Write;
        let _ = write!(out, "[{i}]");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::MetricLevel;
    use envoy_types::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::Entry;

    fn level(key: &str, value: Option<&str>, to_metric: bool, shared: bool) -> MetricLevel {
        MetricLevel {
            key: key.into(),
            value: value.map(Into::into),
            value_to_metric: to_metric,
            shared,
        }
    }

    fn desc(entries: &[(&str, &str)]) -> RateLimitDescriptor {
        RateLimitDescriptor {
            entries: entries
                .iter()
                .map(|(k, v)| Entry {
                    key: k.to_string(),
                    value: v.to_string(),
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn value_to_metric_shows_the_request_value_of_its_level_only() {
        let path = MetricPath {
            detailed: false,
            levels: vec![
                level("route", None, true, false),
                level("method", Some("GET"), false, false),
            ],
        };
        let d = desc(&[("route", "/api"), ("method", "GET")]);
        assert_eq!(metric_label(&path, &d, None), "route_/api.method_GET");
        let path = MetricPath {
            detailed: false,
            levels: vec![
                level("route", None, false, false),
                level("user", None, true, false),
            ],
        };
        let d = desc(&[("route", "/api"), ("user", "bob")]);
        assert_eq!(metric_label(&path, &d, None), "route.user_bob");
    }

    #[test]
    fn detailed_metric_with_share_threshold_uses_the_shared_pattern() {
        let path = MetricPath {
            detailed: true,
            levels: vec![
                level("tenant", None, false, false),
                level("path", Some("/files/*"), false, true),
            ],
        };
        let a = desc(&[("tenant", "t1"), ("path", "/files/a")]);
        let b = desc(&[("tenant", "t1"), ("path", "/files/b")]);
        assert_eq!(metric_label(&path, &a, None), "tenant_t1.path_/files/*");
        assert_eq!(metric_label(&path, &a, None), metric_label(&path, &b, None));
    }
}
