//! What an autoscaled Deployment does to the membership, with real processes on loopback:
//! nodes join knowing one seed, one is killed with `kill -9` and replaced at a new address,
//! two are scaled down with SIGTERM, while every live node is driven at the limit of one key.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_client::RateLimitServiceClient;
use tokio::task::JoinHandle;

use crate::common::*;

/// 100/s with a burst of 100.
const LIMITS: &str = "domain: d\ndescriptors:\n  - key: k\n    value: fast\n    rate_limit: {unit: second, requests_per_unit: 100}\n";
const RATE: f64 = 100.0;
const CAPACITY: f64 = 100.0;

/// Short enough that the scenario takes seconds; the defaults are 500ms and 30s.
const PEER_TIMEOUT: &str = "300ms";
const DEAD_AFTER: Duration = Duration::from_millis(1500);

/// A forwarding TCP proxy: another address for the same peer port (a Service name, NAT).
pub struct Alias {
    pub port: u16,
    task: JoinHandle<()>,
}

impl Alias {
    pub async fn to(target: u16) -> Alias {
        // Bound where it is chosen: no other socket can take the port in between.
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
            .await
            .expect("bind alias");
        let port = listener.local_addr().expect("alias address").port();
        let task = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                tokio::spawn(async move {
                    if let Ok(mut out) = tokio::net::TcpStream::connect(("127.0.0.1", target)).await
                    {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                    }
                });
            }
        });
        Alias { port, task }
    }
}

impl Drop for Alias {
    fn drop(&mut self) {
        self.task.abort();
    }
}

type Member = Proc;

fn spawn(name: &str, dir: &std::path::Path, peer: u16, seeds: &[u16]) -> Member {
    let dead_after = format!("{}ms", DEAD_AFTER.as_millis());
    let extra = [
        "--peer-timeout",
        PEER_TIMEOUT,
        "--peer-dead-after",
        &dead_after,
    ];
    spawn_tollgate(name, dir, peer, seeds, &extra)
}

async fn scrape(m: &Member) -> Option<String> {
    let r = reqwest::get(format!("http://127.0.0.1:{}/metrics", m.http))
        .await
        .ok()?;
    r.text().await.ok()
}

/// (members counted, in fair-share mode) as the node reports them.
async fn view(m: &Member) -> Option<(u32, bool)> {
    let text = scrape(m).await?;
    Some((
        series(&text, "tollgate_cluster_members ") as u32,
        series(&text, "tollgate_fair_share_mode ") > 0.0,
    ))
}

async fn ready(m: &Member) {
    let url = format!("http://127.0.0.1:{}/readyz", m.http);
    eventually("process ready", async || {
        reqwest::get(&url)
            .await
            .is_ok_and(|r| r.status().is_success())
    })
    .await;
}

/// Drives one member at 1x the limit until told to stop, counting admissions in the current
/// phase's counter.
struct Load {
    stop: Arc<AtomicBool>,
    task: JoinHandle<()>,
}

struct Phases {
    current: AtomicUsize,
    admitted: Vec<AtomicU64>,
}

async fn drive(m: &Member, phases: Arc<Phases>) -> Load {
    let mut c = RateLimitServiceClient::connect(format!("http://127.0.0.1:{}", m.grpc))
        .await
        .expect("connects");
    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    let task = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / RATE));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Bounded: a scenario never runs a minute.
        let deadline = Instant::now() + Duration::from_secs(60);
        while !s.load(Ordering::Relaxed) && Instant::now() < deadline {
            tick.tick().await;
            let Ok(r) = c.should_rate_limit(req("fast", 1)).await else {
                return;
            };
            if r.into_inner().overall_code == 1 {
                let p = phases.current.load(Ordering::Relaxed);
                phases.admitted[p].fetch_add(1, Ordering::Relaxed);
            }
        }
    });
    Load { stop, task }
}

impl Load {
    async fn end(self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.task.await;
    }
}

async fn exited(m: &mut Member) {
    let s = exit_within(&mut m.child, Duration::from_secs(10)).await;
    assert!(s.success(), "{} exited with {s}", m.name);
}

