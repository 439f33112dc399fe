//! The human-readable dump behind `GET /rlconfig`, shaped like the reference's `Dump()` so
//! operators' habits (and greps) carry over: one line per rule, full key first.

use super::{RateLimitConfig, Rule, RuleLimit};
use std::fmt::Write;

impl RateLimitConfig {
    /// One line per rule, sorted by domain then in config order:
    /// `domain.key1_value1.subkey1: unit=MINUTE, requests_per_unit=10, burst=20, name=n, shadow_mode=false`.
    /// `burst` and `name` appear only when configured; an unlimited rule reads
    /// `domain.key: unlimited, shadow_mode=false`.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for rule in self.rules() {
            render_rule(&mut out, rule);
        }
        out
    }
}

fn render_rule(out: &mut String, rule: &Rule) {
    // Writing to a String cannot fail.
    let _ = write!(out, "{}.{}: ", rule.domain, rule.stats_key);
    match rule.limit {
        RuleLimit::Unlimited => out.push_str("unlimited"),
        RuleLimit::Limited {
            requests_per_unit,
            unit,
            burst,
        } => {
            let _ = write!(
                out,
                "unit={}, requests_per_unit={requests_per_unit}",
                unit.name().to_ascii_uppercase()
            );
            if let Some(burst) = burst {
                let _ = write!(out, ", burst={burst}");
            }
        }
    }
    if let Some(name) = &rule.name {
        let _ = write!(out, ", name={name}");
    }
    let _ = writeln!(out, ", shadow_mode={}", rule.shadow_mode);
}
