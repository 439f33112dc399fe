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
//!
//! The cluster's mode (shared, burst guard, fair share) is not kept here as rules of its own:
//! the caller reads it once per request ([`Store::mode`]) and hands it to each decision, and
//! `bucket::mode` says what it means for a charge. What a mode remembers per key (this node's
//! acknowledged counts, its fair shares) stays in the key's shard, in small side tables, so it
//! is read and changed under the same lock as the key.

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

use crate::bucket::{
    generation_at, Ask, BucketState, BurstGuard, FairShare, Limit, Mode, Outcome, ReplicaId,
};

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

    /// The key's fair share, in fair-share mode and once it was started.
    fn share(&self, id: u128, mode: Mode) -> Option<FairShare> {
        match mode {
            Mode::FairShare { .. } => self.fair.get(&Packed::of(id)).copied(),
            _ => None,
        }
    }

    /// This node's acknowledged counts of the key, when the burst guard decides and some of
    /// its counts wait for an acknowledgement.
    fn acked(&self, id: u128, mode: Mode) -> Option<(u64, u64)> {
        match mode {
            Mode::Guarded(_) => self.acked.get(&Packed::of(id)).copied(),
            _ => None,
        }
    }

    /// The state at `pos`, or a fresh bucket's for a key without an entry.
    fn state_or_fresh<R>(
        &self,
        pos: Option<Pos>,
        now: i64,
        f: impl FnOnce(&BucketState) -> R,
    ) -> R {
        match pos {
            Some(p) => f(&self.map.at(p).state),
            None => f(&BucketState::new(generation_at(now))),
        }
    }

    /// Whether the ask fits the key `id` (its entry at `pos`, if it has one) under `mode`.
    /// Inline: a few branches around the bucket's check, called for every charge.
    #[inline]
    fn fits(&self, id: u128, pos: Option<Pos>, ask: &Ask, mode: Mode) -> bool {
        // Shared mode (a single node's, and a cluster's without guard or fair share) needs no
        // side table: the bucket's own check, without two lookups that find nothing.
        if let (Mode::Shared, Some(p)) = (mode, pos) {
            return self.map.at(p).state.check(&ask.limit, ask.hits, ask.now);
        }
        let (share, acked) = (self.share(id, mode), self.acked(id, mode));
        self.state_or_fresh(pos, ask.now, |state| mode.fits(ask, state, share, acked))
    }

    /// Read the key `id` without charging it; `allowed` is what the decision found.
    fn read(
        &self,
        id: u128,
        pos: Option<Pos>,
        limit: &Limit,
        mode: Mode,
        now: i64,
        allowed: bool,
    ) -> Outcome {
        let share = self.share(id, mode);
        self.state_or_fresh(pos, now, |state| {
            mode.read(state, share, limit, now, allowed)
        })
    }
}

/// The shards a request has locked, and what it is decided under while it holds them.
struct Locked<'s> {
    /// The shards' indices, ascending, and their guards in the same order.
    order: SmallVec<[usize; 4]>,
    guards: SmallVec<[MutexGuard<'s, Shard>; 4]>,
    overflow: Option<MutexGuard<'s, Shard>>,
    mode: Mode,
    /// The request's one time: the latest any of its shards has decided at.
    now: i64,
    /// The request has created a key: positions found before may have moved.
    created: bool,
}

impl Locked<'_> {
    /// Where the guard of `shard` is in `guards`.
    /// The first two looked at before a search: one or two shards are most requests'.
    fn lock_of(&self, shard: usize) -> usize {
        match self.order.as_slice() {
            [first, ..] if *first == shard => 0,
            [_, second] if *second == shard => 1,
            order => order
                .binary_search(&shard)
                .expect("every charge's shard is locked"),
        }
    }

    /// The shard whose guard is `guards[lock]`.
    fn shard(&mut self, lock: usize) -> &mut Shard {
        &mut self.guards[lock]
    }

    fn overflow(&mut self) -> Option<&mut Shard> {
        self.overflow.as_deref_mut()
    }
}

/// Where one charge of a request lives, and whether it fits: the first pass of a decision,
/// before anything is charged.
#[derive(Debug, Clone, Copy)]
struct Place {
    placement: Placement,
    /// The bucket's id in its table: the key's own, or its overflow bucket's.
    id: u128,
    /// Its entry, if it has one (valid until the request creates a key).
    pos: Option<Pos>,
    /// The key budget slot a new key is counted in.
    budget: u32,
    /// Its shard's guard in [`Locked::guards`] (own placement).
    lock: usize,
    fit: bool,
}

