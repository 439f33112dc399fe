//! Traffic presets for the replication benchmarks; what each does is in `SCENARIO_HELP`
//! (cli.rs), printed by `tollgate-load scenario --help`.

use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context};
use tokio::sync::Barrier;

use crate::cli::{Preset, ScenarioArgs};
use crate::driver::{self, Plan, RunResult};
use crate::keys::KeyDist;
use crate::report::{Report, Setup};
use crate::stats::{Live, Outcome, Recorder, Sample};

pub async fn run(args: &ScenarioArgs) -> anyhow::Result<Report> {
    let preset = args.preset;
    let plan = match preset {
        Preset::EvenSplit | Preset::Partition | Preset::ColdBurst => args.load.plan(&args.targets),
        Preset::HotNode => {
            let Some(node) = args.targets.get(args.node) else {
                bail!(
                    "--node {} is out of range: --targets lists {} node(s), counted from 0",
                    args.node,
                    args.targets.len()
                );
            };
            args.load.plan(std::slice::from_ref(node))
        }
    };
    let (plan, result) = match preset {
        Preset::ColdBurst => cold_burst(plan, args.per_target as usize).await?,
        _ => {
            let result = driver::run(plan.clone()).await?;
            (plan, result)
        }
    };
    Ok(Report::build(
        Setup::of(preset.name(), &plan),
        result,
        args.load.bucket(),
    ))
}

/// `per_target` requests per target for one fresh key (index 0 of the run's fresh tag), all
/// released by one barrier. Latency is measured from the release.
async fn cold_burst(mut plan: Plan, per_target: usize) -> anyhow::Result<(Plan, RunResult)> {
    if plan.connections == 0 {
        bail!("--connections must be at least 1");
    }
    plan.keys = KeyDist::Hot;
    plan.streams = per_target.div_ceil(plan.connections);
    let mut clients = Vec::with_capacity(plan.targets.len());
    for target in &plan.targets {
        clients.push(driver::connect(target, plan.connections).await?);
    }
    let calls = plan.targets.len() * per_target;
    let barrier = Arc::new(Barrier::new(calls + 1));
    let mut handles = Vec::with_capacity(calls);
    for (t, conns) in clients.iter().enumerate() {
        for j in 0..per_target {
            let mut client = conns[j % conns.len()].clone();
            let request = plan.shape.build(0);
            let barrier = Arc::clone(&barrier);
            let timeout = plan.timeout;
            handles.push(tokio::spawn(async move {
                barrier.wait().await;
                let sent = Instant::now();
                let result = driver::call(&mut client, request, timeout).await;
                (t, Outcome::of(&result), sent, Instant::now())
            }));
        }
    }
    barrier.wait().await;
    let go = Instant::now();
    let live = Live::default();
    let mut recorder = Recorder::new(
        plan.targets.len(),
        plan.track_keys,
        plan.shape.hits_per_request(),
    );
    let mut last = go;
    for h in handles {
        let (target, outcome, sent, done) = h.await.context("a burst call panicked")?;
        last = last.max(done);
        recorder.record(
            Sample {
                target,
                key: 0,
                outcome,
                latency: done.saturating_duration_since(go),
                service_time: done.saturating_duration_since(sent),
            },
            &live,
        );
    }
    let result = RunResult {
        recorder,
        elapsed: last.saturating_duration_since(go),
    };
    Ok((plan, result))
}
