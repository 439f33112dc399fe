//! Wiring only: parse the command line, build the runtime, run the command.

use std::future::Future;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;

use tollgate_load::cli::{Cli, Command, H2loadBodyArgs, LoadArgs, NoopArgs, RunArgs, UsageArgs};
use tollgate_load::report::{Report, Setup};
use tollgate_load::request::RequestShape;
use tollgate_load::usage::{self, UsageReport};
use tollgate_load::{driver, h2load_body, noop, scenario};

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let threads = match &cli.command {
        Command::Run(a) => a.load.output.threads,
        Command::Scenario(a) => a.load.output.threads,
        Command::NoopServer(a) => a.threads,
        Command::Usage(a) => a.output.threads,
        Command::MakeH2loadBody(a) => return make_h2load_body(a),
    };
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = threads {
        builder.worker_threads(n.max(1));
    }
    let runtime = builder
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")?;
    runtime.block_on(async move {
        match cli.command {
            Command::Run(a) => run(a).await,
            Command::Scenario(a) => {
                let report = scenario::run(&a).await?;
                print(&report, &a.load);
                Ok(())
            }
            Command::NoopServer(a) => noop_server(a).await,
            Command::Usage(a) => usage_run(a).await,
            Command::MakeH2loadBody(_) => Ok(()),
        }
    })
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    let plan = args.load.plan(&args.targets);
    let setup = Setup::of("run", &plan);
    let result = driver::run(plan).await?;
    print(
        &Report::build(setup, result, args.load.bucket()),
        &args.load,
    );
    Ok(())
}

async fn usage_run(args: UsageArgs) -> anyhow::Result<()> {
    let plan = args.plan();
    let result = usage::run(plan.clone()).await?;
    let report = UsageReport::build(&plan, result);
    if args.output.json {
        println!("{}", report.to_json());
    } else {
        print!("{}", report.to_text());
    }
    Ok(())
}

fn print(report: &Report, load: &LoadArgs) {
    if load.output.json {
        println!("{}", report.to_json());
    } else {
        print!("{}", report.to_text());
    }
}

async fn noop_server(args: NoopArgs) -> anyhow::Result<()> {
    let listener = noop::bind(args.addr)
        .await
        .with_context(|| format!("cannot listen on {}", args.addr))?;
    let addr = listener.local_addr()?;
    eprintln!("noop ShouldRateLimit server listening on {addr}");
    noop::serve(listener, shutdown_signal(args.duration)?)
        .await
        .context("noop server failed")?;
    eprintln!("noop server stopped");
    Ok(())
}

/// Completes on SIGINT, SIGTERM, or after `limit` when given.
fn shutdown_signal(limit: Option<Duration>) -> anyhow::Result<impl Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
    Ok(async move {
        let timer = async {
            match limit {
                Some(d) => tokio::time::sleep(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
            _ = timer => {}
        }
    })
}

fn make_h2load_body(args: &H2loadBodyArgs) -> anyhow::Result<()> {
    let shape = RequestShape::new(
        &args.domain,
        args.descriptors as usize,
        &args.descriptor_keys,
        &args.key_tag,
        args.hits_addend,
        args.override_limit,
    );
    let frame = h2load_body::grpc_frame(&shape.build(0));
    std::fs::write(&args.out, &frame)
        .with_context(|| format!("cannot write {}", args.out.display()))?;
    eprintln!(
        "wrote {} bytes to {} (5-byte gRPC header + {}-byte RateLimitRequest; descriptors [{}], key {})",
        frame.len(),
        args.out.display(),
        frame.len() - 5,
        shape.descriptor_names().join(", "),
        shape.key_value(0)
    );
    Ok(())
}
