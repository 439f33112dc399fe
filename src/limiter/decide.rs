//! Step two: the store decides every bucket of the request at once, and the request's answer
//! follows from the descriptors' (all or nothing, shadow and quota mode).

use smallvec::SmallVec;

use super::resolve::{Limited, Plan, Resolved};
use crate::config::Rule;
use crate::store::{Charge, Store, Verdict};
use crate::unit::Unit;

/// A decided request: the plans, the store's verdicts, and the answer.
pub struct Decision<'a> {
    pub(crate) plans: SmallVec<[Plan<'a>; 4]>,
    pub(crate) charges: SmallVec<[Charge; 4]>,
    pub(crate) verdicts: SmallVec<[Verdict; 4]>,
    /// Hits each charge asked for (a request blocked by `requests_per_unit: 0` charges 0).
    pub(crate) asked: SmallVec<[u64; 4]>,
    pub(crate) unknown_domain: bool,
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
    /// Until the bucket holds the hits asked for: when a client should try again.
    pub retry_after_ns: u64,
}

impl<'a> Decision<'a> {
    /// The descriptors' outcomes, in request order.
    pub fn outcomes(&self) -> impl Iterator<Item = Outcome<'a>> + '_ {
        self.plans.iter().map(|p| match p {
            Plan::NoLimit => Outcome::NoLimit,
            Plan::Unlimited(r) => Outcome::Unlimited(r),
            Plan::Limited(l) => Outcome::Limited(self.limited(l)),
        })
    }

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
            retry_after_ns: l.unit.nanos(),
        };
        if let Some(c) = l.charge {
            let v = self.verdicts[c];
            let limit = self.charges[c].limit;
            o.over = !v.within;
            o.remaining = v.outcome.remaining;
            o.reset_ns = v.outcome.reset_ns;
            // Full at reset; `hits` tokens are back (capacity - hits) tokens' time earlier.
            let capacity = u64::from(limit.capacity());
            let token_ns = limit.unit_ns() as f64 / f64::from(limit.per_unit());
            let early = (capacity - self.asked[c].min(capacity)) as f64 * token_ns;
            o.retry_after_ns = (v.outcome.reset_ns as f64 - early).max(0.0) as u64;
        }
        o
    }

    /// The answer Envoy gets: over, unless global shadow mode turned it into OK.
    pub fn rejected(&self) -> bool {
        self.over && !self.global_shadow
    }
}

/// Decide the charges of `resolved` at `now`.
///
/// All or nothing: a request that is over charges none of its buckets. Quota mode makes that a
/// two-step affair: when some quota-mode descriptors are over but not all of them, the request
/// passes, so the first pass (which charged nothing, since a charge did not fit) is followed by
/// one that charges what fits. The two passes are not atomic: a concurrent request may take
/// tokens in between, which at worst makes this one pass on fewer buckets.
pub(crate) fn decide<'a>(
    store: &Store,
    resolved: Resolved<'a>,
    now: i64,
    global_shadow: bool,
) -> Decision<'a> {
    let Resolved {
        plans,
        mut charges,
        unknown_domain,
    } = resolved;
    let asked: SmallVec<[u64; 4]> = charges.iter().map(|c| c.hits).collect();
    let count = Counts::of(&plans);
    // `requests_per_unit: 0` outside quota mode (or on every quota descriptor) rejects the
    // request whatever the buckets say: they are only read.
    let blocked = count.blocked || (count.quota > 0 && count.quota_blocked == count.quota);
    if blocked {
        for c in charges.iter_mut() {
            c.hits = 0;
        }
    }
    let mut verdicts = store.decide(&charges, now);
    if !blocked && count.quota > 0 {
        let over = Over::of(&plans, &verdicts);
        let quota_over = over.quota + count.quota_blocked;
        if !over.other && over.quota > 0 && quota_over < count.quota {
            for l in limited(&plans).filter(|l| l.quota) {
                if let Some(c) = l.charge {
                    charges[c].enforce = false;
                }
            }
            verdicts = store.decide(&charges, now);
        }
    }
    let o = Over::of(&plans, &verdicts);
    let over =
        blocked || o.other || (count.quota > 0 && o.quota + count.quota_blocked == count.quota);
    Decision {
        plans,
        charges,
        verdicts,
        asked,
        unknown_domain,
        over,
        global_shadow: over && global_shadow,
    }
}

fn limited<'p, 'a>(plans: &'p [Plan<'a>]) -> impl Iterator<Item = &'p Limited<'a>> {
    plans.iter().filter_map(|p| match p {
        Plan::Limited(l) => Some(l),
        _ => None,
    })
}

/// Descriptors by kind, before the store is asked.
struct Counts {
    /// Quota-mode descriptors.
    quota: usize,
    /// Quota-mode descriptors whose limit admits nothing.
    quota_blocked: usize,
    /// An enforced descriptor outside quota mode admits nothing.
    blocked: bool,
}

impl Counts {
    fn of(plans: &[Plan<'_>]) -> Counts {
        let mut c = Counts {
            quota: 0,
            quota_blocked: 0,
            blocked: false,
        };
        for l in limited(plans) {
            if l.quota {
                c.quota += 1;
                c.quota_blocked += usize::from(l.charge.is_none());
            } else if !l.shadow && l.charge.is_none() {
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
    fn of(plans: &[Plan<'_>], verdicts: &[Verdict]) -> Over {
        let mut o = Over {
            quota: 0,
            other: false,
        };
        for l in limited(plans) {
            let Some(c) = l.charge else { continue };
            if verdicts[c].within {
                continue;
            }
            if l.quota {
                o.quota += 1;
            } else if !l.shadow {
                o.other = true;
            }
        }
        o
    }
}
