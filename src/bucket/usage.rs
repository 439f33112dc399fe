//! Charging after the fact, for budgets whose cost is known only once the work is done (the
//! tokens an LLM call used), and giving tokens back (concurrency limits).
//!
//! Envoy checks such a budget before the request goes upstream (`hits_addend` 0) and reports the
//! usage when the response stream ends. All-or-nothing charging cannot enforce that: a report of
//! 800 with 500 left would charge nothing and the budget would never bind. So:
//!
//! - [`BucketState::charge_into_debt`] always charges. The bucket may go below zero, down to
//!   `-debt_cap` tokens: the part of a report beyond that is forgiven at once (`F` is raised,
//!   the counts keep the whole report), so after it the bucket reads exactly `-debt_cap`
//!   tokens and holds one whole token again `(debt_cap + 1) / r` later. Debt is repaid at the
//!   refill rate `r`, nothing else repays it.
//! - [`BucketState::precheck`] answers a 0-hit query for such a bucket: allowed only while at
//!   least one whole token is there, so an empty bucket or one in debt refuses the next call.
//! - [`BucketState::refund`] gives tokens back, at most the tokens in use: a bucket never holds
//!   more than its capacity. The count goes into a per-replica G-counter (`refunds.rs`), so the
//!   state still joins by `max`.
//!
//! Like the rest of the bucket this is pure integer math on (state, time, request).

use super::state::{BucketState, Limit, Outcome, ReplicaId};

impl BucketState {
    /// Charge `n` tokens used by `who` at `now`, whether or not the bucket holds them, keeping
    /// the debt to at most `debt_cap` tokens. `allowed` in the outcome says whether the tokens
    /// were there (the charge did not go below zero); they are charged either way.
    pub fn charge_into_debt(
        &mut self,
        limit: &Limit,
        who: ReplicaId,
        n: u64,
        now: i64,
        debt_cap: u64,
    ) -> Outcome {
        let t = limit.scaled(now);
        self.rebase_if_full(limit, t);
        let tat = self.forgive_beyond(limit, t, debt_cap);
        let fits = tat.max(t).saturating_add(limit.tokens_span(n))
            <= t.saturating_add(limit.tokens_span(limit.capacity() as u64));
        if n == 0 {
            return self.outcome(limit, tat, t, fits);
        }
        let slot = self.slot_for(who);
        slot.requested = slot.requested.saturating_add(n);
        slot.consumed = slot.consumed.saturating_add(n);
        let tat = self.forgive_beyond(limit, t, debt_cap);
        self.outcome(limit, tat, t, fits)
    }

    /// A 0-hit query on a bucket charged after the fact: allowed iff one whole token is there.
    /// Changes nothing.
    ///
    /// Usage merged from other replicas counts in full here, even beyond the debt cap: it was
    /// really spent. The next usage charge on this node caps the debt again.
    pub fn precheck(&self, limit: &Limit, now: i64) -> Outcome {
        let t = limit.scaled(now);
        let tat = self.tat(limit);
        let allowed = tat.max(t).saturating_add(limit.token())
            <= t.saturating_add(limit.tokens_span(limit.capacity() as u64));
        self.outcome(limit, tat, t, allowed)
    }

    /// Give back up to `n` tokens for `who` at `now` (`is_negative_hits`). Only tokens in use come
    /// back (whole tokens, as [`tokens`](Self::tokens) counts them): a full bucket stays full
    /// and a refund never lifts it above its capacity. Returns the outcome after the refund.
    pub fn refund(&mut self, limit: &Limit, who: ReplicaId, n: u64, now: i64) -> Outcome {
        let give = n.min(self.tokens_in_use(limit, now));
        if give > 0 {
            self.refunds_mut().add(who, give);
        }
        let t = limit.scaled(now);
        let tat = self.tat(limit);
        self.outcome(limit, tat, t, true)
    }

    /// Whole tokens taken from the bucket at `now`, debt included: `capacity - tokens`.
    pub fn tokens_in_use(&self, limit: &Limit, now: i64) -> u64 {
        let used = limit.capacity() as i128 - self.tokens(limit, now);
        used.clamp(0, u64::MAX as i128) as u64
    }
}
