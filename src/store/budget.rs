//! Per-rule key budgets: one rule's flood of new keys cannot take every other rule's room.
//!
//! Without them, `max_keys` is one pool: a client that drains 200k buckets of one rule (drained
//! buckets are never idle, so GC keeps them) leaves every other rule's new keys on shared
//! overflow buckets that drain at once. So half of `max_keys` is reserved, in equal parts, for
//! each rule of the config (limit overrides count as one more): a rule always gets its own
//! buckets up to its reservation. The other half is a pool any rule may use beyond its
//! reservation, first come first served.
//!
//! Budgets are found by rule id (stable across reloads for an unchanged rule) and only when a
//! key is created, never on the request path of existing keys. Each live key records its
//! budget's slot so GC can give the room back. Keys created by replication (whose rule this
//! node does not know at merge time) go to slot 0, which has no reservation.

use crate::fast_map::FastMap;
use std::sync::atomic::{AtomicUsize, Ordering};

use arc_swap::ArcSwap;
use std::sync::Arc;

/// Budget slots available; a config with more rules shares slot 0 for the rest.
pub const SLOTS: usize = 1 << 16;
/// The rule id under which limit overrides (`RateLimitDescriptor.limit`) are budgeted.
pub const OVERRIDES: u64 = u64::MAX;

pub struct Budgets {
    max_keys: usize,
    /// Rule id -> slot, replaced whole on reload; read lock-free when a key is created.
    slots: ArcSwap<FastMap<u64, u32>>,
    /// Slots handed out so far (slot 0 is the unattributed one).
    next_slot: AtomicUsize,
    live: Box<[AtomicUsize]>,
    /// Keys beyond their slot's reservation.
    pooled: AtomicUsize,
    /// Keys each budgeted slot may always have.
    reserve: AtomicUsize,
    /// Keys beyond reservations: `max_keys` less every reservation (all of it before any
    /// rules are set, so a store used on its own keeps its whole cap).
    pool: AtomicUsize,
}

impl Budgets {
    pub fn new(max_keys: usize) -> Budgets {
        Budgets {
            max_keys,
            slots: ArcSwap::from_pointee(FastMap::default()),
            next_slot: AtomicUsize::new(1),
            live: (0..SLOTS).map(|_| AtomicUsize::new(0)).collect(),
            pooled: AtomicUsize::new(0),
            reserve: AtomicUsize::new(0),
            pool: AtomicUsize::new(max_keys),
        }
    }

    /// The rules of the config now served (overrides included by the caller as
    /// [`OVERRIDES`]): each gets a slot (an unchanged rule keeps its own) and an equal
    /// reservation of half of `max_keys`.
    pub fn set_rules(&self, rules: impl IntoIterator<Item = u64>) {
        let old = self.slots.load();
        let mut map = FastMap::default();
        for id in rules {
            let slot = match old.get(&id) {
                Some(&s) => s,
                None => {
                    let s = self.next_slot.fetch_add(1, Ordering::Relaxed);
                    if s < SLOTS {
                        s as u32
                    } else {
                        0
                    }
                }
            };
            map.insert(id, slot);
        }
        // Slots of removed rules keep their counts until GC empties them; they are not reused.
        let budgeted = map.values().filter(|&&s| s != 0).count().max(1);
        let reserve = self.max_keys / 2 / budgeted;
        self.reserve.store(reserve, Ordering::Relaxed);
        self.pool
            .store(self.max_keys - reserve * budgeted, Ordering::Relaxed);
        self.slots.store(Arc::new(map));
        self.recount();
    }

    /// The slot a new key of `rule` is counted in.
    pub fn slot(&self, rule: u64) -> u32 {
        self.slots.load().get(&rule).copied().unwrap_or(0)
    }

    fn reserve_of(&self, slot: u32) -> usize {
        if slot == 0 {
            0
        } else {
            self.reserve.load(Ordering::Relaxed)
        }
    }

