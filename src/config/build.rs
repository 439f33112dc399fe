//! From parsed files to a `RateLimitConfig`: the checks the reference makes at load time, with
//! the same messages, and the lookup trees.
//!
//! Unlike the reference, which stops at the first problem, every file is checked completely and
//! every problem is reported.

use super::error::{ConfigError, ConfigErrors};
use super::fingerprint::{fingerprint, rule_id};
use super::matcher::{Level, Node};
use super::model::{self, YamlDescriptor, YamlRateLimit, YamlRoot};
use super::{RateLimitConfig, Rule, RuleLimit};
use crate::unit::Unit;
use std::collections::{HashMap, HashSet};

pub(crate) fn build(files: &[(String, String)]) -> Result<RateLimitConfig, ConfigErrors> {
    let mut errors = Vec::new();

    let mut roots: Vec<(&str, YamlRoot)> = Vec::new();
    for (file, contents) in files {
        match model::parse(contents) {
            Ok(parsed) => roots.extend(parsed.into_iter().map(|root| (file.as_str(), root))),
            Err(err) => errors.push(ConfigError::from_yaml(file, &err)),
        }
    }

    // Domains are unique across files; the first file to claim one keeps it. The others are
    // still checked below so that all their problems show up in the same report.
    let mut owner: HashMap<String, &str> = HashMap::new();
    let mut kept: Vec<(String, &str, &YamlRoot)> = Vec::new();
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
            errors.push(ConfigError::new(
                file,
                format!("duplicate domain '{domain}' in config file (already defined in {first})"),
            ));
            refused.push((domain, file, root));
        } else {
            owner.insert(domain.clone(), file);
            kept.push((domain, file, root));
        }
    }

    // Sorted by domain, so rules() and render() list rules in the same order on every replica
    // whatever order the files were read in.
    kept.sort_by(|a, b| a.0.cmp(&b.0));
    let mut rules = Vec::new();
    let mut domains = HashMap::new();
    for (domain, file, root) in &kept {
        let mut builder = Builder {
            file,
            domain,
            rules: &mut rules,
            errors: &mut errors,
        };
        let level = builder.level("", root.descriptors.as_deref().unwrap_or_default());
        domains.insert(domain.as_str().into(), level);
    }
    let mut discarded = Vec::new();
    for (domain, file, root) in &refused {
        let mut builder = Builder {
            file,
            domain,
            rules: &mut discarded,
            errors: &mut errors,
        };
        builder.level("", root.descriptors.as_deref().unwrap_or_default());
    }

    if !errors.is_empty() {
        return Err(ConfigErrors(errors));
    }
    let mut config = RateLimitConfig {
        domain_names: kept.iter().map(|(d, _, _)| d.as_str().into()).collect(),
        domains,
        rules,
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

            let rule = d
                .rate_limit
                .as_ref()
                .and_then(|rl| self.rule(rl, d, &stats_key))
                .map(|rule| {
                    self.rules.push(rule);
                    self.rules.len() - 1
                });
            let node = Node {
                key: key.into(),
                value: value.map(Box::from),
                rule,
                children: self.level(&stats_key, children),
            };
            if !duplicate {
                level.push(node);
            }
        }
        level
    }

    /// The rule of one descriptor, or `None` (with errors recorded) when its rate_limit is bad.
    fn rule(&mut self, rl: &YamlRateLimit, d: &YamlDescriptor, stats_key: &str) -> Option<Rule> {
        let at = format!("in descriptor '{}'", self.full_path(stats_key));
        let errors_before = self.errors.len();
        let unit = rl.unit.as_deref().unwrap_or_default();
        let name = rl.name.as_deref().filter(|n| !n.is_empty());

        let limit = if rl.unlimited {
            // As in the reference, only a valid unit is refused next to `unlimited`.
            if unit.parse::<Unit>().is_ok() {
                self.error(format!(
                    "should not specify rate limit unit when unlimited {at}"
                ));
            }
            if rl.burst.is_some() {
                self.error(format!("should not specify burst when unlimited {at}"));
            }
            RuleLimit::Unlimited
        } else {
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
            }
        };

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
            replaces,
            id: rule_id(self.domain, stats_key, name, &limit),
        })
    }
}
