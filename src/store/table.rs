//! One shard's live keys: an open-addressing hash table that grows by a quarter, not by doubling.
//!
//! Why not `std`'s `HashMap`: its table is a power of two of (key, entry) slots, filled to at
//! most 7/8 and then doubled, so right after a doubling every 104-byte slot is paid for about
//! twice. With 256 equal shards every shard doubles at the same key count: 220 heap bytes per key
//! at 1M keys, against ~120 just before (BENCHMARKS.md figure 4). Here a table of any size grows
//! to 5/4 of itself when it is 7/8 full, so it is always 70-88 % full: 113 bytes per bucket (a
//! slot and its tag byte) cost 129-161 bytes per key at any count.
//!
//! Why the entries stay in the table and not behind an index (a small hash table of slot numbers
//! in front of chunks of entries, which would never move): a lookup of a cold key would then read
//! the index and then the entry, two misses where the table reads its tag bytes (about a
//! megabyte per million keys, mostly cached) and the entry; deciding across 1M keys was ~20 %
//! slower that way (BENCHMARKS.md figure 4). The price here is moving entries more often as the
//! table grows (~4 moves per entry on average, against ~1 when doubling), paid only when new
//! keys arrive.
//!
//! Layout: a tag byte per bucket (0: empty, else 8 bits of the key's hash) in one array, the
//! slots in another, so probing reads bytes and touches a slot only on a tag match. The bucket
//! of a hash is `hash * buckets >> 64` (any table size, no power of two); linear probing, and
//! backward-shift deletion, so no tombstones pile up between growths.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// Key ids are already uniform hashes: use their low bits as the hash, no rehashing.
#[derive(Default)]
pub(super) struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 << 8) | b as u64;
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// A key id as the tables store it: two words, 8-byte aligned (a `u128` key would align every
/// entry to 16 bytes and pad it by 8).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Packed([u64; 2]);

impl Packed {
    pub(super) fn of(id: u128) -> Packed {
        Packed([id as u64, (id >> 64) as u64])
    }

    pub(super) fn id(self) -> u128 {
        (self.0[1] as u128) << 64 | self.0[0] as u128
    }

    /// The table hash: the low word (the high word picks the shard).
    fn hash(self) -> u64 {
        self.0[0]
    }
}

impl std::hash::Hash for Packed {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(Packed::hash(*self));
    }
}

/// A hash map keyed by key id, for the small side tables next to a [`Table`].
pub(super) type Side<T> = HashMap<Packed, T, BuildHasherDefault<IdHasher>>;

/// A value with its key, as a bucket stores it.
pub(super) struct Slot<T> {
    key: Packed,
    value: T,
}

/// A table never has fewer buckets than this once it has any.
const MIN_BUCKETS: usize = 8;

const EMPTY: u8 = 0;

/// The tag of a hash: its low byte, never 0. The bucket comes from its high bits.
fn tag(hash: u64) -> u8 {
    (hash as u8).max(1)
}

/// Where a value sits in its table: valid until the next insertion or removal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Pos(usize);

pub(super) struct Table<T> {
    tags: Box<[u8]>,
    /// `Some` exactly where the tag is not `EMPTY`. Option costs no byte here: an `Entry` has a
    /// niche (pinned by the store's layout test).
    slots: Box<[Option<Slot<T>>]>,
    len: usize,
}

impl<T> Default for Table<T> {
    fn default() -> Self {
        Table {
            tags: Box::default(),
            slots: Box::default(),
            len: 0,
        }
    }
}

impl<T> Table<T> {
    fn buckets(&self) -> usize {
        self.tags.len()
    }

    /// The first bucket a hash probes.
    fn home(&self, hash: u64) -> usize {
        ((hash as u128 * self.buckets() as u128) >> 64) as usize
    }

    fn next(&self, i: usize) -> usize {
        if i + 1 == self.buckets() {
            0
        } else {
            i + 1
        }
    }

    pub(super) fn find(&self, id: u128) -> Option<Pos> {
        if self.len == 0 {
            return None;
        }
        let key = Packed::of(id);
        let t = tag(key.hash());
        let mut i = self.home(key.hash());
        loop {
            let here = self.tags[i];
            if here == EMPTY {
                return None;
            }
            if here == t && self.slots[i].as_ref().is_some_and(|s| s.key == key) {
                return Some(Pos(i));
            }
            i = self.next(i);
        }
    }

    pub(super) fn contains(&self, id: u128) -> bool {
        self.find(id).is_some()
    }

