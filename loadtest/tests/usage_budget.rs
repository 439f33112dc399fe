//! Usage-style traffic against a real tollgate, in-process on ephemeral 127.0.0.1 ports and a
//! manual clock that never moves: no refill, so every figure below is exact.
//!
//! On a plain rule a 0-hit pre-check passes while the bucket is not in debt, and a usage report
//! larger than what is left is OVER_LIMIT and charges nothing. The tool's accounting must show
//! exactly that: every call starts, the service's own count stays within the budget, and the
//! rest of the usage is unenforced. On a `charge_over_limit` rule every report is charged and
//! the pre-check refuses once the budget is spent: nothing is unenforced and the overrun stays
//! within the tool's bound.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tollgate::clock::ManualClock;
use tollgate::server::{self, Running};
use tollgate::settings::Settings;
use tollgate_load::accuracy::{Bucket, LimitSpec};
use tollgate_load::driver::Stop;
use tollgate_load::keys::KeyDist;
use tollgate_load::request::RequestShape;
use tollgate_load::usage::{self, UsagePlan, UsageReport};

const T0: i64 = 1_700_000_000_000_000_000;

/// The budget as a plain rule of the service's config (no override: the config is what users
/// write), 1,000 tokens a day per user.
const CONFIG: &str = "\
domain: loadtest
descriptors:
  - key: user
    rate_limit: { unit: day, requests_per_unit: 1000 }
";

/// A tollgate serving `CONFIG` from its own directory (removed by `stop`).
struct Service {
    running: Running,
    dir: PathBuf,
}

/// The same budget charged after the fact.
const CHARGED_CONFIG: &str = "\
domain: loadtest
descriptors:
  - key: user
    rate_limit: { unit: day, requests_per_unit: 1000, charge_over_limit: true }
";

impl Service {
    async fn start(name: &str) -> Service {
        Service::start_with(name, CONFIG).await
    }

    async fn start_with(name: &str, config: &str) -> Service {
        let dir =
            std::env::temp_dir().join(format!("tollgate-load-usage-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("config dir");
        std::fs::write(dir.join("config.yaml"), config).expect("config written");
        let settings = Settings {
            config: Some(dir.clone()),
            grpc_addr: "127.0.0.1:0".parse().expect("addr"),
            http_addr: "127.0.0.1:0".parse().expect("addr"),
            ..Settings::default()
        };
        let running = server::start_with_clock(settings, Arc::new(ManualClock::new(T0)))
            .await
            .expect("tollgate starts");
        Service { running, dir }
    }

    fn url(&self) -> String {
        format!("http://{}", self.running.grpc_addr)
    }

    async fn stop(self) {
        self.running.shutdown().await.expect("stops");
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn plan(target: String, calls: u64, concurrency: usize, keys: KeyDist, sizes: &str) -> UsagePlan {
    // A per-day budget: over the few seconds a run may take on a loaded machine the ideal grows
    // by well under one token, and the service's clock does not move at all.
    let limit: LimitSpec = "1000/day".parse().expect("valid");
    UsagePlan {
        targets: vec![target],
        report_targets: vec![],
        concurrency,
        stop: Stop::Requests(calls),
        timeout: Duration::from_secs(5),
        shape: RequestShape::new("loadtest", 1, &["user".into()], "usage-it", None, None),
        keys,
        sizes: sizes.parse().expect("valid sizes"),
        seed: 3,
        limit,
        bucket: Bucket::new(limit, None),
        charge_over_limit: false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_plain_rule_a_report_beyond_the_budget_charges_nothing_and_the_tool_shows_the_leak() {
    let server = Service::start("leak").await;
    let p = plan(server.url(), 10, 1, KeyDist::Hot, "fixed:300");
    let result = usage::run(p.clone()).await.expect("run");
    assert!(result.errors.is_empty(), "{:?}", result.errors);
    // 1,000 tokens: three reports of 300 fit, the fourth (100 left) and every later one do not.
    assert_eq!((result.reports_ok, result.reports_over_limit), (3, 7));
    let report = UsageReport::build(&p, result);
    let t = &report.budget.total;
    assert_eq!(
        (t.usage.calls, t.usage.started, t.usage.refused),
        (10, 10, 0)
    );
    assert_eq!((t.usage.used, t.usage.charged), (3_000, 900));
    assert_eq!(t.unenforced, 2_100);
    assert!((t.ideal - 1_000.0).abs() < 1.0, "{}", t.ideal);
    assert!((t.overrun - 2_000.0).abs() < 1.0, "{}", t.overrun);
    assert!(t.overrun > report.overrun_bound as f64, "not enforced");
    let json = report.to_json();
    assert!(json.contains("\"unenforced\":2100"), "{json}");
    assert!(report
        .to_text()
        .contains("unenforced (used - charged) 2100"));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_services_own_count_stays_within_the_budget_on_every_key() {
    let server = Service::start("keys").await;
    let p = plan(
        server.url(),
        300,
        4,
        KeyDist::Uniform { n: 5 },
        "uniform:50:400",
    );
    let result = usage::run(p.clone()).await.expect("run");
    assert!(result.errors.is_empty(), "{:?}", result.errors);
    let calls: u64 = result.per_key.values().map(|k| k.calls).sum();
    assert_eq!(calls, 300, "exactly --calls calls");
    assert_eq!(result.reports_ok + result.reports_over_limit, 300);
    for (key, k) in &result.per_key {
        assert_eq!(
            k.started, k.calls,
            "key {key}: a pre-check never refuses today"
        );
        assert!(
            k.charged <= 1_000,
            "key {key}: charged {} of 1,000",
            k.charged
        );
        assert!(
            k.used >= k.charged && k.demand == k.used,
            "key {key}: {k:?}"
        );
    }
    let report = UsageReport::build(&p, result);
    // About 3,000 tokens a key were used against a budget of 1,000: most of it uncounted.
    assert!(report.budget.total.unenforced > 5_000, "{report:?}");
    assert!(report.budget.total.charged_error <= 0.0);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_charge_over_limit_rule_every_report_counts_and_the_pre_check_stops_the_leak() {
    let server = Service::start_with("charged", CHARGED_CONFIG).await;
    let mut p = plan(server.url(), 10, 1, KeyDist::Hot, "fixed:300");
    p.charge_over_limit = true;
    let result = usage::run(p.clone()).await.expect("run");
    assert!(result.errors.is_empty(), "{:?}", result.errors);
    // Three reports fit; the fourth call starts with 100 left and its report goes 200 into
    // debt (answered over, charged); the six calls after it are refused at the pre-check.
    assert_eq!((result.reports_ok, result.reports_over_limit), (3, 1));
    let report = UsageReport::build(&p, result);
    let t = &report.budget.total;
    assert_eq!(
        (t.usage.calls, t.usage.started, t.usage.refused),
        (10, 4, 6)
    );
    assert_eq!((t.usage.used, t.usage.charged), (1_200, 1_200));
    assert_eq!(t.unenforced, 0);
    assert!((t.overrun - 200.0).abs() < 1.0, "{}", t.overrun);
    assert!(t.overrun <= report.overrun_bound as f64, "enforced");
    server.stop().await;
}
