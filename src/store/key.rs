//! Key ids: a bucket is named by a 128-bit hash of (domain, rule, descriptor values).
//!
//! A fixed-size id keeps every live key small and makes the id the same on every replica
//! (xxh3 with a fixed seed, and length-prefixed fields so `("ab","c")` and `("a","bc")` differ).
//! The rule's identity includes its limit, so a changed limit starts fresh buckets instead of
//! reinterpreting old counts.

use xxhash_rust::xxh3::Xxh3;

use crate::bucket::Limit;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId(pub u128);

impl KeyId {
    /// The shared overflow bucket a key falls into when its rule is over its key budget: one
    /// of `buckets` per rule and limit, so one rule's drained overflow buckets never deny
    /// another rule's keys, and unrelated limits never share a bucket.
    pub fn overflow_id(&self, limit: &Limit, rule: u64, buckets: u32) -> u128 {
        let mut h = KeyBuilder::new("\0overflow");
        h.u64(rule);
        h.u64(limit.capacity() as u64);
        h.u64(limit.per_unit() as u64);
        h.u64(limit.unit_ns());
        h.u64((self.0 as u64) % buckets.max(1) as u64);
        h.finish().0
    }
}

/// Builds a [`KeyId`] from its parts without allocating.
pub struct KeyBuilder(Xxh3);

impl KeyBuilder {
    pub fn new(domain: &str) -> Self {
        let mut b = KeyBuilder(Xxh3::new());
        b.str(domain);
        b
    }

    pub fn str(&mut self, s: &str) -> &mut Self {
        self.0.update(&(s.len() as u64).to_le_bytes());
        self.0.update(s.as_bytes());
        self
    }

    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.0.update(&v.to_le_bytes());
        self
    }

    pub fn finish(&self) -> KeyId {
        KeyId(self.0.digest128())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_boundaries_are_part_of_the_key() {
        let a = KeyBuilder::new("d").str("ab").str("c").finish();
        let b = KeyBuilder::new("d").str("a").str("bc").finish();
        assert_ne!(a, b);
    }

    #[test]
    fn the_same_parts_give_the_same_key() {
        let a = KeyBuilder::new("d").str("user").u64(7).finish();
        let b = KeyBuilder::new("d").str("user").u64(7).finish();
        assert_eq!(a, b);
    }
}
