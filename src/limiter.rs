//! The core: a `RateLimitRequest` in, a `RateLimitResponse` out. gRPC and HTTP are thin adapters
//! over this.
//!
//! A decision is four steps, each in its own module: `resolve` (pure: the request and the
//! served config to what limits each descriptor, with every key derived in `keys` and the
//! limit Envoy is told in `period`), `decide` (the store charges all buckets of the request at
//! once, all or nothing; usage charged after the fact and refunds in `after`), `account` (the
//! metrics) and `rls::respond` (the Envoy response). A request with a descriptor over its limit
//! charges none of its buckets: the caller is told to reject the whole request, so taking
//! tokens from the other buckets would punish it twice.

mod account;
mod after;
mod decide;
mod keys;
mod period;
mod resolve;

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use envoy_types::pb::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};

use crate::bucket::Limit;
use crate::clock::Clock;
use crate::config::{BuildOptions, ConfigErrors, RateLimitConfig, Rule, RuleLimit};
use crate::metrics::{
    DetailedSeries, Metrics, RuleCounters, RuleSeries, RuleStats, SeriesLabels, DEFAULT_SERIES_CAP,
};
use crate::rls::respond::{self, ResponseOptions};
use crate::store::budget::Budgets;
use crate::store::Store;

pub use decide::{Decision, LimitedOutcome, Outcome};

/// Size bounds on one request: beyond them it is refused with INVALID_ARGUMENT, so a malformed
/// or hostile request costs no more than a normal one.
#[derive(Debug, Clone)]
pub struct RequestBounds {
    pub max_descriptors: usize,
    pub max_entries: usize,
    pub max_bytes: usize,
}

impl Default for RequestBounds {
    fn default() -> Self {
        RequestBounds {
            max_descriptors: 64,
            max_entries: 32,
            max_bytes: 1024,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error("rate limit domain must not be empty")]
    EmptyDomain,
    #[error("rate limit descriptor list must not be empty")]
    NoDescriptors,
    #[error("too many descriptors: {got} (at most {max})")]
    TooManyDescriptors { got: usize, max: usize },
    #[error("descriptor {index}: too many entries: {got} (at most {max})")]
    TooManyEntries {
        index: usize,
        got: usize,
        max: usize,
    },
    #[error("{what} is {got} bytes long (at most {max})")]
    TooLong {
        what: String,
        got: usize,
        max: usize,
    },
    #[error("descriptor {index}: limit override has an unknown unit ({unit})")]
    UnknownUnit { index: usize, unit: i32 },
    /// A refund on a limit that does not take them (only rules with `allow_refunds` do).
    #[error("descriptor {index}: is_negative_hits is not supported {on} (only a rule with rate_limit.allow_refunds: true takes refunds)")]
    NegativeHits { index: usize, on: String },
}

/// The metrics of one rule (or of a domain's limit overrides).
#[derive(Clone)]
pub struct RuleMetrics {
    pub stats: Arc<RuleStats>,
    /// Series labelled per request (`detailed_metric`, `value_to_metric`).
    pub detailed: Option<Arc<DetailedSeries>>,
}

/// Each rule with a bucket, and limit overrides, get a share of the key budget.
fn set_budgets(store: &Store, config: &RateLimitConfig) {
    let rules = config
        .rules()
        .filter(|r| rule_bucket(r).is_some())
        .map(|r| r.id);
    store
        .budgets()
        .set_rules(rules.chain([crate::store::budget::OVERRIDES]));
}

/// The config being served, with the statistics of each of its rules.
pub struct Active {
    pub config: RateLimitConfig,
    /// Indexed like `config.rules()`.
    rules: Vec<RuleMetrics>,
    /// Limit overrides carry their own limit, so they are counted per domain, not per rule.
    overrides: crate::fast_map::FastMap<String, RuleMetrics>,
}

impl Active {
    fn build(config: RateLimitConfig, metrics: &Metrics, previous: Option<&Active>) -> Active {
        // An unchanged rule keeps its statistics (and, by its id, its buckets).
        let by_id: HashMap<u64, &RuleMetrics> = previous
            .map(|p| {
                p.config
                    .rules()
                    .zip(&p.rules)
                    .map(|(r, m)| (r.id, m))
                    .collect()
            })
            .unwrap_or_default();
        // A changed rule keeps the counters of the rule with its labels, and rules that share
        // labels share counters: a series counts on across reloads and is written once.
        let mut counters: HashMap<SeriesLabels, Arc<RuleCounters>> = previous
            .map(|p| {
                p.all()
                    .map(|m| (m.stats.labels().clone(), m.stats.counters().clone()))
                    .collect()
            })
            .unwrap_or_default();
        let mut stats = |domain: &str, label: &str, limit: Option<Limit>| {
            let labels = SeriesLabels::new(domain, label);
            let shared = counters.entry(labels.clone()).or_default().clone();
            Arc::new(RuleStats::sharing(labels, limit, shared))
        };
        let rules = config
            .rules()
            .map(|rule| match by_id.get(&rule.id) {
                Some(m) => (*m).clone(),
                None => RuleMetrics {
                    stats: stats(&rule.domain, &rule.label(), rule_bucket(rule)),
                    detailed: rule.metric_path.as_ref().map(|_| {
                        Arc::new(DetailedSeries::new(
                            metrics,
                            &rule.domain,
                            DEFAULT_SERIES_CAP,
                        ))
                    }),
                },
            })
            .collect();
        let overrides = config
            .domains()
            .map(|d| {
                let m = previous
                    .and_then(|p| p.overrides.get(d).cloned())
                    .unwrap_or_else(|| RuleMetrics {
                        stats: stats(d, "_override", None),
                        detailed: None,
                    });
                (d.to_string(), m)
            })
            .collect();
        Active {
            config,
            rules,
            overrides,
        }
    }

