//! Step one of a decision, pure: a request and the served config in, what each descriptor is
//! limited by (and which buckets to charge) out. Nothing here reads the clock or the store.

use envoy_types::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::RateLimitOverride;
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
use envoy_types::pb::envoy::service::ratelimit::v3::RateLimitRequest;
use smallvec::SmallVec;

use super::after::Kind;
use super::keys;
use super::period;
use super::{Active, RequestError, RuleMetrics};
use crate::bucket::Limit;
use crate::config::{DomainRules, Rule, RuleLimit};
use crate::store::{Charge, KeyId};
use crate::unit::Unit;

/// What one descriptor resolved to.
pub(crate) enum Plan<'a> {
    /// No rule, a whitelisted value, a replaced rule, an empty descriptor, or an unknown domain.
    NoLimit,
    Unlimited(&'a Rule),
    /// One limit, or the entries of a `rate_limits` list (all must pass).
    Limited(SmallVec<[Limited<'a>; 1]>),
}

/// A descriptor under a limit: a configured rule's, or the request's own override.
pub(crate) struct Limited<'a> {
    /// `None` for a limit override.
    pub rule: Option<&'a Rule>,
    pub metrics: &'a RuleMetrics,
    /// What `current_limit` tells Envoy (`period`: the rate in a whole unit).
    pub requests_per_unit: u32,
    pub unit: Unit,
    /// How the store applies the hits: with the request's other admissions, as usage, or as a
    /// refund.
    pub kind: Kind,
    pub hits: u64,
    pub shadow: bool,
    /// Quota mode (the rule's or the global one): over fails the request only when every
    /// quota descriptor of it is over.
    pub quota: bool,
    /// Index into [`Resolved::charges`]; `None` when the limit admits nothing
    /// (`requests_per_unit: 0`), so there is no bucket to charge.
    pub charge: Option<usize>,
    /// The per-request `limit` label (`detailed_metric`, `value_to_metric`).
    pub label: Option<String>,
}

/// What a request resolved to. Filled in place by [`resolve`] and then only borrowed: at about
/// a kilobyte, every move of it was a copy on each request.
#[derive(Default)]
pub(crate) struct Resolved<'a> {
    pub plans: SmallVec<[Plan<'a>; 4]>,
    pub charges: SmallVec<[Charge; 4]>,
    pub unknown_domain: bool,
}

/// What one rule of a descriptor resolved to (a limit goes straight into the plan).
enum RuleKind {
    NoLimit,
    Unlimited,
    Limited,
}

/// A descriptor matched by rules: its place in the request, the position of its first rule in
/// the config's rules, and the hits it asks for.
struct Descriptor<'a> {
    index: usize,
    d: &'a RateLimitDescriptor,
    first: usize,
    hits: u64,
}