/// Which charges of a request fit their bucket, in the request's order: what a caller's
/// admission rule is told ([`Store::decide_with`]).
pub struct Fits<'a>(&'a [Place]);

impl Fits<'_> {
    /// Whether charge `i` fits (`false` past the end).
    pub fn get(&self, i: usize) -> bool {
        self.0.get(i).is_some_and(|p| p.fit)
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = bool> + '_ {
        self.0.iter().map(|p| p.fit)
    }
}

/// The cluster's mode as replication last set it: read on every request, written when the
/// membership changes.
#[derive(Default)]
struct ModeCell {
    /// Members sharing every limit in fair-share mode (0: off).
    fair: AtomicU32,
    /// Members for the burst guard (0: off).
    guard: AtomicU32,
    round_trip_ns: AtomicU64,
}

impl ModeCell {
    fn get(&self) -> Mode {
        let guard = BurstGuard::new(
            self.guard.load(Ordering::Relaxed),
            std::time::Duration::from_nanos(self.round_trip_ns.load(Ordering::Relaxed)),
        );
        Mode::new(Some(self.fair.load(Ordering::Acquire)), guard)
    }
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
    mode: ModeCell,
    /// Entries in the shards' `acked` tables, counted so the replication tick can publish it
    /// without locking every shard.
    unacked: AtomicUsize,
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
            mode: ModeCell::default(),
            unacked: AtomicUsize::new(0),
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

    /// The cluster's mode now: what a request is decided under. Read it once per request and
    /// hand it to each of the request's store calls.
    pub fn mode(&self) -> Mode {
        self.mode.get()
    }

    /// Members sharing every limit while in fair-share mode, if it is on.
    pub fn fair_share(&self) -> Option<u32> {
        self.mode().fair_share()
    }

