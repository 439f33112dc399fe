//! The state of one replicated bucket, its join, and the admit/read operations.

use smallvec::SmallVec;

use super::refunds::{Refund, Refunds};
use crate::unit::Unit;

/// Parameters of one bucket: capacity `C` tokens, refilled at `per_unit` tokens every period,
/// the period being `multiplier` units (`unit_multiplier`; 1 for a plain unit).
///
/// Kept to 12 bytes because every live key stores its limit next to its state (GC and metrics
/// must interpret a state without looking up a rule that a reload may have removed): the
/// multiplier is a `u16` and fits in what was padding after the one-byte unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Limit {
    capacity: u32,
    per_unit: u32,
    unit: Unit,
    multiplier: u16,
}

/// The longest period a limit may have: 100 years, so that the period in nanoseconds fits a
/// `u64` with room (a year is 3.15e16 ns).
pub const MAX_PERIOD_NS: u64 = 100 * 365 * 86_400 * 1_000_000_000;

impl Limit {
    /// `None` when the limit admits nothing (`per_unit == 0` or `capacity == 0`): such a rule has
    /// no bucket, it blocks every request.
    pub fn new(capacity: u32, per_unit: u32, unit: Unit) -> Option<Limit> {
        Limit::over(capacity, per_unit, unit, 1)
    }

    /// A limit whose period is `multiplier` units (`unit_multiplier`). `None` also when the
    /// multiplier is 0 or the period is longer than [`MAX_PERIOD_NS`].
    pub fn over(capacity: u32, per_unit: u32, unit: Unit, multiplier: u16) -> Option<Limit> {
        let period = unit.nanos().checked_mul(u64::from(multiplier))?;
        (capacity > 0 && per_unit > 0 && multiplier > 0 && period <= MAX_PERIOD_NS).then_some(
            Limit {
                capacity,
                per_unit,
                unit,
                multiplier,
            },
        )
    }

    /// Units in one period (`unit_multiplier`, 1 for a plain unit).
    pub fn multiplier(&self) -> u16 {
        self.multiplier
    }

    pub fn capacity(&self) -> u32 {
        self.capacity
    }

    pub fn per_unit(&self) -> u32 {
        self.per_unit
    }

    pub fn unit(&self) -> Unit {
        self.unit
    }

    /// Length of the period: the unit times the multiplier (bounded by [`MAX_PERIOD_NS`]).
    pub fn unit_ns(&self) -> u64 {
        self.unit.nanos() * u64::from(self.multiplier)
    }

    /// Tokens added per second (`r`).
    pub fn fill_rate_per_second(&self) -> f64 {
        self.per_unit as f64 * 1e9 / self.unit_ns() as f64
    }

    /// Wall nanoseconds to scaled time: exact, one token is `unit_ns` scaled units.
    ///
    /// An i64 times a u32 is below 2^95, so the product always fits an i128: a plain widening
    /// multiplication (one instruction), where a saturating i128 one would call a library
    /// routine on every decision for an overflow that cannot happen.
    pub(super) fn scaled(&self, t_ns: i64) -> i128 {
        i128::from(t_ns) * i128::from(self.per_unit)
    }

    /// Scaled duration of one token (`T_s`).
    pub(super) fn token(&self) -> i128 {
        self.unit_ns() as i128
    }

    /// Scaled duration of `n` tokens. `T_s` is at most [`MAX_PERIOD_NS`] (below 2^62) and `n`
    /// below 2^64, so the product is below 2^126: exact as a widening u64 multiplication.
    pub(super) fn tokens_span(&self, n: u64) -> i128 {
        (u128::from(self.unit_ns()) * u128::from(n)) as i128
    }

    /// Scaled duration back to nanoseconds, rounded up (a reset is never announced early).
    pub(super) fn unscale_ceil(&self, d: i128) -> i128 {
        let r = self.per_unit as i128;
        d.saturating_add(r - 1) / r
    }
}

/// A compact index that names a replica (node + incarnation) in this process. The mapping to the
/// replica's full identity lives outside the pure bucket code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct ReplicaId(pub u32);

