//! Step two: the store decides every bucket of the request at once, and the request's answer
//! follows from the descriptors' (all or nothing, shadow and quota mode).

use smallvec::SmallVec;

use super::after::{self, Kind};
use super::resolve::{Limited, Plan, Resolved};
use crate::bucket::{Limit, Mode};
use crate::config::Rule;
use crate::store::{Charge, Store, Verdict};
use crate::unit::Unit;

/// A decided request: the store's verdicts and the answer, next to the plans and charges they
/// are about (borrowed: a request's plans are built once, in `resolve`, and never moved).
pub struct Decision<'r, 'a> {
    pub(crate) resolved: &'r Resolved<'a>,
    /// One per charge of `resolved`. The hits each charge asked for stay `resolved`'s (a
    /// request blocked before the store was asked was decided on reads of 0 hits).
    pub(crate) verdicts: SmallVec<[Verdict; 4]>,
    /// A descriptor that is not in quota mode is over, or every quota-mode one is.
    pub over: bool,
    /// Over, but answered OK because global shadow mode is on.
    pub global_shadow: bool,
}

/// One descriptor's decision, as the response shows it.
pub enum Outcome<'a> {
    NoLimit,
    Unlimited(&'a Rule),
    Limited(LimitedOutcome<'a>),
}

pub struct LimitedOutcome<'a> {
    /// `None` for a limit override.
    pub rule: Option<&'a Rule>,
    pub requests_per_unit: u32,
    pub unit: Unit,
    /// Over its own limit (whether or not that fails the request).
    pub over: bool,
    pub shadow: bool,
    pub quota: bool,
    /// Whole tokens left.
    pub remaining: u64,
    /// Until the bucket is full again.
    pub reset_ns: u64,
    /// The bucket's limit and the hits asked of it (`None`: the limit admits nothing).
    bucket: Option<(Limit, u64)>,
}

impl LimitedOutcome<'_> {
    /// Until the bucket holds the hits asked for: when a client should try again. Computed
    /// only when asked (`--retry-after` on a rejection), not for every descriptor.
    pub fn retry_after_ns(&self) -> u64 {
        let Some((limit, hits)) = self.bucket else {
            return self.reset_ns;
        };
        // Full at reset; `hits` tokens are back (capacity - hits) tokens' time earlier.
        let capacity = u64::from(limit.capacity());
        let token_ns = limit.unit_ns() as f64 / f64::from(limit.per_unit());
        let early = (capacity - hits.min(capacity)) as f64 * token_ns;
        (self.reset_ns as f64 - early).max(0.0) as u64
    }
}

