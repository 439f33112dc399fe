//! Store operations for budgets charged after the fact (`src/bucket/usage.rs`): a pre-check, a
//! usage charge that may go into debt, and a refund. One key each: a limiter that checks several
//! descriptors calls them per descriptor, since usage is charged whatever the other limits say.
//!
//! The debt of a usage charge is capped at one capacity of the key's limit, whatever the
//! cluster's forgiveness cap `K` is: a report of `n` tokens with `m` left leaves the bucket at
//! `max(m - n, -C)` tokens.
//!
//! Modes: usage is charged past the burst guard (it already happened; the guard's table still
//! learns the unacknowledged counts). In fair-share mode the local share is charged and
//! pre-checked instead of the shared bucket, and the counts recorded as for any request; a
//! refund then gives back on the shared counters only, so the share stays as strict as it was.

use std::sync::atomic::{AtomicUsize, Ordering};

use super::table::{Packed, Table};
use super::{Entry, KeyId, Placement, Store, Verdict};
use crate::bucket::{generation_at, Ask, BucketState, Limit, Mode, Outcome};

/// The key's entry, created (and counted) if absent; `true` when it was created.
fn entry_for<'a>(
    map: &'a mut Table<Entry>,
    id: u128,
    limit: Limit,
    now: i64,
    live: &AtomicUsize,
) -> (&'a mut Entry, bool) {
    let (pos, created) = match map.find(id) {
        Some(p) => (p, false),
        None => {
            live.fetch_add(1, Ordering::Relaxed);
            let entry = Entry {
                state: BucketState::new(generation_at(now)),
                limit,
                version: 0,
                // Usage calls do not name their rule: such keys count in the shared pool,
                // as replicated keys do (`budget.rs`).
                budget: 0,
            };
            (map.insert(id, entry), true)
        }
    };
    (map.at_mut(pos), created)
}

impl Store {
    /// Charge `hits` tokens of usage reported after the fact: always charged, into debt if the
    /// bucket does not hold them (at most one capacity of debt). `within` says whether they were
    /// there; `charged` is true unless the key could not be stored at all. `mode`: the
    /// cluster's mode as the request read it ([`Store::mode`]).
    pub fn charge_with_debt(
        &self,
        key: KeyId,
        limit: Limit,
        hits: u64,
        mode: Mode,
        now: i64,
    ) -> Verdict {
        if hits == 0 {
            return self.precheck(key, limit, mode, now);
        }
        let cap = limit.capacity() as u64;
        let mut g = self.shards[self.shard_of(key)].0.lock();
        let shard = &mut *g;
        // As `decide` does: never at a time older than one this shard has decided at.
        let now = shard.decide_at(now);
        if shard.map.find(key.0).is_none() && self.live.load(Ordering::Relaxed) >= self.cfg.max_keys
        {
            drop(g);
            return self.charge_shared_with_debt(key, limit, hits, now);
        }
        let (entry, created) = entry_for(&mut shard.map, key.0, limit, now, &self.live);
        if created {
            self.budgets.added(0);
        }
        if created {
            mode.created(&mut entry.state, &limit, now);
        }
        let ask = Ask {
            limit,
            me: self.local,
            hits,
            now,
        };
        let mut share = mode
            .fair_share()
            .and_then(|_| shard.fair.get(&Packed::of(key.0)).copied());
        // The guard does not hold usage back, but learns of its counts (not in fair-share
        // mode: there the share decides and the counts are only recorded).
        if let (Some(_), None) = (mode.guard(), mode.fair_share()) {
            if let std::collections::hash_map::Entry::Vacant(v) =
                shard.acked.entry(Packed::of(key.0))
            {
                v.insert((
                    entry.state.consumed_by(self.local),
                    entry.state.requested_by(self.local),
                ));
                self.unacked.fetch_add(1, Ordering::Relaxed);
            }
        }
        let outcome = mode.charge_usage(&ask, &mut entry.state, &mut share, cap);
        if let Some(s) = share {
            shard.fair.insert(Packed::of(key.0), s);
        }
        if entry.touch(self.cfg.track_dirty) {
            shard.dirty.push(key.0);
        }
        Verdict {
            within: outcome.allowed,
            charged: true,
            outcome,
            placement: Placement::Own,
        }
    }