/// One replica's G-counters for a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Slot {
    pub replica: ReplicaId,
    /// Tokens this replica admitted.
    pub consumed: u64,
    /// Tokens this replica was asked for, admitted or not: its demand, for fair shares.
    pub requested: u64,
}

/// What an admit or a read tells the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    pub allowed: bool,
    /// Whole tokens available after the decision, clamped to `0..=C`.
    pub remaining: u64,
    /// Nanoseconds until the bucket is full again.
    pub reset_ns: u64,
    /// When the bucket is full again, in wall nanoseconds (for per-rule aggregates).
    pub full_at_ns: i64,
}

/// What the burst guard knows beyond the state itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Guard {
    /// This node's own counts as of the last changes every live peer acknowledged.
    pub acked_consumed: u64,
    pub acked_requested: u64,
    /// Members of the cluster, this node included.
    pub members: u32,
    /// The ack round trip `A`: tokens refilled over it (`ceil(r A) + 1`) may always be in flight.
    pub round_trip_ns: u64,
}

impl Guard {
    /// `q_min = ceil(r * A) + 1`.
    pub fn min_window_tokens(&self, limit: &Limit) -> u64 {
        let num = limit.per_unit() as u128 * self.round_trip_ns as u128;
        let den = limit.unit_ns() as u128;
        (num.div_ceil(den) + 1).min(u64::MAX as u128) as u64
    }
}

/// An i128 stored with 8-byte alignment: a million live keys each hold two, and i128's 16-byte
/// alignment would pad every entry of the store's table by 16 bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(super) struct Wide([u64; 2]);

impl Wide {
    pub(super) fn get(self) -> i128 {
        ((self.0[1] as u128) << 64 | self.0[0] as u128) as i128
    }

    pub(super) fn of(v: i128) -> Wide {
        Wide([v as u128 as u64, ((v as u128) >> 64) as u64])
    }
}

/// Below this magnitude `B` and `F` take the bounded path of a charge. With the net tokens in
/// use (hits included) within an i64 and a token below 2^62 ns ([`MAX_PERIOD_NS`]), their
/// span is below 2^125, a scaled time (an i64 times a u32) below 2^95, and a span of the
/// capacity and debt cap (together within a u64) below 2^126: TAT and each step of a charge
/// stay below 2^127, so no i128 operation of it can saturate.
const BOUNDED_WIDE: u128 = 1 << 124;

/// What a charge on a state within [`BOUNDED_WIDE`] needs: the net tokens in use, and the
/// capacity plus the debt cap, in tokens.
#[derive(Debug, Clone, Copy)]
struct Bounded {
    net: i64,
    cap_and_debt: u64,
}

/// The mergeable state of one key. Bottom (`Default`) is a full bucket.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BucketState {
    gen: u32,
    base: Wide,
    forgiven: Wide,
    /// Sorted by replica; a key touched by one node holds one slot inline, without allocating.
    slots: SmallVec<[Slot; 1]>,
    /// Tokens given back (`is_negative_hits`), per replica; empty (one word) for most keys.
    refunds: Refunds,
}

impl BucketState {
    /// A fresh key created in generation `gen`.
    pub fn new(gen: u32) -> Self {
        BucketState {
            gen,
            ..Default::default()
        }
    }

    /// Rebuild a state received from a peer. Slots may come in any order and with duplicates;
    /// duplicates join by `max`, so a malformed but well-typed frame cannot corrupt the state.
    pub fn from_parts(
        gen: u32,
        base: i128,
        forgiven: i128,
        slots: impl IntoIterator<Item = Slot>,
    ) -> Self {
        let mut s = BucketState::new(gen);
        s.base = Wide::of(base);
        s.forgiven = Wide::of(forgiven);
        for slot in slots
            .into_iter()
            .filter(|s| s.consumed != 0 || s.requested != 0)
        {
            let mine = s.slot_mut(slot.replica);
            mine.consumed = mine.consumed.max(slot.consumed);
            mine.requested = mine.requested.max(slot.requested);
        }
        s
    }

    pub fn gen(&self) -> u32 {
        self.gen
    }

    pub fn base(&self) -> i128 {
        self.base.get()
    }

    pub fn forgiven(&self) -> i128 {
        self.forgiven.get()
    }

