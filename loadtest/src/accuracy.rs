//! How far the service's admissions are from an ideal token bucket.
//!
//! A token bucket of capacity `C` refilled at `r` tokens per second, full at the start, admits at
//! most `C + r * T` hits in `T` seconds. For each key the tool compares what the service admitted
//! with that ideal: `E = admitted - ideal`. `E > 0` is over-admission (the limit leaked, e.g.
//! replicas that did not see each other's hits yet); `E < 0` is under-admission.
//!
//! A key that was offered fewer hits than `C + r * T` cannot be admitted more than it asked for,
//! so its ideal is `min(offered, C + r * T)`: otherwise every cold key of a wide distribution
//! would show a large negative error that says nothing about the limiter.
//!
//! All counts are in hits (requests times `hits_addend`), the unit the bucket counts in.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;

use serde::Serialize;

/// Time unit of a limit, with the values of Envoy's `envoy.type.v3.RateLimitUnit` (the enum of
/// a descriptor's `RateLimitOverride`). Month and year are 30 and 365 days, as in tollgate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RateUnit {
    Second,
    Minute,
    Hour,
    Day,
    Month,
    Year,
}

impl RateUnit {
    pub fn seconds(self) -> u64 {
        match self {
            RateUnit::Second => 1,
            RateUnit::Minute => 60,
            RateUnit::Hour => 3_600,
            RateUnit::Day => 86_400,
            RateUnit::Month => 30 * 86_400,
            RateUnit::Year => 365 * 86_400,
        }
    }

    /// Value in `envoy.type.v3.RateLimitUnit`.
    pub fn to_proto(self) -> i32 {
        match self {
            RateUnit::Second => 1,
            RateUnit::Minute => 2,
            RateUnit::Hour => 3,
            RateUnit::Day => 4,
            RateUnit::Month => 5,
            RateUnit::Year => 6,
        }
    }

    fn name(self) -> &'static str {
        match self {
            RateUnit::Second => "second",
            RateUnit::Minute => "minute",
            RateUnit::Hour => "hour",
            RateUnit::Day => "day",
            RateUnit::Month => "month",
            RateUnit::Year => "year",
        }
    }
}

impl FromStr for RateUnit {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "s" | "sec" | "second" => Ok(RateUnit::Second),
            "m" | "min" | "minute" => Ok(RateUnit::Minute),
            "h" | "hour" => Ok(RateUnit::Hour),
            "d" | "day" => Ok(RateUnit::Day),
            "month" => Ok(RateUnit::Month),
            "y" | "year" => Ok(RateUnit::Year),
            _ => Err(format!(
                "unknown unit {s:?}: expected second, minute, hour, day, month or year"
            )),
        }
    }
}

/// A limit as `--limit RPU/UNIT` gives it, e.g. `100/s` or `6000/minute`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct LimitSpec {
    pub requests_per_unit: u32,
    pub unit: RateUnit,
}

impl FromStr for LimitSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (rpu, unit) = s
            .split_once('/')
            .ok_or_else(|| format!("limit {s:?} must look like RPU/UNIT, e.g. 100/second"))?;
        let requests_per_unit = match rpu.trim().parse::<u32>() {
            Ok(0) | Err(_) => {
                return Err(format!(
                    "requests per unit must be a whole number >= 1, got {rpu:?}"
                ))
            }
            Ok(n) => n,
        };
        Ok(LimitSpec {
            requests_per_unit,
            unit: unit.trim().parse()?,
        })
    }
}

impl fmt::Display for LimitSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.requests_per_unit, self.unit.name())
    }
}

/// The token bucket the service is expected to implement for each key.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Bucket {
    /// `C`: tokens in a full bucket.
    pub capacity: f64,
    /// `r`: tokens added per second.
    pub refill_per_s: f64,
}

impl Bucket {
    /// The bucket of `limit`; capacity is `burst` when given, else one unit's worth of requests.
    pub fn new(limit: LimitSpec, burst: Option<u32>) -> Bucket {
        let per_unit = f64::from(limit.requests_per_unit);
        Bucket {
            capacity: f64::from(burst.unwrap_or(limit.requests_per_unit)),
            refill_per_s: per_unit / limit.unit.seconds() as f64,
        }
    }

    /// `C + r * T`: the most a full bucket admits in `t_s` seconds.
    pub fn ideal(&self, t_s: f64) -> f64 {
        self.capacity + self.refill_per_s * t_s
    }
}

/// Hits one key was offered (got a decision for) and admitted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KeyHits {
    pub offered: u64,
    pub admitted: u64,
}

impl KeyHits {
    pub fn merge(&mut self, other: KeyHits) {
        self.offered += other.offered;
        self.admitted += other.admitted;
    }
}

/// Admitted against ideal for one key, or summed over all keys.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Deviation {
    pub offered: u64,
    pub admitted: u64,
    pub ideal: f64,
    /// `admitted - ideal`.
    pub error: f64,
}