    pub(super) fn get(&self, id: u128) -> Option<&T> {
        self.find(id).map(|p| self.at(p))
    }

    pub(super) fn get_mut(&mut self, id: u128) -> Option<&mut T> {
        self.find(id).map(|p| self.at_mut(p))
    }

    pub(super) fn at(&self, pos: Pos) -> &T {
        &self.slots[pos.0]
            .as_ref()
            .expect("a position holds a value")
            .value
    }

    pub(super) fn at_mut(&mut self, pos: Pos) -> &mut T {
        &mut self.slots[pos.0]
            .as_mut()
            .expect("a position holds a value")
            .value
    }

    /// Add a key that is not in the table (the caller has just looked).
    pub(super) fn insert(&mut self, id: u128, value: T) -> Pos {
        debug_assert!(!self.contains(id), "inserted twice");
        if (self.len + 1) * 8 > self.buckets() * 7 {
            self.resize((self.buckets() + self.buckets() / 4).max(MIN_BUCKETS));
        }
        self.len += 1;
        self.place(Slot {
            key: Packed::of(id),
            value,
        })
    }

    /// Put a slot in the first empty bucket from its home.
    fn place(&mut self, slot: Slot<T>) -> Pos {
        let hash = slot.key.hash();
        let mut i = self.home(hash);
        while self.tags[i] != EMPTY {
            i = self.next(i);
        }
        self.tags[i] = tag(hash);
        self.slots[i] = Some(slot);
        Pos(i)
    }

    fn resize(&mut self, buckets: usize) {
        let slots = std::mem::replace(&mut self.slots, (0..buckets).map(|_| None).collect());
        self.tags = vec![EMPTY; buckets].into_boxed_slice();
        for slot in slots.into_vec().into_iter().flatten() {
            self.place(slot);
        }
    }

    /// Empty bucket `i`, moving back the slots after it that probed past it, so every slot stays
    /// reachable from its home without tombstones.
    fn remove(&mut self, i: usize) {
        let n = self.buckets();
        let dist = |from: usize, to: usize| if to >= from { to - from } else { to + n - from };
        self.len -= 1;
        let mut hole = i;
        let mut next = i;
        loop {
            next = self.next(next);
            if self.tags[next] == EMPTY {
                break;
            }
            let home = match &self.slots[next] {
                Some(s) => self.home(s.key.hash()),
                None => break,
            };
            // The hole is on this slot's probe path (home ..= next): it may move into it.
            if dist(home, next) >= dist(hole, next) {
                self.tags[hole] = self.tags[next];
                self.slots[hole] = self.slots[next].take();
                hole = next;
            }
        }
        self.tags[hole] = EMPTY;
        self.slots[hole] = None;
    }

    /// Keep the values `keep` says yes to, each seen once; returns how many were removed.
    pub(super) fn retain(&mut self, mut keep: impl FnMut(u128, &T) -> bool) -> usize {
        let n = self.buckets();
        // Start just after an empty bucket: no run of full buckets wraps around the start, so a
        // removal only moves back slots not yet seen.
        let Some(empty) = self.tags.iter().position(|&t| t == EMPTY) else {
            return 0;
        };
        let mut removed = 0;
        for step in 1..=n {
            let i = (empty + step) % n;
            while self.slots[i]
                .as_ref()
                .is_some_and(|s| !keep(s.key.id(), &s.value))
            {
                self.remove(i);
                removed += 1;
            }
        }
        removed
    }

    /// Give memory back after many removals (the table is a quarter full or less).
    pub(super) fn shrink(&mut self) {
        if self.buckets() > 4 * self.len.max(MIN_BUCKETS) {
            let buckets = match self.len {
                0 => 0,
                n => (n * 4 / 3).max(MIN_BUCKETS),
            };
            self.resize(buckets);
        }
    }

