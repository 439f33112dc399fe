//! Where bucket states live: a sharded concurrent map from a fixed-size key id to a bucket.
//!
//! Why a `parking_lot::Mutex` per shard and not a lock-free map: every operation is a few hundred
//! nanoseconds of integer math with no `.await` inside, and a multi-descriptor request must see
//! and charge several buckets atomically ("charge all or none"). Locking the few shards involved,
//! always in ascending shard order, gives that atomicity without deadlocks; with 256 shards two
//! requests rarely meet on one.
//!
//! Memory is bounded: beyond its rule's key budget (`budget.rs`: a reserved share of `max_keys`
//! per rule, plus a pool any rule may use), a new key is answered from one of a fixed number of
//! shared overflow buckets of its rule and limit (stricter than its own bucket, never
//! unlimited); when even the overflow table is full, it is refused. Both are counted.
//!
//! Memory per key is even: a shard keeps its keys in a table of its own (`table.rs`) that grows
//! by a quarter when 7/8 full, not a `HashMap` that doubles (with 256 equal shards, every shard
//! doubles at the same key count and the whole store pays ~2x for a while). A live key costs
//! 129-161 heap bytes, its 16-byte id included, at any count (BENCHMARKS.md figure 4: 153.4 at
//! 1M keys, 8 bytes of it the refund counters' empty box).

pub mod budget;
mod key;
mod table;
#[cfg(test)]
mod tests;
mod usage;
#[cfg(test)]
mod usage_tests;

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};

use parking_lot::{Mutex, MutexGuard};
use smallvec::SmallVec;

pub use key::{KeyBuilder, KeyId};
use table::{Packed, Pos, Side, Table};

use budget::Budgets;

use crate::bucket::{generation_at, BucketState, FairShare, Guard, Limit, Outcome, ReplicaId};

/// One bucket to charge as part of a request.
#[derive(Debug, Clone, Copy)]
pub struct Charge {
    pub key: KeyId,
    pub limit: Limit,
    /// Tokens to take; 0 reads the bucket without changing or creating it.
    pub hits: u64,
    /// `false` for shadow-mode rules: their verdict is reported but never blocks the request.
    pub enforce: bool,
    /// The rule whose key budget a new key is counted in (`budget::OVERRIDES` for limit
    /// overrides).
    pub rule: u64,
}

/// The store's answer for one [`Charge`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    /// The bucket itself had room for the hits (false = this descriptor is over its limit).
    pub within: bool,
    /// The hits were taken (all enforced charges of the request were within).
    pub charged: bool,
    /// Remaining tokens and time to full, after the charge if there was one.
    pub outcome: Outcome,
    /// Where the key was kept: its own bucket, a shared overflow bucket, or nowhere.
    pub placement: Placement,
}

/// One changed key taken from the dirty lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Drained {
    pub key: KeyId,
    /// This node's own (consumed, requested) on the key as it is drained.
    pub own: (u64, u64),
    /// Changed by this node (an admission, a refund), not only by merges from peers.
    pub own_changed: bool,
}

/// What a merge did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Merged {
    /// Joined into the key's state.
    Applied { changed: bool },
    /// A full bucket for an absent key: nothing to store (GC already deleted it, or never had it).
    Dropped,
    /// The key exists with another limit.
    Refused,
}

impl Merged {
    pub fn changed(&self) -> bool {
        matches!(self, Merged::Applied { changed: true, .. })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    Own,
    Shared,
    Refused,
}

#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// Number of shards, rounded up to a power of two.
    pub shards: usize,
    /// Live keys beyond which new keys share overflow buckets.
    pub max_keys: usize,
    /// Shared overflow buckets per limit.
    pub overflow_buckets_per_limit: u32,
    /// Live overflow buckets beyond which new keys are refused.
    pub max_overflow_keys: usize,
    /// A key full for this long is deleted (it then reads as a full bucket anyway).
    pub gc_horizon_ns: i64,
    /// Debt cap `K` in tokens, as a multiple of the capacity. With one node nothing goes into
    /// debt; replication sets it to about `N - 1`.
    pub debt_cap_capacities: u32,
    /// Record changed keys for replication. Off on a single node, so nothing accumulates.
    pub track_dirty: bool,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            shards: 256,
            max_keys: 2_000_000,
            overflow_buckets_per_limit: 64,
            max_overflow_keys: 65_536,
            gc_horizon_ns: 60_000_000_000,
            debt_cap_capacities: 1,
            track_dirty: false,
        }
    }
}

