//! Fleets: many in-process members that join knowing one seed, on the test network with
//! latency and 1% of the Deltas lost, their peer connections in memory (over loopback TCP a
//! hundred members would need 19,800 file descriptors, past this machine's limit). Load split
//! evenly over every member, then: how long until every member holds the same state of every
//! key, how far the cluster admitted past the limit against the design's bound, and what
//! replication cost per admitted request.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tollgate::clock::{Clock, ManualClock, Nanos, SharedClock};
use tollgate::replication::faults::Faults;

use crate::common::*;

/// Per key: 500 per hour, the clock stands still (no refill during the test).
const CAPACITY: u64 = 500;
const FLEET_CONFIG: &str =
    "domain: d\ndescriptors:\n  - key: k\n    rate_limit: {unit: hour, requests_per_unit: 500}\n";
const KEYS: usize = 2;
const SYNC: Duration = Duration::from_millis(10);
/// In paused time requests take no time: each member's go this far apart, so that the load
/// spans several sync intervals (a member's 40 requests over 80 ms).
const PACE: Duration = Duration::from_millis(2);

struct Fleet {
    _dir: tempfile::TempDir,
    nodes: Vec<Node>,
    net: Arc<Faults>,
}

/// Liveness time on tokio's clock: in a paused runtime it moves only when every task waits,
/// so what it measures is the protocol's delays (sync intervals, latency, copies, resends),
/// not how long 50 members waited for 2 cores.
struct TokioClock {
    anchor: Instant,
}

impl Clock for TokioClock {
    fn now(&self) -> Nanos {
        T0 + self.anchor.elapsed().as_nanos() as Nanos
    }
}