impl Deviation {
    fn of(hits: KeyHits, bucket_ideal: f64) -> Deviation {
        let ideal = bucket_ideal.min(hits.offered as f64);
        Deviation {
            offered: hits.offered,
            admitted: hits.admitted,
            ideal,
            error: hits.admitted as f64 - ideal,
        }
    }
}

/// The worst key: the one whose `|E|` is largest.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WorstKey {
    pub key: u64,
    #[serde(flatten)]
    pub deviation: Deviation,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AccuracyReport {
    pub limit: LimitSpec,
    pub bucket: Bucket,
    /// `T`, seconds.
    pub elapsed_s: f64,
    /// `C + r * T` for one key.
    pub ideal_per_key: f64,
    pub keys: u64,
    pub total: Deviation,
    pub worst_key: Option<WorstKey>,
}

/// Compares each key's admitted hits with the bucket's ideal over `elapsed_s` seconds.
pub fn assess(
    limit: LimitSpec,
    bucket: Bucket,
    elapsed_s: f64,
    per_key: &HashMap<u64, KeyHits>,
) -> AccuracyReport {
    let ideal_per_key = bucket.ideal(elapsed_s);
    let mut total = Deviation {
        offered: 0,
        admitted: 0,
        ideal: 0.0,
        error: 0.0,
    };
    let mut worst: Option<WorstKey> = None;
    for (&key, &hits) in per_key {
        let d = Deviation::of(hits, ideal_per_key);
        total.offered += d.offered;
        total.admitted += d.admitted;
        total.ideal += d.ideal;
        let replace = match &worst {
            None => true,
            Some(w) => {
                let (a, b) = (d.error.abs(), w.deviation.error.abs());
                a > b || (a == b && key < w.key)
            }
        };
        if replace {
            worst = Some(WorstKey { key, deviation: d });
        }
    }
    total.error = total.admitted as f64 - total.ideal;
    AccuracyReport {
        limit,
        bucket,
        elapsed_s,
        ideal_per_key,
        keys: per_key.len() as u64,
        total,
        worst_key: worst,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(s: &str) -> LimitSpec {
        s.parse().expect("valid limit")
    }

    #[test]
    fn parses_limits_in_every_unit_spelling() {
        assert_eq!(
            limit("100/s"),
            LimitSpec {
                requests_per_unit: 100,
                unit: RateUnit::Second
            }
        );
        assert_eq!(limit("6000/minute").unit, RateUnit::Minute);
        assert_eq!(limit("5/HOUR").unit, RateUnit::Hour);
        assert_eq!(limit("1/d").unit, RateUnit::Day);
        for bad in ["100", "0/s", "x/s", "10/fortnight", "-1/s"] {
            assert!(
                bad.parse::<LimitSpec>().is_err(),
                "{bad:?} should not parse"
            );
        }
    }

    #[test]
    fn ideal_is_capacity_plus_refill_times_elapsed() {
        // 600/minute: r = 10 per second, C = 600 unless a burst is given.
        let b = Bucket::new(limit("600/minute"), None);
        assert_eq!(b.capacity, 600.0);
        assert_eq!(b.refill_per_s, 10.0);
        assert_eq!(b.ideal(30.0), 900.0);
        let b = Bucket::new(limit("100/s"), Some(20));
        assert_eq!(b.ideal(2.5), 20.0 + 250.0);
    }

    #[test]
    fn error_is_admitted_minus_ideal_in_total_and_worst_key() {
        let b = Bucket::new(limit("10/s"), Some(5));
        // T = 2 s: ideal per key 5 + 10 * 2 = 25.
        let per_key = HashMap::from([
            (
                0,
                KeyHits {
                    offered: 1000,
                    admitted: 31,
                },
            ),
            (
                1,
                KeyHits {
                    offered: 1000,
                    admitted: 24,
                },
            ),
            // Offered less than the bucket allows: ideal is what it asked for.
            (
                2,
                KeyHits {
                    offered: 7,
                    admitted: 7,
                },
            ),
        ]);
        let r = assess(limit("10/s"), b, 2.0, &per_key);
        assert_eq!(r.ideal_per_key, 25.0);
        assert_eq!(r.keys, 3);
        assert_eq!(r.total.admitted, 62);
        assert_eq!(r.total.ideal, 57.0);
        assert_eq!(r.total.error, 5.0);
        let worst = r.worst_key.expect("a worst key");
        assert_eq!(worst.key, 0);
        assert_eq!(worst.deviation.error, 6.0);
    }

    #[test]
    fn under_admission_is_a_negative_error() {
        let b = Bucket::new(limit("100/s"), None);
        let per_key = HashMap::from([(
            9,
            KeyHits {
                offered: 10_000,
                admitted: 150,
            },
        )]);
        let r = assess(limit("100/s"), b, 1.0, &per_key);
        assert_eq!(r.total.ideal, 200.0);
        assert_eq!(r.total.error, -50.0);
        assert_eq!(r.worst_key.map(|w| w.key), Some(9));
    }
}
