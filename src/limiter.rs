//! The core: a `RateLimitRequest` in, a `RateLimitResponse` out. gRPC and HTTP are thin adapters
//! over this.
//!
//! For each descriptor: find its rule (or take the request's limit override), build the bucket's
//! key, then let the store decide all buckets of the request at once. A request with a
//! descriptor over its limit charges none of its buckets: the caller is told to reject the whole
//! request, so taking tokens from the other buckets would punish it twice.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use arc_swap::ArcSwap;
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::{
    Code, DescriptorStatus, RateLimit,
};
use envoy_types::pb::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};
use envoy_types::pb::google::protobuf::Duration as PbDuration;
use metrics::Label;
use smallvec::SmallVec;

use crate::bucket::Limit;
use crate::clock::Clock;
use crate::config::{Match, RateLimitConfig, Rule, RuleLimit};
use crate::metrics::{Metrics, RuleStats};
use crate::store::{Charge, KeyBuilder, Placement, Store};
use crate::unit::Unit;

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
    #[error("descriptor {index}: has no entries")]
    EmptyDescriptor { index: usize },
    #[error("{what} is {got} bytes long (at most {max})")]
    TooLong {
        what: String,
        got: usize,
        max: usize,
    },
    #[error("descriptor {index}: limit override has an unknown unit ({unit})")]
    UnknownUnit { index: usize, unit: i32 },
    #[error("descriptor {index}: is_negative_hits is not supported (token buckets are never refilled by a request)")]
    NegativeHits { index: usize },
}

/// The config being served, with the statistics of each of its rules.
pub struct Active {
    pub config: RateLimitConfig,
    stats: HashMap<u64, Arc<RuleStats>>,
    /// Limit overrides carry their own limit, so they are counted per domain, not per rule.
    overrides: HashMap<String, Arc<RuleStats>>,
    unknown_overrides: Arc<RuleStats>,
}

impl Active {
    fn build(config: RateLimitConfig, metrics: &Metrics, previous: Option<&Active>) -> Active {
        let mut stats = HashMap::new();
        for rule in config.rules() {
            // An unchanged rule keeps its statistics (and, by its id, its buckets).
            let s = previous
                .and_then(|p| p.stats.get(&rule.id).cloned())
                .unwrap_or_else(|| {
                    Arc::new(RuleStats::new(
                        metrics,
                        &rule.domain,
                        limit_label(rule),
                        rule_bucket(rule),
                    ))
                });
            stats.insert(rule.id, s);
        }
        let overrides = config
            .domains()
            .map(|d| {
                let s = previous
                    .and_then(|p| p.overrides.get(d).cloned())
                    .unwrap_or_else(|| Arc::new(RuleStats::new(metrics, d, "_override", None)));
                (d.to_string(), s)
            })
            .collect();
        let unknown_overrides = previous.map_or_else(
            || Arc::new(RuleStats::new(metrics, "_unknown", "_override", None)),
            |p| p.unknown_overrides.clone(),
        );
        Active {
            config,
            stats,
            overrides,
            unknown_overrides,
        }
    }

    pub fn rule_stats(&self) -> impl Iterator<Item = &Arc<RuleStats>> {
        self.stats.values()
    }
}

/// The metrics label of a rule: its name, or its descriptor path as the reference service's
/// stats key (`key1_value1.subkey1`).
fn limit_label(rule: &Rule) -> &str {
    rule.name.as_deref().unwrap_or(&rule.stats_key)
}

/// The bucket parameters of a rule, `None` when it has no bucket (unlimited, or blocking all).
fn rule_bucket(rule: &Rule) -> Option<Limit> {
    match rule.limit {
        RuleLimit::Unlimited => None,
        RuleLimit::Limited {
            requests_per_unit,
            unit,
            burst,
        } => Limit::new(burst.unwrap_or(requests_per_unit), requests_per_unit, unit),
    }
}

pub struct Limiter {
    active: ArcSwap<Active>,
    store: Arc<Store>,
    clock: Arc<dyn Clock>,
    metrics: Arc<Metrics>,
    bounds: RequestBounds,
    near_ratio: f64,
}