    /// Every key and value, in bucket order.
    pub(super) fn iter(&self) -> impl Iterator<Item = (u128, &T)> {
        self.slots.iter().flatten().map(|s| (s.key.id(), &s.value))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn id(i: u32) -> u128 {
        // Spread like real key ids.
        (i as u128 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835)
    }

    fn filled(n: u32) -> Table<u32> {
        let mut t = Table::default();
        for i in 0..n {
            t.insert(id(i), i);
        }
        t
    }

    /// Every value is found by its key, tags and slots agree, and the count is right.
    fn assert_consistent(t: &Table<u32>) {
        for (tag, slot) in t.tags.iter().zip(t.slots.iter()) {
            assert_eq!(*tag == EMPTY, slot.is_none());
        }
        assert_eq!(t.iter().count(), t.len);
        for (k, &v) in t.iter() {
            assert_eq!(k, id(v));
            assert_eq!(t.get(k), Some(&v));
        }
    }

    #[test]
    fn a_key_id_survives_packing() {
        let k = 0x0123_4567_89ab_cdef_fedc_ba98_7654_3210_u128;
        assert_eq!(Packed::of(k).id(), k);
    }

    #[test]
    fn inserted_keys_are_found_and_absent_ones_are_not() {
        let t = filled(1_000);
        assert_consistent(&t);
        assert_eq!(t.get(id(1_000)), None);
        assert!(!t.contains(id(5_000)));
        assert!(!Table::<u32>::default().contains(id(0)));
    }

    #[test]
    fn keys_with_the_same_hash_are_told_apart_by_the_whole_id() {
        let mut t = Table::default();
        let (a, b) = (7u128, 7u128 | 1 << 70);
        t.insert(a, 1);
        t.insert(b, 2);
        assert_eq!((t.get(a), t.get(b)), (Some(&1), Some(&2)));
        assert_eq!(t.retain(|_, &v| v == 2), 1);
        assert_eq!((t.get(a), t.get(b)), (None, Some(&2)));
    }

    #[test]
    fn the_table_is_always_between_70_and_88_percent_full_once_grown() {
        let mut t = Table::default();
        for i in 0..100_000 {
            t.insert(id(i), i);
            let load = t.len as f64 / t.buckets() as f64;
            assert!(load <= 0.875, "{i}: {load}");
            if i >= 1_000 {
                assert!(load >= 0.69, "{i}: {load}");
            }
        }
    }

    #[test]
    fn removing_everything_gives_the_memory_back() {
        let mut t = filled(1_000);
        assert_eq!(t.retain(|_, _| false), 1_000);
        assert_eq!(t.len, 0);
        t.shrink();
        assert_eq!(t.buckets(), 0);
        // And the table works again after.
        t.insert(id(7), 7);
        assert_consistent(&t);
    }

    #[test]
    fn removing_some_keeps_the_others_reachable_and_shrinks_when_sparse() {
        let mut t = filled(10_000);
        assert_eq!(t.retain(|_, v| v % 10 == 0), 9_000);
        assert_consistent(&t);
        for i in 0..10_000 {
            assert_eq!(t.get(id(i)).is_some(), i % 10 == 0, "{i}");
        }
        t.shrink();
        assert!(t.buckets() < 2_000, "{}", t.buckets());
        assert_consistent(&t);
    }

    #[test]
    fn a_position_reads_and_writes_its_value() {
        let mut t = filled(10);
        let p = t.find(id(3)).expect("present");
        assert_eq!(*t.at(p), 3);
        *t.at_mut(p) = 33;
        assert_eq!(t.get(id(3)), Some(&33));
    }

    proptest! {
        /// Inserts and removals in any order, on keys that crowd a few homes (so runs of full
        /// buckets wrap around the end and removals shift slots back), agree with a set.
        #[test]
        fn the_table_behaves_like_a_map(
            ops in prop::collection::vec((any::<bool>(), 0u32..300, 0u32..4), 1..600),
        ) {
            let mut t = Table::default();
            let mut model = std::collections::HashSet::new();
            // Seven hashes, near the top and the bottom of the range: homes at both ends.
            let key = |k: u32| {
                let hash = if k.is_multiple_of(2) { u64::MAX - (k % 7) as u64 } else { (k % 7) as u64 };
                ((k as u128) << 64) | hash as u128
            };
            for (add, k, shrink) in ops {
                if add {
                    if model.insert(k) {
                        t.insert(key(k), k);
                    }
                } else {
                    let mut seen = 0;
                    let n = t.retain(|_, &v| {
                        seen += 1;
                        v != k
                    });
                    prop_assert_eq!(seen, model.len(), "each value seen once");
                    prop_assert_eq!(n, usize::from(model.remove(&k)));
                }
                if shrink == 0 {
                    t.shrink();
                }
                prop_assert_eq!(t.len, model.len());
            }
            for k in 0..300 {
                prop_assert_eq!(t.get(key(k)).copied(), model.contains(&k).then_some(k));
            }
            prop_assert_eq!(t.iter().count(), t.len);
        }
    }
}
