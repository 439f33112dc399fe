//! From parsed files to a `RateLimitConfig`: the checks the reference makes at load time, with
//! the same messages, and the lookup trees.
//!
//! Unlike the reference, which stops at the first problem, every file is checked completely and
//! every problem is reported.

use super::error::{ConfigError, ConfigErrors};
use super::fingerprint::{fingerprint, rule_id};
use super::matcher::{Level, Node};
use super::model::{self, YamlDescriptor, YamlRateLimit, YamlRoot};
use super::{
    BuildOptions, MetricLevel, MetricPath, RateLimitConfig, Rule, RuleLimit, MAX_UNIT_MULTIPLIER,
};
use crate::unit::Unit;
use std::collections::{HashMap, HashSet};

pub(crate) fn build(
    files: &[(String, String)],
    options: BuildOptions,
) -> Result<RateLimitConfig, ConfigErrors> {
    let mut errors = Vec::new();

    let mut roots: Vec<(&str, YamlRoot)> = Vec::new();
    for (file, contents) in files {
        let (parsed, problems) = model::parse(file, contents);
        roots.extend(parsed.into_iter().map(|root| (file.as_str(), root)));
        errors.extend(problems);
    }

    // Domains are unique across files; the first file to claim one keeps it. The others are
    // still checked below so that all their problems show up in the same report. With
    // `merge_domains`, a later file's descriptors join the first one's domain instead.
    let mut owner: HashMap<String, &str> = HashMap::new();
    let mut kept: Vec<(String, Vec<(&str, &YamlRoot)>)> = Vec::new();
    let mut refused: Vec<(String, &str, &YamlRoot)> = Vec::new();
    for (file, root) in &roots {
        let domain = root.domain.clone().unwrap_or_default();
        if domain.is_empty() {
            errors.push(ConfigError::new(
                file,
                "config file cannot have empty domain",
            ));
            refused.push((domain, file, root));
        } else if let Some(first) = owner.get(&domain) {
            if options.merge_domains {
                if let Some((_, parts)) = kept.iter_mut().find(|(d, _)| *d == domain) {
                    parts.push((file, root));
                }
                continue;
            }
            errors.push(ConfigError::new(
                file,
                format!("duplicate domain '{domain}' in config file (already defined in {first})"),
            ));
            refused.push((domain, file, root));
        } else {
            owner.insert(domain.clone(), file);
            kept.push((domain, vec![(file, root)]));
        }
    }

    // Sorted by domain, so rules() and render() list rules in the same order on every replica
    // whatever order the files were read in.
    kept.sort_by(|a, b| a.0.cmp(&b.0));
    let mut rules = Vec::new();
    let mut domains = crate::fast_map::FastMap::default();
    for (domain, parts) in &kept {
        let mut level = Level::default();
        let mut seen = HashSet::new();
        for (file, root) in parts {
            let mut builder = Builder {
                file,
                domain,
                rules: &mut rules,
                errors: &mut errors,
                path: Vec::new(),
            };
            let descriptors = root.descriptors.as_deref().unwrap_or_default();
            builder.fill(&mut level, &mut seen, "", descriptors);
        }
        domains.insert(domain.as_str().into(), level);
    }
    let mut discarded = Vec::new();
    for (domain, file, root) in &refused {
        let mut builder = Builder {
            file,
            domain,
            rules: &mut discarded,
            errors: &mut errors,
            path: Vec::new(),
        };
        builder.level("", root.descriptors.as_deref().unwrap_or_default());
    }

    if !errors.is_empty() {
        return Err(ConfigErrors(errors));
    }
    let replaces = rules.iter().any(|r| !r.replaces.is_empty());
    let mut config = RateLimitConfig {
        domain_names: kept.iter().map(|(d, _)| d.as_str().into()).collect(),
        domains,
        rules,
        replaces,
        fingerprint: 0,
    };
    config.fingerprint = fingerprint(&config);
    Ok(config)
}

/// Builds the levels of one file's domain, recording rules and problems as it goes.
struct Builder<'a> {
    file: &'a str,
    domain: &'a str,
    rules: &'a mut Vec<Rule>,
    errors: &'a mut Vec<ConfigError>,
    /// The configured descriptors from the domain down to the one being built.
    path: Vec<MetricLevel>,
}