/// The scenario. `alias`: every seed is given under another address (a proxy) than the one
/// its node advertises, so each member is known by two addresses.
async fn autoscaler_scenario(alias: bool) {
    let dir = tempfile::tempdir().expect("tmp");
    std::fs::write(dir.path().join("limits.yaml"), LIMITS).expect("config");
    let mut aliases: Vec<Alias> = Vec::new();
    let mut seed = async |port: u16| -> u16 {
        if alias {
            let a = Alias::to(port).await;
            let p = a.port;
            aliases.push(a);
            p
        } else {
            port
        }
    };
    let ports: Vec<u16> = (0..5).map(|_| free_port()).collect();
    let phases = Arc::new(Phases {
        current: AtomicUsize::new(0),
        admitted: (0..5).map(|_| AtomicU64::new(0)).collect(),
    });
    let names = [
        "two nodes",
        "+2 joined",
        "kill -9 + replacement",
        "after dead-after",
        "2 scaled down",
    ];
    let mut durations = [0f64; 5];
    let mut members: HashMap<usize, Member> = HashMap::new();
    let mut loads: HashMap<usize, Load> = HashMap::new();
    let s1 = seed(ports[1]).await;
    let s0 = seed(ports[0]).await;
    members.insert(0, spawn("a0", dir.path(), ports[0], &[s1]));
    members.insert(1, spawn("a1", dir.path(), ports[1], &[s0]));
    for i in [0, 1] {
        ready(&members[&i]).await;
    }
    let two: Vec<&Member> = vec![&members[&0], &members[&1]];
    converged_refs(&two, 2).await;
    let start = Instant::now();
    let mut phase_start = start;
    for i in [0, 1] {
        loads.insert(i, drive(&members[&i], phases.clone()).await);
    }
    tokio::time::sleep(Duration::from_secs(3)).await;

    // Phase 1: two nodes join, each knowing one seed.
    let mut next_phase = |p: usize, phase_start: &mut Instant| {
        durations[p - 1] = phase_start.elapsed().as_secs_f64();
        *phase_start = Instant::now();
        phases.current.store(p, Ordering::Relaxed);
    };
    next_phase(1, &mut phase_start);
    let (s0, s1) = (seed(ports[0]).await, seed(ports[1]).await);
    members.insert(2, spawn("a2", dir.path(), ports[2], &[s0]));
    members.insert(3, spawn("a3", dir.path(), ports[3], &[s1]));
    let joined = Instant::now();
    for i in [2, 3] {
        ready(&members[&i]).await;
        loads.insert(i, drive(&members[&i], phases.clone()).await);
    }
    let refs: Vec<&Member> = (0..4).map(|i| &members[&i]).collect();
    converged_refs(&refs, 4).await;
    let join_converged = joined.elapsed();
    tokio::time::sleep(Duration::from_secs(3).saturating_sub(phase_start.elapsed())).await;

    // Phase 2: a1 is killed; a replacement at a new address knows one seed (a3, which knew
    // only a1 when it joined).
    next_phase(2, &mut phase_start);
    let killed = Instant::now();
    if let Some(l) = loads.remove(&1) {
        l.end().await;
    }
    if let Some(mut m) = members.remove(&1) {
        signal(&m.child, "KILL");
        let _ = m.child.wait();
    }
    let s3 = seed(ports[3]).await;
    members.insert(4, spawn("a4", dir.path(), ports[4], &[s3]));
    ready(&members[&4]).await;
    loads.insert(4, drive(&members[&4], phases.clone()).await);
    let live = [0usize, 2, 3, 4];
    let refs: Vec<&Member> = live.iter().map(|i| &members[i]).collect();
    converged_refs(&refs, 4).await;
    let kill_converged = killed.elapsed();
    assert!(
        kill_converged >= DEAD_AFTER,
        "the dead member was forgotten before --peer-dead-after ({kill_converged:?})"
    );
    // The phase goes on a while on the whole limit, as a real one would.
    tokio::time::sleep(Duration::from_secs(2)).await;

    // Phase 3: every live node counts exactly the live members, none in fair share.
    next_phase(3, &mut phase_start);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let refs: Vec<&Member> = live.iter().map(|i| &members[i]).collect();
    converged_refs(&refs, 4).await;

    // Phase 4: two nodes are scaled down.
    next_phase(4, &mut phase_start);
    for i in [0usize, 3] {
        if let Some(l) = loads.remove(&i) {
            l.end().await;
        }
        if let Some(m) = members.get_mut(&i) {
            signal(&m.child, "TERM");
        }
    }
    for i in [0usize, 3] {
        if let Some(mut m) = members.remove(&i) {
            exited(&mut m).await;
        }
    }
    let refs: Vec<&Member> = [2usize, 4].iter().map(|i| &members[i]).collect();
    converged_refs(&refs, 2).await;
    tokio::time::sleep(Duration::from_secs(3).saturating_sub(phase_start.elapsed())).await;
    durations[4] = phase_start.elapsed().as_secs_f64();
    let total = start.elapsed().as_secs_f64();
    for (_, l) in loads.drain() {
        l.end().await;
    }

    let mut sum = 0u64;
    for (p, name) in names.iter().enumerate() {
        let got = phases.admitted[p].load(Ordering::Relaxed);
        sum += got;
        let ideal = RATE * durations[p] + if p == 0 { CAPACITY } else { 0.0 };
        println!(
            "phase {p} ({name}): {:.2} s, admitted {got}, ideal {ideal:.0} ({:+.1}%)",
            durations[p],
            (got as f64 - ideal) / ideal * 100.0
        );
        assert!(
            got as f64 >= 0.8 * RATE * durations[p],
            "phase {p} ({name}) admitted {got}: below 80% of r*T"
        );
    }
    let ideal = CAPACITY + RATE * total;
    let err = (sum as f64 - ideal) / ideal;
    println!(
        "alias {alias}: admitted {sum} over {total:.2} s; C + r*T = {ideal:.0}; error {:+.2}%; \
         join -> every member counts the joiners {join_converged:?}; kill -> views converged \
         {kill_converged:?} (--peer-dead-after {DEAD_AFTER:?})",
        err * 100.0
    );
    assert!(
        err.abs() <= 0.05,
        "admitted {sum}, ideal {ideal:.0} ({:+.2}%)",
        err * 100.0
    );
}

async fn converged_refs(members: &[&Member], n: u32) {
    // Gossip takes a few rounds; a kill takes --peer-dead-after plus the suspicion.
    let limit = DEAD_AFTER + Duration::from_secs(10);
    let start = Instant::now();
    loop {
        let mut all = true;
        let mut seen = Vec::new();
        for m in members {
            let v = view(m).await;
            seen.push((m.name.clone(), v));
            all &= v == Some((n, false));
        }
        if all {
            return;
        }
        assert!(
            start.elapsed() < limit,
            "views did not converge on {n} members out of fair share within {limit:?}: {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn autoscaled_nodes_join_die_and_leave_and_the_cluster_admits_c_plus_rt() {
    autoscaler_scenario(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_autoscaler_scenario_holds_with_seeds_under_alias_addresses() {
    autoscaler_scenario(true).await;
}
