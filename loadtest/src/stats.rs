//! What one worker saw, and the live counters the progress line reads.
//!
//! Each worker owns a [`Recorder`] (no locks on the request path) and they are merged once at the
//! end. The live counters are relaxed atomics: the progress line needs no exact snapshot.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use envoy_types::pb::envoy::service::ratelimit::v3::RateLimitResponse;
use hdrhistogram::Histogram;

use crate::accuracy::KeyHits;

/// Latency histograms keep 3 significant digits and grow as needed (values in nanoseconds).
pub fn new_histogram() -> Histogram<u64> {
    let mut h = Histogram::new(3).expect("3 significant digits is a valid precision");
    h.auto(true);
    h
}

fn record_ns(h: &mut Histogram<u64>, d: Duration) {
    let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX).max(1);
    if h.record(ns).is_err() {
        h.saturating_record(ns);
    }
}

/// The result of one call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    OverLimit,
    /// A response whose overall code is neither OK nor OVER_LIMIT.
    Unknown,
    /// A gRPC error (or the client's own timeout, as `DeadlineExceeded`).
    Error(tonic::Code),
}

impl Outcome {
    pub fn of(result: &Result<RateLimitResponse, tonic::Code>) -> Outcome {
        match result {
            Ok(r) => match r.overall_code {
                1 => Outcome::Ok,
                2 => Outcome::OverLimit,
                _ => Outcome::Unknown,
            },
            Err(code) => Outcome::Error(*code),
        }
    }
}

/// Counts of one kind of traffic: all of it, or one target's.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Counts {
    pub requests: u64,
    pub ok: u64,
    pub over_limit: u64,
    pub unknown: u64,
    pub errors: u64,
}

impl Counts {
    fn add(&mut self, o: &Outcome) {
        self.requests += 1;
        match o {
            Outcome::Ok => self.ok += 1,
            Outcome::OverLimit => self.over_limit += 1,
            Outcome::Unknown => self.unknown += 1,
            Outcome::Error(_) => self.errors += 1,
        }
    }

    fn merge(&mut self, o: &Counts) {
        self.requests += o.requests;
        self.ok += o.ok;
        self.over_limit += o.over_limit;
        self.unknown += o.unknown;
        self.errors += o.errors;
    }
}

/// One completed call, as a worker hands it to its recorder.
#[derive(Debug)]
pub struct Sample {
    pub target: usize,
    pub key: u64,
    pub outcome: Outcome,
    /// From the intended send time (open loop) or the send (closed loop).
    pub latency: Duration,
    /// From the moment the request was handed to the client.
    pub service_time: Duration,
}

#[derive(Debug, Clone)]
pub struct Recorder {
    /// Successful calls only; errors are counted by code.
    pub latency: Histogram<u64>,
    pub service_time: Histogram<u64>,
    pub total: Counts,
    pub per_target: Vec<Counts>,
    pub errors: BTreeMap<String, u64>,
    /// Per key hits, kept only when a limit is known (accuracy needs it).
    pub per_key: Option<HashMap<u64, KeyHits>>,
    /// Open loop: requests dropped because the schedule ended more than a timeout ago.
    pub unsent: u64,
    hits_per_request: u64,
}

impl Recorder {
    pub fn new(targets: usize, track_keys: bool, hits_per_request: u64) -> Recorder {
        Recorder {
            latency: new_histogram(),
            service_time: new_histogram(),
            total: Counts::default(),
            per_target: vec![Counts::default(); targets],
            errors: BTreeMap::new(),
            per_key: track_keys.then(HashMap::new),
            unsent: 0,
            hits_per_request,
        }
    }

    pub fn record(&mut self, s: Sample, live: &Live) {
        self.total.add(&s.outcome);
        if let Some(c) = self.per_target.get_mut(s.target) {
            c.add(&s.outcome);
        }
        live.add(&s.outcome);
        match s.outcome {
            Outcome::Error(code) => {
                *self.errors.entry(format!("{code:?}")).or_insert(0) += 1;
            }
            ref decision => {
                record_ns(&mut self.latency, s.latency);
                record_ns(&mut self.service_time, s.service_time);
                if let Some(per_key) = self.per_key.as_mut() {
                    let hits = per_key.entry(s.key).or_default();
                    hits.offered += self.hits_per_request;
                    if *decision == Outcome::Ok {
                        hits.admitted += self.hits_per_request;
                    }
                }
            }
        }
    }

    pub fn merge(&mut self, other: Recorder) {
        // Both histograms auto-resize, so adding cannot fail for range reasons.
        let _ = self.latency.add(&other.latency);
        let _ = self.service_time.add(&other.service_time);
        self.total.merge(&other.total);
        self.unsent += other.unsent;
        for (mine, theirs) in self.per_target.iter_mut().zip(&other.per_target) {
            mine.merge(theirs);
        }
        for (code, n) in other.errors {
            *self.errors.entry(code).or_insert(0) += n;
        }
        if let (Some(mine), Some(theirs)) = (self.per_key.as_mut(), other.per_key) {
            for (key, hits) in theirs {
                mine.entry(key).or_default().merge(hits);
            }
        }
    }
}

/// Counters shared by all workers for the once-a-second progress line.
#[derive(Debug, Default)]
pub struct Live {
    pub done: AtomicU64,
    pub ok: AtomicU64,
    pub over_limit: AtomicU64,
    pub errors: AtomicU64,
}

impl Live {
    fn add(&self, o: &Outcome) {
        self.done.fetch_add(1, Ordering::Relaxed);
        let c = match o {
            Outcome::Ok => &self.ok,
            Outcome::OverLimit => &self.over_limit,
            Outcome::Unknown => return,
            Outcome::Error(_) => &self.errors,
        };
        c.fetch_add(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(target: usize, key: u64, outcome: Outcome, us: u64) -> Sample {
        Sample {
            target,
            key,
            outcome,
            latency: Duration::from_micros(us),
            service_time: Duration::from_micros(us),
        }
    }

    #[test]
    fn merge_adds_counts_errors_and_keys() {
        let live = Live::default();
        let mut a = Recorder::new(2, true, 2);
        a.record(sample(0, 1, Outcome::Ok, 100), &live);
        a.record(
            sample(1, 1, Outcome::Error(tonic::Code::Unavailable), 0),
            &live,
        );
        let mut b = Recorder::new(2, true, 2);
        b.record(sample(1, 1, Outcome::OverLimit, 300), &live);
        b.record(sample(1, 2, Outcome::Ok, 200), &live);
        a.merge(b);
        assert_eq!(a.total.requests, 4);
        assert_eq!((a.total.ok, a.total.over_limit, a.total.errors), (2, 1, 1));
        assert_eq!(a.per_target[1].requests, 3);
        assert_eq!(a.errors.get("Unavailable"), Some(&1));
        assert_eq!(a.latency.len(), 3);
        let keys = a.per_key.expect("tracked");
        assert_eq!(
            keys[&1],
            KeyHits {
                offered: 4,
                admitted: 2
            }
        );
        assert_eq!(live.done.load(Ordering::Relaxed), 4);
    }
}