impl<'a> Decision<'_, 'a> {
    pub(crate) fn plans(&self) -> &[Plan<'a>] {
        &self.resolved.plans
    }

    pub(crate) fn charges(&self) -> &[Charge] {
        &self.resolved.charges
    }

    pub(crate) fn unknown_domain(&self) -> bool {
        self.resolved.unknown_domain
    }

    /// The descriptors' outcomes, in request order.
    pub fn outcomes(&self) -> impl Iterator<Item = Outcome<'a>> + '_ {
        self.plans().iter().map(|p| match p {
            Plan::NoLimit => Outcome::NoLimit,
            Plan::Unlimited(r) => Outcome::Unlimited(r),
            Plan::Limited(ls) => Outcome::Limited(self.most_restrictive(ls)),
        })
    }

    /// Of a descriptor's limits (one, or a `rate_limits` list), the one its status reports:
    /// an over one before any within, then the fewest tokens left, then the longest time until
    /// the bucket is full again (the first of equals).
    ///
    /// Inline for the one-limit descriptor (most of them): the response reads a few fields of
    /// the outcome, and a call returned all of it through memory.
    #[inline]
    fn most_restrictive(&self, ls: &[Limited<'a>]) -> LimitedOutcome<'a> {
        match ls {
            [l] => self.limited(l),
            _ => self.most_restrictive_of(ls),
        }
    }

    /// [`most_restrictive`](Self::most_restrictive) of a `rate_limits` list.
    fn most_restrictive_of(&self, ls: &[Limited<'a>]) -> LimitedOutcome<'a> {
        let mut outcomes = ls.iter().map(|l| self.limited(l));
        let first = outcomes.next();
        let pick = outcomes.fold(first, |best, o| match best {
            Some(b)
                if (!b.over, b.remaining, std::cmp::Reverse(b.reset_ns))
                    <= (!o.over, o.remaining, std::cmp::Reverse(o.reset_ns)) =>
            {
                Some(b)
            }
            _ => Some(o),
        });
        // The resolver never makes an empty list; an empty one would read as blocked.
        pick.unwrap_or(LimitedOutcome {
            rule: None,
            requests_per_unit: 0,
            unit: Unit::Second,
            over: true,
            shadow: false,
            quota: false,
            remaining: 0,
            reset_ns: 0,
            bucket: None,
        })
    }

    #[inline]
    fn limited(&self, l: &Limited<'a>) -> LimitedOutcome<'a> {
        let mut o = LimitedOutcome {
            rule: l.rule,
            requests_per_unit: l.requests_per_unit,
            unit: l.unit,
            over: true,
            shadow: l.shadow,
            quota: l.quota,
            remaining: 0,
            reset_ns: l.unit.nanos(),
            bucket: None,
        };
        if let Some(c) = l.charge {
            let v = self.verdicts[c];
            let Charge { limit, hits, .. } = self.charges()[c];
            o.over = !v.within;
            o.remaining = v.outcome.remaining;
            o.reset_ns = v.outcome.reset_ns;
            o.bucket = Some((limit, hits));
        }
        o
    }

    /// The answer Envoy gets: over, unless global shadow mode turned it into OK.
    pub fn rejected(&self) -> bool {
        self.over && !self.global_shadow
    }
}

/// Decide the charges of `resolved` at `now`, under the cluster's `mode` (read once for the
/// request, so that its usage charges and its admissions see the same one).
///
/// All or nothing: a request that is over charges none of its buckets. The store decides the
/// request's admission under the locks of every shard it charges, from what fits
/// ([`over`]): in quota mode that takes all the descriptors into account at once, so no
/// other request can take the tokens of a within quota descriptor between the decision and
/// the charge.
pub(crate) fn decide<'r, 'a>(
    store: &Store,
    resolved: &'r Resolved<'a>,
    mode: Mode,
    now: i64,
    global_shadow: bool,
) -> Decision<'r, 'a> {
    let plans = &resolved.plans[..];
    // Usage, pre-checks and refunds first (`after`): they apply whatever the other limits say,
    // and a short bucket among them rejects the request.
    // Most requests have only admissions: nothing to apply first, and no verdicts to merge.
    let count = Counts::of(plans);
    let early = if count.admissions_only {
        SmallVec::new()
    } else {
        let kinds = kinds_of(plans, resolved.charges.len());
        after::apply(store, &resolved.charges, &kinds, mode, now)
    };
    // `requests_per_unit: 0` outside quota mode (or on every quota descriptor) rejects the
    // request whatever the buckets say: they are only read. So does a usage charge or
    // pre-check that found its bucket short (on an enforced descriptor outside quota mode).
    let blocked = count.blocked || (count.quota > 0 && count.quota_blocked == count.quota);
    let held = !early.is_empty() && early_over(plans, &early);
    let reads: SmallVec<[Charge; 4]>;
    let charges: &[Charge] = if blocked || held {
        reads = resolved
            .charges
            .iter()
            .map(|c| Charge { hits: 0, ..*c })
            .collect();
        &reads
    } else {
        &resolved.charges
    };
    // What the store's admission rule found is the request's answer: the verdicts' `within`
    // are the fits it was told. The verdicts go straight into the decision: built aside, they
    // were copied into it.
    let mut decision = Decision {
        resolved,
        verdicts: SmallVec::new(),
        over: false,
        global_shadow: false,
    };
    let mut found = None;
    let admitted = |within: &dyn Fn(usize) -> bool| {
        let o = over(plans, &count, within);
        found = Some(o);
        !o
    };
    after::admit(
        store,
        charges,
        &early,
        mode,
        now,
        admitted,
        &mut decision.verdicts,
    );
    let verdicts = &decision.verdicts;
    let over = blocked || found.unwrap_or_else(|| over(plans, &count, |c| verdicts[c].within));
    decision.over = over;
    decision.global_shadow = over && global_shadow;
    decision
}

/// Whether the request is over, given which charges are `within` their bucket: an enforced
/// descriptor outside quota mode is over, or every quota-mode descriptor is (those whose limit
/// admits nothing included).
fn over(plans: &[Plan<'_>], count: &Counts, within: impl Fn(usize) -> bool) -> bool {
    let o = Over::of(plans, within);
    o.other || (count.quota > 0 && o.quota + count.quota_blocked == count.quota)
}

/// Every limit of every descriptor.
fn limited<'p, 'a>(plans: &'p [Plan<'a>]) -> impl Iterator<Item = &'p Limited<'a>> {
    descriptors(plans).flatten()
}

/// The limits of each limited descriptor (one, or a `rate_limits` list; never empty).
fn descriptors<'p, 'a>(plans: &'p [Plan<'a>]) -> impl Iterator<Item = &'p [Limited<'a>]> {
    plans.iter().filter_map(|p| match p {
        Plan::Limited(ls) if !ls.is_empty() => Some(ls.as_slice()),
        _ => None,
    })
}

/// How the store applies each of `n` charges.
fn kinds_of(plans: &[Plan<'_>], n: usize) -> SmallVec<[Kind; 4]> {
    let mut kinds: SmallVec<[Kind; 4]> = SmallVec::from_elem(Kind::Admit, n);
    for l in limited(plans) {
        if let Some(k) = l.charge.and_then(|c| kinds.get_mut(c)) {
            *k = l.kind;
        }
    }
    kinds
}

/// Whether a usage charge or pre-check found its bucket short on a descriptor that rejects
/// the request by itself (enforced, outside quota mode).
fn early_over(plans: &[Plan<'_>], early: &[Option<Verdict>]) -> bool {
    limited(plans)
        .filter(|l| !l.shadow && !l.quota)
        .filter_map(|l| l.charge.and_then(|c| early.get(c).copied().flatten()))
        .any(|v| !v.within)
}

/// Descriptors by kind, before the store is asked.
struct Counts {
    /// Quota-mode descriptors.
    quota: usize,
    /// Quota-mode descriptors whose limit admits nothing.
    quota_blocked: usize,
    /// An enforced descriptor outside quota mode admits nothing.
    blocked: bool,
    /// Every limit is a plain admission: no usage, pre-check or refund to apply first.
    admissions_only: bool,
}

impl Counts {
    fn of(plans: &[Plan<'_>]) -> Counts {
        let mut c = Counts {
            quota: 0,
            quota_blocked: 0,
            blocked: false,
            admissions_only: true,
        };
        // Quota and shadow mode are the descriptor's, so all its limits share them.
        for ls in descriptors(plans) {
            let none = ls.iter().any(|l| l.charge.is_none());
            c.admissions_only &= ls.iter().all(|l| l.kind == Kind::Admit);
            if ls[0].quota {
                c.quota += 1;
                c.quota_blocked += usize::from(none);
            } else if !ls[0].shadow && none {
                c.blocked = true;
            }
        }
        c
    }
}

/// Descriptors over their bucket's limit, by kind.
struct Over {
    /// Quota-mode descriptors over (blocked ones not counted).
    quota: usize,
    /// An enforced descriptor outside quota mode is over.
    other: bool,
}

impl Over {
    fn of(plans: &[Plan<'_>], within: impl Fn(usize) -> bool) -> Over {
        let mut o = Over {
            quota: 0,
            other: false,
        };
        for ls in descriptors(plans) {
            let over = ls.iter().filter_map(|l| l.charge).any(|c| !within(c));
            if !over {
                continue;
            }
            if ls[0].quota {
                o.quota += 1;
            } else if !ls[0].shadow {
                o.other = true;
            }
        }
        o
    }
}