/// Poll `f` every few ms for at most `secs` of real time.
async fn within(what: &str, secs: u64, mut f: impl AsyncFnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(secs);
    while std::time::Instant::now() < deadline {
        if f().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("timed out after {secs} s waiting for: {what}");
}

impl Fleet {
    /// `n` members; each knows only the first one's address (its seed). Their liveness time
    /// is tokio's clock (paused or not, as the test's runtime is). Their links have `latency`
    /// from the start, as a real fleet's do: each link's round-trip estimate is the real one
    /// when the load comes (a latency set after the fleet formed would find every estimate
    /// near zero, and every frame of the load resent before its first ack came back).
    async fn start(n: usize, latency: Duration) -> Fleet {
        let dir = tempfile::tempdir().expect("tmp");
        std::fs::write(dir.path().join("c.yaml"), FLEET_CONFIG).expect("config");
        let net = Arc::new(Faults::in_memory());
        net.set_delay(latency);
        let seed = free_port();
        let liveness = SharedClock::new(TokioClock {
            anchor: Instant::now(),
        });
        let mut nodes = Vec::new();
        for i in 0..n {
            let port = if i == 0 { seed } else { free_port() };
            let f = net.clone();
            let liveness = liveness.clone();
            nodes.push(
                Node::start(
                    &format!("n{i}"),
                    dir.path(),
                    port,
                    &[seed],
                    ManualClock::new(T0),
                    move |s| {
                        s.liveness_clock = Some(liveness);
                        s.faults = Some(f);
                        s.sync_interval = SYNC;
                        s.sync_timeout = Duration::from_secs(30);
                    },
                )
                .await,
            );
        }
        let fleet = Fleet {
            _dir: dir,
            nodes,
            net,
        };
        within("every member knows every other", 120, async || {
            for node in &fleet.nodes {
                if series(&node.metrics().await, "tollgate_cluster_members ") != n as f64 {
                    return false;
                }
            }
            true
        })
        .await;
        within(
            "every member ready and out of fair-share mode",
            60,
            async || fleet.nodes.iter().all(|x| x.ready() && !x.fair_share()),
        )
        .await;
        fleet
    }

    /// Each of `names` summed over every member's series and every member.
    async fn totals<const N: usize>(&self, names: [&str; N]) -> [f64; N] {
        let mut sums = [0.0; N];
        for n in &self.nodes {
            let m = n.metrics().await;
            for (sum, name) in sums.iter_mut().zip(names) {
                *sum += series(&m, name);
            }
        }
        sums
    }

    /// Bytes and keys sent so far, and frames copied early, cluster-wide.
    async fn sent(&self) -> (f64, f64, f64) {
        let [bytes, keys, copied] = self
            .totals([
                "tollgate_replication_bytes_sent_total",
                "tollgate_replication_keys_sent_total",
                "tollgate_replication_frames_copied_total",
            ])
            .await;
        (bytes, keys, copied)
    }

    /// Frames resent so far, cluster-wide: a frame lost together with its early copy.
    async fn resent(&self) -> f64 {
        let [resent] = self
            .totals(["tollgate_replication_frames_resent_total"])
            .await;
        resent
    }

    fn converged(&self) -> bool {
        let first = self.nodes[0].view();
        first.len() == KEYS && self.nodes.iter().all(|n| n.view() == first)
    }

    /// The (receiver, origin) pairs where the receiver's copy of the origin's own slot of
    /// some key differs from the origin's: what a slow convergence waits for. One pair is a
    /// lost frame; many at once are members that did not get to run.
    fn lagging(&self) -> Vec<(String, String)> {
        let views: Vec<_> = self.nodes.iter().map(|n| n.view()).collect();
        // Member `o`'s own slot of `key` as `view` holds it.
        let slot = |view: &BTreeMap<u128, View>, key: &u128, o: usize| {
            let name = format!("n{o}");
            let (_, _, _, slots) = view.get(key)?;
            slots.iter().find(|s| s.0 == name).map(|s| (s.1, s.2, s.3))
        };
        let mut out = Vec::new();
        for (r, view) in views.iter().enumerate() {
            for o in (0..views.len()).filter(|o| *o != r) {
                let behind = views[o].keys().any(|k| {
                    let theirs = slot(&views[o], k, o);
                    theirs.is_some() && slot(view, k, o) != theirs
                });
                if behind {
                    out.push((format!("n{r}"), format!("n{o}")));
                }
            }
        }
        out
    }
}

/// The longest a 1 ms timer of this runtime overran, from `start` until dropped: how long a
/// ready task may have waited for one of the 2 cores that every member shares. A convergence
/// later than the protocol's delays by about this much waited for CPU, not for the network.
struct Overrun {
    worst_us: Arc<std::sync::atomic::AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Overrun {
    fn start() -> Overrun {
        let worst_us = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let w = worst_us.clone();
        let task = tokio::spawn(async move {
            loop {
                let t = Instant::now();
                tokio::time::sleep(Duration::from_millis(1)).await;
                let over = t.elapsed().saturating_sub(Duration::from_millis(1));
                w.fetch_max(
                    over.as_micros() as u64,
                    std::sync::atomic::Ordering::Relaxed,
                );
            }
        });
        Overrun { worst_us, task }
    }

    fn stop(self) -> Duration {
        self.task.abort();
        Duration::from_micros(self.worst_us.load(std::sync::atomic::Ordering::Relaxed))
    }
}

/// What one run measured.
#[derive(Debug)]
struct Run {
    admitted: Vec<u64>,
    converged_after: Duration,
    /// The worst timer overrun while converging ([`Overrun`]).
    overrun: Duration,
    /// Frames resent between the end of the load and convergence (read in paused time
    /// only: in real time reading 50 members' metrics would delay the measurement).
    resent_in_tail: Option<f64>,
    /// Frames copied early during the run, cluster-wide.
    copied: f64,
    bytes_per_admitted: f64,
    bytes_per_key_crossing: f64,
    crossings_per_request_per_member: f64,
}

/// Twice each key's capacity, split evenly over the members, all members at once; each
/// member's requests `pace` apart (`None`: back to back).
async fn run(n: usize, latency: Duration, pace: Option<Duration>) -> Run {
    let fleet = Fleet::start(n, latency).await;
    fleet.net.set_loss(loss(), 0, 0);
    let (bytes0, keys0, copied0) = fleet.sent().await;
    let per_node = (2 * CAPACITY as usize * KEYS).div_ceil(n);
    let tasks: Vec<_> = fleet
        .nodes
        .iter()
        .enumerate()
        .map(|(i, node)| {
            let mut client = node.client.clone();
            tokio::spawn(async move {
                let mut admitted = vec![0u64; KEYS];
                for r in 0..per_node {
                    let k = (i + r) % KEYS;
                    let answer = client
                        .should_rate_limit(req(&format!("key{k}"), 1))
                        .await
                        .expect("answered")
                        .into_inner();
                    if answer.overall_code == 1 {
                        admitted[k] += 1;
                    }
                    if let Some(p) = pace {
                        tokio::time::sleep(p).await;
                    }
                }
                admitted
            })
        })
        .collect();
    let mut admitted = vec![0u64; KEYS];
    for t in tasks {
        for (k, a) in t.await.expect("load task").into_iter().enumerate() {
            admitted[k] += a;
        }
    }
    let stopped = Instant::now();
    let resent_at_stop = match pace {
        Some(_) => Some(fleet.resent().await),
        None => None,
    };
    let overrun = Overrun::start();
    let target = 2 * SYNC + latency;
    // Past the target: who was behind then, and who was last.
    let (mut at_target, mut last) = (None, None);
    while !fleet.converged() {
        assert!(
            stopped.elapsed() < Duration::from_secs(30),
            "no convergence"
        );
        if stopped.elapsed() >= target {
            let behind = fleet.lagging();
            at_target.get_or_insert_with(|| behind.clone());
            if !behind.is_empty() {
                last = Some((stopped.elapsed(), behind));
            }
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let converged_after = stopped.elapsed();
    let overrun = overrun.stop();
    if let (Some(first), Some((when, last))) = (at_target, last) {
        eprintln!(
            "behind at {target:?}: {} (receiver, origin) pairs {:?}; last behind, at {when:?}: \
             {} {:?}",
            first.len(),
            &first[..first.len().min(6)],
            last.len(),
            &last[..last.len().min(6)]
        );
    }
    let resent_in_tail = match resent_at_stop {
        Some(r0) => Some(fleet.resent().await - r0),
        None => None,
    };
    fleet.net.set_loss(0, 0, 0);
    let (bytes1, keys1, copied1) = fleet.sent().await;
    let total: u64 = admitted.iter().sum();
    let r = Run {
        converged_after,
        overrun,
        resent_in_tail,
        copied: copied1 - copied0,
        bytes_per_admitted: (bytes1 - bytes0) / total as f64,
        bytes_per_key_crossing: (bytes1 - bytes0) / (keys1 - keys0),
        crossings_per_request_per_member: (keys1 - keys0) / (per_node * n) as f64 / (n - 1) as f64,
        admitted,
    };
    eprintln!(
        "fleet of {n}, one-way latency {latency:?}, {}% of Deltas lost: admitted {:?} of \
         {CAPACITY} per key, converged {:?} after the load (timers up to {:?} late meanwhile, \
         frames resent meanwhile: {:?}), \
         {:.0} bytes per admitted request cluster-wide, {:.0} bytes per key per link crossing, {:.3} crossings per request \
         per member",
        loss() as f64 / 10.0,
        r.admitted,
        r.converged_after,
        r.overrun,
        r.resent_in_tail,
        r.bytes_per_admitted,
        r.bytes_per_key_crossing,
        r.crossings_per_request_per_member
    );
    // With Deltas lost, lost frames are copied, and the copies are counted.
    if loss() > 0 {
        assert!(r.copied > 0.0, "no frame copied with {}‰ lost", loss());
    }
    r
}

/// The design's bound with the burst guard: besides the shares of what it sees, each member
/// may have `q_min = ceil(r * A) + 1` tokens in flight (A = d + 2l, the ack round trip).
fn bound(n: usize, latency: Duration) -> u64 {
    let r = CAPACITY as f64 / 3600.0;
    let a = (SYNC + 2 * latency).as_secs_f64();
    let q_min = (r * a).ceil() as u64 + 1;
    CAPACITY + n as u64 * q_min
}

/// How long after the load stops every key may take to converge in real time. The figure
/// itself (BENCHMARKS.md, "Replication at fleet scale") depends on what else the 2 cores run:
/// 50 members' rounds share them with the rest of the suite, and a member that waits for a
/// core sends late (the runs print the worst timer overrun). The ceiling catches what a
/// timing cannot hide: a key that converges only after a 1 s resend, a reconnect, or never.
/// The protocol's own delays are asserted in paused time ([`converges_in_paused_time`]).
const CONVERGENCE_CEILING: Duration = Duration::from_secs(2);

async fn check(n: usize, latency: Duration, pace: Option<Duration>) -> Run {
    let r = run(n, latency, pace).await;
    for (k, a) in r.admitted.iter().enumerate() {
        assert!(
            *a <= bound(n, latency),
            "key{k}: admitted {a}, capacity {CAPACITY}, bound {}",
            bound(n, latency)
        );
    }
    assert!(
        r.converged_after <= CONVERGENCE_CEILING,
        "converged after {:?}, ceiling {CONVERGENCE_CEILING:?}",
        r.converged_after
    );
    // No relaying in a whole mesh: each request's change (an admission, or a refusal's
    // demand count) crosses each link about once. Coalescing in a sync interval makes it
    // less; resends make it more: the 1% lost, and acks late behind 50 members on 2 busy
    // cores (measured 1.13-1.43). Relaying every merged change would make it about N-1 = 49.
    assert!(
        r.crossings_per_request_per_member <= 3.0,
        "{}",
        r.crossings_per_request_per_member
    );
    // With Deltas lost, lost frames are copied, and the copies are counted.
    if loss() > 0 {
        assert!(r.copied > 0.0, "no frame copied with {}‰ lost", loss());
    }
    r
}

/// Members in the fleet: 50 in the test suite (about a minute on CI's 2 cores with the other
/// cluster tests); `scripts/bench/fleet-in-process.sh` runs the same scenario at 100 through
/// `TOLLGATE_FLEET_MEMBERS`.
fn members() -> usize {
    env_or("TOLLGATE_FLEET_MEMBERS", 50)
}

/// Per-mille of the Deltas lost: 1 % unless `TOLLGATE_FLEET_LOSS_PER_MILLE` says otherwise
/// (the bench script's lossless runs).
fn loss() -> u32 {
    env_or("TOLLGATE_FLEET_LOSS_PER_MILLE", 10)
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v}: not a number")),
        Err(_) => default,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_one_ms_apart_converges_and_keeps_to_the_limit() {
    check(members(), Duration::from_millis(1), None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_25_ms_apart_converges_and_keeps_to_the_limit() {
    check(members(), Duration::from_millis(25), None).await;
}

/// In paused time (tokio's clock moves only when every task waits) the fleet's CPU costs
/// nothing, so what the convergence measures is the protocol: a sync interval for the last
/// change to go, the latency, and a sync interval for the early copy of a lost frame (on a
/// fast link, a round trip). Within two sync intervals plus the latency, as the design
/// says; plus the millisecond the convergence is polled at. A frame lost together with its
/// copy (one in 10,000 at 1 % loss) arrives in the copy's copy: a round trip after the copy
/// on a 1 ms link, with the copy in a frame of its own on a 25 ms one; lost with both (one in
/// a million) it would wait for its resend and miss the target.
/// A resend in the tail is such a frame, or a copy's late ack: a resend on most links is a
/// round-trip estimate below the real round trip (every frame resent before its ack came),
/// and fails.
async fn converges_in_paused_time(latency: Duration) {
    let n = members();
    let r = check(n, latency, Some(PACE)).await;
    let target = 2 * SYNC + latency + Duration::from_millis(1);
    assert!(
        r.converged_after <= target,
        "converged {:?} after the load, target {target:?} ({:?} frames resent meanwhile)",
        r.converged_after,
        r.resent_in_tail
    );
    let links = (n * (n - 1)) as f64;
    let resent = r.resent_in_tail.expect("counted in paused time");
    assert!(
        resent < links / 20.0,
        "{resent} frames resent after the load on {links} links"
    );
}

/// The case behind the copy's copy, made to happen rather than waited for: the one change
/// of a quiet cluster is lost, and its first copy too. On a 25 ms link no acknowledgement can
/// come back within a sync interval, so the copy's own copy goes with the copy, in a frame of
/// its own, and the change arrives within two sync intervals plus the latency. A copy's copy a
/// sync interval later would arrive 10 ms past that, and the resend more than a round trip
/// later.
#[tokio::test(start_paused = true)]
async fn in_paused_time_a_change_lost_with_its_copy_arrives_within_two_sync_intervals() {
    let latency = Duration::from_millis(25);
    let fleet = Fleet::start(2, latency).await;
    fleet.net.lose_next_deltas("n0", 2);
    let mut client = fleet.nodes[0].client.clone();
    let answer = client
        .should_rate_limit(req("key0", 1))
        .await
        .expect("answered")
        .into_inner();
    assert_eq!(answer.overall_code, 1, "admitted");
    let changed = Instant::now();
    let (a, b) = (&fleet.nodes[0], &fleet.nodes[1]);
    // Lost, not late: it goes with the next round, at most a sync interval after the change.
    tokio::time::sleep(SYNC + latency + Duration::from_micros(500)).await;
    assert_ne!(b.view(), a.view(), "the change itself was lost");
    while b.view() != a.view() {
        assert!(changed.elapsed() < Duration::from_secs(5), "never arrived");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let took = changed.elapsed();
    assert_eq!(
        fleet.net.planned_losses_left("n0"),
        0,
        "the change and its copy were both lost"
    );
    let target = 2 * SYNC + latency + Duration::from_millis(1);
    eprintln!("a change lost with its copy arrived {took:?} after it (target {target:?})");
    assert!(
        took <= target,
        "arrived {took:?} after the change, target {target:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn in_paused_time_a_fleet_one_ms_apart_converges_within_two_sync_intervals() {
    converges_in_paused_time(Duration::from_millis(1)).await;
}

#[tokio::test(start_paused = true)]
async fn in_paused_time_a_fleet_25_ms_apart_converges_within_two_sync_intervals() {
    converges_in_paused_time(Duration::from_millis(25)).await;
}
