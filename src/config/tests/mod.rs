//! Behaviour of the config as a whole, one scenario per test. Helpers build configs from
//! inline YAML so each test shows the file it is about.

use super::{ConfigErrors, Match, RateLimitConfig, Rule, RuleLimit};

/// A config from one inline file named `test.yaml`; panics (the test fails) if it is refused.
fn config(yaml: &str) -> RateLimitConfig {
    match RateLimitConfig::from_files(&[("test.yaml".to_string(), yaml.to_string())]) {
        Ok(config) => config,
        Err(errors) => panic!("config refused:\n{errors}"),
    }
}

/// The errors for one inline file named `test.yaml`; panics if it is accepted.
fn errors(yaml: &str) -> ConfigErrors {
    match RateLimitConfig::from_files(&[("test.yaml".to_string(), yaml.to_string())]) {
        Ok(_) => panic!("config accepted:\n{yaml}"),
        Err(errors) => errors,
    }
}

/// The rule a request descriptor matches, or a panic saying what it matched instead.
fn rule<'a>(config: &'a RateLimitConfig, domain: &str, entries: &[(&str, &str)]) -> &'a Rule {
    match config.lookup(domain, entries.iter().copied()) {
        Match::Rule(rule) => rule,
        other => panic!("{entries:?} matched {other:?}"),
    }
}

fn requests_per_unit(rule: &Rule) -> u32 {
    match rule.limit {
        RuleLimit::Limited {
            requests_per_unit, ..
        } => requests_per_unit,
        RuleLimit::Unlimited => panic!("{} is unlimited", rule.stats_key),
    }
}

mod identity;
mod loading;
mod matching;
mod reference_examples;
mod token_budget;
mod validation;
