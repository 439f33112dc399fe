//! The per-rule series of the `/metrics` text, written from the config being served.
//!
//! Per-rule counters and gauges are not registered with the Prometheus recorder: its registry
//! cannot forget a series, so every rule a reload removed (or renamed) would be exported until
//! the process ends, and a config that churns rule names would grow the scrape without bound.
//! Instead a scrape walks the rules of the active config and writes their series here: a removed
//! rule's series go with it. A rule that survives a reload keeps its counters, because the
//! next config's rule shares them (`Limiter::swap_config`).
//!
//! Each family is written under one `# HELP`/`# TYPE` header, as the text format requires, and
//! each (domain, limit) label set once: two rules that share a label share their counters.

use std::collections::HashSet;
use std::fmt::Write;

use metrics_exporter_prometheus::formatting::sanitize_label_value;

/// The per-rule families, in the order they are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    Hits,
    OverLimit,
    NearLimit,
    WithinLimit,
    ShadowMode,
    KeysOverBudget,
    Capacity,
    FillRate,
    Usage,
    RefillDelay,
    RejectionRate,
    LiveKeys,
}

const FAMILIES: usize = 12;

impl Family {
    /// Name, type and help text.
    fn meta(self) -> (&'static str, &'static str, &'static str) {
        match self {
            Family::Hits => ("tollgate_hits_total", "counter", "Hits (sum of hits_addend) checked against a rule."),
            Family::OverLimit => ("tollgate_over_limit_total", "counter", "Hits rejected because the rule's bucket was empty."),
            Family::NearLimit => ("tollgate_near_limit_total", "counter", "Hits admitted with the bucket above the near-limit ratio of use."),
            Family::WithinLimit => ("tollgate_within_limit_total", "counter", "Hits admitted."),
            Family::ShadowMode => ("tollgate_shadow_mode_total", "counter", "Hits over a shadow-mode rule's limit (answered OK)."),
            Family::KeysOverBudget => ("tollgate_rule_keys_over_budget_total", "counter", "New keys of a rule beyond its key budget: answered from a shared bucket, or denied."),
            Family::Capacity => ("token_bucket_capacity", "gauge", "The rule's bucket capacity C, in tokens."),
            Family::FillRate => ("token_bucket_fill_rate", "gauge", "Tokens added per second to each of the rule's buckets."),
            Family::Usage => ("token_bucket_current_usage", "gauge", "Tokens in use (C - available) in the rule's most drained bucket."),
            Family::RefillDelay => ("token_bucket_refill_delay", "gauge", "Seconds the rule's most drained bucket has been without a token (0 when every bucket has one)."),
            Family::RejectionRate => ("token_bucket_rejection_rate", "gauge", "Share of the rule's decisions rejected over the last 60 s."),
            Family::LiveKeys => ("tollgate_rule_live_keys", "gauge", "Keys with a live bucket of the rule in this instance."),
        }
    }
}

/// The `domain="…",limit="…"` part of a rule's series, escaped once when the rule is built.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SeriesLabels(Box<str>);

impl SeriesLabels {
    pub fn new(domain: &str, limit: &str) -> SeriesLabels {
        SeriesLabels(
            format!(
                "domain=\"{}\",limit=\"{}\"",
                sanitize_label_value(domain),
                sanitize_label_value(limit)
            )
            .into(),
        )
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The per-rule families of one scrape, filled rule by rule and then written out.
pub struct RuleSeries {
    bodies: [String; FAMILIES],
    written: HashSet<SeriesLabels>,
}

impl Default for RuleSeries {
    fn default() -> Self {
        RuleSeries {
            bodies: std::array::from_fn(|_| String::new()),
            written: HashSet::new(),
        }
    }
}

impl RuleSeries {
    /// `true` the first time `labels` is seen in this scrape: the caller then writes its
    /// series. Later rules with the same labels share the first one's counters.
    pub fn claim(&mut self, labels: &SeriesLabels) -> bool {
        self.written.insert(labels.clone())
    }

    pub fn counter(&mut self, family: Family, labels: &SeriesLabels, value: u64) {
        self.sample(family, labels, None, value);
    }

    /// A counter with one label more (`action` of the key-budget counter).
    pub fn counter_with(
        &mut self,
        family: Family,
        labels: &SeriesLabels,
        extra: (&str, &str),
        value: u64,
    ) {
        self.sample(family, labels, Some(extra), value);
    }

    pub fn gauge(&mut self, family: Family, labels: &SeriesLabels, value: f64) {
        self.sample(family, labels, None, value);
    }

    fn sample(
        &mut self,
        family: Family,
        labels: &SeriesLabels,
        extra: Option<(&str, &str)>,
        value: impl std::fmt::Display,
    ) {
        let (name, _, _) = family.meta();
        let body = &mut self.bodies[family as usize];
        body.push_str(name);
        body.push('{');
        body.push_str(labels.as_str());
        if let Some((k, v)) = extra {
            let _ = write!(body, ",{k}=\"{}\"", sanitize_label_value(v));
        }
        let _ = writeln!(body, "}} {value}");
    }

    /// Append every family that has a sample, each under its header.
    pub fn write_to(self, out: &mut String) {
        const ALL: [Family; FAMILIES] = [
            Family::Hits,
            Family::OverLimit,
            Family::NearLimit,
            Family::WithinLimit,
            Family::ShadowMode,
            Family::KeysOverBudget,
            Family::Capacity,
            Family::FillRate,
            Family::Usage,
            Family::RefillDelay,
            Family::RejectionRate,
            Family::LiveKeys,
        ];
        for (family, body) in ALL.into_iter().zip(self.bodies) {
            if body.is_empty() {
                continue;
            }
            let (name, kind, help) = family.meta();
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            out.push_str(&body);
            out.push('\n');
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_family_is_written_once_under_its_header() {
        let mut s = RuleSeries::default();
        let a = SeriesLabels::new("d", "a");
        let b = SeriesLabels::new("d", "b");
        s.counter(Family::Hits, &a, 3);
        s.gauge(Family::Capacity, &a, 10.0);
        s.counter(Family::Hits, &b, 4);
        let mut out = String::new();
        s.write_to(&mut out);
        assert_eq!(out.matches("# TYPE tollgate_hits_total counter").count(), 1);
        assert!(
            out.contains("tollgate_hits_total{domain=\"d\",limit=\"a\"} 3\n"),
            "{out}"
        );
        assert!(
            out.contains("tollgate_hits_total{domain=\"d\",limit=\"b\"} 4\n"),
            "{out}"
        );
        assert!(
            out.contains("token_bucket_capacity{domain=\"d\",limit=\"a\"} 10\n"),
            "{out}"
        );
        assert!(
            !out.contains("token_bucket_fill_rate"),
            "no empty family: {out}"
        );
    }

    #[test]
    fn label_values_are_escaped() {
        let l = SeriesLabels::new("d\"x", "a\nb");
        assert_eq!(l.as_str(), "domain=\"d\\\"x\",limit=\"a\\nb\"");
    }

    #[test]
    fn a_label_set_is_claimed_once_per_scrape() {
        let mut s = RuleSeries::default();
        let a = SeriesLabels::new("d", "a");
        assert!(s.claim(&a));
        assert!(!s.claim(&a));
    }
}
