//! The hash map of the request path's lookups.
//!
//! Every request looks up its domain, each descriptor's key and value in the matcher, the
//! override metrics of its domain and the key budget of its rule: with std's SipHash those
//! hashes were about 900 of the limiter's instructions for a 2-descriptor request. foldhash is
//! several times cheaper on short keys and still seeded per map (`fast::RandomState`), so a
//! client cannot precompute colliding values; and these maps are filled from the config, not
//! from requests.

pub type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
