//! The load engine: connections, workers, pacing, progress.
//!
//! `connections` HTTP/2 connections are opened to *each* target, and `connections x streams`
//! workers each keep one request in flight at a time; worker `w` uses connection `w % connections`
//! of every target. Request `i` (a global counter) goes to target `i % targets`: round-robin, as
//! Envoy spreads calls over the hosts of the rate limit cluster.
//!
//! Open loop (`--rate`): request `i` is *intended* at `start + i / rate`. A pacer thread releases
//! one permit per request when its time comes; a worker takes a permit, then the next index, and
//! measures latency from the intended time. When every worker is busy the permits queue up and
//! the wait shows in the latency: coordinated omission is corrected, not hidden. The pacer is a
//! plain thread because tokio's timer wheel has 1 ms granularity, which would add up to 1 ms of
//! its own lateness to every sample; a thread sleep is accurate to ~0.1 ms.
//!
//! Closed loop (no rate): each worker sends its next request as soon as the previous one
//! answered; latency is measured from the send.
//!
//! Every run ends by itself: the request count or the duration bounds the loop, and each call is
//! bounded by the client timeout. In open loop, a request whose intended time is more than the
//! timeout in the past when the schedule has ended is not sent but counted as `unsent`: a service
//! far slower than `--rate` cannot stretch a 10 s run into hours.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use envoy_types::pb::envoy::service::ratelimit::v3::{
    rate_limit_service_client::RateLimitServiceClient, RateLimitRequest, RateLimitResponse,
};
use rand::rngs::SmallRng;
use rand::SeedableRng;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tonic::transport::{Channel, Endpoint};

use crate::keys::KeyDist;
use crate::request::RequestShape;
use crate::stats::{Live, Outcome, Recorder, Sample};

pub type Client = RateLimitServiceClient<Channel>;

/// How requests are sent.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Pace {
    /// As fast as the responses come back.
    Closed,
    /// A fixed number of requests per second in total, whatever the responses do.
    Open { rate: f64 },
}

/// When a run ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    After(Duration),
    Requests(u64),
}

/// Everything a run needs.
#[derive(Debug, Clone)]
pub struct Plan {
    pub targets: Vec<String>,
    /// Connections per target.
    pub connections: usize,
    /// Requests in flight per connection.
    pub streams: usize,
    pub pace: Pace,
    pub stop: Stop,
    pub timeout: Duration,
    pub shape: RequestShape,
    pub keys: KeyDist,
    /// Keep per-key hits (for accuracy).
    pub track_keys: bool,
    /// Print a progress line on stderr every second.
    pub progress: bool,
    pub seed: u64,
}

/// What a run measured.
#[derive(Debug)]
pub struct RunResult {
    pub recorder: Recorder,
    /// From the first send to the last response.
    pub elapsed: Duration,
}

/// `127.0.0.1:8081` and `http://127.0.0.1:8081` both name a target.
pub fn normalize_target(target: &str) -> String {
    let t = target.trim();
    if t.contains("://") {
        t.to_string()
    } else {
        format!("http://{t}")
    }
}

/// Opens `connections` separate HTTP/2 connections to `target` (one tonic `Channel` each).
pub async fn connect(target: &str, connections: usize) -> anyhow::Result<Vec<Client>> {
    let endpoint = Endpoint::from_shared(target.to_string())
        .with_context(|| format!("{target:?} is not a valid target URI"))?
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_secs(5));
    let mut clients = Vec::with_capacity(connections);
    for _ in 0..connections {
        let channel = endpoint
            .connect()
            .await
            .with_context(|| format!("cannot connect to {target}: is the service running?"))?;
        clients.push(RateLimitServiceClient::new(channel));
    }
    Ok(clients)
}

/// One ShouldRateLimit call, bounded by `timeout` (reported as `DeadlineExceeded`).
pub async fn call(
    client: &mut Client,
    request: RateLimitRequest,
    timeout: Duration,
) -> Result<RateLimitResponse, tonic::Code> {
    match tokio::time::timeout(timeout, client.should_rate_limit(request)).await {
        Ok(Ok(response)) => Ok(response.into_inner()),
        Ok(Err(status)) => Err(status.code()),
        Err(_) => Err(tonic::Code::DeadlineExceeded),
    }
}

