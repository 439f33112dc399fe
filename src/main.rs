//! `tollgate`: parse the command line, set up logging, run. Everything else lives in the library.

use std::process::ExitCode;

use clap::Parser;
use tollgate::settings::{Cli, Command, LogFormat, Settings};
use tollgate::{config, server};
use tracing_subscriber::filter::{EnvFilter, LevelFilter, Targets};
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{reload, Layer as _, Registry};

/// The layer that turns tollgate's own `tracing` spans (reloads, resyncs) into OpenTelemetry
/// spans; empty until the server has built its tracer from `--otlp-endpoint`.
type OtelLayer =
    tracing_opentelemetry::OpenTelemetryLayer<Registry, opentelemetry_sdk::trace::Tracer>;
type OtelHandle = reload::Handle<Option<OtelLayer>, Registry>;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::CheckConfig {
            path,
            merge_domain_config,
        }) => check_config(&path, merge_domain_config),
        Some(Command::Serve(args)) => serve(*args),
        None => serve(cli.serve),
    }
}

fn check_config(path: &std::path::Path, merge_domains: bool) -> ExitCode {
    let options = config::BuildOptions { merge_domains };
    match config::read_path(path)
        .and_then(|files| config::RateLimitConfig::from_files_with(&files, options))
    {
        Ok(c) => {
            println!(
                "{}: valid ({} domains, {} rules)",
                path.display(),
                c.domains().count(),
                c.rules().count()
            );
            ExitCode::SUCCESS
        }
        Err(errors) => {
            for e in &errors.0 {
                eprintln!("{e}");
            }
            eprintln!("{}: {} error(s)", path.display(), errors.0.len());
            ExitCode::FAILURE
        }
    }
}

fn serve(args: tollgate::settings::ServeArgs) -> ExitCode {
    let settings = match args.resolve() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("tollgate: {e}");
            return ExitCode::from(2);
        }
    };
    let otel = match init_logging(&settings) {
        Ok(h) => h,
        Err(e) => {
            eprintln!("tollgate: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("tollgate: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(settings, otel)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("tollgate: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(settings: Settings, otel: OtelHandle) -> anyhow::Result<()> {
    let running = server::start(settings).await?;
    if let Some(tracer) = running.tracer.clone() {
        let layer = tracing_opentelemetry::layer().with_tracer(tracer);
        if let Err(e) = otel.modify(|l| *l = Some(layer)) {
            tracing::warn!(error = %e, "background spans will not be exported");
        }
    }
    let stop = running.stop_token();
    tokio::spawn(async move {
        shutdown_signal().await;
        stop.cancel();
    });
    running.wait().await
}

/// SIGTERM (Kubernetes) or SIGINT (Ctrl-C).
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

fn init_logging(s: &Settings) -> Result<OtelHandle, String> {
    let filter = EnvFilter::try_new(&s.log_level)
        .map_err(|e| format!("invalid --log-level '{}': {e}", s.log_level))?;
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let fmt = match s.log_format {
        LogFormat::Json => fmt.json().boxed(),
        LogFormat::Text => fmt.boxed(),
    };
    // Only tollgate's own spans at info, so that no library's trace-level spans are ever made
    // on the request path on its behalf (an unfiltered layer, even an empty one, enables all).
    let (otel, handle) = reload::Layer::new(None::<OtelLayer>);
    let otel = otel.with_filter(
        Targets::new()
            .with_target("tollgate", LevelFilter::INFO)
            .with_default(LevelFilter::OFF),
    );
    tracing_subscriber::registry()
        .with(otel)
        .with(fmt.with_filter(filter))
        .try_init()
        .map_err(|e| format!("cannot set up logging: {e}"))?;
    Ok(handle)
}
