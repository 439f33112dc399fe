//! Per-rule statistics: counters updated on the request path, and the aggregates behind the
//! `token_bucket_*` gauges, computed at scrape time and written by `rule_series`.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;

use super::rule_series::{Family, RuleSeries, SeriesLabels};
use crate::bucket::Limit;

const WINDOW_SECONDS: usize = 60;
const SEC: i64 = 1_000_000_000;

/// One second of the rejection-rate window.
#[derive(Default)]
struct Second {
    at: AtomicI64,
    total: AtomicU64,
    rejected: AtomicU64,
}

/// A rule's counters. Shared by every rule with the same labels, and handed on to the next
/// config's rule of the same labels, so a reload that changes a rule's limit does not reset
/// its counters.
#[derive(Default)]
pub struct RuleCounters {
    hits: AtomicU64,
    over_limit: AtomicU64,
    near_limit: AtomicU64,
    within_limit: AtomicU64,
    shadow_mode: AtomicU64,
    /// New keys answered from a shared overflow bucket / refused, over the rule's key budget.
    keys_shared: AtomicU64,
    keys_denied: AtomicU64,
}

impl RuleCounters {
    fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }

    fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }
}

pub struct RuleStats {
    labels: SeriesLabels,
    limit: Option<Limit>,
    counters: Arc<RuleCounters>,
    /// Latest time any bucket of the rule will be full again: the most drained bucket's.
    full_at: AtomicI64,
    /// Since when some bucket of the rule has had no token, and until when it has none.
    empty_since: AtomicI64,
    empty_until: AtomicI64,
    window: [Second; WINDOW_SECONDS],
}

impl RuleStats {
    /// `limit` is `None` for rules without a bucket of their own (limit overrides, which vary
    /// per request): those get counters and a rejection rate, but no bucket gauges.
    pub fn new(domain: &str, limit_label: &str, limit: Option<Limit>) -> Self {
        Self::sharing(
            SeriesLabels::new(domain, limit_label),
            limit,
            Arc::default(),
        )
    }

    /// Stats that add to `counters` (those of an earlier rule with the same labels).
    pub fn sharing(
        labels: SeriesLabels,
        limit: Option<Limit>,
        counters: Arc<RuleCounters>,
    ) -> Self {
        RuleStats {
            labels,
            limit,
            counters,
            full_at: AtomicI64::new(0),
            empty_since: AtomicI64::new(0),
            empty_until: AtomicI64::new(0),
            window: std::array::from_fn(|_| Second::default()),
        }
    }

    pub fn labels(&self) -> &SeriesLabels {
        &self.labels
    }

    pub fn counters(&self) -> &Arc<RuleCounters> {
        &self.counters
    }

