//! Wiring: listeners, the gRPC and HTTP servers, background tasks, and the shutdown sequence.
//! Every background task has an owner (a [`CancellationToken`]) and an end.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic_health::ServingStatus;
use tracing::{info, warn};

use crate::bucket::ReplicaId;
use crate::clock::{Clock, SystemClock};
use crate::config::{self, RateLimitConfig};
use crate::http::{self, HttpState};
use crate::limiter::{DecisionOptions, Limiter, RequestBounds};
use crate::listener::{self, Limits, Listener};
use crate::metrics::Metrics;
use crate::readiness::Readiness;
use crate::reload::Reloader;
use crate::replication::tls::{PeerTls, PeerTlsFiles};
use crate::replication::{PeerListener, Replica, ReplicaTable, ReplicationSettings, Replicator};
use crate::rls::respond::{HeaderNames, ResponseOptions};
use crate::rls::{self, RateLimitServiceServer, RlsService};
use crate::settings::Settings;
use crate::store::{Store, StoreConfig};

/// How often idle keys are collected.
const HOUSEKEEPING_INTERVAL: Duration = Duration::from_secs(5);

/// A started server: its bound addresses, and the handle that stops it.
pub struct Running {
    pub grpc_addr: SocketAddr,
    pub http_addr: SocketAddr,
    /// The peer stream's address, when replication is on.
    pub peer_addr: Option<SocketAddr>,
    /// Who the replicas in bucket slots are (replica 0 is this process).
    pub replicas: Arc<ReplicaTable>,
    pub limiter: Arc<Limiter>,
    pub readiness: Arc<Readiness>,
    /// The tracer of background work's spans, with `--otlp-endpoint` (for the log layer).
    pub tracer: Option<opentelemetry_sdk::trace::Tracer>,
    stop: CancellationToken,
    done: JoinHandle<anyhow::Result<()>>,
}

impl Running {
    /// Begin the graceful shutdown and wait for it to finish.
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        self.stop.cancel();
        (&mut self.done).await.context("server task panicked")?
    }

    /// Wait until the server stops (after a shutdown was requested through `stop_token`).
    pub async fn wait(mut self) -> anyhow::Result<()> {
        (&mut self.done).await.context("server task panicked")?
    }

    pub fn stop_token(&self) -> CancellationToken {
        self.stop.clone()
    }
}