struct Shared {
    /// Next request index to claim.
    next: AtomicU64,
    live: Live,
    /// Open loop only: one permit per due request, then one stop permit per worker.
    permits: Semaphore,
    /// When the schedule started; set before the first permit is released.
    start: OnceLock<Instant>,
}

pub async fn run(plan: Plan) -> anyhow::Result<RunResult> {
    if plan.targets.is_empty() {
        bail!("no target given");
    }
    if plan.connections == 0 || plan.streams == 0 {
        bail!("--connections and --streams must be at least 1");
    }
    if let Pace::Open { rate } = plan.pace {
        if !(rate > 0.0 && rate <= 1e9) {
            bail!("--rate must be in (0, 1e9] requests per second, got {rate}");
        }
    }
    let mut per_target = Vec::with_capacity(plan.targets.len());
    for target in &plan.targets {
        per_target.push(connect(target, plan.connections).await?);
    }

    let workers = plan.connections * plan.streams;
    let shared = Arc::new(Shared {
        next: AtomicU64::new(0),
        live: Live::default(),
        permits: Semaphore::new(0),
        start: OnceLock::new(),
    });
    let total = match (plan.pace, plan.stop) {
        (_, Stop::Requests(n)) => Some(n),
        (Pace::Open { rate }, Stop::After(d)) => Some((rate * d.as_secs_f64()).ceil() as u64),
        (Pace::Closed, Stop::After(_)) => None,
    };
    let closed_start = Instant::now();
    let deadline = match plan.stop {
        Stop::After(d) => Some(offset(closed_start, d.as_secs_f64())),
        Stop::Requests(_) => None,
    };

    let mut handles = Vec::with_capacity(workers);
    for w in 0..workers {
        let worker = Worker {
            clients: per_target
                .iter()
                .map(|conns| conns[w % plan.connections].clone())
                .collect(),
            shared: Arc::clone(&shared),
            shape: plan.shape.clone(),
            sampler: plan.keys.sampler(),
            rng: SmallRng::seed_from_u64(plan.seed.wrapping_add(w as u64)),
            recorder: Recorder::new(
                plan.targets.len(),
                plan.track_keys,
                plan.shape.hits_per_request(),
            ),
            timeout: plan.timeout,
        };
        handles.push(match plan.pace {
            Pace::Open { rate } => tokio::spawn(worker.open_loop(rate, total.unwrap_or(0))),
            Pace::Closed => tokio::spawn(worker.closed_loop(total, deadline)),
        });
    }

    // Open loop: the schedule starts once every worker exists (they wait for permits), so
    // spawning them does not count as latency.
    let start = match plan.pace {
        Pace::Open { .. } => Instant::now(),
        Pace::Closed => closed_start,
    };
    let _ = shared.start.set(start);
    let _pacer = match plan.pace {
        Pace::Open { rate } => Some(Pacer::start(
            Arc::clone(&shared),
            start,
            rate,
            total.unwrap_or(0),
            workers,
        )),
        Pace::Closed => None,
    };
    let _progress = plan
        .progress
        .then(|| AbortOnDrop(tokio::spawn(progress(Arc::clone(&shared), start, total))));

    let mut merged = Recorder::new(
        plan.targets.len(),
        plan.track_keys,
        plan.shape.hits_per_request(),
    );
    for h in handles {
        merged.merge(h.await.context("a load worker panicked")?);
    }
    Ok(RunResult {
        recorder: merged,
        elapsed: start.elapsed(),
    })
}

struct Worker {
    /// One client per target.
    clients: Vec<Client>,
    shared: Arc<Shared>,
    shape: RequestShape,
    sampler: crate::keys::Sampler,
    rng: SmallRng,
    recorder: Recorder,
    timeout: Duration,
}

impl Worker {
    async fn closed_loop(mut self, total: Option<u64>, deadline: Option<Instant>) -> Recorder {
        loop {
            if deadline.is_some_and(|d| Instant::now() >= d) {
                break;
            }
            let i = self.shared.next.fetch_add(1, Ordering::Relaxed);
            if total.is_some_and(|n| i >= n) {
                break;
            }
            let sent = Instant::now();
            self.one(i, sent, sent).await;
        }
        self.recorder
    }