/// A live key: its state and the limit that interprets it. The limit is kept here, not looked up
/// in the config, so GC and replication can read a state whose rule a reload removed.
#[derive(Debug, Clone)]
struct Entry {
    state: BucketState,
    limit: Limit,
    /// Bumped on every change (low 30 bits), whether the key waits in its shard's dirty list
    /// (top bit), and whether this node's own consumption changed since the last drain (next
    /// bit): one word, because a million entries each carry it.
    version: u32,
    /// The key budget slot it is counted in (`budget.rs`).
    budget: u32,
}

const DIRTY: u32 = 1 << 31;
/// The change includes this node's own consumption: it goes to every peer, not only to the
/// peers a merged change must be relayed to.
const OWN: u32 = 1 << 30;
const FLAGS: u32 = DIRTY | OWN;

impl Entry {
    fn is_dirty(&self) -> bool {
        self.version & DIRTY != 0
    }

    /// Record a change made on this node (an admission, a refund, a charge after the fact);
    /// returns true when the key must be added to the dirty list.
    fn touch(&mut self, track_dirty: bool) -> bool {
        let added = self.touch_merged(track_dirty);
        if track_dirty {
            self.version |= OWN;
        }
        added
    }

    /// Record a change merged from a peer; returns true when the key must be added to the
    /// dirty list.
    fn touch_merged(&mut self, track_dirty: bool) -> bool {
        let flags = self.version & FLAGS;
        self.version = (self.version.wrapping_add(1) & !FLAGS) | flags;
        if track_dirty && flags & DIRTY == 0 {
            self.version |= DIRTY;
            return true;
        }
        false
    }

    /// Drained: returns whether the change included own consumption.
    fn clean(&mut self) -> bool {
        let own = self.version & OWN != 0;
        self.version &= !FLAGS;
        own
    }

    /// The change counter, without the flags.
    fn version(&self) -> u32 {
        self.version & !FLAGS
    }
}

#[derive(Default)]
struct Shard {
    map: Table<Entry>,
    dirty: Vec<u128>,
    /// Burst guard: this node's own (consumed, requested) on a key as of the last changes all
    /// live peers acknowledged. Only keys with unacknowledged own changes are here, so the
    /// table stays small and the entries of a million quiet keys pay nothing for it.
    acked: Side<(u64, u64)>,
    /// Fair-share mode: the local share of each key touched since the mode began.
    fair: Side<FairShare>,
    /// The latest time a decision on this shard used. A request reads the clock before it
    /// takes the lock, so another may have decided at a later time meanwhile; deciding at the
    /// earlier time would read the later one's consumption as debt beyond the cap and forgive
    /// it (admitting the difference again). Decisions use at least this time instead.
    latest: i64,
}

impl Shard {
    /// `now`, or the latest time this shard has decided at if that is later; remembered.
    fn decide_at(&mut self, now: i64) -> i64 {
        self.latest = self.latest.max(now);
        self.latest
    }
}

/// How replication constrains local decisions right now; read once per request.
#[derive(Debug, Clone, Copy, Default)]
struct Mode {
    /// Members in fair-share mode (0: off).
    fair: u32,
    /// Members for the burst guard (0: off).
    guard: u32,
    round_trip_ns: u64,
}

/// Keeps each shard's lock on its own cache line so shards do not false-share.
#[repr(align(128))]
#[derive(Default)]
struct Padded<T>(T);

pub struct Store {
    shards: Box<[Padded<Mutex<Shard>>]>,
    overflow: Mutex<Shard>,
    live: AtomicUsize,
    overflow_live: AtomicUsize,
    shared_total: AtomicU64,
    refused_total: AtomicU64,
    fair_members: AtomicU32,
    guard_members: AtomicU32,
    /// Entries in the shards' `acked` tables, counted so the replication tick can publish it
    /// without locking every shard.
    unacked: AtomicUsize,
    round_trip_ns: AtomicU64,
    budgets: Budgets,
    /// The debt cap in capacities: `cfg.debt_cap_capacities` at start, then what replication
    /// sets from the live membership.
    debt_caps: AtomicU32,
    cfg: StoreConfig,
    local: ReplicaId,
}