/// What a descriptor matched, before `replaces` is applied.
#[derive(Clone, Copy)]
enum Matched<'a> {
    Nothing,
    Override(&'a RateLimitOverride),
    /// The first rule's position in the config's rules, and the descriptor's rules.
    Rules(usize, &'a [Rule]),
}

/// Resolve every descriptor of `req` against `active` into `resolved` (empty). `global_quota`
/// puts every limited descriptor in quota mode (the reference's global quota mode).
pub(crate) fn resolve<'a>(
    active: &'a Active,
    req: &'a RateLimitRequest,
    global_quota: bool,
    resolved: &mut Resolved<'a>,
) -> Result<(), RequestError> {
    // The domain is checked first, as in the reference: on an unknown domain even a limit
    // override has no effect.
    let Some(domain) = active.config.domain(&req.domain) else {
        resolved.unknown_domain = true;
        for _ in &req.descriptors {
            resolved.plans.push(Plan::NoLimit);
        }
        return Ok(());
    };
    let request_hits = u64::from(req.hits_addend).max(1);
    let mut r = Resolver {
        active,
        domain: &req.domain,
        global_quota,
        charges: &mut resolved.charges,
    };
    let plans = &mut resolved.plans;
    // Without a `replaces` anywhere in the config, a descriptor's plan needs only its own
    // match: one pass, and no list of matches kept for a second one.
    if !domain.has_replaces() {
        for (index, d) in req.descriptors.iter().enumerate() {
            r.plan(index, d, matched(&domain, d), request_hits, &[], plans)?;
        }
        return Ok(());
    }
    // Pushed one by one where it stays: a collected `SmallVec` is built aside and then moved
    // (copied) into place.
    let mut all: SmallVec<[Matched<'a>; 4]> = SmallVec::new();
    for d in &req.descriptors {
        all.push(matched(&domain, d));
    }
    // `replaces`: a matched rule named in another matched rule's replaces is dropped. Plain
    // loops: most rules replace nothing, and a chain of flattening iterators cost more to
    // find that out than the lookups it follows.
    let mut replaced: SmallVec<[&str; 4]> = SmallVec::new();
    for m in &all {
        if let Matched::Rules(_, rules) = m {
            for name in rules.iter().flat_map(|r| &r.replaces) {
                replaced.push(name.as_str());
            }
        }
    }
    for (index, (d, m)) in req.descriptors.iter().zip(all).enumerate() {
        r.plan(index, d, m, request_hits, &replaced, plans)?;
    }
    Ok(())
}

/// What a descriptor matched in `domain`, before `replaces` is applied.
fn matched<'a>(domain: &DomainRules<'a>, d: &'a RateLimitDescriptor) -> Matched<'a> {
    if d.entries.is_empty() {
        // The reference answers an empty descriptor OK, with no limit.
        Matched::Nothing
    } else if let Some(o) = &d.limit {
        Matched::Override(o)
    } else {
        let entries = d.entries.iter().map(|e| (e.key.as_str(), e.value.as_str()));
        match domain.lookup(entries) {
            Some((i, r)) => Matched::Rules(i, r),
            None => Matched::Nothing,
        }
    }
}

/// What every plan of one request shares: the config, the domain, and the charges so far.
struct Resolver<'a, 'r> {
    active: &'a Active,
    domain: &'a str,
    global_quota: bool,
    charges: &'r mut SmallVec<[Charge; 4]>,
}

impl<'a> Resolver<'a, '_> {
    /// The plan of descriptor `index`, which matched `m`, pushed on `plans` (where it stays:
    /// at about 90 bytes, every move of one was a copy).
    fn plan(
        &mut self,
        index: usize,
        d: &'a RateLimitDescriptor,
        m: Matched<'a>,
        request_hits: u64,
        replaced: &[&str],
        plans: &mut SmallVec<[Plan<'a>; 4]>,
    ) -> Result<(), RequestError> {
        let hits = d.hits_addend.as_ref().map_or(request_hits, |h| h.value);
        match m {
            Matched::Nothing => plans.push(Plan::NoLimit),
            Matched::Override(_) if d.is_negative_hits => {
                return Err(RequestError::NegativeHits {
                    index,
                    on: "on a limit override".into(),
                })
            }
            Matched::Override(o) => plans.push(self.override_plan(index, d, o, hits)?),
            Matched::Rules(first, rules) => {
                let descriptor = Descriptor {
                    index,
                    d,
                    first,
                    hits,
                };
                self.rules_plan(&descriptor, rules, replaced, plans)?
            }
        }
        Ok(())
    }

    /// A descriptor with its own limit (`descriptor.limit`): the config is bypassed.
    fn override_plan(
        &mut self,
        index: usize,
        d: &RateLimitDescriptor,
        o: &RateLimitOverride,
        hits: u64,
    ) -> Result<Plan<'a>, RequestError> {
        let unit = Unit::from_proto(o.unit).ok_or(RequestError::UnknownUnit {
            index,
            unit: o.unit,
        })?;
        // Built from the same config, every domain has override stats; stay safe anyway.
        let Some(metrics) = self.active.overrides.get(self.domain) else {
            return Ok(Plan::NoLimit);
        };
        let charge = Limit::new(o.requests_per_unit, o.requests_per_unit, unit).map(|limit| {
            let key = keys::override_key(self.domain, o.requests_per_unit, unit, d);
            self.charge(key, limit, hits, true, crate::store::budget::OVERRIDES)
        });
        Ok(Plan::Limited(smallvec::smallvec![Limited {
            rule: None,
            metrics,
            requests_per_unit: o.requests_per_unit,
            unit,
            kind: Kind::Admit,
            hits,
            shadow: false,
            quota: self.global_quota,
            charge,
            label: None,
        }]))
    }

    /// The plan of a descriptor matched by `rules` (one, or a `rate_limits` list), pushed on
    /// `plans`; rules named in another matched rule's `replaces` are dropped. A refund
    /// (`is_negative_hits`) is refused unless every one takes refunds.
    fn rules_plan(
        &mut self,
        desc: &Descriptor<'a>,
        rules: &'a [Rule],
        replaced: &[&str],
        plans: &mut SmallVec<[Plan<'a>; 4]>,
    ) -> Result<(), RequestError> {
        let kept = rules
            .iter()
            .enumerate()
            .filter(|(_, rule)| !rule.name.as_deref().is_some_and(|n| replaced.contains(&n)));
        let mut limits = SmallVec::new();
        let mut unlimited = None;
        for (j, rule) in kept {
            if desc.d.is_negative_hits && !rule.allow_refunds {
                return Err(RequestError::NegativeHits {
                    index: desc.index,
                    on: format!("on rule '{}.{}'", rule.domain, rule.label()),
                });
            }
            if let RuleKind::Unlimited = self.rule_plan(desc, desc.first + j, rule, &mut limits) {
                unlimited = unlimited.or(Some(rule));
            }
        }
        plans.push(match unlimited {
            _ if !limits.is_empty() => Plan::Limited(limits),
            Some(u) => Plan::Unlimited(u),
            None => Plan::NoLimit,
        });
        Ok(())
    }

    /// A descriptor matched by rule `r`, at position `i` of the config's rules: its limit is
    /// pushed on `limits` (where it stays), unless the rule is unlimited.
    fn rule_plan(
        &mut self,
        desc: &Descriptor<'a>,
        i: usize,
        r: &'a Rule,
        limits: &mut SmallVec<[Limited<'a>; 1]>,
    ) -> RuleKind {
        let (d, hits) = (desc.d, desc.hits);
        let RuleLimit::Limited {
            requests_per_unit,
            unit,
            burst,
            unit_multiplier,
        } = r.limit
        else {
            return RuleKind::Unlimited;
        };
        // Built from the same config, every rule has metrics; stay safe anyway.
        let Some(metrics) = self.active.rules.get(i) else {
            return RuleKind::NoLimit;
        };
        let limit = Limit::over(
            burst.unwrap_or(requests_per_unit),
            requests_per_unit,
            unit,
            unit_multiplier,
        );
        let kind = Kind::of(r, d.is_negative_hits);
        let charge = limit.map(|limit| {
            let key = keys::rule_key(self.domain, r, d);
            self.charge(key, limit, hits, !r.shadow_mode, r.id)
        });
        let (requests_per_unit, unit) = period::reported(requests_per_unit, unit, unit_multiplier);
        limits.push(Limited {
            rule: Some(r),
            metrics,
            requests_per_unit,
            unit,
            kind,
            hits,
            shadow: r.shadow_mode,
            quota: !r.shadow_mode && (self.global_quota || r.quota_mode),
            charge,
            label: r
                .metric_path
                .as_ref()
                .map(|p| keys::metric_label(p, d, r.position)),
        });
        RuleKind::Limited
    }

    /// `rule`: the key budget a new key counts in (`store::budget`).
    fn charge(&mut self, key: KeyId, limit: Limit, hits: u64, enforce: bool, rule: u64) -> usize {
        self.charges.push(Charge {
            key,
            limit,
            hits,
            enforce,
            rule,
        });
        self.charges.len() - 1
    }
}
