//! Key ids: a bucket is named by a 128-bit hash of (domain, rule, descriptor values).
//!
//! A fixed-size id keeps every live key small and makes the id the same on every replica
//! (xxh3 with a fixed seed, and length-prefixed fields so `("ab","c")` and `("a","bc")` differ).
//! The rule's identity includes its limit, so a changed limit starts fresh buckets instead of
//! reinterpreting old counts.

use xxhash_rust::xxh3::xxh3_128;

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

/// Builds a [`KeyId`] from its parts: the length-prefixed fields are laid end to end and
/// hashed once with one-shot xxh3-128 (seed 0, the default secret).
///
/// Why not xxh3's streaming hasher: it is defined to give the same digest as the one-shot
/// function over the same bytes (the test below holds it to that, so ids stay what they were
/// and nodes of different versions agree), but its state is over half a kilobyte that every
/// key derivation set up and moved, about a tenth of a decision's work. The fields of a key
/// are a few dozen bytes: they go in an inline buffer, and to the heap only past it.
pub struct KeyBuilder {
    inline: [u8; INLINE],
    len: usize,
    /// Every byte so far, once they no longer fit `inline` (empty until then).
    spilled: Vec<u8>,
}

/// Bytes of key fields kept on the stack: a domain, a rule id and a few short entries.
const INLINE: usize = 160;

impl KeyBuilder {
    #[inline]
    pub fn new(domain: &str) -> Self {
        let mut b = KeyBuilder::empty();
        b.str(domain);
        b
    }

    /// A builder with no fields yet; the domain is the caller's first `str`. The request path
    /// starts from this: a builder returned after fields went in is copied out of `new` (184
    /// bytes, twice a request), one built empty is made where the caller keeps it.
    #[inline]
    pub fn empty() -> Self {
        KeyBuilder {
            inline: [0; INLINE],
            len: 0,
            spilled: Vec::new(),
        }
    }

    #[inline]
    pub fn str(&mut self, s: &str) -> &mut Self {
        self.put(&(s.len() as u64).to_le_bytes());
        self.put(s.as_bytes());
        self
    }

    #[inline]
    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.put(&v.to_le_bytes());
        self
    }

    #[inline]
    fn put(&mut self, bytes: &[u8]) {
        let end = self.len + bytes.len();
        match self.inline.get_mut(self.len..end) {
            Some(to) => to.copy_from_slice(bytes),
            None => self.spill(bytes),
        }
        self.len = end;
    }

    #[cold]
    fn spill(&mut self, bytes: &[u8]) {
        if self.spilled.is_empty() {
            self.spilled.extend_from_slice(&self.inline[..self.len]);
        }
        self.spilled.extend_from_slice(bytes);
    }

    pub fn finish(&self) -> KeyId {
        let bytes = match self.inline.get(..self.len) {
            Some(b) => b,
            None => &self.spilled,
        };
        KeyId(xxh3_128(bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn an_empty_builder_given_the_domain_first_names_the_same_key_as_new() {
        let mut k = KeyBuilder::empty();
        k.str("d").str("user").u64(7);
        assert_eq!(k.finish(), KeyBuilder::new("d").str("user").u64(7).finish());
    }

    #[test]
    fn field_boundaries_are_part_of_the_key() {
        let a = KeyBuilder::new("d").str("ab").str("c").finish();
        let b = KeyBuilder::new("d").str("a").str("bc").finish();
        assert_ne!(a, b);
    }

    /// The streaming hasher the ids were first computed with: an id must never change, or a
    /// node of this version and one of an older version would name one bucket two ways.
    fn streaming(domain: &str, fields: &[Field]) -> KeyId {
        let mut h = xxhash_rust::xxh3::Xxh3::new();
        let prefixed = |h: &mut xxhash_rust::xxh3::Xxh3, s: &[u8]| {
            h.update(&(s.len() as u64).to_le_bytes());
            h.update(s);
        };
        prefixed(&mut h, domain.as_bytes());
        for f in fields {
            match f {
                Field::Str(s) => prefixed(&mut h, s.as_bytes()),
                Field::U64(v) => h.update(&v.to_le_bytes()),
            }
        }
        KeyId(h.digest128())
    }

    #[derive(Debug, Clone)]
    enum Field {
        Str(String),
        U64(u64),
    }

    fn field() -> impl Strategy<Value = Field> {
        prop_oneof![
            // Short values (the inline buffer), and long ones past it and past xxh3's own
            // size classes (16, 128, 240 bytes and its 1 KiB blocks).
            "[a-z0-9/._-]{0,24}".prop_map(Field::Str),
            ".{0,600}".prop_map(Field::Str),
            any::<u64>().prop_map(Field::U64),
        ]
    }

    proptest! {
        #[test]
        fn a_key_is_the_streaming_xxh3_digest_of_its_fields(
            domain in ".{0,40}",
            fields in prop::collection::vec(field(), 0..12),
        ) {
            let mut k = KeyBuilder::new(&domain);
            for f in &fields {
                match f {
                    Field::Str(s) => k.str(s),
                    Field::U64(v) => k.u64(*v),
                };
            }
            prop_assert_eq!(k.finish(), streaming(&domain, &fields));
        }
    }

    #[test]
    fn the_same_parts_give_the_same_key() {
        let a = KeyBuilder::new("d").str("user").u64(7).finish();
        let b = KeyBuilder::new("d").str("user").u64(7).finish();
        assert_eq!(a, b);
    }
}