    /// Every rule's metrics, the domains' override metrics after them.
    fn all(&self) -> impl Iterator<Item = &RuleMetrics> {
        self.rules.iter().chain(self.overrides.values())
    }

    /// Write the per-rule series as of `now`, with each rule's live keys from `budgets`: only
    /// this config's rules have any, so a rule a reload removed is no longer exported. (Limit
    /// overrides share one budget slot across domains, so their series show no live keys.)
    fn write_series(&self, now: i64, budgets: &Budgets, out: &mut RuleSeries) {
        for (r, m) in self.config.rules().zip(&self.rules) {
            m.stats.write(now, budgets.live_of(r.id), out);
        }
        for m in self.overrides.values() {
            m.stats.write(now, 0, out);
        }
        for d in self.rules.iter().filter_map(|m| m.detailed.as_ref()) {
            d.write(out);
        }
    }
}

/// How decisions map to answers beyond the config: the reference's global switches, and what
/// the response carries.
#[derive(Debug, Clone, Default)]
pub struct DecisionOptions {
    /// Global shadow mode (`SHADOW_MODE`): an over-limit answer becomes OK, and is counted.
    pub shadow_mode: bool,
    /// Global quota mode: every limited descriptor is in quota mode.
    pub quota_mode: bool,
    /// `MERGE_DOMAIN_CONFIG`, for configs loaded after start.
    pub build: BuildOptions,
    pub response: ResponseOptions,
}

/// The bucket parameters of a rule, `None` when it has no bucket (unlimited, or blocking all).
fn rule_bucket(rule: &Rule) -> Option<Limit> {
    match rule.limit {
        RuleLimit::Unlimited => None,
        RuleLimit::Limited {
            requests_per_unit,
            unit,
            burst,
            unit_multiplier,
        } => Limit::over(
            burst.unwrap_or(requests_per_unit),
            requests_per_unit,
            unit,
            unit_multiplier,
        ),
    }
}

pub struct Limiter {
    active: ArcSwap<Active>,
    store: Arc<Store>,
    clock: Arc<dyn Clock>,
    metrics: Arc<Metrics>,
    bounds: RequestBounds,
    near_ratio: f64,
    options: DecisionOptions,
}

impl Limiter {
    pub fn new(
        config: RateLimitConfig,
        store: Arc<Store>,
        clock: Arc<dyn Clock>,
        metrics: Arc<Metrics>,
        bounds: RequestBounds,
        near_ratio: f64,
    ) -> Limiter {
        let active = Active::build(config, &metrics, None);
        set_budgets(&store, &active.config);
        Limiter {
            active: ArcSwap::from_pointee(active),
            store,
            clock,
            metrics,
            bounds,
            near_ratio,
            options: DecisionOptions::default(),
        }
    }