    /// Whether a new key in `slot` may have its own bucket, with `live_total` keys live.
    pub fn admits(&self, slot: u32, live_total: usize) -> bool {
        let live = self.live[slot as usize].load(Ordering::Relaxed);
        let reserve = self.reserve_of(slot);
        if live < reserve {
            return true;
        }
        self.pooled.load(Ordering::Relaxed) < self.pool.load(Ordering::Relaxed)
            && live_total < self.max_keys
    }

    pub fn added(&self, slot: u32) {
        let before = self.live[slot as usize].fetch_add(1, Ordering::Relaxed);
        if before >= self.reserve_of(slot) {
            self.pooled.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn removed(&self, slot: u32, n: usize) {
        let reserve = self.reserve_of(slot);
        let before = self.live[slot as usize].fetch_sub(n, Ordering::Relaxed);
        let after = before.saturating_sub(n);
        let from_pool = before.saturating_sub(reserve) - after.saturating_sub(reserve);
        if from_pool > 0 {
            let _ = self
                .pooled
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |p| {
                    Some(p.saturating_sub(from_pool))
                });
        }
    }

    /// Recompute the pool's count from the slots: a reservation that changed (a reload) moves
    /// keys between reservation and pool. Cheap (one pass over the slot counters).
    pub fn recount(&self) {
        let reserve = self.reserve.load(Ordering::Relaxed);
        let used = self.next_slot.load(Ordering::Relaxed).min(SLOTS);
        let pooled = self.live[0].load(Ordering::Relaxed)
            + self.live[1..used]
                .iter()
                .map(|l| l.load(Ordering::Relaxed).saturating_sub(reserve))
                .sum::<usize>();
        self.pooled.store(pooled, Ordering::Relaxed);
    }

    /// Live keys of `rule` (0 for a rule not in the config).
    pub fn live_of(&self, rule: u64) -> usize {
        match self.slots.load().get(&rule) {
            Some(&s) if s != 0 => self.live[s as usize].load(Ordering::Relaxed),
            _ => 0,
        }
    }

    /// Keys a rule may always have.
    pub fn reservation(&self) -> usize {
        self.reserve.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flooding_rule_fills_its_reservation_and_the_pool_but_not_the_others_reservations() {
        let b = Budgets::new(100);
        b.set_rules([1, 2, 3, 4, OVERRIDES]);
        assert_eq!(b.reservation(), 10, "half of 100 over five budgets");
        let flood = b.slot(1);
        let mut total = 0;
        while b.admits(flood, total) {
            b.added(flood);
            total += 1;
        }
        assert_eq!(total, 10 + 50, "its reservation and the whole pool");
        for rule in [2, 3, 4, OVERRIDES] {
            let s = b.slot(rule);
            for _ in 0..10 {
                assert!(b.admits(s, total), "rule {rule} keeps its reservation");
                b.added(s);
                total += 1;
            }
            assert!(!b.admits(s, total), "but not more while the pool is taken");
        }
        assert_eq!(total, 100);
        b.removed(flood, 5);
        assert!(b.admits(b.slot(2), total - 5), "GC gave pool room back");
    }

    #[test]
    fn an_unchanged_rule_keeps_its_slot_and_count_across_a_reload() {
        let b = Budgets::new(1000);
        b.set_rules([7]);
        let s = b.slot(7);
        for _ in 0..600 {
            b.added(s);
        }
        b.set_rules([7, 8]);
        assert_eq!(b.slot(7), s);
        assert_eq!(b.live_of(7), 600);
        assert_ne!(b.slot(8), s);
        // Reservation 250 each now: 350 of rule 7's keys are in the pool of 500.
        let mut total = 600;
        let mut more = 0;
        while b.admits(s, total) {
            b.added(s);
            total += 1;
            more += 1;
        }
        assert_eq!(more, 150);
        assert!(b.admits(b.slot(8), total));
    }

    #[test]
    fn an_unknown_rule_has_no_reservation() {
        let b = Budgets::new(10);
        b.set_rules([1]);
        assert_eq!(b.slot(99), 0);
        for _ in 0..5 {
            assert!(b.admits(0, 0));
            b.added(0);
        }
        assert!(!b.admits(0, 5), "slot 0 lives off the pool");
    }
}