    async fn open_loop(mut self, rate: f64, total: u64) -> Recorder {
        loop {
            match self.shared.permits.acquire().await {
                Ok(permit) => permit.forget(),
                Err(_) => break,
            }
            let i = self.shared.next.fetch_add(1, Ordering::Relaxed);
            // The start is set before any permit exists, so it is always there.
            let Some(&start) = self.shared.start.get() else {
                break;
            };
            if i >= total {
                break;
            }
            let intended = offset(start, i as f64 / rate);
            let cutoff = offset(start, total as f64 / rate + self.timeout.as_secs_f64());
            let now = Instant::now();
            if now > cutoff {
                self.recorder.unsent += 1;
                continue;
            }
            self.one(i, intended, now).await;
        }
        self.recorder
    }

    async fn one(&mut self, i: u64, intended: Instant, sent: Instant) {
        let target = (i % self.clients.len() as u64) as usize;
        let key = self.sampler.sample(&mut self.rng);
        let request = self.shape.build(key);
        let result = call(&mut self.clients[target], request, self.timeout).await;
        let done = Instant::now();
        self.recorder.record(
            Sample {
                target,
                key,
                outcome: Outcome::of(&result),
                latency: done.saturating_duration_since(intended),
                service_time: done.saturating_duration_since(sent),
            },
            &self.shared.live,
        );
    }
}

/// `start + secs`, capped at 100 years: an absurd rate or duration never overflows an `Instant`.
fn offset(start: Instant, secs: f64) -> Instant {
    const CAP: Duration = Duration::from_secs(100 * 365 * 86_400);
    let d = Duration::try_from_secs_f64(secs).unwrap_or(CAP).min(CAP);
    start.checked_add(d).unwrap_or(start)
}

/// Releases request permits on schedule from a plain thread; stops when dropped.
struct Pacer {
    cancel: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Pacer {
    fn start(shared: Arc<Shared>, start: Instant, rate: f64, total: u64, workers: usize) -> Pacer {
        let cancel = Arc::new(AtomicBool::new(false));
        let stop = Arc::clone(&cancel);
        let thread = std::thread::spawn(move || {
            let mut released = 0u64;
            while released < total && !stop.load(Ordering::Relaxed) {
                let due = ((start.elapsed().as_secs_f64() * rate) as u64 + 1).min(total);
                if due > released {
                    shared.permits.add_permits((due - released) as usize);
                    released = due;
                }
                if released < total {
                    let next_at = offset(start, released as f64 / rate);
                    let wait = next_at.saturating_duration_since(Instant::now());
                    // Short naps keep a cancelled run from waiting on a slow schedule.
                    std::thread::sleep(wait.min(Duration::from_millis(50)));
                }
            }
            // One stop permit per worker: each takes one, finds no index left, and ends.
            shared.permits.add_permits(workers);
        });
        Pacer {
            cancel,
            thread: Some(thread),
        }
    }
}

impl Drop for Pacer {
    fn drop(&mut self) {
        self.cancel.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Owns a background task: it ends when the owner does.
pub struct AbortOnDrop(pub JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn progress(shared: Arc<Shared>, start: Instant, total: Option<u64>) {
    let second = Duration::from_secs(1);
    let mut tick = tokio::time::interval_at((start + second).into(), second);
    let mut last = 0u64;
    loop {
        tick.tick().await;
        let live = &shared.live;
        let done = live.done.load(Ordering::Relaxed);
        let of = total.map(|n| format!("/{n}")).unwrap_or_default();
        eprintln!(
            "[{:>6.1}s] {:>8} req/s | done {done}{of} | ok {} | over_limit {} | errors {}",
            start.elapsed().as_secs_f64(),
            done - last,
            live.ok.load(Ordering::Relaxed),
            live.over_limit.load(Ordering::Relaxed),
            live.errors.load(Ordering::Relaxed),
        );
        last = done;
    }
}