/// A server whose handle is dropped shuts down (gracefully, in the background): an embedding
/// that forgets to stop it, or a test that panicked, does not leave it serving and dialing
/// peers for the rest of the process.
impl Drop for Running {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Read the config the settings name, or the embedded example. A file still being written is
/// read again until two reads agree, so startup never serves half a file either.
pub fn initial_config(
    settings: &Settings,
) -> anyhow::Result<(RateLimitConfig, Vec<(String, String)>)> {
    match &settings.config {
        None => Ok((RateLimitConfig::embedded_default(), Vec::new())),
        Some(path) => {
            let policy = load_policy(settings);
            let files = settled_read(path, &policy)?;
            let cfg = policy
                .parse(&files)
                .map_err(|e| anyhow::anyhow!("invalid rate limit config:\n{e}"))?;
            Ok((cfg, files))
        }
    }
}

fn load_policy(s: &Settings) -> config::LoadPolicy {
    config::LoadPolicy {
        allow_empty: s.allow_empty_config,
        max_bytes: s.max_config_bytes,
        build: build_options(s),
    }
}

/// Read until two reads 50 ms apart agree (at most 20 tries).
fn settled_read(
    path: &std::path::Path,
    policy: &config::LoadPolicy,
) -> anyhow::Result<Vec<(String, String)>> {
    let read =
        || config::read_path_within(path, policy.max_bytes).map_err(|e| anyhow::anyhow!("{e}"));
    let mut files = read()?;
    for _ in 0..20 {
        std::thread::sleep(Duration::from_millis(50));
        let again = read()?;
        if again == files {
            return Ok(files);
        }
        files = again;
    }
    anyhow::bail!(
        "config at {} kept changing while being read",
        path.display()
    )
}

/// Bind, start everything, and return once both listeners accept connections.
pub async fn start(settings: Settings) -> anyhow::Result<Running> {
    start_with_clock(settings, Arc::new(SystemClock::new())).await
}

pub async fn start_with_clock(
    settings: Settings,
    clock: Arc<dyn Clock>,
) -> anyhow::Result<Running> {
    let (cfg, files) = initial_config(&settings)?;
    let replication = replication_settings(&settings)?;
    let metrics = Metrics::new();
    metrics.config_loads_ok.increment(1);
    let store = new_store(&settings, replication.enabled());
    let limiter = Arc::new(
        Limiter::new(
            cfg,
            store.clone(),
            clock,
            metrics.clone(),
            RequestBounds {
                max_descriptors: settings.max_descriptors,
                max_entries: settings.max_entries,
                max_bytes: settings.max_bytes,
            },
            settings.near_limit_ratio,
        )
        .with_options(decision_options(&settings)),
    );
    // A replicated node is not ready until it holds its peers' state: answering from an empty
    // view would create fresh buckets that override what the cluster consumed.
    let readiness = Arc::new(Readiness::new(
        !replication.enabled(),
        metrics.ready.clone(),
    ));

    let serving_tls = crate::tls::ServingListeners::load(&settings, &metrics)?;
    let telemetry = crate::telemetry::Telemetry::start(&settings)?;
    let grpc_listener = bind(settings.grpc_addr, "gRPC").await?;
    let http_listener = bind(settings.http_addr, "HTTP").await?;
    let grpc_addr = grpc_listener.local_addr()?;
    let http_addr = http_listener.local_addr()?;
    let replicas = Arc::new(ReplicaTable::with_limit(
        Replica {
            node: replication.node_id.clone(),
            incarnation: replication.incarnation,
        },
        replication
            .max_members
            .saturating_mul(crate::replication::REPLICAS_PER_MEMBER),
    ));
    let peer_tls = replication.tls.clone();
    let replicator = if replication.enabled() {
        let peer_listener = PeerListener::bind(settings.peer_addr, replication.faults.as_deref())
            .await
            .with_context(|| format!("cannot listen for peers on {}", settings.peer_addr))?;
        let r = Replicator::start(
            replication,
            replicas.clone(),
            peer_listener,
            store,
            limiter.clone(),
            readiness.clone(),
        );
        Some(r.await?)
    } else {
        None
    };
    let peer_addr = replicator.as_ref().map(|r| r.peer_addr);

    let (health, health_service) = tonic_health::server::health_reporter();
    set_health(&health, ServingStatus::Serving).await;
    let limits = connection_limits(&settings);
    let rls = RlsService::new(limiter.clone(), readiness.clone())
        .with_tracer(telemetry.as_ref().map(|t| t.request_tracer()));
    let tracer = telemetry.as_ref().map(|t| t.tracer());
    let grpc_stop = CancellationToken::new();
    let grpc = tokio::spawn(
        tonic::transport::Server::builder()
            // One connection must not open streams without end (each costs memory).
            .max_concurrent_streams(settings.max_concurrent_streams)
            .add_service(health_service)
            .add_service(rls::unary::Guarded::new(
                RateLimitServiceServer::new(rls),
                metrics.clone(),
            ))
            .serve_with_incoming_shutdown(
                crate::tls::incoming(
                    Listener::new(grpc_listener, "grpc", &limits, &metrics, true),
                    serving_tls.grpc.clone(),
                ),
                grpc_stop.clone().cancelled_owned(),
            ),
    );

    let http_stop = CancellationToken::new();
    let scrape = http::scrape::ScrapeGate::default();
    let app = http::router(HttpState {
        limiter: limiter.clone(),
        readiness: readiness.clone(),
        scrape: scrape.clone(),
    });
    let http = tokio::spawn(listener::serve_http(
        crate::tls::Listener::new(
            Listener::new(http_listener, "http", &limits, &metrics, false),
            serving_tls.http.clone(),
        ),
        app,
        settings.max_concurrent_streams,
        http_stop.clone(),
    ));

    let background = CancellationToken::new();
    tokio::spawn(housekeeping(limiter.clone(), background.clone()));
    let peer_tls = peer_tls.map(|t| t as Arc<dyn crate::tls::reload::Reloadable>);
    let certs = serving_tls.watcher(settings.reload_interval, metrics.clone(), peer_tls);
    if !certs.is_empty() {
        tokio::spawn(certs.run(background.clone()));
    }
    if let Some(path) = &settings.config {
        Reloader::new(
            path.clone(),
            settings.reload_interval,
            limiter.clone(),
            load_policy(&settings),
            files,
        )
        .spawn(background.clone())
        .context("cannot start the config reload thread")?;
    }
    let metrics_push = crate::telemetry::MetricsPush::start(&settings, limiter.clone(), scrape)?;
    info!(%grpc_addr, %http_addr, "tollgate serving");

    let stop = CancellationToken::new();
    let shutdown = Shutdown {
        timeout: settings.shutdown_timeout,
        readiness: readiness.clone(),
        health,
        grpc_stop,
        http_stop,
        background,
        grpc,
        http,
        replicator,
        metrics_push,
        telemetry,
    };
    let done = tokio::spawn(shutdown.after(stop.clone()));
    Ok(Running {
        grpc_addr,
        http_addr,
        peer_addr,
        replicas,
        limiter,
        readiness,
        tracer,
        stop,
        done,
    })
}

fn new_store(settings: &Settings, replicated: bool) -> Arc<Store> {
    Arc::new(Store::new(
        StoreConfig {
            max_keys: settings.max_keys,
            gc_horizon_ns: settings.gc_horizon.as_nanos().min(i64::MAX as u128) as i64,
            track_dirty: replicated,
            // Late remote consumption is debt, capped at about one capacity per member so a
            // heal after a partition cannot lock a key out for long; replication keeps it in
            // line with the live membership (this is the cap until the first members are known).
            debt_cap_capacities: 2,
            ..StoreConfig::default()
        },
        ReplicaId(0),
    ))
}

async fn bind(addr: SocketAddr, what: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen for {what} on {addr}"))
}

/// The service's health under every name probes use: the whole server, tollgate's service
/// name, and the reference's (`ratelimit`).
async fn set_health(health: &tonic_health::server::HealthReporter, status: ServingStatus) {
    for name in ["", rls::SERVICE_NAME, rls::REFERENCE_HEALTH_NAME] {
        health.set_service_status(name, status).await;
    }
}

/// What the graceful shutdown stops, in its order.
struct Shutdown {
    timeout: Duration,
    readiness: Arc<Readiness>,
    health: tonic_health::server::HealthReporter,
    grpc_stop: CancellationToken,
    http_stop: CancellationToken,
    background: CancellationToken,
    grpc: JoinHandle<Result<(), tonic::transport::Error>>,
    http: JoinHandle<std::io::Result<()>>,
    replicator: Option<Replicator>,
    metrics_push: Option<crate::telemetry::MetricsPush>,
    telemetry: Option<crate::telemetry::Telemetry>,
}

impl Shutdown {
    /// Once `stop` is cancelled: health NOT_SERVING, drain the servers, hand off, and stop
    /// the exporters, all within one deadline, so that the worst case is `--shutdown-timeout`
    /// and the chart's grace period can be checked against it.
    async fn after(self, stop: CancellationToken) -> anyhow::Result<()> {
        stop.cancelled().await;
        info!("shutting down: health NOT_SERVING, finishing in-flight requests");
        self.readiness.set_draining();
        set_health(&self.health, ServingStatus::NotServing).await;
        self.grpc_stop.cancel();
        self.http_stop.cancel();
        self.background.cancel();
        let start = tokio::time::Instant::now();
        let deadline = start + self.timeout;
        // The drain may take three quarters of it: the handoff (what loses nothing) always
        // gets the rest.
        let drained_by = start + self.timeout.mul_f64(0.75);
        let served = Self::drain(self.grpc, self.http, self.timeout, drained_by).await;
        // No more admissions now: hand what this node admitted to its peers.
        if let Some(r) = self.replicator {
            r.hand_off(deadline).await;
            r.stop(deadline).await;
        }
        if let Some(p) = self.metrics_push {
            p.stop(deadline).await;
        }
        if let Some(t) = self.telemetry {
            t.shutdown(deadline).await;
        }
        served?;
        info!("shutdown complete");
        Ok(())
    }