    /// Record one descriptor's decision. `near` means admitted with the bucket past the
    /// near-limit ratio of use.
    pub fn record(&self, now: i64, hits: u64, over: bool, near: bool, shadow: bool) {
        let c = &*self.counters;
        RuleCounters::add(&c.hits, hits);
        if over {
            RuleCounters::add(&c.over_limit, hits);
            if shadow {
                RuleCounters::add(&c.shadow_mode, hits);
            }
        } else {
            RuleCounters::add(&c.within_limit, hits);
            if near {
                RuleCounters::add(&c.near_limit, hits);
            }
        }
        let sec = now.div_euclid(SEC);
        let slot = &self.window[sec.rem_euclid(WINDOW_SECONDS as i64) as usize];
        let at = slot.at.load(Ordering::Relaxed);
        if at != sec
            && slot
                .at
                .compare_exchange(at, sec, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
        {
            slot.total.store(0, Ordering::Relaxed);
            slot.rejected.store(0, Ordering::Relaxed);
        }
        slot.total.fetch_add(1, Ordering::Relaxed);
        if over {
            slot.rejected.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A new key of this rule found the rule over its key budget: `shared` when it was
    /// answered from an overflow bucket, else refused.
    pub fn over_budget(&self, shared: bool) {
        let c = &*self.counters;
        RuleCounters::add(
            if shared {
                &c.keys_shared
            } else {
                &c.keys_denied
            },
            1,
        );
    }

    /// Record a bucket's state after a decision: when it is full again, and whether it is out
    /// of tokens now.
    pub fn observe_bucket(&self, now: i64, full_at: i64, remaining: u64) {
        self.full_at.fetch_max(full_at, Ordering::Relaxed);
        if remaining > 0 {
            return;
        }
        let Some(limit) = self.limit else { return };
        // The bucket gets a token back once it is within C - 1 tokens of full.
        let token_ns = limit.unit_ns() as f64 / limit.per_unit() as f64;
        let token_at = full_at - ((limit.capacity() as f64 - 1.0) * token_ns) as i64;
        let until = self.empty_until.load(Ordering::Relaxed);
        if now >= until {
            // No bucket of this rule was empty just before: a new empty period starts.
            self.empty_since.store(now, Ordering::Relaxed);
        }
        self.empty_until.fetch_max(token_at, Ordering::Relaxed);
    }

    /// Share of decisions rejected over the last 60 s.
    pub fn rejection_rate(&self, now: i64) -> f64 {
        let sec = now.div_euclid(SEC);
        let (mut total, mut rejected) = (0u64, 0u64);
        for s in &self.window {
            let at = s.at.load(Ordering::Relaxed);
            if at > sec - WINDOW_SECONDS as i64 && at <= sec {
                total += s.total.load(Ordering::Relaxed);
                rejected += s.rejected.load(Ordering::Relaxed);
            }
        }
        if total == 0 {
            0.0
        } else {
            rejected as f64 / total as f64
        }
    }

    /// Tokens in use in the most drained bucket at `now`.
    pub fn current_usage(&self, now: i64) -> f64 {
        let Some(limit) = self.limit else { return 0.0 };
        let ahead = (self.full_at.load(Ordering::Relaxed) - now).max(0) as f64;
        let token_ns = limit.unit_ns() as f64 / limit.per_unit() as f64;
        (ahead / token_ns).ceil().min(limit.capacity() as f64)
    }

    /// Seconds the most drained bucket has been without a token at `now`.
    pub fn refill_delay(&self, now: i64) -> f64 {
        if now >= self.empty_until.load(Ordering::Relaxed) {
            return 0.0;
        }
        (now - self.empty_since.load(Ordering::Relaxed)).max(0) as f64 / 1e9
    }

    /// Write the rule's series as of `now` (scrape time), with `live_keys` its keys with a
    /// bucket (the store counts those). Nothing when another rule with the same labels was
    /// written already: it shares these counters.
    pub fn write(&self, now: i64, live_keys: usize, out: &mut RuleSeries) {
        let l = &self.labels;
        if !out.claim(l) {
            return;
        }
        let c = &*self.counters;
        out.counter(Family::Hits, l, RuleCounters::get(&c.hits));
        out.counter(Family::OverLimit, l, RuleCounters::get(&c.over_limit));
        out.counter(Family::NearLimit, l, RuleCounters::get(&c.near_limit));
        out.counter(Family::WithinLimit, l, RuleCounters::get(&c.within_limit));
        out.counter(Family::ShadowMode, l, RuleCounters::get(&c.shadow_mode));
        let (shared, denied) = (
            RuleCounters::get(&c.keys_shared),
            RuleCounters::get(&c.keys_denied),
        );
        out.counter_with(Family::KeysOverBudget, l, ("action", "shared"), shared);
        out.counter_with(Family::KeysOverBudget, l, ("action", "denied"), denied);
        out.gauge(Family::RejectionRate, l, self.rejection_rate(now));
        out.gauge(Family::LiveKeys, l, live_keys as f64);
        if let Some(limit) = self.limit {
            out.gauge(Family::Capacity, l, limit.capacity() as f64);
            out.gauge(Family::FillRate, l, limit.fill_rate_per_second());
            out.gauge(Family::Usage, l, self.current_usage(now));
            out.gauge(Family::RefillDelay, l, self.refill_delay(now));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bucket::BucketState;
    use crate::bucket::ReplicaId;
    use crate::unit::Unit;

    const T0: i64 = 1_700_000_000_000_000_000;

    #[test]
    fn thirty_requests_on_ten_per_minute_reads_true_gauges() {
        let l = Limit::new(10, 10, Unit::Minute).expect("valid");
        let stats = RuleStats::new("d", "user", Some(l));
        let mut bucket = BucketState::new(0);
        let mut t = T0;
        for _ in 0..30 {
            let o = bucket.admit(&l, ReplicaId(0), 1, t, 10);
            stats.record(t, 1, !o.allowed, false, false);
            stats.observe_bucket(t, o.full_at_ns, o.remaining);
            t += 10_000_000; // 10 ms apart
        }
        let now = t;
        assert!((stats.rejection_rate(now) - 20.0 / 30.0).abs() < 1e-9);
        assert_eq!(stats.current_usage(now), 10.0);
        // Empty since the 10th request (at T0 + 90 ms).
        let delay = stats.refill_delay(now);
        assert!(
            (delay - (now - (T0 + 90_000_000)) as f64 / 1e9).abs() < 1e-9,
            "{delay}"
        );
        // A token comes back 6 s after the 10th request: then the delay is over.
        assert_eq!(stats.refill_delay(T0 + 90_000_000 + 6_000_000_000), 0.0);
        let mut series = RuleSeries::default();
        stats.write(now, 0, &mut series);
        let mut text = String::new();
        series.write_to(&mut text);
        assert!(
            text.contains("token_bucket_capacity{domain=\"d\",limit=\"user\"} 10\n"),
            "{text}"
        );
        assert!(
            text.contains("tollgate_over_limit_total{domain=\"d\",limit=\"user\"} 20\n"),
            "{text}"
        );
    }

    #[test]
    fn rejection_rate_forgets_decisions_older_than_a_minute() {
        let stats = RuleStats::new("d", "r", None);
        stats.record(T0, 1, true, false, false);
        assert_eq!(stats.rejection_rate(T0), 1.0);
        assert_eq!(stats.rejection_rate(T0 + 61 * SEC), 0.0);
        stats.record(T0 + 61 * SEC, 1, false, false, false);
        assert_eq!(stats.rejection_rate(T0 + 61 * SEC), 0.0);
    }

    #[test]
    fn usage_of_an_idle_rule_is_zero() {
        let l = Limit::new(5, 5, Unit::Second).expect("valid");
        let stats = RuleStats::new("d", "r", Some(l));
        assert_eq!(stats.current_usage(T0), 0.0);
        assert_eq!(stats.refill_delay(T0), 0.0);
    }

    #[test]
    fn rules_sharing_labels_share_counters_and_are_written_once() {
        let first = RuleStats::new("d", "r", None);
        let second = RuleStats::sharing(first.labels().clone(), None, first.counters().clone());
        first.record(T0, 2, false, false, false);
        second.record(T0, 3, false, false, false);
        let mut series = RuleSeries::default();
        first.write(T0, 0, &mut series);
        second.write(T0, 0, &mut series);
        let mut text = String::new();
        series.write_to(&mut text);
        assert_eq!(text.matches("tollgate_hits_total{").count(), 1, "{text}");
        assert!(
            text.contains("tollgate_hits_total{domain=\"d\",limit=\"r\"} 5\n"),
            "{text}"
        );
    }
}