impl Builder<'_> {
    fn error(&mut self, message: String) {
        self.errors.push(ConfigError::new(self.file, message));
    }

    /// The descriptor path with the domain in front, as the reference names descriptors.
    fn full_path(&self, stats_key: &str) -> String {
        if stats_key.is_empty() {
            self.domain.to_string()
        } else {
            format!("{}.{stats_key}", self.domain)
        }
    }

    /// `parent` is the stats key of the owning descriptor ("" for the domain's own level).
    fn level(&mut self, parent: &str, descriptors: &[YamlDescriptor]) -> Level {
        let mut level = Level::default();
        let mut seen = HashSet::new();
        self.fill(&mut level, &mut seen, parent, descriptors);
        level
    }

    /// Adds `descriptors` to `level`; `seen` holds the composite keys already in it (a merged
    /// domain fills its top level from several files).
    fn fill(
        &mut self,
        level: &mut Level,
        seen: &mut HashSet<String>,
        parent: &str,
        descriptors: &[YamlDescriptor],
    ) {
        for (position, d) in descriptors.iter().enumerate() {
            let key = d.key.as_deref().unwrap_or_default();
            // An empty value means "no value", as in the reference.
            let value = d.value.as_deref().filter(|v| !v.is_empty());
            // The reference's composite key; it names the descriptor in stats and errors.
            let composite = match value {
                Some(v) => format!("{key}_{v}"),
                None => key.to_string(),
            };
            let stats_key = if parent.is_empty() {
                composite.clone()
            } else {
                format!("{parent}.{composite}")
            };
            let children = d.descriptors.as_deref().unwrap_or_default();

            if key.is_empty() {
                let msg = format!(
                    "descriptor has empty key (descriptor #{} under '{}')",
                    position + 1,
                    self.full_path(parent)
                );
                self.error(msg);
                self.level(&stats_key, children);
                continue;
            }
            let duplicate = !seen.insert(composite.clone());
            if duplicate {
                let msg = format!(
                    "duplicate descriptor composite key '{}'",
                    self.full_path(&stats_key)
                );
                self.error(msg);
            }
            if d.share_threshold && !value.is_some_and(|v| v.contains('*')) {
                let msg = format!(
                    "share_threshold can only be used with wildcard values (containing '*'), \
                     but found key '{composite}' in descriptor '{}'",
                    self.full_path(&stats_key)
                );
                self.error(msg);
            }

            self.path.push(MetricLevel {
                key: key.into(),
                value: value.map(Box::from),
                value_to_metric: d.value_to_metric,
                shared: d.share_threshold,
            });
            let (rule, rule_count) = self.rules_of(d, &stats_key);
            let node = Node {
                key: key.into(),
                value: value.map(Box::from),
                rule,
                rule_count,
                children: self.level(&stats_key, children),
            };
            self.path.pop();
            if !duplicate {
                level.push(node);
            }
        }
    }

    /// The per-request label recipe of a rule at the current path, `None` when its label is
    /// simply its stats key.
    fn metric_path(&self, detailed: bool) -> Option<MetricPath> {
        let dynamic = detailed || self.path.iter().any(|l| l.value_to_metric);
        dynamic.then(|| MetricPath {
            detailed,
            levels: self.path.clone(),
        })
    }

    /// `metadata` as JSON (what the response's dynamic metadata carries); keys must be strings.
    fn metadata(
        &mut self,
        d: &YamlDescriptor,
        at: &str,
    ) -> Option<std::sync::Arc<serde_json::Value>> {
        let yaml = d.metadata.as_ref()?;
        match serde_json::to_value(yaml) {
            Ok(serde_json::Value::Null) => None,
            Ok(json) => Some(std::sync::Arc::new(json)),
            Err(err) => {
                self.error(format!(
                    "metadata cannot be represented as JSON ({err}) {at}"
                ));
                None
            }
        }
    }

    /// The rules of one descriptor, pushed to `self.rules`: the first one's index and how many
    /// (`rate_limit` gives one, `rate_limits` one per entry); `(None, 0)` when it has none or
    /// one of them is bad (with errors recorded).
    fn rules_of(&mut self, d: &YamlDescriptor, stats_key: &str) -> (Option<usize>, usize) {
        let list = match (&d.rate_limit, &d.rate_limits) {
            (None, None) => return (None, 0),
            (Some(rl), None) => {
                let Some(rule) = self.rule(rl, d, stats_key, None) else {
                    return (None, 0);
                };
                self.rules.push(rule);
                return (Some(self.rules.len() - 1), 1);
            }
            (Some(_), Some(_)) => {
                let msg = format!(
                    "rate_limit and rate_limits cannot both be set (put every limit in \
                     rate_limits) in descriptor '{}'",
                    self.full_path(stats_key)
                );
                self.error(msg);
                return (None, 0);
            }
            (None, Some(list)) => list,
        };
        if list.is_empty() {
            let msg = format!(
                "rate_limits must list at least one limit in descriptor '{}'",
                self.full_path(stats_key)
            );
            self.error(msg);
            return (None, 0);
        }
        let rules: Vec<Option<Rule>> = list
            .iter()
            .enumerate()
            .map(|(i, rl)| self.rule(rl, d, stats_key, Some(i)))
            .collect();
        let Some(rules) = rules.into_iter().collect::<Option<Vec<Rule>>>() else {
            return (None, 0);
        };
        let first = self.rules.len();
        let count = rules.len();
        self.rules.extend(rules);
        (Some(first), count)
    }

    /// The limit of a `rate_limit` (or of one `rate_limits` entry), with errors recorded.
    fn limit(&mut self, rl: &YamlRateLimit, at: &str) -> RuleLimit {
        let unit = rl.unit.as_deref().unwrap_or_default();
        if rl.unlimited {
            // As in the reference, only a valid unit is refused next to `unlimited`.
            if unit.parse::<Unit>().is_ok() {
                self.error(format!(
                    "should not specify rate limit unit when unlimited {at}"
                ));
            }
            for (set, key) in [
                (rl.burst.is_some(), "burst"),
                (rl.unit_multiplier.is_some(), "unit_multiplier"),
                (rl.charge_over_limit, "charge_over_limit"),
                (rl.allow_refunds, "allow_refunds"),
            ] {
                if set {
                    self.error(format!("should not specify {key} when unlimited {at}"));
                }
            }
            return RuleLimit::Unlimited;
        }
        let unit = match unit.parse::<Unit>() {
            Ok(unit) => unit,
            Err(err) => {
                self.error(format!("{err} {at}"));
                Unit::Second
            }
        };
        if rl.burst == Some(0) {
            self.error(format!("burst must be at least 1 {at}"));
        }
        RuleLimit::Limited {
            requests_per_unit: rl.requests_per_unit.unwrap_or(0),
            unit,
            burst: rl.burst,
            unit_multiplier: self.unit_multiplier(rl.unit_multiplier, unit, at),
        }
    }

    /// `unit_multiplier`: 1 to [`MAX_UNIT_MULTIPLIER`], with a period of at most 100 years.
    fn unit_multiplier(&mut self, m: Option<u64>, unit: Unit, at: &str) -> u16 {
        let Some(m) = m else { return 1 };
        let period_ok = unit
            .nanos()
            .checked_mul(m)
            .is_some_and(|p| p <= crate::bucket::MAX_PERIOD_NS);
        match u16::try_from(m) {
            Ok(m) if (1..=MAX_UNIT_MULTIPLIER).contains(&u64::from(m)) && period_ok => m,
            _ => {
                self.error(format!(
                    "unit_multiplier must be a whole number from 1 to {MAX_UNIT_MULTIPLIER}, \
                     with a period (unit x unit_multiplier) of at most 100 years, got {m} {at}"
                ));
                1
            }
        }
    }

    /// The rule of one `rate_limit` (`position`: its place in a `rate_limits` list), or `None`
    /// (with errors recorded) when it is bad.
    fn rule(
        &mut self,
        rl: &YamlRateLimit,
        d: &YamlDescriptor,
        stats_key: &str,
        position: Option<usize>,
    ) -> Option<Rule> {
        let at = match position {
            None => format!("in descriptor '{}'", self.full_path(stats_key)),
            Some(i) => format!(
                "in rate_limits[{i}] of descriptor '{}'",
                self.full_path(stats_key)
            ),
        };
        let errors_before = self.errors.len();
        let name = rl.name.as_deref().filter(|n| !n.is_empty());
        let limit = self.limit(rl, &at);

        let mut replaces = Vec::new();
        for r in rl.replaces.as_deref().unwrap_or_default() {
            match r.name.as_deref().filter(|n| !n.is_empty()) {
                None => self.error(format!("should not have an empty replaces entry {at}")),
                Some(n) if Some(n) == name => self.error(format!(
                    "replaces should not contain name of same descriptor {at}"
                )),
                Some(n) => replaces.push(n.to_string()),
            }
        }

        let metadata = self.metadata(d, &at);
        if self.errors.len() > errors_before {
            return None;
        }
        Some(Rule {
            domain: self.domain.to_string(),
            stats_key: stats_key.to_string(),
            name: name.map(str::to_string),
            limit,
            shadow_mode: d.shadow_mode,
            detailed_metric: d.detailed_metric,
            value_to_metric: d.value_to_metric,
            share_threshold: d.share_threshold,
            quota_mode: d.quota_mode,
            metadata,
            metric_path: self.metric_path(d.detailed_metric),
            replaces,
            charge_over_limit: rl.charge_over_limit,
            allow_refunds: rl.allow_refunds,
            position,
            id: rule_id(self.domain, stats_key, name, &limit, position),
        })
    }
}
