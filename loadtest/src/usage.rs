//! Usage-style traffic, as an AI gateway sends it: before each call a pre-check (every
//! descriptor with `hits_addend` 0: is any budget left?), and once the call is done a usage
//! report whose `hits_addend` is the tokens it used, drawn from `--size`.
//!
//! `--concurrency` workers each run one call at a time (closed loop); a call's pre-check goes to
//! target `i % targets` and its report to report target `i % report targets`, so the pre-checks
//! and the reports can go to different nodes of a cluster. The run ends after `--calls` calls or
//! `--duration`, and every RPC is bounded by `--timeout`.
//!
//! The size of every call is drawn before its pre-check, so a refused call still counts in the
//! key's demand (`budget.rs`).

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use rand::rngs::SmallRng;
use rand::SeedableRng;
use serde::Serialize;

use crate::accuracy::{Bucket, LimitSpec};
use crate::budget::{self, BudgetReport, KeyUsage};
use crate::driver::{self, Client, Stop};
use crate::keys::KeyDist;
use crate::request::RequestShape;
use crate::sizes::SizeDist;

#[derive(Debug, Clone)]
pub struct UsagePlan {
    pub targets: Vec<String>,
    /// Where usage reports go (the pre-check targets when empty).
    pub report_targets: Vec<String>,
    pub concurrency: usize,
    pub stop: Stop,
    pub timeout: Duration,
    /// Request-level `hits_addend` unset: each descriptor carries its own.
    pub shape: RequestShape,
    pub keys: KeyDist,
    pub sizes: SizeDist,
    pub seed: u64,
    pub limit: LimitSpec,
    pub bucket: Bucket,
    /// Reports are charged even when answered OVER_LIMIT (a rule that charges into debt).
    pub charge_over_limit: bool,
}

/// What a run counted, before it is compared with the budget.
#[derive(Debug, Default)]
pub struct UsageResult {
    pub per_key: HashMap<u64, KeyUsage>,
    /// Usage reports by answer: OK, OVER_LIMIT.
    pub reports_ok: u64,
    pub reports_over_limit: u64,
    /// Failed RPCs by gRPC code (a call whose pre-check failed counts neither as started nor
    /// as refused; a failed report is not charged).
    pub errors: BTreeMap<String, u64>,
    pub elapsed: Duration,
}

impl UsageResult {
    fn merge(&mut self, o: UsageResult) {
        for (k, u) in o.per_key {
            self.per_key.entry(k).or_default().merge(u);
        }
        self.reports_ok += o.reports_ok;
        self.reports_over_limit += o.reports_over_limit;
        for (code, n) in o.errors {
            *self.errors.entry(code).or_default() += n;
        }
    }

    fn error(&mut self, code: tonic::Code) {
        *self.errors.entry(format!("{code:?}")).or_default() += 1;
    }
}

/// The answer to one call's pre-check or report.
enum Answer {
    Ok,
    OverLimit,
    Failed(tonic::Code),
}

async fn ask(
    client: &mut Client,
    shape: &RequestShape,
    key: u64,
    hits: u64,
    t: Duration,
) -> Answer {
    match driver::call(client, shape.build_with_hits(key, hits), t).await {
        Ok(r) if r.overall_code == 1 => Answer::Ok,
        Ok(_) => Answer::OverLimit,
        Err(code) => Answer::Failed(code),
    }
}

struct Worker {
    plan: Arc<UsagePlan>,
    checks: Vec<Client>,
    reports: Vec<Client>,
    next: Arc<AtomicU64>,
    deadline: Option<Instant>,
    rng: SmallRng,
}

