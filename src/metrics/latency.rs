//! The request latency histogram, kept as fixed buckets of atomic counters.
//!
//! Why not the exporter's histogram: metrics-exporter-prometheus keeps every raw sample in a
//! lock-free list of blocks until the next upkeep folds them into buckets, so each request
//! pushed a sample (allocating a block every few dozen) and a busy node held hundreds of
//! thousands of samples between upkeeps; the profile put metrics at about a third of tollgate's
//! own cost per request. Here a request adds to two atomics, and a scrape reads them.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds, in nanoseconds: the service answers in microseconds, the tail is what matters.
const BOUNDS_NS: [u64; 14] = [
    25_000,
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    1_000_000_000,
];

pub struct LatencyHistogram {
    name: &'static str,
    help: &'static str,
    /// Per bucket (not cumulative), the last one for samples above every bound.
    counts: [AtomicU64; BOUNDS_NS.len() + 1],
    sum_ns: AtomicU64,
}

impl LatencyHistogram {
    pub fn new(name: &'static str, help: &'static str) -> Self {
        LatencyHistogram {
            name,
            help,
            counts: std::array::from_fn(|_| AtomicU64::new(0)),
            sum_ns: AtomicU64::new(0),
        }
    }

    pub fn record(&self, d: Duration) {
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        let i = BOUNDS_NS.partition_point(|b| *b < ns);
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        self.sum_ns.fetch_add(ns, Ordering::Relaxed);
    }

    /// Append the histogram in the Prometheus text format (cumulative buckets, `+Inf`, sum in
    /// seconds, count).
    pub fn render(&self, out: &mut String) {
        let _ = writeln!(out, "# HELP {} {}", self.name, self.help);
        let _ = writeln!(out, "# TYPE {} histogram", self.name);
        let mut total = 0u64;
        for (i, c) in self.counts.iter().enumerate() {
            total += c.load(Ordering::Relaxed);
            match BOUNDS_NS.get(i) {
                Some(b) => {
                    let _ = writeln!(
                        out,
                        "{}_bucket{{le=\"{}\"}} {total}",
                        self.name,
                        *b as f64 / 1e9
                    );
                }
                None => {
                    let _ = writeln!(out, "{}_bucket{{le=\"+Inf\"}} {total}", self.name);
                }
            }
        }
        let sum = self.sum_ns.load(Ordering::Relaxed) as f64 / 1e9;
        let _ = writeln!(out, "{}_sum {sum}", self.name);
        let _ = writeln!(out, "{}_count {total}", self.name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rendered(h: &LatencyHistogram) -> String {
        let mut s = String::new();
        h.render(&mut s);
        s
    }

    #[test]
    fn samples_land_in_cumulative_buckets_with_sum_and_count() {
        let h = LatencyHistogram::new("x_seconds", "help");
        h.record(Duration::from_micros(10));
        h.record(Duration::from_micros(25));
        h.record(Duration::from_micros(700));
        h.record(Duration::from_secs(3));
        let s = rendered(&h);
        assert!(s.contains("# TYPE x_seconds histogram\n"), "{s}");
        assert!(s.contains("x_seconds_bucket{le=\"0.000025\"} 2\n"), "{s}");
        assert!(s.contains("x_seconds_bucket{le=\"0.0005\"} 2\n"), "{s}");
        assert!(s.contains("x_seconds_bucket{le=\"0.001\"} 3\n"), "{s}");
        assert!(s.contains("x_seconds_bucket{le=\"1\"} 3\n"), "{s}");
        assert!(s.contains("x_seconds_bucket{le=\"+Inf\"} 4\n"), "{s}");
        assert!(s.contains("x_seconds_sum 3.000735\n"), "{s}");
        assert!(s.contains("x_seconds_count 4\n"), "{s}");
    }

    #[test]
    fn an_empty_histogram_renders_zeros() {
        let s = rendered(&LatencyHistogram::new("y_seconds", "help"));
        assert!(s.contains("y_seconds_bucket{le=\"+Inf\"} 0\n"));
        assert!(s.contains("y_seconds_count 0\n"));
    }
}
