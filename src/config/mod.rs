//! Rate limit rules, read from envoyproxy/ratelimit's YAML files unchanged.
//!
//! A `RateLimitConfig` is built once from a set of files and never changes: a reload builds a
//! new one and swaps it in whole, so lookups need no locks and a bad file can be refused while
//! the old config keeps serving. Files: `model.rs` (the YAML shape), `build.rs` (load-time
//! checks and the lookup trees), `matcher.rs` and `glob.rs` (request matching), `render.rs`
//! (the /rlconfig dump), `fingerprint.rs` (stable ids and hashes), `load.rs` (files and
//! directories on disk), `guard.rs` (size, nesting and empty-config bounds), `default.yaml` (served when no config is given).

mod build;
mod error;
mod fingerprint;
mod glob;
mod guard;
mod load;
mod matcher;
mod model;
mod render;
mod schema;
#[cfg(test)]
mod tests;

pub use error::{ConfigError, ConfigErrors};
pub use guard::{check_nesting, LoadPolicy, MAX_FLOW_DEPTH, MAX_INDENT};
pub use load::{load_path, read_path, read_path_within};

use crate::unit::Unit;
use matcher::Level;

/// The limit of a rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RuleLimit {
    /// `unlimited: true`: matched (and counted), never limited.
    Unlimited,
    /// Refill `requests_per_unit` per `unit_multiplier` units, up to a capacity of `burst`
    /// (tollgate's extensions), or of `requests_per_unit` when no burst is given.
    Limited {
        requests_per_unit: u32,
        unit: Unit,
        burst: Option<u32>,
        /// Units in one period (1 unless `unit_multiplier` is set).
        unit_multiplier: u16,
    },
}

/// The largest `unit_multiplier` a rule may set (the period is also bounded, to 100 years).
pub const MAX_UNIT_MULTIPLIER: u64 = 1000;

/// A configured descriptor that carries a `rate_limit`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub domain: String,
    /// The descriptor path without the domain, as the reference's stats key:
    /// `key1_value1.subkey1`; wildcard levels keep the pattern (`key_foo*`), key-only levels
    /// are just the key.
    pub stats_key: String,
    /// `rate_limit.name`, what `replaces` entries refer to.
    pub name: Option<String>,
    pub limit: RuleLimit,
    pub shadow_mode: bool,
    pub detailed_metric: bool,
    pub value_to_metric: bool,
    pub share_threshold: bool,
    /// The reference's `quota_mode`: being over fails the request only when every quota-mode
    /// descriptor of it is over.
    pub quota_mode: bool,
    /// The descriptor's `metadata`, as JSON: merged into the response's dynamic metadata when
    /// the rule passes.
    pub metadata: Option<std::sync::Arc<serde_json::Value>>,
    /// How the `limit` label of a request matched by this rule is built, when it depends on
    /// the request (`detailed_metric`, `value_to_metric`); `None`: the label is `stats_key`.
    pub metric_path: Option<MetricPath>,
    /// Names of rules this one drops when both match the same request.
    pub replaces: Vec<String>,
    /// `charge_over_limit`: hits are charged even beyond what is left (into debt, at most one
    /// capacity), and a 0-hit query is over while the bucket holds less than one token.
    pub charge_over_limit: bool,
    /// `allow_refunds`: a descriptor with `is_negative_hits` gives its hits back.
    pub allow_refunds: bool,
    /// Its place in the descriptor's `rate_limits` list; `None` for a `rate_limit`.
    pub position: Option<usize>,
    /// Stable hash of (domain, stats_key, name, limit incl. burst): an unchanged rule keeps its
    /// id across reloads, so its buckets survive; a changed one gets a new id and fresh buckets.
    pub id: u64,
}

impl Rule {
    /// The `limit` label of its metrics: its name, else its stats key, with its place in a
    /// `rate_limits` list (`key_value[1]`) so that the limits of one descriptor stay apart.
    pub fn label(&self) -> std::borrow::Cow<'_, str> {
        match (&self.name, self.position) {
            (Some(name), _) => name.as_str().into(),
            (None, None) => self.stats_key.as_str().into(),
            (None, Some(i)) => format!("{}[{i}]", self.stats_key).into(),
        }
    }
}

/// The configured descriptors from the domain down to a rule, for labels built per request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricPath {
    /// `detailed_metric`: every level shows the request's value.
    pub detailed: bool,
    pub levels: Vec<MetricLevel>,
}

/// One configured descriptor on a rule's path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricLevel {
    pub key: Box<str>,
    /// The configured value (exact or wildcard pattern); `None` for key-only.
    pub value: Option<Box<str>>,
    /// `value_to_metric`: the request's value is shown instead of the configured one.
    pub value_to_metric: bool,
    /// `share_threshold`: all values share one bucket, so they share one label (the pattern).
    pub shared: bool,
}