impl Worker {
    /// The next call index, or `None` once the run is over.
    fn claim(&self) -> Option<u64> {
        if self.deadline.is_some_and(|d| Instant::now() >= d) {
            return None;
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        match self.plan.stop {
            Stop::Requests(n) if i >= n => None,
            _ => Some(i),
        }
    }

    async fn run(mut self) -> UsageResult {
        let mut out = UsageResult::default();
        let sampler = self.plan.keys.sampler();
        let timeout = self.plan.timeout;
        while let Some(i) = self.claim() {
            let key = sampler.sample(&mut self.rng);
            let size = self.plan.sizes.sample(&mut self.rng);
            let n = self.checks.len();
            let check = &mut self.checks[i as usize % n];
            let answer = ask(check, &self.plan.shape, key, 0, timeout).await;
            let k = out.per_key.entry(key).or_default();
            k.calls += 1;
            k.demand += size;
            match answer {
                Answer::Ok => {}
                Answer::OverLimit => {
                    k.refused += 1;
                    continue;
                }
                Answer::Failed(code) => {
                    out.error(code);
                    continue;
                }
            }
            k.started += 1;
            k.used += size;
            let m = self.reports.len();
            let report = &mut self.reports[i as usize % m];
            let charged = match ask(report, &self.plan.shape, key, size, timeout).await {
                Answer::Ok => {
                    out.reports_ok += 1;
                    true
                }
                Answer::OverLimit => {
                    out.reports_over_limit += 1;
                    self.plan.charge_over_limit
                }
                Answer::Failed(code) => {
                    out.error(code);
                    false
                }
            };
            if charged {
                out.per_key.entry(key).or_default().charged += size;
            }
        }
        out
    }
}

async fn connect_all(targets: &[String]) -> anyhow::Result<Vec<Client>> {
    let mut clients = Vec::with_capacity(targets.len());
    for t in targets {
        clients.extend(driver::connect(t, 1).await?);
    }
    Ok(clients)
}

pub async fn run(plan: UsagePlan) -> anyhow::Result<UsageResult> {
    if plan.targets.is_empty() {
        bail!("no target given");
    }
    if plan.concurrency == 0 {
        bail!("--concurrency must be at least 1");
    }
    let checks = connect_all(&plan.targets).await?;
    let reports = if plan.report_targets.is_empty() {
        checks.clone()
    } else {
        connect_all(&plan.report_targets).await?
    };
    let plan = Arc::new(plan);
    let next = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let deadline = match plan.stop {
        Stop::After(d) => Some(start + d),
        Stop::Requests(_) => None,
    };
    let handles: Vec<_> = (0..plan.concurrency)
        .map(|w| {
            let worker = Worker {
                plan: Arc::clone(&plan),
                checks: checks.clone(),
                reports: reports.clone(),
                next: Arc::clone(&next),
                deadline,
                rng: SmallRng::seed_from_u64(plan.seed.wrapping_add(w as u64)),
            };
            tokio::spawn(worker.run())
        })
        .collect();
    let mut result = UsageResult::default();
    for h in handles {
        result.merge(h.await.context("a usage worker panicked")?);
    }
    result.elapsed = start.elapsed();
    Ok(result)
}

/// The run's summary: counts, and the usage against the budget.
#[derive(Debug, Serialize)]
pub struct UsageReport {
    pub targets: Vec<String>,
    pub report_targets: Vec<String>,
    pub concurrency: usize,
    pub keys: String,
    pub sizes: String,
    pub elapsed_s: f64,
    pub reports_ok: u64,
    pub reports_over_limit: u64,
    pub errors: BTreeMap<String, u64>,
    /// Calls in flight times the largest size: the most an enforced budget can be overrun by.
    pub overrun_bound: u64,
    pub budget: BudgetReport,
}

impl UsageReport {
    pub fn build(plan: &UsagePlan, result: UsageResult) -> UsageReport {
        let elapsed_s = result.elapsed.as_secs_f64();
        UsageReport {
            targets: plan.targets.clone(),
            report_targets: if plan.report_targets.is_empty() {
                plan.targets.clone()
            } else {
                plan.report_targets.clone()
            },
            concurrency: plan.concurrency,
            keys: plan.keys.to_string(),
            sizes: plan.sizes.to_string(),
            elapsed_s,
            reports_ok: result.reports_ok,
            reports_over_limit: result.reports_over_limit,
            errors: result.errors,
            overrun_bound: (plan.concurrency as u64).saturating_mul(plan.sizes.max()),
            budget: budget::assess(
                plan.limit,
                plan.bucket,
                plan.charge_over_limit,
                elapsed_s,
                &result.per_key,
            ),
        }
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }

    pub fn to_text(&self) -> String {
        let b = &self.budget;
        let t = &b.total;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "usage: {} call(s) on {} key(s) ({}), sizes {}, {} in flight, {:.2} s",
            t.usage.calls, b.keys, self.keys, self.sizes, self.concurrency, self.elapsed_s
        );
        let _ = writeln!(
            s,
            "  pre-checks: {} started, {} refused; reports: {} OK, {} OVER_LIMIT; errors: {:?}",
            t.usage.started, t.usage.refused, self.reports_ok, self.reports_over_limit, self.errors
        );
        let _ = writeln!(
            s,
            "  budget {} (C {}, r {}/s): {:.1} per key over the run{}",
            b.limit,
            b.bucket.capacity,
            b.bucket.refill_per_s,
            b.budget_per_key,
            if b.charge_over_limit {
                ", reports charged into debt"
            } else {
                ", reports charged all or nothing"
            }
        );
        let _ = writeln!(
            s,
            "  tokens: demand {}, used {}, charged {}, ideal {:.1}",
            t.usage.demand, t.usage.used, t.usage.charged, t.ideal
        );
        let _ = writeln!(
            s,
            "  overrun (used - ideal) {:.1} (bound when enforced: {} per key), unenforced (used - charged) {}, charged - ideal {:.1}",
            t.overrun, self.overrun_bound, t.unenforced, t.charged_error
        );
        if let Some(w) = &b.worst_key {
            let _ = writeln!(
                s,
                "  worst key {}: used {} of ideal {:.1}, overrun {:.1}, unenforced {}",
                w.key,
                w.deviation.usage.used,
                w.deviation.ideal,
                w.deviation.overrun,
                w.deviation.unenforced
            );
        }
        s
    }
}