    /// Wait for both servers to finish their in-flight requests, until `by`.
    async fn drain(
        grpc: JoinHandle<Result<(), tonic::transport::Error>>,
        http: JoinHandle<std::io::Result<()>>,
        timeout: Duration,
        by: tokio::time::Instant,
    ) -> anyhow::Result<()> {
        match tokio::time::timeout_at(by, async { (grpc.await, http.await) }).await {
            Ok((g, h)) => g
                .context("gRPC server task")
                .and_then(|r| r.context("gRPC server"))
                .and_then(|_| h.context("HTTP server task"))
                .and_then(|r| r.context("HTTP server")),
            Err(_) => {
                warn!(
                    ?timeout,
                    "shutdown: requests still in flight at the drain's share of --shutdown-timeout; handing off"
                );
                Ok(())
            }
        }
    }
}

fn connection_limits(s: &Settings) -> Limits {
    Limits {
        max_connections: s.max_connections,
        idle_timeout: s.idle_timeout,
        header_read_timeout: s.header_read_timeout,
    }
}

/// How configs are built: the reference's `MERGE_DOMAIN_CONFIG`.
pub fn build_options(s: &Settings) -> config::BuildOptions {
    config::BuildOptions {
        merge_domains: s.merge_domain_config,
    }
}

/// The reference's global switches and what responses carry.
fn decision_options(s: &Settings) -> DecisionOptions {
    DecisionOptions {
        shadow_mode: s.shadow_mode,
        quota_mode: s.quota_mode,
        build: build_options(s),
        response: ResponseOptions {
            headers: s.response_headers.then(|| HeaderNames {
                limit: s.limit_header.clone(),
                remaining: s.remaining_header.clone(),
                reset: s.reset_header.clone(),
            }),
            retry_after: s.retry_after,
            dynamic_metadata: s.response_dynamic_metadata,
        },
    }
}

fn replication_settings(s: &Settings) -> anyhow::Result<ReplicationSettings> {
    let secret = match &s.cluster_secret_file {
        None => None,
        Some(path) => {
            let raw = std::fs::read(path)
                .with_context(|| format!("cannot read --cluster-secret-file {}", path.display()))?;
            let trimmed = raw.trim_ascii().to_vec();
            anyhow::ensure!(
                !trimmed.is_empty(),
                "--cluster-secret-file {} is empty",
                path.display()
            );
            Some(trimmed)
        }
    };
    // Settings built in code skip Settings::validate: a partial set must not mean plaintext.
    let tls = match (&s.peer_tls_cert, &s.peer_tls_key, &s.peer_tls_ca) {
        (Some(cert), Some(key), Some(ca)) => {
            let files = PeerTlsFiles {
                cert: cert.clone(),
                key: key.clone(),
                ca: ca.clone(),
            };
            Some(Arc::new(PeerTls::load(
                &files,
                s.peer_tls_server_name.as_deref(),
            )?))
        }
        (None, None, None) => None,
        _ => anyhow::bail!("--peer-tls-cert, --peer-tls-key and --peer-tls-ca go together"),
    };
    Ok(ReplicationSettings {
        node_id: s.node_id.clone(),
        incarnation: rand::random(),
        cluster_id: s.cluster_id.clone(),
        secret,
        peers: s.peers.clone(),
        peer_dns: s.peer_dns.clone(),
        sync_interval: s.sync_interval,
        sync_timeout: s.sync_timeout,
        max_frame_bytes: 1 << 20,
        max_clock_offset: s.max_clock_offset,
        peer_timeout: s.peer_timeout,
        peer_dead_after: s.peer_dead_after,
        max_members: s.max_members,
        burst_guard: s.burst_guard,
        faults: s.faults.clone(),
        clock: s.liveness_clock.clone(),
        advertise_addr: match s.peer_advertise_addr.as_deref() {
            Some("none") => String::new(),
            Some(a) => a.to_string(),
            None if s.peer_addr.ip().is_unspecified() => String::new(),
            None => s.peer_addr.to_string(),
        },
        tls,
    })
}

async fn housekeeping(limiter: Arc<Limiter>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(HOUSEKEEPING_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {
                let now = limiter.clock().now();
                let store = limiter.store().clone();
                // A sweep of a million keys takes milliseconds: keep it off the request workers.
                let removed = tokio::task::spawn_blocking(move || store.gc(now)).await.unwrap_or(0);
                if removed > 0 {
                    tracing::debug!(removed, "collected idle keys");
                }
            }
        }
    }
}
