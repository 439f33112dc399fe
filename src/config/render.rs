//! The human-readable dump behind `GET /rlconfig`, shaped like the reference's `Dump()` so
//! operators' habits (and greps) carry over: one line per rule, full key first.

use super::{RateLimitConfig, Rule, RuleLimit};
use std::fmt::Write;

impl RateLimitConfig {
    /// One line per rule, sorted by domain then in config order:
    /// `domain.key1_value1.subkey1: unit=MINUTE, requests_per_unit=10, burst=20, name=n, shadow_mode=false`.
    /// `unit_multiplier`, `burst`, `name`, `rate_limits[i]` (the place in a `rate_limits`
    /// list), `charge_over_limit` and `allow_refunds` appear only when configured; an unlimited rule reads
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
            unit_multiplier,
        } => {
            let _ = write!(
                out,
                "unit={}, requests_per_unit={requests_per_unit}",
                unit.name().to_ascii_uppercase()
            );
            if unit_multiplier != 1 {
                let _ = write!(out, ", unit_multiplier={unit_multiplier}");
            }
            if let Some(burst) = burst {
                let _ = write!(out, ", burst={burst}");
            }
        }
    }

    if let Some(name) = &rule.name {
        let _ = write!(out, ", name={name}");
    }
    if let Some(i) = rule.position {
        let _ = write!(out, ", rate_limits[{i}]");
    }
    for (set, flag) in [
        (rule.charge_over_limit, "charge_over_limit=true"),
        (rule.allow_refunds, "allow_refunds=true"),
    ] {
        if set {
            let _ = write!(out, ", {flag}");
        }
    }
    let _ = writeln!(out, ", shadow_mode={}", rule.shadow_mode);
}