impl Store {
    pub fn new(cfg: StoreConfig, local: ReplicaId) -> Self {
        let n = cfg.shards.max(1).next_power_of_two();
        Store {
            shards: (0..n).map(|_| Padded::default()).collect(),
            overflow: Mutex::new(Shard::default()),
            live: AtomicUsize::new(0),
            overflow_live: AtomicUsize::new(0),
            shared_total: AtomicU64::new(0),
            refused_total: AtomicU64::new(0),
            fair_members: AtomicU32::new(0),
            guard_members: AtomicU32::new(0),
            unacked: AtomicUsize::new(0),
            round_trip_ns: AtomicU64::new(0),
            budgets: Budgets::new(cfg.max_keys),
            debt_caps: AtomicU32::new(cfg.debt_cap_capacities),
            cfg,
            local,
        }
    }

    pub fn config(&self) -> &StoreConfig {
        &self.cfg
    }

    pub fn local_replica(&self) -> ReplicaId {
        self.local
    }

    /// Per-rule key budgets (set on each config load).
    pub fn budgets(&self) -> &Budgets {
        &self.budgets
    }

    fn shard_of(&self, key: KeyId) -> usize {
        ((key.0 >> 64) as usize) & (self.shards.len() - 1)
    }

    fn debt_cap(&self, limit: &Limit) -> u64 {
        limit.capacity() as u64 * self.debt_caps.load(Ordering::Relaxed) as u64
    }

    /// Set the debt cap to `capacities` times each limit's capacity (replication: about one
    /// per member, following the live membership).
    pub fn set_debt_cap_capacities(&self, capacities: u32) {
        self.debt_caps.store(capacities.max(1), Ordering::Relaxed);
    }

    /// The debt cap in capacities now in force.
    pub fn debt_cap_capacities(&self) -> u32 {
        self.debt_caps.load(Ordering::Relaxed)
    }

    fn mode(&self) -> Mode {
        Mode {
            fair: self.fair_members.load(Ordering::Relaxed),
            guard: self.guard_members.load(Ordering::Relaxed),
            round_trip_ns: self.round_trip_ns.load(Ordering::Relaxed),
        }
    }

    /// Turn the burst guard on for a cluster of `members` (this node included) whose acks take
    /// about `round_trip`; `members <= 1` turns it off.
    pub fn set_burst_guard(&self, members: u32, round_trip: std::time::Duration) {
        self.round_trip_ns.store(
            round_trip.as_nanos().min(u64::MAX as u128) as u64,
            Ordering::Relaxed,
        );
        self.guard_members
            .store(if members > 1 { members } else { 0 }, Ordering::Relaxed);
    }

    /// Enter fair-share mode with `members` sharing every limit, or leave it (`None`).
    ///
    /// Entering fixes every live key's share from the view at `now`, before anything else is
    /// merged: a share taken later from a view that already holds a same-side peer's
    /// fair-share spending would charge that spending twice. Leaving forgets the shares: the
    /// next decision is on the shared bucket again.
    pub fn set_fair_share(&self, members: Option<u32>, now: i64) {
        let m = members.unwrap_or(0);
        let was = self.fair_members.load(Ordering::Acquire);
        if was == m {
            return;
        }
        for s in self.shards.iter() {
            let mut g = s.0.lock();
            let shard = &mut *g;
            shard.fair.clear();
            if m > 0 {
                shard.fair.extend(
                    shard
                        .map
                        .iter()
                        .map(|(k, e)| (Packed::of(k), FairShare::start(&e.state, &e.limit, now))),
                );
            } else {
                shard.fair.shrink_to_fit();
            }
        }
        self.fair_members.store(m, Ordering::Release);
    }

    /// Members sharing every limit while in fair-share mode, if it is on.
    pub fn fair_share(&self) -> Option<u32> {
        let m = self.fair_members.load(Ordering::Relaxed);
        (m > 0).then_some(m)
    }