    /// Set the cluster's mode (replication, as the membership changes).
    ///
    /// Entering fair-share mode (or a new member count in it) fixes every live key's share from
    /// the view at `now`, before anything else is merged: a share taken later from a view that
    /// already holds a same-side peer's fair-share spending would charge that spending twice.
    /// Leaving it forgets the shares: the next decision is on the shared bucket again.
    pub fn set_mode(&self, mode: Mode, now: i64) {
        let guard = mode.guard();
        self.mode
            .round_trip_ns
            .store(guard.map_or(0, |g| g.round_trip_ns()), Ordering::Relaxed);
        self.mode
            .guard
            .store(guard.map_or(0, |g| g.members()), Ordering::Relaxed);
        let fair = mode.fair_share().unwrap_or(0);
        if self.mode.fair.load(Ordering::Acquire) == fair {
            return;
        }
        for s in self.shards.iter() {
            let mut g = s.0.lock();
            let shard = &mut *g;
            shard.fair.clear();
            if fair > 0 {
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
        self.mode.fair.store(fair, Ordering::Release);
    }

    /// Decide a request under `mode`: every enforced charge must fit for any to be taken (all
    /// or none). Shadow charges are taken only when they fit and the request is admitted.
    pub fn decide(&self, charges: &[Charge], mode: Mode, now: i64) -> SmallVec<[Verdict; 4]> {
        self.decide_with(charges, mode, now, |fits| {
            charges
                .iter()
                .zip(fits.iter())
                .all(|(c, fit)| fit || !c.enforce)
        })
    }

    /// Decide a request whose admission follows a rule of the caller's: `admitted` is told
    /// which charges fit their bucket (in `charges`' order) and says whether the request is
    /// admitted; then every charge that fits is taken, or none. It is asked once, while every
    /// shard involved is locked, so what it decided on is what gets charged: quota mode (the
    /// request passes while one quota descriptor fits) is as atomic as plain all or nothing.
    ///
    /// `mode` is the cluster's mode as the caller read it for this request ([`Store::mode`]):
    /// a request that began just before a change of mode is decided under the old one.
    pub fn decide_with(
        &self,
        charges: &[Charge],
        mode: Mode,
        now: i64,
        admitted: impl FnOnce(Fits<'_>) -> bool,
    ) -> SmallVec<[Verdict; 4]> {
        let mut verdicts = SmallVec::new();
        self.decide_into(charges, mode, now, admitted, &mut verdicts);
        verdicts
    }

    /// [`decide_with`](Self::decide_with), the verdicts pushed on `verdicts` (the caller's,
    /// kept where the caller keeps them: a returned `SmallVec` of them was copied on its way
    /// out, on every request).
    pub fn decide_into(
        &self,
        charges: &[Charge],
        mode: Mode,
        now: i64,
        admitted: impl FnOnce(Fits<'_>) -> bool,
        verdicts: &mut SmallVec<[Verdict; 4]>,
    ) {
        let mut locked = self.lock(charges, mode, now);
        let mut places: SmallVec<[Place; 4]> = SmallVec::new();
        for (i, c) in charges.iter().enumerate() {
            let place = self.place(&mut locked, c, (&charges[..i], &places));
            places.push(place);
        }
        let admitted = admitted(Fits(&places));
        for (c, p) in charges.iter().zip(&places) {
            verdicts.push(self.take(&mut locked, c, p, admitted));
        }
    }

    /// Lock every shard the charges live in, in ascending order, so that concurrent
    /// multi-key requests cannot deadlock; the overflow table is locked later, and last, by
    /// the first charge that needs it. The request decides at the latest time any of its
    /// shards has decided at (`Shard::latest`).
    fn lock<'s>(&'s self, charges: &[Charge], mode: Mode, now: i64) -> Locked<'s> {
        let order = self.order_of(charges);
        let mut guards: SmallVec<[MutexGuard<'_, Shard>; 4]> =
            order.iter().map(|&i| self.shards[i].0.lock()).collect();
        let now = guards.iter_mut().fold(now, |now, g| g.decide_at(now));
        if guards.len() > 1 {
            for g in guards.iter_mut() {
                g.decide_at(now);
            }
        }
        Locked {
            order,
            guards,
            overflow: None,
            mode,
            now,
            created: false,
        }
    }

    /// The shards of `charges`, ascending and each once. One or two charges (most requests)
    /// are ordered by a comparison, without the search and insertion of the general case.
    fn order_of(&self, charges: &[Charge]) -> SmallVec<[usize; 4]> {
        let mut order: SmallVec<[usize; 4]> = SmallVec::new();
        match charges {
            [a] => order.push(self.shard_of(a.key)),
            [a, b] => {
                let (x, y) = (self.shard_of(a.key), self.shard_of(b.key));
                order.push(x.min(y));
                if x != y {
                    order.push(x.max(y));
                }
            }
            _ => {
                for c in charges {
                    let shard = self.shard_of(c.key);
                    if let Err(i) = order.binary_search(&shard) {
                        order.insert(i, shard);
                    }
                }
            }
        }
        order
    }

    /// Where one charge lives (and its entry, if it has one), and whether it fits: existing
    /// keys, reads (which create nothing) and keys within their rule's budget (`budget.rs`,
    /// so that one rule's flood cannot take every other rule's room) have their own bucket;
    /// others share an overflow bucket of their limit, or are refused when even that table is
    /// full. `earlier` are the request's charges before this one, and their places.
    fn place<'s>(
        &'s self,
        locked: &mut Locked<'s>,
        c: &Charge,
        earlier: (&[Charge], &[Place]),
    ) -> Place {
        let lock = locked.lock_of(self.shard_of(c.key));
        let shard = locked.shard(lock);
        let pos = shard.map.find(c.key.0);
        let budget = if pos.is_none() && c.hits > 0 {
            self.budgets.slot(c.rule)
        } else {
            0
        };
        let own = pos.is_some()
            || c.hits == 0
            || self
                .budgets
                .admits(budget, self.live.load(Ordering::Relaxed));
        let (placement, id, pos) = if own {
            (Placement::Own, c.key.0, pos)
        } else {
            self.overflow_place(locked, c)
        };
        // Two charges of one request can land on the same bucket (the same key twice, or two
        // keys sharing an overflow bucket): check them against their sum.
        let hits = earlier
            .0
            .iter()
            .zip(earlier.1)
            .filter(|(_, p)| p.id == id)
            .fold(c.hits, |sum, (e, _)| sum.saturating_add(e.hits));
        let ask = Ask {
            limit: c.limit,
            me: self.local,
            hits,
            now: locked.now,
        };
        let mode = locked.mode;
        let fit = match placement {
            Placement::Refused => false,
            Placement::Own => locked.shard(lock).fits(id, pos, &ask, mode),
            // Overflow buckets are local to this node: no share and no guard apply to them.
            Placement::Shared => locked
                .overflow()
                .is_none_or(|o| o.fits(id, pos, &ask, Mode::Shared)),
        };
        // A fresh bucket holds C tokens: it fits iff hits <= C.
        let fit = fit && hits <= u64::from(c.limit.capacity());
        Place {
            placement,
            id,
            pos,
            budget,
            lock,
            fit,
        }
    }

    /// A new key beyond its budget: its rule's shared overflow bucket for its limit, or none
    /// when the overflow table is full.
    fn overflow_place<'s>(
        &'s self,
        locked: &mut Locked<'s>,
        c: &Charge,
    ) -> (Placement, u128, Option<Pos>) {
        let id = c
            .key
            .overflow_id(&c.limit, c.rule, self.cfg.overflow_buckets_per_limit);
        let o = locked.overflow.get_or_insert_with(|| self.overflow.lock());
        let pos = o.map.find(id);
        if pos.is_some() || self.overflow_live.load(Ordering::Relaxed) < self.cfg.max_overflow_keys
        {
            (Placement::Shared, id, pos)
        } else {
            (Placement::Refused, id, None)
        }
    }

    /// Apply one charge of a decided request: taken when it fits and the request is
    /// `admitted`, else only its demand is recorded; a read (0 hits) changes nothing.
    fn take(&self, locked: &mut Locked<'_>, c: &Charge, p: &Place, admitted: bool) -> Verdict {
        let now = locked.now;
        // A key created earlier in the request may have been this one (the same key twice),
        // or may have grown its table and moved every entry: positions are looked up again.
        let (created, mode) = (locked.created, locked.mode);
        let (shard, mode) = match p.placement {
            Placement::Refused => {
                self.refused_total.fetch_add(1, Ordering::Relaxed);
                return Verdict {
                    within: false,
                    charged: false,
                    outcome: BucketState::new(generation_at(now)).peek(&c.limit, now),
                    placement: p.placement,
                };
            }
            Placement::Own => (locked.shard(p.lock), mode),
            Placement::Shared => {
                self.shared_total.fetch_add(1, Ordering::Relaxed);
                let o = locked.overflow().expect("locked when placed");
                (o, Mode::Shared)
            }
        };
        let pos = if created { shard.map.find(p.id) } else { p.pos };
        let mut made = false;
        let outcome = if c.hits == 0 {
            shard.read(p.id, pos, &c.limit, mode, now, p.fit)
        } else {
            let pos = match pos {
                Some(pos) => pos,
                None => {
                    made = true;
                    self.create(shard, c, p, mode, now)
                }
            };
            let ask = Ask {
                limit: c.limit,
                me: self.local,
                hits: c.hits,
                now,
            };
            self.charge_at(shard, p.id, pos, &ask, mode, p.fit && admitted)
        };
        locked.created |= made;
        Verdict {
            within: p.fit,
            charged: c.hits > 0 && outcome.allowed,
            outcome: Outcome {
                allowed: p.fit,
                ..outcome
            },
            placement: p.placement,
        }
    }

    /// Create the entry of a charge that has none, counted in its table's live keys (and, for
    /// a key of its own, in its rule's budget).
    fn create(&self, shard: &mut Shard, c: &Charge, p: &Place, mode: Mode, now: i64) -> Pos {
        let counter = match p.placement {
            Placement::Own => {
                self.budgets.added(p.budget);
                &self.live
            }
            _ => &self.overflow_live,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        let mut state = BucketState::new(generation_at(now));
        mode.created(&mut state, &c.limit, now);
        shard.map.insert(
            p.id,
            Entry {
                state,
                limit: c.limit,
                version: 0,
                budget: p.budget,
            },
        )
    }

    /// Charge the entry at `pos` under `mode` (taken when `permit`), and note the change: in
    /// the dirty list for replication, and for the burst guard this node's counts before it,
    /// unless older unacknowledged counts are already noted.
    fn charge_at(
        &self,
        shard: &mut Shard,
        id: u128,
        pos: Pos,
        ask: &Ask,
        mode: Mode,
        permit: bool,
    ) -> Outcome {
        let mut share = shard.share(id, mode);
        let entry = shard.map.at_mut(pos);
        // Read only when the guard is on: two slot scans a charge otherwise spent for nothing.
        let before = mode.guard().map(|_| {
            (
                entry.state.consumed_by(self.local),
                entry.state.requested_by(self.local),
            )
        });
        let outcome = mode.charge(
            ask,
            &mut entry.state,
            &mut share,
            self.debt_cap(&ask.limit),
            permit,
        );
        if entry.touch(self.cfg.track_dirty) {
            shard.dirty.push(id);
        }
        if let Some(s) = share {
            shard.fair.insert(Packed::of(id), s);
        }
        if let Some(before) = before {
            if let std::collections::hash_map::Entry::Vacant(v) = shard.acked.entry(Packed::of(id))
            {
                v.insert(before);
                self.unacked.fetch_add(1, Ordering::Relaxed);
            }
        }
        outcome
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