    /// The reference's global switches and response options (defaults: all off).
    pub fn with_options(mut self, options: DecisionOptions) -> Limiter {
        self.options = options;
        self
    }

    pub fn options(&self) -> &DecisionOptions {
        &self.options
    }

    /// Build a config from files with this limiter's build options (`MERGE_DOMAIN_CONFIG`).
    pub fn build_config(
        &self,
        files: &[(String, String)],
    ) -> Result<RateLimitConfig, ConfigErrors> {
        RateLimitConfig::from_files_with(files, self.options.build)
    }

    /// Serve a new config from the next request on. Rules that did not change keep their
    /// buckets (their key ids are unchanged) and their statistics.
    pub fn swap_config(&self, config: RateLimitConfig) {
        let previous = self.active.load();
        let next = Active::build(config, &self.metrics, Some(&previous));
        set_budgets(&self.store, &next.config);
        self.active.store(Arc::new(next));
    }

    pub fn active(&self) -> Arc<Active> {
        self.active.load_full()
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    fn validate(&self, req: &RateLimitRequest) -> Result<(), RequestError> {
        let b = &self.bounds;
        if req.domain.is_empty() {
            return Err(RequestError::EmptyDomain);
        }
        if req.domain.len() > b.max_bytes {
            return Err(RequestError::TooLong {
                what: "domain".into(),
                got: req.domain.len(),
                max: b.max_bytes,
            });
        }
        if req.descriptors.is_empty() {
            return Err(RequestError::NoDescriptors);
        }
        if req.descriptors.len() > b.max_descriptors {
            return Err(RequestError::TooManyDescriptors {
                got: req.descriptors.len(),
                max: b.max_descriptors,
            });
        }
        for (index, d) in req.descriptors.iter().enumerate() {
            if d.entries.len() > b.max_entries {
                return Err(RequestError::TooManyEntries {
                    index,
                    got: d.entries.len(),
                    max: b.max_entries,
                });
            }
            for (j, e) in d.entries.iter().enumerate() {
                for (what, s) in [("key", &e.key), ("value", &e.value)] {
                    if s.len() > b.max_bytes {
                        return Err(RequestError::TooLong {
                            what: format!("descriptor {index} entry {j} {what}"),
                            got: s.len(),
                            max: b.max_bytes,
                        });
                    }
                }
            }
        }
        Ok(())
    }

    /// Decide a request: resolve, decide, account, respond.
    pub fn should_rate_limit(
        &self,
        req: &RateLimitRequest,
    ) -> Result<RateLimitResponse, RequestError> {
        self.validate(req)?;
        let active = self.active.load();
        let now = self.clock.now();
        let mut resolved = resolve::Resolved::default();
        resolve::resolve(&active, req, self.options.quota_mode, &mut resolved)?;
        let mode = self.store.mode();
        let decision = decide::decide(&self.store, &resolved, mode, now, self.options.shadow_mode);
        account::account(&self.metrics, &decision, now, self.near_ratio);
        Ok(respond::response(req, &decision, &self.options.response))
    }

    /// The `/metrics` text: the service's own series, then the served config's rules' (scrape
    /// time: off the request path, see `http::scrape`).
    pub fn render_metrics(&self) -> String {
        let now = self.clock.now();
        let active = self.active.load();
        self.metrics.live_keys.set(self.store.live_keys() as f64);
        let mut series = RuleSeries::default();
        active.write_series(now, self.store.budgets(), &mut series);
        let mut out = self.metrics.render();
        series.write_to(&mut out);
        out
    }
}

#[cfg(test)]
mod tests;
