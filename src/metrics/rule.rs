//! Per-rule statistics: counters updated on the request path, and the aggregates behind the
//! `token_bucket_*` gauges, computed at scrape time.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use metrics::{Counter, Gauge, Label};

use super::Metrics;
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

pub struct RuleStats {
    limit: Option<Limit>,
    hits: Counter,
    over_limit: Counter,
    near_limit: Counter,
    within_limit: Counter,
    shadow_mode: Counter,
    capacity: Gauge,
    fill_rate: Gauge,
    usage: Gauge,
    refill_delay: Gauge,
    rejection_rate: Gauge,
    /// New keys answered from a shared overflow bucket / refused, over the rule's key budget.
    keys_shared: Counter,
    keys_denied: Counter,
    live_keys: Gauge,
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
    pub fn new(metrics: &Metrics, domain: &str, limit_label: &str, limit: Option<Limit>) -> Self {
        let labels = || {
            vec![
                Label::new("domain", domain.to_string()),
                Label::new("limit", limit_label.to_string()),
            ]
        };
        let stats = RuleStats {
            limit,
            hits: metrics.counter("tollgate_hits_total", labels()),
            over_limit: metrics.counter("tollgate_over_limit_total", labels()),
            near_limit: metrics.counter("tollgate_near_limit_total", labels()),
            within_limit: metrics.counter("tollgate_within_limit_total", labels()),
            shadow_mode: metrics.counter("tollgate_shadow_mode_total", labels()),
            capacity: metrics.gauge("token_bucket_capacity", labels()),
            fill_rate: metrics.gauge("token_bucket_fill_rate", labels()),
            usage: metrics.gauge("token_bucket_current_usage", labels()),
            refill_delay: metrics.gauge("token_bucket_refill_delay", labels()),
            rejection_rate: metrics.gauge("token_bucket_rejection_rate", labels()),
            keys_shared: metrics.counter(
                "tollgate_rule_keys_over_budget_total",
                with(labels(), "shared"),
            ),
            keys_denied: metrics.counter(
                "tollgate_rule_keys_over_budget_total",
                with(labels(), "denied"),
            ),
            live_keys: metrics.gauge("tollgate_rule_live_keys", labels()),
            full_at: AtomicI64::new(0),
            empty_since: AtomicI64::new(0),
            empty_until: AtomicI64::new(0),
            window: std::array::from_fn(|_| Second::default()),
        };
        if let Some(l) = limit {
            stats.capacity.set(l.capacity() as f64);
            stats.fill_rate.set(l.fill_rate_per_second());
        }
        stats
    }

    /// Record one descriptor's decision. `near` means admitted with the bucket past the
    /// near-limit ratio of use.
    pub fn record(&self, now: i64, hits: u64, over: bool, near: bool, shadow: bool) {
        self.hits.increment(hits);
        if over {
            self.over_limit.increment(hits);
            if shadow {
                self.shadow_mode.increment(hits);
            }
        } else {
            self.within_limit.increment(hits);
            if near {
                self.near_limit.increment(hits);
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
        if shared {
            self.keys_shared.increment(1);
        } else {
            self.keys_denied.increment(1);
        }
    }

    /// The rule's live keys (set at scrape time).
    pub fn set_live_keys(&self, n: usize) {
        self.live_keys.set(n as f64);
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

    /// Bring the gauges up to date (called at scrape time).
    pub fn refresh(&self, now: i64) {
        self.rejection_rate.set(self.rejection_rate(now));
        if self.limit.is_some() {
            self.usage.set(self.current_usage(now));
            self.refill_delay.set(self.refill_delay(now));
        }
    }
}

fn with(mut labels: Vec<Label>, action: &'static str) -> Vec<Label> {
    labels.push(Label::new("action", action));
    labels
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
        let m = Metrics::new();
        let l = Limit::new(10, 10, Unit::Minute).expect("valid");
        let stats = RuleStats::new(&m, "d", "user", Some(l));
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
        let text = m.render();
        assert!(
            text.contains("token_bucket_capacity{domain=\"d\",limit=\"user\"} 10"),
            "{text}"
        );
    }

    #[test]
    fn rejection_rate_forgets_decisions_older_than_a_minute() {
        let m = Metrics::new();
        let stats = RuleStats::new(&m, "d", "r", None);
        stats.record(T0, 1, true, false, false);
        assert_eq!(stats.rejection_rate(T0), 1.0);
        assert_eq!(stats.rejection_rate(T0 + 61 * SEC), 0.0);
        stats.record(T0 + 61 * SEC, 1, false, false, false);
        assert_eq!(stats.rejection_rate(T0 + 61 * SEC), 0.0);
    }

    #[test]
    fn usage_of_an_idle_rule_is_zero() {
        let m = Metrics::new();
        let l = Limit::new(5, 5, Unit::Second).expect("valid");
        let stats = RuleStats::new(&m, "d", "r", Some(l));
        assert_eq!(stats.current_usage(T0), 0.0);
        assert_eq!(stats.refill_delay(T0), 0.0);
    }
}