/// What one descriptor resolved to, before the store decides.
enum Plan<'a> {
    /// No rule, a whitelisted value, a replaced rule, or an unknown domain.
    NoLimit,
    Unlimited,
    /// `requests_per_unit: 0`: every request is over the limit.
    Blocked {
        current: RateLimit,
        stats: &'a Arc<RuleStats>,
        hits: u64,
    },
    Bucket {
        charge: usize,
        current: RateLimit,
        stats: &'a Arc<RuleStats>,
        detailed: Option<Label>,
        shadow: bool,
    },
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
        }
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
            if d.entries.is_empty() {
                return Err(RequestError::EmptyDescriptor { index });
            }
            if d.entries.len() > b.max_entries {
                return Err(RequestError::TooManyEntries {
                    index,
                    got: d.entries.len(),
                    max: b.max_entries,
                });
            }
            if d.is_negative_hits {
                return Err(RequestError::NegativeHits { index });
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

    /// Decide a request.
    pub fn should_rate_limit(
        &self,
        req: &RateLimitRequest,
    ) -> Result<RateLimitResponse, RequestError> {
        self.validate(req)?;
        let active = self.active.load();
        let now = self.clock.now();
        let request_hits = (req.hits_addend as u64).max(1);

        let mut matched: SmallVec<[Option<&Rule>; 4]> = SmallVec::new();
        let mut unknown_domain = false;
        for d in &req.descriptors {
            if d.limit.is_some() {
                matched.push(None);
                continue;
            }
            let entries = d.entries.iter().map(|e| (e.key.as_str(), e.value.as_str()));
            matched.push(match active.config.lookup(&req.domain, entries) {
                Match::Rule(r) => Some(r),
                Match::NoRule => None,
                Match::UnknownDomain => {
                    unknown_domain = true;
                    None
                }
            });
        }
        if unknown_domain {
            self.metrics.unknown_domain.increment(1);
        }
        // `replaces`: a matched rule named in another matched rule's replaces is dropped.
        let replaced: HashSet<&str> = matched
            .iter()
            .flatten()
            .flat_map(|r| r.replaces.iter().map(String::as_str))
            .collect();

        let mut plans: SmallVec<[Plan<'_>; 4]> = SmallVec::new();
        let mut charges: SmallVec<[Charge; 4]> = SmallVec::new();
        for (index, (d, rule)) in req.descriptors.iter().zip(&matched).enumerate() {
            let hits = d.hits_addend.as_ref().map_or(request_hits, |h| h.value);
            let plan = if let Some(o) = &d.limit {
                let unit = Unit::from_proto(o.unit).ok_or(RequestError::UnknownUnit {
                    index,
                    unit: o.unit,
                })?;
                let stats = active
                    .overrides
                    .get(&req.domain)
                    .unwrap_or(&active.unknown_overrides);
                let current = RateLimit {
                    name: String::new(),
                    requests_per_unit: o.requests_per_unit,
                    unit: unit.to_proto(),
                };
                let limit = Limit::new(o.requests_per_unit, o.requests_per_unit, unit);
                let key = || {
                    let mut k = KeyBuilder::new(&req.domain);
                    k.str("\0override")
                        .u64(o.requests_per_unit as u64)
                        .u64(unit.nanos());
                    push_entries(&mut k, d);
                    k.finish()
                };
                let rule = crate::store::budget::OVERRIDES;
                bucket_plan(
                    &mut charges,
                    current,
                    limit,
                    key,
                    hits,
                    stats,
                    None,
                    false,
                    rule,
                )
            } else {
                match rule {
                    None => Plan::NoLimit,
                    Some(r) if r.name.as_deref().is_some_and(|n| replaced.contains(n)) => {
                        Plan::NoLimit
                    }
                    Some(r) => match (r.limit, active.stats.get(&r.id)) {
                        (RuleLimit::Unlimited, _) => Plan::Unlimited,
                        // Built from the same config, every rule has stats; stay safe anyway.
                        (_, None) => Plan::NoLimit,
                        (
                            RuleLimit::Limited {
                                requests_per_unit,
                                unit,
                                ..
                            },
                            Some(stats),
                        ) => {
                            let current = RateLimit {
                                name: r.name.clone().unwrap_or_default(),
                                requests_per_unit,
                                unit: unit.to_proto(),
                            };
                            let key = || {
                                let mut k = KeyBuilder::new(&req.domain);
                                k.u64(r.id);
                                if !r.share_threshold {
                                    push_entries(&mut k, d);
                                }
                                k.finish()
                            };
                            let detailed = r.detailed_metric.then(|| detailed_label(d));
                            bucket_plan(
                                &mut charges,
                                current,
                                rule_bucket(r),
                                key,
                                hits,
                                stats,
                                detailed,
                                r.shadow_mode,
                                r.id,
                            )
                        }
                    },
                }
            };
            plans.push(plan);
        }

        // A blocked rule (requests_per_unit: 0) rejects the request: no bucket is charged, the
        // others are only read.
        let asked: SmallVec<[u64; 4]> = charges.iter().map(|c| c.hits).collect();
        if plans.iter().any(|p| matches!(p, Plan::Blocked { .. })) {
            for c in charges.iter_mut() {
                c.hits = 0;
            }
        }
        let verdicts = self.store.decide(&charges, now);

        let mut overall = Code::Ok;
        let mut statuses = Vec::with_capacity(plans.len());
        for plan in plans {
            let status = match plan {
                Plan::NoLimit => DescriptorStatus {
                    code: Code::Ok as i32,
                    ..Default::default()
                },
                Plan::Unlimited => DescriptorStatus {
                    code: Code::Ok as i32,
                    limit_remaining: u32::MAX,
                    ..Default::default()
                },
                Plan::Blocked {
                    current,
                    stats,
                    hits,
                } => {
                    stats.record(now, hits, true, false, false);
                    overall = Code::OverLimit;
                    let unit_ns = Unit::from_proto(current.unit).map_or(0, Unit::nanos);
                    DescriptorStatus {
                        code: Code::OverLimit as i32,
                        current_limit: Some(current),
                        limit_remaining: 0,
                        duration_until_reset: Some(duration(unit_ns)),
                        ..Default::default()
                    }
                }
                Plan::Bucket {
                    charge,
                    current,
                    stats,
                    detailed,
                    shadow,
                } => {
                    let c = &charges[charge];
                    let v = verdicts[charge];
                    let over = !v.within;
                    let hits = asked[charge];
                    if hits > 0 {
                        let used = c.limit.capacity() as u64
                            - v.outcome.remaining.min(c.limit.capacity() as u64);
                        let near =
                            !over && used as f64 >= self.near_ratio * c.limit.capacity() as f64;
                        stats.record(now, hits, over, near, shadow);
                        if let Some(label) = detailed {
                            self.record_detailed(&req.domain, label, hits, over, near, shadow);
                        }
                        if v.charged && v.placement == Placement::Own {
                            stats.observe_bucket(now, v.outcome.full_at_ns, v.outcome.remaining);
                        }
                    }
                    if v.placement != Placement::Own {
                        match v.placement {
                            Placement::Shared => self.metrics.keys_shared.increment(1),
                            _ => self.metrics.keys_denied.increment(1),
                        }
                        stats.over_budget(v.placement == Placement::Shared);
                    }
                    let code = if over && !shadow {
                        overall = Code::OverLimit;
                        Code::OverLimit
                    } else {
                        Code::Ok
                    };
                    DescriptorStatus {
                        code: code as i32,
                        current_limit: Some(current),
                        limit_remaining: v.outcome.remaining.min(u32::MAX as u64) as u32,
                        duration_until_reset: Some(duration(v.outcome.reset_ns)),
                        ..Default::default()
                    }
                }
            };
            statuses.push(status);
        }
        Ok(RateLimitResponse {
            overall_code: overall as i32,
            statuses,
            ..Default::default()
        })
    }

    /// Counters for rules with `detailed_metric`: labelled with the request's own values, as
    /// the rule's author asked (cardinality is then theirs to bound).
    fn record_detailed(
        &self,
        domain: &str,
        limit: Label,
        hits: u64,
        over: bool,
        near: bool,
        shadow: bool,
    ) {
        let labels = || vec![Label::new("domain", domain.to_string()), limit.clone()];
        self.metrics
            .counter("tollgate_hits_total", labels())
            .increment(hits);
        if over {
            self.metrics
                .counter("tollgate_over_limit_total", labels())
                .increment(hits);
            if shadow {
                self.metrics
                    .counter("tollgate_shadow_mode_total", labels())
                    .increment(hits);
            }
        } else {
            self.metrics
                .counter("tollgate_within_limit_total", labels())
                .increment(hits);
            if near {
                self.metrics
                    .counter("tollgate_near_limit_total", labels())
                    .increment(hits);
            }
        }
    }

    /// Bring every gauge up to date; called at scrape time.
    pub fn refresh_gauges(&self) {
        let now = self.clock.now();
        let active = self.active.load();
        for (id, s) in &active.stats {
            s.refresh(now);
            s.set_live_keys(self.store.budgets().live_of(*id));
        }
        for s in active.overrides.values() {
            s.refresh(now);
        }
        active.unknown_overrides.refresh(now);
        self.metrics.live_keys.set(self.store.live_keys() as f64);
    }
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

/// A descriptor with a limit: a bucket to charge, or a block when the limit admits nothing.
#[allow(clippy::too_many_arguments)]
fn bucket_plan<'a>(
    charges: &mut SmallVec<[Charge; 4]>,
    current: RateLimit,
    limit: Option<Limit>,
    key: impl FnOnce() -> crate::store::KeyId,
    hits: u64,
    stats: &'a Arc<RuleStats>,
    detailed: Option<Label>,
    shadow: bool,
    rule: u64,
) -> Plan<'a> {
    let Some(limit) = limit else {
        return Plan::Blocked {
            current,
            stats,
            hits,
        };
    };
    charges.push(Charge {
        key: key(),
        limit,
        hits,
        enforce: !shadow,
        rule,
    });
    Plan::Bucket {
        charge: charges.len() - 1,
        current,
        stats,
        detailed,
        shadow,
    }
}

fn push_entries(k: &mut KeyBuilder, d: &RateLimitDescriptor) {
    for e in &d.entries {
        k.str(&e.key).str(&e.value);
    }
}

fn detailed_label(d: &RateLimitDescriptor) -> Label {
    let path = d
        .entries
        .iter()
        .map(|e| {
            if e.value.is_empty() {
                e.key.clone()
            } else {
                format!("{}_{}", e.key, e.value)
            }
        })
        .collect::<Vec<_>>()
        .join(".");
    Label::new("limit", path)
}

fn duration(ns: u64) -> PbDuration {
    PbDuration {
        seconds: (ns / 1_000_000_000) as i64,
        nanos: (ns % 1_000_000_000) as i32,
    }
}
