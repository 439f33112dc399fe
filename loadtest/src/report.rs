//! The end-of-run report: a human summary, or one JSON object with `--json`.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::accuracy::{self, AccuracyReport, Bucket, LimitSpec};
use crate::driver::{Pace, Plan, RunResult};
use crate::stats::Counts;

/// Latency percentiles in microseconds.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Percentiles {
    pub count: u64,
    pub mean: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

impl Percentiles {
    /// From a histogram of nanoseconds; each value is the highest of its bucket (3 significant
    /// digits), i.e. never below the true percentile.
    pub fn of(h: &Histogram<u64>) -> Percentiles {
        let us = |ns: u64| ns as f64 / 1_000.0;
        if h.is_empty() {
            return Percentiles {
                count: 0,
                mean: 0.0,
                p50: 0.0,
                p90: 0.0,
                p99: 0.0,
                p999: 0.0,
                max: 0.0,
            };
        }
        Percentiles {
            count: h.len(),
            mean: h.mean() / 1_000.0,
            p50: us(h.value_at_quantile(0.5)),
            p90: us(h.value_at_quantile(0.9)),
            p99: us(h.value_at_quantile(0.99)),
            p999: us(h.value_at_quantile(0.999)),
            max: us(h.max()),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TargetReport {
    pub target: String,
    #[serde(flatten)]
    pub counts: Counts,
}

/// What was run, echoed in the report so a figure carries its parameters.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Setup {
    /// `run`, or the scenario preset's name.
    pub mode: String,
    /// `closed`, `open`, or `burst` (cold-burst: all requests released at once).
    pub pace: &'static str,
    pub target_rate: Option<f64>,
    pub targets: Vec<String>,
    pub connections: usize,
    pub streams: usize,
    pub keys: String,
    pub descriptors: Vec<String>,
    pub domain: String,
    pub key_tag: String,
    pub hits_per_request: u64,
}

impl Setup {
    pub fn of(mode: &str, plan: &Plan) -> Setup {
        let (pace, target_rate) = match plan.pace {
            _ if mode == "cold-burst" => ("burst", None),
            Pace::Closed => ("closed", None),
            Pace::Open { rate } => ("open", Some(rate)),
        };
        Setup {
            mode: mode.to_string(),
            pace,
            target_rate,
            targets: plan.targets.clone(),
            connections: plan.connections,
            streams: plan.streams,
            keys: plan.keys.to_string(),
            descriptors: plan.shape.descriptor_names().to_vec(),
            domain: plan.shape.domain.clone(),
            key_tag: plan.shape.key_tag.clone(),
            hits_per_request: plan.shape.hits_per_request(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    pub setup: Setup,
    pub elapsed_s: f64,
    /// Calls completed, errors included.
    pub requests: u64,
    /// Open loop: scheduled requests not sent because the service fell more than the timeout
    /// behind the schedule (0 when it kept up).
    pub unsent: u64,
    pub throughput_rps: f64,
    /// Successful calls; from the intended send time in open loop (coordinated omission
    /// corrected), from the send in closed loop.
    pub latency_us: Percentiles,
    /// From the actual send; differs from `latency_us` only in open loop.
    pub service_time_us: Percentiles,
    pub decisions: Decisions,
    /// gRPC errors by status code.
    pub errors: BTreeMap<String, u64>,
    pub per_target: Vec<TargetReport>,
    pub accuracy: Option<AccuracyReport>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Decisions {
    #[serde(rename = "OK")]
    pub ok: u64,
    #[serde(rename = "OVER_LIMIT")]
    pub over_limit: u64,
    #[serde(rename = "UNKNOWN")]
    pub unknown: u64,
}

impl Report {
    pub fn build(setup: Setup, result: RunResult, limit: Option<(LimitSpec, Bucket)>) -> Report {
        let r = result.recorder;
        let elapsed_s = result.elapsed.as_secs_f64();
        let accuracy = match (limit, &r.per_key) {
            (Some((spec, bucket)), Some(per_key)) => {
                Some(accuracy::assess(spec, bucket, elapsed_s, per_key))
            }
            _ => None,
        };
        let per_target = setup
            .targets
            .iter()
            .zip(r.per_target)
            .map(|(t, counts)| TargetReport {
                target: t.clone(),
                counts,
            })
            .collect();
        Report {
            elapsed_s,
            requests: r.total.requests,
            unsent: r.unsent,
            throughput_rps: if elapsed_s > 0.0 {
                r.total.requests as f64 / elapsed_s
            } else {
                0.0
            },
            latency_us: Percentiles::of(&r.latency),
            service_time_us: Percentiles::of(&r.service_time),
            decisions: Decisions {
                ok: r.total.ok,
                over_limit: r.total.over_limit,
                unknown: r.total.unknown,
            },
            errors: r.errors,
            per_target,
            accuracy,
            setup,
        }
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }

    pub fn to_text(&self) -> String {
        let s = &self.setup;
        let mut out = String::new();
        let pace = match (s.pace, s.target_rate) {
            ("burst", _) => "every request released at the same instant".to_string(),
            (_, Some(rate)) => format!("open loop at {rate} req/s"),
            _ => "closed loop".to_string(),
        };
        let _ = writeln!(
            out,
            "tollgate-load {}: {pace}, {} target(s) x {} connection(s) x {} stream(s)",
            s.mode,
            s.targets.len(),
            s.connections,
            s.streams
        );
        let _ = writeln!(
            out,
            "  keys {}, descriptors [{}], domain {:?}, key tag {:?}, {} hit(s) per request",
            s.keys,
            s.descriptors.join(", "),
            s.domain,
            s.key_tag,
            s.hits_per_request
        );
        let _ = writeln!(
            out,
            "requests    {} in {:.3} s = {:.1} req/s",
            self.requests, self.elapsed_s, self.throughput_rps
        );
        if self.unsent > 0 {
            let _ = writeln!(
                out,
                "unsent      {} (the service fell more than --timeout behind the schedule)",
                self.unsent
            );
        }
        let since = match s.pace {
            "open" => "from intended send time",
            "burst" => "from the burst's release",
            _ => "from send",
        };
        write_latency(&mut out, "latency", &self.latency_us, since);
        if s.pace != "closed" {
            write_latency(
                &mut out,
                "service",
                &self.service_time_us,
                "from actual send",
            );
        }
        let d = &self.decisions;
        let _ = writeln!(
            out,
            "decisions   OK {}  OVER_LIMIT {}  UNKNOWN {}",
            d.ok, d.over_limit, d.unknown
        );
        let errors = if self.errors.is_empty() {
            "none".to_string()
        } else {
            self.errors
                .iter()
                .map(|(code, n)| format!("{code} {n}"))
                .collect::<Vec<_>>()
                .join("  ")
        };
        let _ = writeln!(out, "errors      {errors}");
        if self.per_target.len() > 1 || s.mode != "run" {
            let _ = writeln!(out, "per target");
            for t in &self.per_target {
                let c = &t.counts;
                let _ = writeln!(
                    out,
                    "  {:<28} requests {}  OK {}  OVER_LIMIT {}  errors {}",
                    t.target, c.requests, c.ok, c.over_limit, c.errors
                );
            }
        }
        match &self.accuracy {
            None => {
                let _ = writeln!(out, "accuracy    not assessed (no --limit given)");
            }
            Some(a) => {
                let _ = writeln!(
                    out,
                    "accuracy    limit {} (C {}, r {}/s), T {:.3} s: ideal per key C + r*T = {:.1}, {} key(s)",
                    a.limit, a.bucket.capacity, a.bucket.refill_per_s, a.elapsed_s, a.ideal_per_key, a.keys
                );
                let t = &a.total;
                let _ = writeln!(
                    out,
                    "  total     admitted {}  ideal {:.1}  E {:+.1}  (offered {})",
                    t.admitted, t.ideal, t.error, t.offered
                );
                if let Some(w) = &a.worst_key {
                    let d = &w.deviation;
                    let _ = writeln!(
                        out,
                        "  worst key {}-{}: admitted {}  ideal {:.1}  E {:+.1}  (offered {})",
                        s.key_tag, w.key, d.admitted, d.ideal, d.error, d.offered
                    );
                }
            }
        }
        out
    }
}

fn write_latency(out: &mut String, label: &str, p: &Percentiles, since: &str) {
    let ms = |us: f64| us / 1_000.0;
    let _ = writeln!(
        out,
        "{label:<11} p50 {:.3} ms  p90 {:.3} ms  p99 {:.3} ms  p99.9 {:.3} ms  max {:.3} ms  ({since}, {} samples)",
        ms(p.p50),
        ms(p.p90),
        ms(p.p99),
        ms(p.p999),
        ms(p.max),
        p.count
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::new_histogram;

    #[test]
    fn percentiles_of_a_known_histogram() {
        // 1..=1000 microseconds, one sample each.
        let mut h = new_histogram();
        for us in 1..=1000u64 {
            h.record(us * 1_000).expect("in range");
        }
        let p = Percentiles::of(&h);
        assert_eq!(p.count, 1000);
        // 3 significant digits: each reported value is within 0.1% above the true one.
        let close = |got: f64, want: f64| got >= want && got <= want * 1.001 + 0.001;
        assert!(close(p.p50, 500.0), "p50 {}", p.p50);
        assert!(close(p.p90, 900.0), "p90 {}", p.p90);
        assert!(close(p.p99, 990.0), "p99 {}", p.p99);
        assert!(close(p.p999, 999.0), "p99.9 {}", p.p999);
        assert!(close(p.max, 1000.0), "max {}", p.max);
        assert!((p.mean - 500.5).abs() < 1.0, "mean {}", p.mean);
    }

    #[test]
    fn a_single_slow_outlier_shows_in_max_and_p999_only() {
        let mut h = new_histogram();
        for _ in 0..9_999 {
            h.record(100_000).expect("in range"); // 100 us
        }
        h.record(50_000_000).expect("in range"); // 50 ms
        let p = Percentiles::of(&h);
        assert!(p.p99 < 101.0);
        assert!(p.p999 < 101.0);
        assert!(p.max >= 50_000.0 && p.max < 50_100.0);
    }

    #[test]
    fn empty_histogram_reports_zeros() {
        let p = Percentiles::of(&new_histogram());
        assert_eq!((p.count, p.max), (0, 0.0));
    }
}