    pub fn slots(&self) -> &[Slot] {
        &self.slots
    }

    /// Add refund counts received from a peer (joined by `max`, like `from_parts`'s slots).
    pub fn with_refunds(mut self, refunds: impl IntoIterator<Item = Refund>) -> Self {
        for r in refunds {
            self.refunds.raise(r.replica, r.refunded);
        }
        self
    }

    /// Every replica's refund counter on this key.
    pub fn refunds(&self) -> impl Iterator<Item = Refund> + '_ {
        self.refunds.iter()
    }

    /// Tokens this replica gave back on this key.
    pub fn refunded_by(&self, who: ReplicaId) -> u64 {
        self.refunds.by(who)
    }

    pub(super) fn refunds_mut(&mut self) -> &mut Refunds {
        &mut self.refunds
    }

    pub(super) fn slot_for(&mut self, who: ReplicaId) -> &mut Slot {
        self.slot_mut(who)
    }

    /// Raise `B` to forget the overflow of a full bucket (GCRA's `max(TAT, t)`); returns TAT.
    pub(super) fn rebase_if_full(&mut self, limit: &Limit, t: i128) -> i128 {
        let span = self.span_in_use(limit);
        self.rebase_with(span, self.tat_from(span), t)
    }

    /// [`rebase_if_full`](Self::rebase_if_full) for a state whose tokens in use span `span`
    /// and whose TAT is `tat`: the counts are not read again.
    fn rebase_with(&mut self, span: i128, tat: i128, t: i128) -> i128 {
        if tat >= t {
            return tat;
        }
        self.base = Wide::of(self.base().saturating_add(t.saturating_sub(tat)));
        self.tat_from(span)
    }

    /// Raise `F` so that the debt is at most `debt_cap` tokens at scaled time `t`; returns TAT.
    pub(super) fn forgive_beyond(&mut self, limit: &Limit, t: i128, debt_cap: u64) -> i128 {
        let span = self.span_in_use(limit);
        self.forgive_with(limit, span, self.tat_from(span), t, debt_cap)
    }

    /// [`forgive_beyond`](Self::forgive_beyond) from a known `span` and `tat`.
    fn forgive_with(
        &mut self,
        limit: &Limit,
        span: i128,
        tat: i128,
        t: i128,
        debt_cap: u64,
    ) -> i128 {
        let ceiling =
            t.saturating_add(limit.tokens_span((limit.capacity as u64).saturating_add(debt_cap)));
        if tat <= ceiling {
            return tat;
        }
        self.forgiven = Wide::of(self.forgiven().saturating_add(tat.saturating_sub(ceiling)));
        self.tat_from(span)
    }

    /// Plain sums: a sum of fewer than 2^63 values below 2^64 is below 2^127, so it never
    /// overflows (and saturating adds would only cost a branch each).
    fn consumed_total(&self) -> i128 {
        match self.slots.as_slice() {
            // A key only one node has charged (most keys): no loop.
            [one] => i128::from(one.consumed),
            all => all.iter().map(|s| i128::from(s.consumed)).sum(),
        }
    }

    /// Tokens in use: consumed, net of refunds. Exact: each sum is of fewer than 2^63 values
    /// below 2^64, far from the i128 bounds (their difference too), so adding `d` to one slot
    /// adds exactly `d` here.
    fn net_consumed(&self) -> i128 {
        self.consumed_total() - self.refunds.total()
    }

    /// The scaled time `net` tokens stand for, `T_s * net`. A net that fits an i64 (every
    /// real one) gives a product below 2^62 * 2^63: a widening multiplication is exact and
    /// equals the saturating one, which stays for anything larger.
    fn span_of(limit: &Limit, net: i128) -> i128 {
        match i64::try_from(net) {
            Ok(n) => i128::from(limit.unit_ns() as i64) * i128::from(n),
            Err(_) => limit.token().saturating_mul(net),
        }
    }

    fn span_in_use(&self, limit: &Limit) -> i128 {
        Self::span_of(limit, self.net_consumed())
    }

    /// TAT from the span of the tokens in use: `B + span - F`.
    fn tat_from(&self, span: i128) -> i128 {
        self.base()
            .saturating_add(span)
            .saturating_sub(self.forgiven())
    }

    /// Theoretical arrival time, scaled: the bucket is full again at TAT.
    pub(super) fn tat(&self, limit: &Limit) -> i128 {
        self.tat_from(self.span_in_use(limit))
    }

    fn slot_mut(&mut self, replica: ReplicaId) -> &mut Slot {
        // A key only this node has charged (most keys): its one slot, without a search.
        if self.slots.len() == 1 && self.slots[0].replica == replica {
            return &mut self.slots[0];
        }
        let i = match self.slots.binary_search_by_key(&replica, |s| s.replica) {
            Ok(i) => i,
            Err(i) => {
                self.slots.insert(
                    i,
                    Slot {
                        replica,
                        ..Slot::default()
                    },
                );
                i
            }
        };
        &mut self.slots[i]
    }

    pub(super) fn outcome(&self, limit: &Limit, tat: i128, t: i128, allowed: bool) -> Outcome {
        let ahead = tat.saturating_sub(t).max(0);
        let (remaining, reset_ns) = Self::left_at(limit, ahead);
        let full_at = limit.unscale_ceil(tat.max(0));
        Outcome {
            allowed,
            remaining,
            reset_ns,
            full_at_ns: full_at.clamp(0, i64::MAX as i128) as i64,
        }
    }

    /// Whole tokens left and nanoseconds until full, for a bucket whose TAT is `ahead`
    /// (at least 0) scaled units after now.
    fn left_at(limit: &Limit, ahead: i128) -> (u64, u64) {
        let capacity = u64::from(limit.capacity);
        match u64::try_from(ahead) {
            // Within 2^64 of now (every bucket but those of years-long periods in debt): the
            // same rounded-up quotients in u64, one machine division each, and no clamp (a
            // quotient of a u64 fits one).
            Ok(a) => (
                capacity - a.div_ceil(limit.unit_ns()).min(capacity),
                a.div_ceil(u64::from(limit.per_unit)),
            ),
            Err(_) => {
                let used = ahead.saturating_add(limit.token() - 1) / limit.token();
                let remaining = (i128::from(capacity) - used).clamp(0, i128::from(capacity));
                let reset = limit.unscale_ceil(ahead).clamp(0, u64::MAX as i128);
                (remaining as u64, reset as u64)
            }
        }
    }

    /// Whether `n` tokens would be admitted at `now`, without changing anything. `n = 0` asks
    /// whether the bucket is within its limit at all (false only while in debt).
    pub fn check(&self, limit: &Limit, n: u64, now: i64) -> bool {
        let t = limit.scaled(now);
        match self.bounded_tat(limit) {
            // Exact (see `bounded_tat`): `max(TAT, t) + T_s n` and `t + T_s C` stay below
            // 2^127, so the plain sums are the saturating ones.
            Some(tat) => {
                tat.max(t) + limit.tokens_span(n) <= t + limit.tokens_span(limit.capacity as u64)
            }
            None => Self::fits(limit, self.tat(limit), t, n),
        }
    }

    /// TAT in plain i128 steps, for a state within [`BOUNDED_WIDE`] whose net tokens in use
    /// fit an i64 (every real one): `|B|, |F| < 2^124` and a span below 2^125 keep `|TAT|`
    /// below 2^126, so nothing saturates and it is [`tat`](Self::tat) exactly. The fit check
    /// runs on every charge; its saturating steps were a fifth of it.
    fn bounded_tat(&self, limit: &Limit) -> Option<i128> {
        let net = i64::try_from(self.net_consumed()).ok()?;
        let (base, forgiven) = (self.base(), self.forgiven());
        let small = |v: i128| v.unsigned_abs() < BOUNDED_WIDE;
        (small(base) && small(forgiven))
            .then(|| base + Self::span_of(limit, i128::from(net)) - forgiven)
    }

    /// Whether `n` tokens fit a bucket with this `tat` at scaled time `t`.
    fn fits(limit: &Limit, tat: i128, t: i128, n: u64) -> bool {
        tat.max(t).saturating_add(limit.tokens_span(n))
            <= t.saturating_add(limit.tokens_span(limit.capacity as u64))
    }

    /// Read the bucket at `now` without changing it (a query, `hits_addend = 0`).
    pub fn peek(&self, limit: &Limit, now: i64) -> Outcome {
        let t = limit.scaled(now);
        let tat = self.tat(limit);
        self.outcome(limit, tat, t, Self::fits(limit, tat, t, 0))
    }

    /// Whole tokens available at `now` (negative while in debt).
    pub fn tokens(&self, limit: &Limit, now: i64) -> i128 {
        let t = limit.scaled(now);
        let ahead = self.tat(limit).saturating_sub(t).max(0);
        let used = ahead.saturating_add(limit.token() - 1) / limit.token();
        limit.capacity as i128 - used
    }

    /// Nanoseconds until the bucket is full again.
    pub fn time_until_full(&self, limit: &Limit, now: i64) -> u64 {
        self.peek(limit, now).reset_ns
    }

    /// Admit `n` tokens for `who` at `now` if the bucket holds them; debt is capped at
    /// `debt_cap` tokens (forgiveness, `K`). Every step only inflates the state, so the result
    /// merges with whatever other replicas did meanwhile.
    pub fn admit(
        &mut self,
        limit: &Limit,
        who: ReplicaId,
        n: u64,
        now: i64,
        debt_cap: u64,
    ) -> Outcome {
        self.charge(limit, who, n, now, debt_cap, true)
    }

    /// Like [`admit`](Self::admit), but `permit = false` forces a refusal that still records the
    /// demand: a request that another descriptor (or the burst guard) rejected charges nothing.
    pub fn charge(
        &mut self,
        limit: &Limit,
        who: ReplicaId,
        n: u64,
        now: i64,
        debt_cap: u64,
        permit: bool,
    ) -> Outcome {
        match self.bounded(limit, n, now, debt_cap) {
            Some(b) => self.charge_bounded(limit, who, n, now, b, permit),
            None => self.charge_saturating(limit, who, n, now, debt_cap, permit),
        }
    }

    /// Whether a charge of `n` at `now` stays inside [`Bounded`]'s limits, where plain i128
    /// arithmetic gives what the saturating steps give: every real bucket does, so the
    /// saturating path only runs for states and times near the ends of the ranges.
    fn bounded(&self, limit: &Limit, n: u64, now: i64, debt_cap: u64) -> Option<Bounded> {
        let net = i64::try_from(self.net_consumed()).ok()?;
        net.checked_add_unsigned(n)?;
        let cap_and_debt = u64::from(limit.capacity).checked_add(debt_cap)?;
        let small = |v: i128| v.unsigned_abs() < BOUNDED_WIDE;
        (now >= 0 && small(self.base()) && small(self.forgiven()))
            .then_some(Bounded { net, cap_and_debt })
    }

    /// [`charge`](Self::charge) for a [`Bounded`] state: the same steps, with TAT kept as
    /// `ahead`, its distance past now. Nothing saturates (see [`BOUNDED_WIDE`]), so each step
    /// is the saturating one's exactly (the proptests in `tests.rs` pin the two paths equal).
    fn charge_bounded(
        &mut self,
        limit: &Limit,
        who: ReplicaId,
        n: u64,
        now: i64,
        b: Bounded,
        permit: bool,
    ) -> Outcome {
        let t = limit.scaled(now);
        let (base, forgiven) = (self.base(), self.forgiven());
        let tat = base + Self::span_of(limit, i128::from(b.net)) - forgiven;
        // 1. Full bucket: forget the overflow, TAT becomes now.
        if tat < t {
            self.base = Wide::of(base + (t - tat));
        }
        let mut ahead = (tat - t).max(0);
        // 2. Debt beyond K tokens is forgiven: TAT becomes the ceiling.
        let ceiling = limit.tokens_span(b.cap_and_debt);
        if ahead > ceiling {
            self.forgiven = Wide::of(forgiven + (ahead - ceiling));
            ahead = ceiling;
        }
        // 3. Admit iff the tokens are there (TAT is at least now: `max(TAT, t)` is TAT).
        let allowed =
            permit && ahead + limit.tokens_span(n) <= limit.tokens_span(limit.capacity as u64);
        if n > 0 {
            let slot = self.slot_mut(who);
            slot.requested = slot.requested.saturating_add(n);
            if allowed {
                let before = slot.consumed;
                slot.consumed = before.saturating_add(n);
                ahead += limit.tokens_span(slot.consumed - before);
            }
        }
        // TAT is `now * r + ahead`, at least 0: full again `ceil(ahead / r)` after now.
        let (remaining, reset_ns) = Self::left_at(limit, ahead);
        Outcome {
            allowed,
            remaining,
            reset_ns,
            full_at_ns: (i128::from(now) + i128::from(reset_ns)).min(i64::MAX as i128) as i64,
        }
    }

    /// [`charge`](Self::charge) in saturating steps, for any state and time.
    fn charge_saturating(
        &mut self,
        limit: &Limit,
        who: ReplicaId,
        n: u64,
        now: i64,
        debt_cap: u64,
        permit: bool,
    ) -> Outcome {
        let t = limit.scaled(now);
        // The counts are read once: the steps below change `B` and `F`, and TAT follows from
        // them and the span of the tokens in use.
        let mut net = self.net_consumed();
        let span = Self::span_of(limit, net);
        // 1. Full bucket: forget the overflow (GCRA's max(TAT, t)).
        let tat = self.rebase_with(span, self.tat_from(span), t);
        // 2. Debt beyond K tokens is forgiven, so late remote consumption cannot lock out a key
        //    for longer than K / r.
        let mut tat = self.forgive_with(limit, span, tat, t, debt_cap);
        // 3. Admit iff the tokens are there.
        let allowed = permit && Self::fits(limit, tat, t, n);
        if n > 0 {
            let slot = self.slot_mut(who);
            slot.requested = slot.requested.saturating_add(n);
            if allowed {
                let before = slot.consumed;
                slot.consumed = before.saturating_add(n);
                net += i128::from(slot.consumed - before);
                tat = self.tat_from(Self::span_of(limit, net));
            }
        }
        self.outcome(limit, tat, t, allowed)
    }

    /// Count `n` tokens asked of `who`, and admitted when `admitted`, without touching `B` or
    /// `F`. Fair-share mode decides on a local bucket and records here only what happened: the
    /// counts still replicate (so the cluster's total stays true after a heal), but nothing
    /// rebases the shared bucket on a partial view.
    pub fn record(&mut self, who: ReplicaId, n: u64, admitted: bool) {
        if n == 0 {
            return;
        }
        let slot = self.slot_mut(who);
        slot.requested = slot.requested.saturating_add(n);
        if admitted {
            slot.consumed = slot.consumed.saturating_add(n);
        }
    }

    /// Start the refill floor of a key this node just created, as a first charge on the shared
    /// bucket would (`B` up to `now` when the bucket reads full). Fair-share mode calls it for
    /// keys it creates: otherwise their counts sit on a floor of zero, the state reads as a
    /// bucket full since 1970, and GC deletes the key (and peers drop it) along with what was
    /// admitted on it. For a key that already has a floor this changes nothing.
    pub fn open_at(&mut self, limit: &Limit, now: i64) {
        let t = limit.scaled(now);
        let tat = self.tat(limit);
        if tat < t && self.base() == 0 {
            self.base = Wide::of(self.base().saturating_add(t.saturating_sub(tat)));
        }
    }

    /// Tokens this replica was asked for on this key.
    pub fn requested_by(&self, who: ReplicaId) -> u64 {
        self.slots
            .iter()
            .find(|s| s.replica == who)
            .map_or(0, |s| s.requested)
    }

    /// The burst guard (design section 4.3): may `who` admit `n` more tokens while its peers
    /// have acknowledged only `acked` of its own counts?
    ///
    /// A node's consumption that no peer has seen yet is what the others over-admit against,
    /// so it is kept below `q = max(q_min, w * (tokens_view + unacked))`, where `w` is the
    /// node's share of the demand the cluster knows about (`1 / members` for a key nobody has
    /// reported demand on yet: a cold synchronized burst splits the bucket instead of
    /// spending it `members` times). `q_min` keeps a steady stream at the fill rate flowing
    /// while acks are in flight. A node with nothing unacknowledged may always try one request
    /// on the bucket, so the bound per node is `max(q, one request)`.
    pub fn guard_allows(&self, limit: &Limit, who: ReplicaId, n: u64, now: i64, g: &Guard) -> bool {
        let mine = self.consumed_by(who);
        let unacked = mine.saturating_sub(g.acked_consumed) as i128;
        let view = self.tokens(limit, now);
        // Demand the peers have reported, and this node's demand they have acknowledged.
        let others: u128 = self
            .slots
            .iter()
            .filter(|s| s.replica != who)
            .map(|s| s.requested as u128)
            .sum();
        let own = g.acked_requested.min(self.requested_by(who)) as u128;
        let base = (view + unacked).max(0) as u128;
        let share = base
            .saturating_mul(own)
            .checked_div(own + others)
            .unwrap_or(base / g.members.max(1) as u128);
        let q = share.max(g.min_window_tokens(limit) as u128);
        // A query (0 hits) takes nothing, so there is nothing to hold back: the bucket answers.
        // With nothing in flight one request always goes to the bucket itself, however large:
        // otherwise a request for more than a share could never be admitted.
        n == 0 || unacked == 0 || (unacked as u128).saturating_add(n as u128) <= q
    }

    /// Merge another replica's view of the same key. Returns whether `self` changed.
    ///
    /// Higher `gen` wins wholesale (a recreated key replaces stale state); equal `gen` takes the
    /// max of every field. Commutative, associative, idempotent; bottom is the identity.
    pub fn join(&mut self, other: &BucketState) -> bool {
        if other.gen > self.gen {
            *self = other.clone();
            return true;
        }
        if other.gen < self.gen {
            return false;
        }
        let mut changed = false;
        if other.base() > self.base() {
            self.base = other.base;
            changed = true;
        }
        if other.forgiven() > self.forgiven() {
            self.forgiven = other.forgiven;
            changed = true;
        }
        changed |= self.refunds.join(&other.refunds);
        // States keep no all-zero slots (see `from_parts` and `charge`), so every slot inserted here
        // carries a count and the representation stays canonical: equal states compare equal.
        for theirs in &other.slots {
            let mine = self.slot_mut(theirs.replica);
            if theirs.consumed > mine.consumed {
                mine.consumed = theirs.consumed;
                changed = true;
            }
            if theirs.requested > mine.requested {
                mine.requested = theirs.requested;
                changed = true;
            }
        }
        changed
    }

    /// The lattice order: `self <= other` iff joining `self` into `other` changes nothing.
    pub fn le(&self, other: &BucketState) -> bool {
        if self.gen != other.gen {
            return self.gen < other.gen;
        }
        self.base() <= other.base()
            && self.forgiven() <= other.forgiven()
            && self.refunds.le(&other.refunds)
            && self.slots.iter().all(|s| {
                let o = other
                    .slots
                    .iter()
                    .find(|o| o.replica == s.replica)
                    .copied()
                    .unwrap_or(Slot {
                        replica: s.replica,
                        ..Slot::default()
                    });
                s.consumed <= o.consumed && s.requested <= o.requested
            })
    }

    /// True once the bucket has been full at least since `now - horizon_ns`: the key can be
    /// deleted, because its state is then equivalent to an absent key (a full bucket).
    pub fn is_idle(&self, limit: &Limit, now: i64, horizon_ns: i64) -> bool {
        self.tat(limit) <= limit.scaled(now.saturating_sub(horizon_ns))
    }

    /// When the bucket is full again, in wall nanoseconds.
    pub fn full_at_ns(&self, limit: &Limit) -> i64 {
        limit
            .unscale_ceil(self.tat(limit).max(0))
            .clamp(0, i64::MAX as i128) as i64
    }

    /// Tokens this replica admitted on this key.
    pub fn consumed_by(&self, who: ReplicaId) -> u64 {
        self.slots
            .iter()
            .find(|s| s.replica == who)
            .map_or(0, |s| s.consumed)
    }
}

#[cfg(test)]
mod tests;
