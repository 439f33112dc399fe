//! `tollgate`: parse the command line, set up logging, run. Everything else lives in the library.

use std::process::ExitCode;

use clap::Parser;
use tollgate::settings::{Cli, Command, LogFormat, Settings};
use tollgate::{config, server};
use tracing_subscriber::EnvFilter;

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
    if let Err(e) = init_logging(&settings) {
        eprintln!("tollgate: {e}");
        return ExitCode::from(2);
    }
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
    match runtime.block_on(run(settings)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("tollgate: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(settings: Settings) -> anyhow::Result<()> {
    let running = server::start(settings).await?;
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

fn init_logging(s: &Settings) -> Result<(), String> {
    let filter = EnvFilter::try_new(&s.log_level)
        .map_err(|e| format!("invalid --log-level '{}': {e}", s.log_level))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let result = match s.log_format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
    result.map_err(|e| format!("cannot set up logging: {e}"))
}
