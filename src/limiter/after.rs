//! Charges that are not all or nothing: usage reported after the fact on a
//! `charge_over_limit` rule (and its 0-hit pre-check), and refunds (`is_negative_hits`) on an
//! `allow_refunds` rule.
//!
//! Why these are applied one by one, before and whatever the request's other limits say: the
//! usage already happened (the LLM call is over), so refusing to count it because another
//! limit is short would let the budget leak; a refund is the end of something that was
//! counted when it started. What they do decide is the request's answer: a pre-check or usage
//! charge that finds its bucket short makes the request over (unless shadow or quota mode say
//! otherwise), and the request's plain limits are then only read, as for any rejection.

use smallvec::SmallVec;

use crate::bucket::Mode;
use crate::config::Rule;
use crate::store::{Charge, Fits, Store, Verdict};

/// How the store applies one charge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// All or nothing with the request's other admissions (the reference's behaviour).
    Admit,
    /// `charge_over_limit`: hits are charged into debt if need be; 0 hits is a pre-check,
    /// over while the bucket holds less than one whole token.
    Usage,
    /// `is_negative_hits` on an `allow_refunds` rule: the hits are given back, never above the
    /// capacity.
    Refund,
}

impl Kind {
    /// The kind of a charge on `rule` (`refund`: the descriptor has `is_negative_hits`, which
    /// the resolver has already checked the rule takes).
    pub(crate) fn of(rule: &Rule, refund: bool) -> Kind {
        if refund {
            Kind::Refund
        } else if rule.charge_over_limit {
            Kind::Usage
        } else {
            Kind::Admit
        }
    }
}

/// The verdicts of the charges that are not admissions, in charge order (`None` for
/// admissions), applied now.
pub(crate) fn apply(
    store: &Store,
    charges: &[Charge],
    kinds: &[Kind],
    mode: Mode,
    now: i64,
) -> SmallVec<[Option<Verdict>; 4]> {
    charges
        .iter()
        .zip(kinds)
        .map(|(c, kind)| match kind {
            Kind::Admit => None,
            Kind::Usage => Some(store.charge_with_debt(c.key, c.limit, c.hits, mode, now)),
            Kind::Refund => Some(store.refund(c.key, c.limit, c.hits, now)),
        })
        .collect()
}

/// The admissions decided all or nothing among themselves, merged with `early` (the other
/// charges' verdicts from [`apply`]; empty when every charge is an admission) into one verdict
/// per charge, pushed on `verdicts` (empty). `admitted` says, from which
/// charges are within their bucket (one per charge, `early`'s included), whether the request
/// is admitted; the store asks it while it holds the locks of every bucket it charges.
pub(crate) fn admit(
    store: &Store,
    charges: &[Charge],
    early: &[Option<Verdict>],
    mode: Mode,
    now: i64,
    admitted: impl FnOnce(&dyn Fn(usize) -> bool) -> bool,
    verdicts: &mut SmallVec<[Verdict; 4]>,
) {
    if early.iter().all(Option::is_none) {
        let admitted = |fits: Fits<'_>| admitted(&|c| fits.get(c));
        return store.decide_into(charges, mode, now, admitted, verdicts);
    }
    let plain: SmallVec<[Charge; 4]> = charges
        .iter()
        .zip(early)
        .filter(|(_, e)| e.is_none())
        .map(|(c, _)| *c)
        .collect();
    let mut decided = store
        .decide_with(&plain, mode, now, |fits| {
            let mut fits = fits.iter();
            let within: SmallVec<[bool; 4]> = early
                .iter()
                .map(|e| match e {
                    Some(v) => v.within,
                    None => fits.next().unwrap_or(false),
                })
                .collect();
            admitted(&|c| within.get(c).copied().unwrap_or(false))
        })
        .into_iter();
    verdicts.extend(early.iter().map(|e| match e {
        Some(v) => *v,
        // As many admissions as `plain` holds, in the same order.
        None => decided.next().unwrap_or_else(|| Verdict {
            within: false,
            charged: false,
            outcome: crate::bucket::BucketState::default().peek(&charges[0].limit, now),
            placement: crate::store::Placement::Refused,
        }),
    }));
}
