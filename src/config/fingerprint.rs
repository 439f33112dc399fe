//! Stable hashes: the id of a rule and the fingerprint of a whole config.
//!
//! Both are compared across processes (replicas, reloads), so they hash an explicit,
//! length-prefixed encoding with xxh3 rather than going through `std::hash::Hash`, whose output
//! is not promised to be stable across Rust releases.

use super::matcher::Level;
use super::{RateLimitConfig, Rule, RuleLimit};
use xxhash_rust::xxh3::Xxh3;

/// An xxh3 stream fed with unambiguous encodings (every string carries its length).
pub(crate) struct StableHasher(Xxh3);

impl StableHasher {
    pub(crate) fn new() -> StableHasher {
        StableHasher(Xxh3::new())
    }

    pub(crate) fn u64(&mut self, v: u64) -> &mut Self {
        self.0.update(&v.to_le_bytes());
        self
    }

    pub(crate) fn bool(&mut self, v: bool) -> &mut Self {
        self.u64(u64::from(v))
    }

    pub(crate) fn str(&mut self, s: &str) -> &mut Self {
        self.u64(s.len() as u64);
        self.0.update(s.as_bytes());
        self
    }

    pub(crate) fn opt_str(&mut self, s: Option<&str>) -> &mut Self {
        match s {
            None => self.u64(0),
            Some(s) => self.u64(1).str(s),
        }
    }

    pub(crate) fn limit(&mut self, limit: &RuleLimit) -> &mut Self {
        match *limit {
            RuleLimit::Unlimited => self.u64(0),
            RuleLimit::Limited {
                requests_per_unit,
                unit,
                burst,
                unit_multiplier,
            } => {
                self.u64(1)
                    .u64(u64::from(requests_per_unit))
                    .u64(unit.to_proto() as u64);
                match burst {
                    None => self.u64(0),
                    Some(b) => self.u64(1).u64(u64::from(b)),
                };
                // Hashed only when set, so that a rule without it keeps its id (and buckets)
                // across the upgrade that introduced it.
                if unit_multiplier != 1 {
                    self.str("unit_multiplier").u64(u64::from(unit_multiplier));
                }
                self
            }
        }
    }

    pub(crate) fn finish(&self) -> u64 {
        self.0.digest()
    }
}

/// A rule's identity: what decides which bucket a request lands in and how that bucket behaves.
/// Flags such as `shadow_mode` are left out on purpose: flipping one must not reset a bucket.
/// `position` (the place in a `rate_limits` list) keeps two equal limits of one descriptor in
/// two buckets; it is hashed only for `rate_limits` entries, so `rate_limit` ids are unchanged.
pub(crate) fn rule_id(
    domain: &str,
    stats_key: &str,
    name: Option<&str>,
    limit: &RuleLimit,
    position: Option<usize>,
) -> u64 {
    let mut h = StableHasher::new();
    h.str(domain).str(stats_key).opt_str(name).limit(limit);
    if let Some(i) = position {
        h.str("rate_limits").u64(i as u64);
    }
    h.finish()
}

/// Everything that changes behaviour, in a canonical order: domains sorted by name,
/// descriptors in config order (which matters, since the first matching wildcard wins).
/// File names are not part of it.
pub(crate) fn fingerprint(config: &RateLimitConfig) -> u64 {
    let mut h = StableHasher::new();
    h.u64(config.domain_names.len() as u64);
    for name in &config.domain_names {
        h.str(name);
        if let Some(level) = config.domains.get(name) {
            level_into(&mut h, level, &config.rules);
        }
    }
    h.finish()
}

fn level_into(h: &mut StableHasher, level: &Level, rules: &[Rule]) {
    h.u64(level.nodes.len() as u64);
    for node in &level.nodes {
        h.str(&node.key).opt_str(node.value.as_deref());
        match node.rule.and_then(|i| rules.get(i..i + node.rule_count)) {
            None | Some([]) => {
                h.u64(0);
            }
            Some([rule, more @ ..]) => {
                h.u64(1);
                rule_into(h, rule);
                if !more.is_empty() {
                    h.str("rate_limits").u64(more.len() as u64);
                    for rule in more {
                        rule_into(h, rule);
                    }
                }
            }
        }
        level_into(h, &node.children, rules);
    }
}

fn rule_into(h: &mut StableHasher, rule: &Rule) {
    h.u64(rule.id)
        .bool(rule.shadow_mode)
        .bool(rule.detailed_metric)
        .bool(rule.value_to_metric)
        .bool(rule.share_threshold)
        .u64(rule.replaces.len() as u64);
    for r in &rule.replaces {
        h.str(r);
    }
    // Hashed only when set, so that configs without them keep their fingerprint across the
    // upgrade that introduced them.
    if rule.quota_mode {
        h.str("quota_mode");
    }
    if let Some(m) = &rule.metadata {
        h.str("metadata").str(&m.to_string());
    }
    if rule.charge_over_limit {
        h.str("charge_over_limit");
    }
    if rule.allow_refunds {
        h.str("allow_refunds");
    }
}
