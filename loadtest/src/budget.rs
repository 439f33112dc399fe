//! Usage-style accuracy: how many tokens the calls used against the budget an ideal token
//! bucket allows, and how much of that usage the service charged.
//!
//! A call is a pre-check (`hits_addend` 0: is any budget left?) and, when it passes, a usage
//! report of the tokens it used. Per key the tool knows:
//!
//! - `demand`: the sizes of every call it tried (refused ones included);
//! - `used`: the sizes of the calls that started (passed the pre-check): tokens really spent;
//! - `charged`: the sizes of the reports the service charged. A report answered OK was charged.
//!   One answered OVER_LIMIT was not, on a rule that charges all or nothing (tollgate's default
//!   today); with `--charge-over-limit` every answered report counts as charged, for a rule
//!   that charges usage into debt.
//!
//! The ideal budget of a key over `T` seconds is `C + r * T` (a full bucket at the start), and
//! a key asked for less than that can use at most its demand: `ideal = min(demand, C + r T)`.
//! Then:
//!
//! - `overrun = used - ideal`: tokens spent beyond the budget. A budget that is enforced keeps it
//!   below the calls in flight times the largest call (each call that passed the pre-check with
//!   some budget left may use its whole size); a budget that is not enforced lets it grow with
//!   the traffic.
//! - `unenforced = used - charged`: usage the service never counted against the budget.
//! - `charged - ideal`: how the service's own count compares with the ideal.

use std::collections::HashMap;

use serde::Serialize;

use crate::accuracy::{Bucket, LimitSpec};

/// What one key's calls did, in calls and tokens.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct KeyUsage {
    pub calls: u64,
    /// Calls whose pre-check passed.
    pub started: u64,
    /// Calls whose pre-check answered OVER_LIMIT.
    pub refused: u64,
    pub demand: u64,
    pub used: u64,
    pub charged: u64,
}

impl KeyUsage {
    pub fn merge(&mut self, o: KeyUsage) {
        self.calls += o.calls;
        self.started += o.started;
        self.refused += o.refused;
        self.demand += o.demand;
        self.used += o.used;
        self.charged += o.charged;
    }
}

/// One key's usage (or all keys' summed) against the ideal budget.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UsageDeviation {
    #[serde(flatten)]
    pub usage: KeyUsage,
    pub ideal: f64,
    /// `used - ideal`.
    pub overrun: f64,
    /// `used - charged`.
    pub unenforced: u64,
    /// `charged - ideal`.
    pub charged_error: f64,
}

impl UsageDeviation {
    fn of(usage: KeyUsage, budget: f64) -> UsageDeviation {
        let ideal = budget.min(usage.demand as f64);
        UsageDeviation {
            usage,
            ideal,
            overrun: usage.used as f64 - ideal,
            unenforced: usage.used.saturating_sub(usage.charged),
            charged_error: usage.charged as f64 - ideal,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct KeyDeviation {
    pub key: u64,
    #[serde(flatten)]
    pub deviation: UsageDeviation,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BudgetReport {
    pub limit: LimitSpec,
    pub bucket: Bucket,
    pub charge_over_limit: bool,
    /// `T`, seconds.
    pub elapsed_s: f64,
    /// `C + r * T` for one key.
    pub budget_per_key: f64,
    pub keys: u64,
    pub total: UsageDeviation,
    /// The key with the largest overrun.
    pub worst_key: Option<KeyDeviation>,
}

pub fn assess(
    limit: LimitSpec,
    bucket: Bucket,
    charge_over_limit: bool,
    elapsed_s: f64,
    per_key: &HashMap<u64, KeyUsage>,
) -> BudgetReport {
    let budget = bucket.ideal(elapsed_s);
    let mut sum = KeyUsage::default();
    let mut ideal = 0.0;
    let mut worst: Option<KeyDeviation> = None;
    for (&key, &usage) in per_key {
        sum.merge(usage);
        let d = UsageDeviation::of(usage, budget);
        ideal += d.ideal;
        let replace = worst.as_ref().is_none_or(|w| {
            d.overrun > w.deviation.overrun || (d.overrun == w.deviation.overrun && key < w.key)
        });
        if replace {
            worst = Some(KeyDeviation { key, deviation: d });
        }
    }
    let total = UsageDeviation {
        usage: sum,
        ideal,
        overrun: sum.used as f64 - ideal,
        unenforced: sum.used.saturating_sub(sum.charged),
        charged_error: sum.charged as f64 - ideal,
    };
    BudgetReport {
        limit,
        bucket,
        charge_over_limit,
        elapsed_s,
        budget_per_key: budget,
        keys: per_key.len() as u64,
        total,
        worst_key: worst,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usage(calls: u64, started: u64, size: u64, charged_calls: u64) -> KeyUsage {
        KeyUsage {
            calls,
            started,
            refused: calls - started,
            demand: calls * size,
            used: started * size,
            charged: charged_calls * size,
        }
    }

    #[test]
    fn an_unenforced_budget_shows_as_overrun_and_uncharged_usage() {
        // 1,000 per day, ten calls of 300, none refused, three reports charged (all or nothing).
        let limit: LimitSpec = "1000/day".parse().expect("valid");
        let bucket = Bucket::new(limit, None);
        let per_key = HashMap::from([(0, usage(10, 10, 300, 3))]);
        let r = assess(limit, bucket, false, 0.0, &per_key);
        assert_eq!(r.budget_per_key, 1_000.0);
        assert_eq!(r.total.ideal, 1_000.0);
        assert_eq!(r.total.overrun, 2_000.0);
        assert_eq!(r.total.unenforced, 2_100);
        assert_eq!(r.total.charged_error, -100.0);
    }

    #[test]
    fn an_enforced_budget_overruns_by_less_than_one_call() {
        let limit: LimitSpec = "1000/day".parse().expect("valid");
        let bucket = Bucket::new(limit, None);
        // Four calls start (the fourth with 100 left), six are refused, all four charged.
        let per_key = HashMap::from([(0, usage(10, 4, 300, 4)), (1, usage(2, 2, 300, 2))]);
        let r = assess(limit, bucket, true, 0.0, &per_key);
        let worst = r.worst_key.expect("a worst key");
        assert_eq!(worst.key, 0);
        assert_eq!(worst.deviation.overrun, 200.0);
        assert_eq!(worst.deviation.unenforced, 0);
        // Key 1 asked for 600 only: its ideal is its demand.
        assert_eq!(r.total.ideal, 1_600.0);
        assert_eq!(r.total.usage.refused, 6);
    }
}