    /// Whether `hits` fit the key's bucket under the current mode: the shared bucket (and the
    /// burst guard), or this node's share of it in fair-share mode.
    #[allow(clippy::too_many_arguments)]
    fn fits(
        &self,
        shard: &Shard,
        id: u128,
        state: Option<&BucketState>,
        limit: &Limit,
        hits: u64,
        now: i64,
        mode: Mode,
    ) -> bool {
        let fresh;
        let state = match state {
            Some(s) => s,
            None => {
                fresh = BucketState::new(generation_at(now));
                &fresh
            }
        };
        if mode.fair > 0 {
            let share = shard
                .fair
                .get(&Packed::of(id))
                .copied()
                .unwrap_or_else(|| FairShare::start(state, limit, now));
            return share.check(limit, hits, now, mode.fair);
        }
        if !state.check(limit, hits, now) {
            return false;
        }
        if mode.guard > 0 {
            let (acked_consumed, acked_requested) =
                shard.acked.get(&Packed::of(id)).copied().unwrap_or((
                    state.consumed_by(self.local),
                    state.requested_by(self.local),
                ));
            let g = Guard {
                acked_consumed,
                acked_requested,
                members: mode.guard,
                round_trip_ns: mode.round_trip_ns,
            };
            return state.guard_allows(limit, self.local, hits, now, &g);
        }
        true
    }

    /// Decide a request: every enforced charge must fit for any to be taken (all or none).
    /// Shadow charges are taken only when they fit and the request is admitted.
    pub fn decide(&self, charges: &[Charge], now: i64) -> SmallVec<[Verdict; 4]> {
        self.decide_with(charges, now, |fits| {
            charges.iter().zip(fits).all(|(c, &fit)| fit || !c.enforce)
        })
    }