    /// A new key beyond `max_keys`: its usage goes to a shared overflow bucket of its limit, as
    /// [`decide`](Store::decide) places requests, or nowhere when that table is full too.
    fn charge_shared_with_debt(&self, key: KeyId, limit: Limit, hits: u64, now: i64) -> Verdict {
        let id = key.overflow_id(&limit, 0, self.cfg.overflow_buckets_per_limit);
        let mut o = self.overflow.lock();
        if o.map.find(id).is_none()
            && self.overflow_live.load(Ordering::Relaxed) >= self.cfg.max_overflow_keys
        {
            self.refused_total.fetch_add(1, Ordering::Relaxed);
            return Verdict {
                within: false,
                charged: false,
                outcome: BucketState::new(generation_at(now)).peek(&limit, now),
                placement: Placement::Refused,
            };
        }
        self.shared_total.fetch_add(1, Ordering::Relaxed);
        let shard = &mut *o;
        let (entry, _) = entry_for(&mut shard.map, id, limit, now, &self.overflow_live);
        let outcome =
            entry
                .state
                .charge_into_debt(&limit, self.local, hits, now, limit.capacity() as u64);
        if entry.touch(self.cfg.track_dirty) {
            shard.dirty.push(id);
        }
        Verdict {
            within: outcome.allowed,
            charged: true,
            outcome,
            placement: Placement::Shared,
        }
    }

    /// A 0-hit query on a budget charged after the fact: `within` only while one whole token is
    /// left, so an empty bucket or one in debt refuses the next call. Creates nothing. A key
    /// absent while the store is at `max_keys` reads its shared overflow bucket, where its
    /// usage went.
    pub fn precheck(&self, key: KeyId, limit: Limit, mode: Mode, now: i64) -> Verdict {
        let fresh = BucketState::new(generation_at(now));
        let g = self.shards[self.shard_of(key)].0.lock();
        if let Some(e) = g.map.get(key.0) {
            let share = mode
                .fair_share()
                .and_then(|_| g.fair.get(&Packed::of(key.0)).copied());
            let outcome = mode.precheck(&e.state, share, &limit, now);
            return verdict_of_read(outcome, Placement::Own);
        }
        drop(g);
        if self.live.load(Ordering::Relaxed) < self.cfg.max_keys {
            return verdict_of_read(fresh.precheck(&limit, now), Placement::Own);
        }
        let id = key.overflow_id(&limit, 0, self.cfg.overflow_buckets_per_limit);
        let o = self.overflow.lock();
        let state = o.map.get(id).map_or(&fresh, |e| &e.state);
        verdict_of_read(state.precheck(&limit, now), Placement::Shared)
    }

    /// Give back up to `hits` tokens (Envoy's `is_negative_hits`), never above the capacity.
    /// A key this node does not hold reads as a full bucket: nothing to give back, nothing
    /// created. `charged` says whether any token came back (the key then replicates).
    pub fn refund(&self, key: KeyId, limit: Limit, hits: u64, now: i64) -> Verdict {
        let mut g = self.shards[self.shard_of(key)].0.lock();
        let shard = &mut *g;
        let entry = match shard.map.get_mut(key.0) {
            Some(e) if e.limit == limit => e,
            _ => {
                let fresh = BucketState::new(generation_at(now));
                return verdict_of_read(fresh.peek(&limit, now), Placement::Own);
            }
        };
        let before = entry.state.refunded_by(self.local);
        let outcome = entry.state.refund(&limit, self.local, hits, now);
        let gave = entry.state.refunded_by(self.local) > before;
        if gave && entry.touch(self.cfg.track_dirty) {
            shard.dirty.push(key.0);
        }
        Verdict {
            within: true,
            charged: gave,
            outcome,
            placement: Placement::Own,
        }
    }
}

fn verdict_of_read(outcome: Outcome, placement: Placement) -> Verdict {
    Verdict {
        within: outcome.allowed,
        charged: false,
        outcome,
        placement,
    }
}
