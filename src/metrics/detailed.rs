//! Counters whose `limit` label comes from the request (`detailed_metric`, `value_to_metric`).
//!
//! Their labels are only known on the request path, but registering a series there would put
//! a registry lookup (and an allocation) on every request, against this module's rule that the
//! request path only does atomic adds. So the request path only adds to tallies of its own,
//! found by label under a read lock (a write lock once per new label), and the tallies are
//! written as counters at scrape time, with the rule series (so they go when the rule goes).
//! A rule keeps at most `cap` labels: beyond that, new values are not tracked (the rule's own
//! series still count them), and `tollgate_detailed_series_dropped_total` says how many hits
//! went untracked.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use metrics::Counter;
use parking_lot::RwLock;

use super::rule_series::{Family, RuleSeries, SeriesLabels};
use super::Metrics;

/// Labels one rule may create before new ones are dropped.
pub const DEFAULT_SERIES_CAP: usize = 1000;

#[derive(Default)]
struct Tally {
    hits: AtomicU64,
    over: AtomicU64,
    near: AtomicU64,
    within: AtomicU64,
    shadow: AtomicU64,
}

impl Tally {
    fn add(&self, hits: u64, over: bool, near: bool, shadow: bool) {
        self.hits.fetch_add(hits, Ordering::Relaxed);
        if over {
            self.over.fetch_add(hits, Ordering::Relaxed);
            if shadow {
                self.shadow.fetch_add(hits, Ordering::Relaxed);
            }
        } else {
            self.within.fetch_add(hits, Ordering::Relaxed);
            if near {
                self.near.fetch_add(hits, Ordering::Relaxed);
            }
        }
    }

    fn values(&self) -> [u64; 5] {
        [
            self.hits.load(Ordering::Relaxed),
            self.over.load(Ordering::Relaxed),
            self.near.load(Ordering::Relaxed),
            self.within.load(Ordering::Relaxed),
            self.shadow.load(Ordering::Relaxed),
        ]
    }
}

/// The families of `Tally::values`, in its order.
const FAMILIES: [Family; 5] = [
    Family::Hits,
    Family::OverLimit,
    Family::NearLimit,
    Family::WithinLimit,
    Family::ShadowMode,
];

/// The per-request-label counters of one rule.
pub struct DetailedSeries {
    domain: String,
    cap: usize,
    /// By label, with the label's escaped series labels (built once, on the first hit).
    tallies: RwLock<HashMap<Box<str>, (SeriesLabels, Tally)>>,
    dropped: Counter,
    warned: AtomicBool,
}

impl DetailedSeries {
    pub fn new(metrics: &Metrics, domain: &str, cap: usize) -> DetailedSeries {
        DetailedSeries {
            domain: domain.to_string(),
            cap,
            tallies: RwLock::new(HashMap::new()),
            dropped: metrics.detailed_dropped.clone(),
            warned: AtomicBool::new(false),
        }
    }

    /// Count one descriptor's decision under `label` (request path: no registration).
    pub fn record(&self, label: &str, hits: u64, over: bool, near: bool, shadow: bool) {
        if let Some((_, t)) = self.tallies.read().get(label) {
            t.add(hits, over, near, shadow);
            return;
        }
        let mut tallies = self.tallies.write();
        if !tallies.contains_key(label) && tallies.len() >= self.cap {
            drop(tallies);
            self.dropped.increment(hits);
            if !self.warned.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    domain = %self.domain,
                    cap = self.cap,
                    "a detailed_metric/value_to_metric rule reached its label cap: new values \
                     are no longer given their own series"
                );
            }
            return;
        }
        tallies
            .entry(label.into())
            .or_insert_with(|| (SeriesLabels::new(&self.domain, label), Tally::default()))
            .1
            .add(hits, over, near, shadow);
    }

    /// Write every tally as counters (scrape time). A label the rule series already wrote
    /// (a value equal to a rule's own label) is left to it.
    pub fn write(&self, out: &mut RuleSeries) {
        for (labels, tally) in self.tallies.read().values() {
            if !out.claim(labels) {
                continue;
            }
            for (family, v) in FAMILIES.into_iter().zip(tally.values()) {
                out.counter(family, labels, v);
            }
        }
    }

    /// Labels tracked so far.
    pub fn len(&self) -> usize {
        self.tallies.read().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tallies_are_written_as_counters_at_scrape_time() {
        let m = Metrics::new();
        let s = DetailedSeries::new(&m, "d", 10);
        s.record("user_alice", 2, false, false, false);
        s.record("user_alice", 1, true, false, true);
        assert!(!m.render().contains("user_alice"), "nothing registered");
        let mut series = RuleSeries::default();
        s.write(&mut series);
        let mut text = String::new();
        series.write_to(&mut text);
        assert!(
            text.contains("tollgate_hits_total{domain=\"d\",limit=\"user_alice\"} 3"),
            "{text}"
        );
        assert!(
            text.contains("tollgate_shadow_mode_total{domain=\"d\",limit=\"user_alice\"} 1"),
            "{text}"
        );
    }

    #[test]
    fn labels_beyond_the_cap_are_dropped_and_counted() {
        let m = Metrics::new();
        let s = DetailedSeries::new(&m, "d", 2);
        for v in ["a", "b", "c", "a"] {
            s.record(v, 1, false, false, false);
        }
        assert_eq!(s.len(), 2);
        assert!(
            m.render()
                .contains("tollgate_detailed_series_dropped_total 1"),
            "{}",
            m.render()
        );
    }
}