/// Options of the config build that the reference sets in its environment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BuildOptions {
    /// `MERGE_DOMAIN_CONFIG`: files naming the same domain are merged (their descriptors
    /// concatenated, in file order) instead of refused as duplicates.
    pub merge_domains: bool,
}

/// What a request descriptor matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Match<'a> {
    /// The domain is not configured (the caller answers OK and counts it).
    UnknownDomain,
    /// Nothing at the request's depth, or a whitelist entry (matched, without rate_limit).
    NoRule,
    Rule(&'a Rule),
}

/// The rules of one configured domain.
#[derive(Clone, Copy)]
pub struct DomainRules<'a> {
    level: &'a Level,
    rules: &'a [Rule],
    replaces: bool,
}

impl<'a> DomainRules<'a> {
    /// The rules for one request descriptor's entries (one, or a `rate_limits` list), with
    /// the position of the first in [`RateLimitConfig::rules`] (per-rule state lives in
    /// vectors indexed the same way).
    pub fn lookup<'b>(
        &self,
        entries: impl IntoIterator<Item = (&'b str, &'b str)>,
    ) -> Option<(usize, &'a [Rule])> {
        let (i, n) = self.level.lookup(entries)?;
        self.rules.get(i..i + n).map(|r| (i, r))
    }

    /// Whether any rule of the config names rules it replaces: without one, a request's
    /// descriptors are resolved each on its own, in one pass.
    pub fn has_replaces(&self) -> bool {
        self.replaces
    }
}

/// The loaded rules of every domain. Immutable; `Send + Sync`.
#[derive(Debug)]
pub struct RateLimitConfig {
    domains: crate::fast_map::FastMap<Box<str>, Level>,
    /// Sorted, for deterministic listing and fingerprinting.
    domain_names: Vec<Box<str>>,
    /// Every rule, sorted by domain then in config order (depth first); nodes index into it.
    rules: Vec<Rule>,
    /// Some rule has a `replaces` list (most configs have none).
    replaces: bool,
    fingerprint: u64,
}

const DEFAULT_YAML: &str = include_str!("default.yaml");

impl RateLimitConfig {
    /// The example config shipped in the binary; a unit test proves it loads.
    pub fn embedded_default() -> RateLimitConfig {
        Self::from_files(&[("default.yaml".to_string(), DEFAULT_YAML.to_string())])
            .expect("the embedded default.yaml is checked by a unit test")
    }

    /// Builds a config from `(file name, contents)` pairs; the names only label errors.
    pub fn from_files(files: &[(String, String)]) -> Result<RateLimitConfig, ConfigErrors> {
        build::build(files, BuildOptions::default())
    }

    /// [`from_files`](Self::from_files) with the options the reference takes from its
    /// environment.
    pub fn from_files_with(
        files: &[(String, String)],
        options: BuildOptions,
    ) -> Result<RateLimitConfig, ConfigErrors> {
        build::build(files, options)
    }

    /// The rule for one request descriptor's entries `(key, value)`, in request order (the
    /// first of a `rate_limits` list).
    pub fn lookup<'a, 'b>(
        &'a self,
        domain: &str,
        entries: impl IntoIterator<Item = (&'b str, &'b str)>,
    ) -> Match<'a> {
        let Some(level) = self.domains.get(domain) else {
            return Match::UnknownDomain;
        };
        match level.lookup(entries).and_then(|(i, _)| self.rules.get(i)) {
            Some(rule) => Match::Rule(rule),
            None => Match::NoRule,
        }
    }

    /// One domain's rules, found once per request and then looked up per descriptor.
    pub fn domain(&self, name: &str) -> Option<DomainRules<'_>> {
        self.domains.get(name).map(|level| DomainRules {
            level,
            rules: &self.rules,
            replaces: self.replaces,
        })
    }

    /// Whether a domain is configured.
    pub fn has_domain(&self, domain: &str) -> bool {
        self.domains.contains_key(domain)
    }

    /// Configured domains, sorted.
    pub fn domains(&self) -> impl Iterator<Item = &str> {
        self.domain_names.iter().map(|d| &**d)
    }

    /// Every rule with a rate_limit, sorted by domain then in config order.
    pub fn rules(&self) -> impl Iterator<Item = &Rule> {
        self.rules.iter()
    }

    /// Hash of the whole normalized config: equal on replicas that loaded the same rules.
    pub fn fingerprint(&self) -> u64 {
        self.fingerprint
    }
}