    /// Decide a request whose admission follows a rule of the caller's: `admitted` is told
    /// which charges fit their bucket (in `charges`' order) and says whether the request is
    /// admitted; then every charge that fits is taken, or none. It is asked once, while every
    /// shard involved is locked, so what it decided on is what gets charged: quota mode (the
    /// request passes while one quota descriptor fits) is as atomic as plain all or nothing.
    pub fn decide_with(
        &self,
        charges: &[Charge],
        now: i64,
        admitted: impl FnOnce(&[bool]) -> bool,
    ) -> SmallVec<[Verdict; 4]> {
        // Lock every shard involved, in ascending order, so concurrent multi-key requests
        // cannot deadlock; the overflow table, when needed, is always locked last.
        let mut order: SmallVec<[usize; 4]> =
            charges.iter().map(|c| self.shard_of(c.key)).collect();
        order.sort_unstable();
        order.dedup();
        let mut guards: SmallVec<[(usize, MutexGuard<'_, Shard>); 4]> = order
            .iter()
            .map(|&i| (i, self.shards[i].0.lock()))
            .collect();
        let mut overflow: Option<MutexGuard<'_, Shard>> = None;
        let mode = self.mode();
        // One time for the whole request: the latest any of its shards has decided at.
        let now = guards.iter_mut().fold(now, |now, (_, g)| g.decide_at(now));
        for (_, g) in guards.iter_mut() {
            g.decide_at(now);
        }

        // Where each charge lives (and where its entry is, if it has one), and whether it fits.
        // A position is valid until its table changes: the second pass looks again once it
        // has created a key.
        let mut slots: SmallVec<[(Placement, u128, Option<Pos>); 4]> = SmallVec::new();
        let mut budget_slots: SmallVec<[u32; 4]> = SmallVec::new();
        let mut fits: SmallVec<[bool; 4]> = SmallVec::new();
        for c in charges {
            let g = shard_guard(&mut guards, self.shard_of(c.key));
            // Existing keys, reads (which create nothing) and keys under the cap have their own
            // bucket; others share an overflow bucket of their limit.
            // A new key is counted in its rule's budget, so one rule's flood cannot take
            // every other rule's room (budget.rs).
            let pos = g.map.find(c.key.0);
            let slot = if pos.is_none() && c.hits > 0 {
                self.budgets.slot(c.rule)
            } else {
                0
            };
            budget_slots.push(slot);
            let own = pos.is_some()
                || c.hits == 0
                || self.budgets.admits(slot, self.live.load(Ordering::Relaxed));
            let (placement, id, pos) = if own {
                (Placement::Own, c.key.0, pos)
            } else {
                let id = c
                    .key
                    .overflow_id(&c.limit, c.rule, self.cfg.overflow_buckets_per_limit);
                let o = overflow.get_or_insert_with(|| self.overflow.lock());
                let pos = o.map.find(id);
                if pos.is_some()
                    || self.overflow_live.load(Ordering::Relaxed) < self.cfg.max_overflow_keys
                {
                    (Placement::Shared, id, pos)
                } else {
                    (Placement::Refused, id, None)
                }
            };
            // Two descriptors of one request can land on the same bucket (the same key twice,
            // or two keys sharing an overflow bucket): check them against their sum.
            let earlier: u64 = charges[..slots.len()]
                .iter()
                .zip(&slots)
                .filter(|(_, s)| s.1 == id)
                .map(|(e, _)| e.hits)
                .fold(0u64, u64::saturating_add);
            let hits = earlier.saturating_add(c.hits);
            let fit = match placement {
                Placement::Refused => false,
                Placement::Own => {
                    let state = pos.map(|p| &g.map.at(p).state);
                    self.fits(g, id, state, &c.limit, hits, now, mode)
                }
                Placement::Shared => match (pos, overflow.as_ref()) {
                    (Some(p), Some(o)) => o.map.at(p).state.check(&c.limit, hits, now),
                    _ => true,
                },
            };
            // A fresh bucket holds C tokens: it fits iff hits <= C.
            let fit = fit && hits <= c.limit.capacity() as u64;
            slots.push((placement, id, pos));
            fits.push(fit);
        }
        let all_fit = admitted(&fits);

        let gen = generation_at(now);
        let mut verdicts = SmallVec::new();
        let mut created = false;
        for (i, c) in charges.iter().enumerate() {
            let (placement, id, pos) = slots[i];
            let within = fits[i];
            let permit = within && all_fit;
            let shard = match placement {
                Placement::Refused => {
                    self.refused_total.fetch_add(1, Ordering::Relaxed);
                    verdicts.push(Verdict {
                        within: false,
                        charged: false,
                        outcome: BucketState::new(gen).peek(&c.limit, now),
                        placement,
                    });
                    continue;
                }
                Placement::Own => shard_guard(&mut guards, self.shard_of(c.key)),
                Placement::Shared => {
                    self.shared_total.fetch_add(1, Ordering::Relaxed);
                    overflow.as_deref_mut().expect("locked when placed")
                }
            };
            // Overflow buckets are local to this node: no share and no guard apply to them.
            let mode = match placement {
                Placement::Own => mode,
                _ => Mode::default(),
            };
            // A created key may have been this one (the same key twice in a request), or may
            // have grown its table and moved every entry.
            let pos = if created { shard.map.find(id) } else { pos };
            let outcome = if c.hits == 0 {
                let fresh = BucketState::new(gen);
                let state = pos.map_or(&fresh, |p| &shard.map.at(p).state);
                if mode.fair > 0 {
                    shard
                        .fair
                        .get(&Packed::of(id))
                        .copied()
                        .unwrap_or_else(|| FairShare::start(state, &c.limit, now))
                        .outcome(&c.limit, now, mode.fair, within)
                } else {
                    state.peek(&c.limit, now)
                }
            } else {
                let counter = match placement {
                    Placement::Shared => &self.overflow_live,
                    _ => &self.live,
                };
                let budget = budget_slots[i];
                let pos = pos.unwrap_or_else(|| {
                    counter.fetch_add(1, Ordering::Relaxed);
                    if placement == Placement::Own {
                        self.budgets.added(budget);
                    }
                    created = true;
                    let entry = Entry {
                        state: BucketState::new(gen),
                        limit: c.limit,
                        version: 0,
                        budget,
                    };
                    shard.map.insert(id, entry)
                });
                let entry = shard.map.at_mut(pos);
                if created && mode.fair > 0 {
                    // Its counts need a floor to stand on, or the key reads as long full and GC
                    // (and every peer) drops it with what was admitted on it.
                    entry.state.open_at(&c.limit, now);
                }
                // The burst guard's record of this node's counts before the change (read only
                // when the guard is on: two slot scans a charge otherwise spent for nothing).
                let before = (mode.guard > 0).then(|| {
                    (
                        entry.state.consumed_by(self.local),
                        entry.state.requested_by(self.local),
                    )
                });
                let outcome = if mode.fair > 0 {
                    // Decide on this node's share; record the counts, never B or F.
                    let share = shard
                        .fair
                        .entry(Packed::of(id))
                        .or_insert_with(|| FairShare::start(&entry.state, &c.limit, now));
                    if permit {
                        share.take(&c.limit, c.hits, now, mode.fair);
                    }
                    entry.state.record(self.local, c.hits, permit);
                    share.outcome(&c.limit, now, mode.fair, permit)
                } else {
                    entry.state.charge(
                        &c.limit,
                        self.local,
                        c.hits,
                        now,
                        self.debt_cap(&c.limit),
                        permit,
                    )
                };
                if let Some(before) = before {
                    if let std::collections::hash_map::Entry::Vacant(v) =
                        shard.acked.entry(Packed::of(id))
                    {
                        v.insert(before);
                        self.unacked.fetch_add(1, Ordering::Relaxed);
                    }
                }
                if entry.touch(self.cfg.track_dirty) {
                    shard.dirty.push(id);
                }
                outcome
            };
            verdicts.push(Verdict {
                within,
                charged: c.hits > 0 && outcome.allowed,
                outcome: Outcome {
                    allowed: within,
                    ..outcome
                },
                placement,
            });
        }
        verdicts
    }

    /// Delete keys that have been full for the GC horizon; returns how many were deleted.
    /// Locks one shard at a time, so requests on other shards never wait for it.
    pub fn gc(&self, now: i64) -> usize {
        let horizon = self.cfg.gc_horizon_ns;
        let mut removed = 0;
        let budgets = &self.budgets;
        let mut sweep = |shard: &mut Shard, counter: &AtomicUsize, budgeted: bool| {
            // In fair-share mode the shared view stops moving its refill floor and falls behind
            // what the local share spent: a key whose share is still in use stays.
            let fair = &shard.fair;
            let gone = shard.map.retain(|k, e| {
                let keep = !e.state.is_idle(&e.limit, now, horizon)
                    || fair
                        .get(&Packed::of(k))
                        .is_some_and(|f| !f.is_idle(&e.limit, now, horizon));
                if !keep && budgeted {
                    budgets.removed(e.budget, 1);
                }
                keep
            });
            counter.fetch_sub(gone, Ordering::Relaxed);
            if gone > 0 {
                let map = &shard.map;
                let before = shard.acked.len();
                shard.acked.retain(|k, _| map.contains(k.id()));
                self.unacked
                    .fetch_sub(before - shard.acked.len(), Ordering::Relaxed);
                shard.fair.retain(|k, _| map.contains(k.id()));
                shard.map.shrink();
            }
            removed += gone;
        };
        for s in self.shards.iter() {
            sweep(&mut s.0.lock(), &self.live, true);
        }
        sweep(&mut self.overflow.lock(), &self.overflow_live, false);
        self.budgets.recount();
        removed
    }

    /// Merge a state received for `key` (from a peer). A state that reads as a full bucket is
    /// not stored for an absent key: that would resurrect a key GC already deleted.
    pub fn merge(&self, key: KeyId, limit: Limit, state: &BucketState, now: i64) -> Merged {
        self.merge_with(key, limit, state, now, false)
    }

    /// Merge a partial state: one node's own slot, sent as its change (the rest of the key
    /// comes from the other nodes). Kept even when it reads as a full bucket for an absent
    /// key: dropping it could lose that node's count for good once the rest arrives.
    pub fn merge_partial(&self, key: KeyId, limit: Limit, state: &BucketState, now: i64) -> Merged {
        self.merge_with(key, limit, state, now, true)
    }

    fn merge_with(
        &self,
        key: KeyId,
        limit: Limit,
        state: &BucketState,
        now: i64,
        partial: bool,
    ) -> Merged {
        let mut g = self.shards[self.shard_of(key)].0.lock();
        let shard = &mut *g;
        match shard.map.get_mut(key.0) {
            Some(e) => {
                if e.limit != limit {
                    // The same key id with another limit cannot come from the same rule: the
                    // key id includes the limit. Refuse rather than misinterpret the counts.
                    return Merged::Refused;
                }
                let changed = e.state.join(state);
                if changed && e.touch_merged(self.cfg.track_dirty) {
                    shard.dirty.push(key.0);
                }
                Merged::Applied { changed }
            }
            None => {
                if !partial && state.is_idle(&limit, now, 0) {
                    return Merged::Dropped;
                }
                self.live.fetch_add(1, Ordering::Relaxed);
                // Which rule a replicated key belongs to is not known here: slot 0.
                self.budgets.added(0);
                let mut e = Entry {
                    state: state.clone(),
                    limit,
                    version: 0,
                    budget: 0,
                };
                if e.touch_merged(self.cfg.track_dirty) {
                    shard.dirty.push(key.0);
                }
                shard.map.insert(key.0, e);
                Merged::Applied { changed: true }
            }
        }
    }

    /// Number of shards (for iterating one shard at a time).
    pub fn shard_count(&self) -> usize {
        self.shards.len()
    }

    /// Visit the live keys of one shard (a snapshot streams shard by shard, so it never holds a
    /// lock across an await and never copies the whole table).
    pub fn for_each_in_shard(&self, shard: usize, mut f: impl FnMut(KeyId, &Limit, &BucketState)) {
        if let Some(s) = self.shards.get(shard) {
            let g = s.0.lock();
            for (id, e) in g.map.iter() {
                f(KeyId(id), &e.limit, &e.state);
            }
        }
    }

    /// A copy of one key's state and limit.
    pub fn get(&self, key: KeyId) -> Option<(Limit, BucketState)> {
        let g = self.shards[self.shard_of(key)].0.lock();
        g.map.get(key.0).map(|e| (e.limit, e.state.clone()))
    }

    /// How many times a key changed (wrapping, 31 bits): replication compares it with the
    /// version a peer acknowledged.
    pub fn version(&self, key: KeyId) -> Option<u32> {
        let g = self.shards[self.shard_of(key)].0.lock();
        g.map.get(key.0).map(Entry::version)
    }

    /// Take the keys changed since the last call (only with `track_dirty`).
    pub fn drain_dirty(&self, out: &mut Vec<KeyId>) {
        self.drain_dirty_with(|d| out.push(d.key));
    }

    /// Take the keys changed since the last call, each with this node's own counts at this
    /// moment (what peers will know once they acknowledge it) and whether the change included
    /// own consumption.
    pub fn drain_dirty_with(&self, mut f: impl FnMut(Drained)) {
        for s in self.shards.iter() {
            let mut g = s.0.lock();
            let shard = &mut *g;
            for id in shard.dirty.drain(..) {
                if let Some(e) = shard.map.get_mut(id) {
                    if e.is_dirty() {
                        let own_changed = e.clean();
                        let own = (
                            e.state.consumed_by(self.local),
                            e.state.requested_by(self.local),
                        );
                        f(Drained {
                            key: KeyId(id),
                            own,
                            own_changed,
                        });
                    }
                }
            }
        }
    }

    /// Every live peer has acknowledged these own counts: the burst guard no longer holds them
    /// back, and a key whose counts are all acknowledged leaves the guard's table.
    pub fn acknowledge(&self, acked: &[(KeyId, (u64, u64))]) {
        for &(key, (consumed, requested)) in acked {
            let mut g = self.shards[self.shard_of(key)].0.lock();
            let shard = &mut *g;
            let p = Packed::of(key.0);
            let Some(a) = shard.acked.get_mut(&p) else {
                continue;
            };
            a.0 = a.0.max(consumed);
            a.1 = a.1.max(requested);
            let caught_up = shard.map.get(key.0).is_none_or(|e| {
                e.state.consumed_by(self.local) <= a.0 && e.state.requested_by(self.local) <= a.1
            });
            if caught_up {
                shard.acked.remove(&p);
                self.unacked.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }

    /// Keys whose own changes wait for acknowledgements (the burst guard's table).
    pub fn unacked_keys(&self) -> usize {
        self.unacked.load(Ordering::Relaxed)
    }

    /// Visit every live key, one shard at a time (snapshots for replication, debugging).
    pub fn for_each(&self, mut f: impl FnMut(KeyId, &Limit, &BucketState)) {
        for s in self.shards.iter() {
            let g = s.0.lock();
            for (id, e) in g.map.iter() {
                f(KeyId(id), &e.limit, &e.state);
            }
        }
    }

    /// Live keys with their own bucket.
    pub fn live_keys(&self) -> usize {
        self.live.load(Ordering::Relaxed)
    }

    /// Shared overflow buckets in use.
    pub fn overflow_keys(&self) -> usize {
        self.overflow_live.load(Ordering::Relaxed)
    }

    /// Charges answered from a shared overflow bucket since start.
    pub fn shared_total(&self) -> u64 {
        self.shared_total.load(Ordering::Relaxed)
    }

    /// Charges refused because even the overflow table was full, since start.
    pub fn refused_total(&self) -> u64 {
        self.refused_total.load(Ordering::Relaxed)
    }
}

fn shard_guard<'a, 'g>(
    guards: &'a mut [(usize, MutexGuard<'g, Shard>)],
    shard: usize,
) -> &'a mut Shard {
    let i = guards
        .binary_search_by_key(&shard, |(s, _)| *s)
        .expect("every charge's shard is locked");
    &mut guards[i].1
}
