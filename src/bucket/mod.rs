//! One token bucket whose state merges across replicas (a CRDT): "split GCRA".
//!
//! GCRA keeps one number per bucket, the theoretical arrival time (TAT): the bucket is full again
//! at TAT. Replicated as a single max-register, concurrent consumption on two nodes is lost, not
//! delayed (simulated: 3 nodes admitted 3.26x the limit). So TAT is split into parts that each
//! merge by `max`:
//!
//! ```text
//! TAT = B + T * sum(consumed per replica) - F
//! ```
//!
//! - `consumed` is a G-counter per replica: concurrent admissions add up instead of overwriting.
//! - `B` (refill floor) is raised when the bucket is full, to forget the overflow; this is GCRA's
//!   `max(TAT, t)` made mergeable.
//! - `F` (forgiveness) is raised when remote consumption that arrived late pushes the debt past `K`
//!   tokens, so a partition heal cannot lock a key out for longer than `K / r`.
//! - `gen` is the creation slot of the key: a key deleted by GC and created again gets a higher
//!   `gen`, and its new state replaces stale state wholesale instead of adding to an old base.
//!
//! Everything here is pure integer math on (state, time, request): no clock, no I/O, no panics.
//! Time is scaled by `R` (requests per unit) so that one token is exactly `unit_ns` scaled units
//! and no division is ever rounded: `t_s = t_ns * R`, `T_s = unit_ns`. With a year unit and
//! `R = 1e9` this stays below 2^127 by a wide margin; every operation saturates anyway.
//!
//! See `shared/design/replicated-bucket.md` for the derivation and the over-admission bounds.

mod fair;
mod mode;
mod refunds;
mod state;
mod usage;

pub use fair::FairShare;
pub use mode::{Ask, BurstGuard, Mode};
pub use refunds::Refund;
pub use state::{BucketState, Guard, Limit, Outcome, ReplicaId, Slot, MAX_PERIOD_NS};

/// Length of a `gen` slot: keys created within the same 30 s share a generation.
pub const GEN_PERIOD_NS: i64 = 30_000_000_000;

/// The generation of a key created at wall time `t_ns`.
pub fn generation_at(t_ns: i64) -> u32 {
    // Wall time before 1970 does not occur; clamp rather than wrap.
    let slot = t_ns.max(0) / GEN_PERIOD_NS;
    u32::try_from(slot).unwrap_or(u32::MAX)
}
