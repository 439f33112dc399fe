//! Real `tollgate serve` processes replicating over loopback.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_client::RateLimitServiceClient;

use crate::common::*;

const LIMITS: &str = "domain: d\ndescriptors:\n  - key: k\n    value: fast\n    rate_limit: {unit: second, requests_per_unit: 100}\n  - key: k\n    rate_limit: {unit: hour, requests_per_unit: 100}\n";

fn spawn(name: &str, dir: &std::path::Path, peer: u16, peers: &[u16]) -> Proc {
    spawn_tollgate(name, dir, peer, peers, &[])
}

async fn ready(p: &Proc) {
    let url = format!("http://127.0.0.1:{}/readyz", p.http);
    eventually("process ready", async || {
        reqwest::get(&url)
            .await
            .is_ok_and(|r| r.status().is_success())
    })
    .await;
}

async fn client(p: &Proc) -> RateLimitServiceClient<tonic::transport::Channel> {
    RateLimitServiceClient::connect(format!("http://127.0.0.1:{}", p.grpc))
        .await
        .expect("connects")
}

async fn remaining(p: &Proc, value: &str) -> u32 {
    client(p)
        .await
        .should_rate_limit(req(value, 0))
        .await
        .expect("answered")
        .into_inner()
        .statuses[0]
        .limit_remaining
}

fn cluster() -> (tempfile::TempDir, Vec<u16>, Vec<Proc>) {
    let dir = tempfile::tempdir().expect("tmp");
    std::fs::write(dir.path().join("limits.yaml"), LIMITS).expect("config");
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let procs = (0..3)
        .map(|i| spawn(&format!("p{i}"), dir.path(), ports[i], &ports))
        .collect();
    (dir, ports, procs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn even_load_at_six_times_the_limit_admits_within_three_percent_of_c_plus_rt() {
    let (_dir, _ports, procs) = cluster();
    for p in &procs {
        ready(p).await;
    }
    // 100/s with a burst of 100; 200 requests/s offered to each of the three nodes for 10 s.
    let admitted = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let run_for = Duration::from_secs(10);
    let mut tasks = Vec::new();
    for p in &procs {
        let mut c = client(p).await;
        let admitted = admitted.clone();
        tasks.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(5));
            let mut last = Instant::now();
            while start.elapsed() < run_for {
                tick.tick().await;
                let r = c
                    .should_rate_limit(req("fast", 1))
                    .await
                    .expect("answered")
                    .into_inner();
                if r.overall_code == 1 {
                    admitted.fetch_add(1, Ordering::Relaxed);
                }
                last = Instant::now();
            }
            last
        }));
    }
    let mut last = start;
    for t in tasks {
        last = last.max(t.await.expect("task"));
    }
    let t = (last - start).as_secs_f64();
    let ideal = 100.0 + 100.0 * t;
    let got = admitted.load(Ordering::Relaxed) as f64;
    let err = (got - ideal) / ideal;
    println!(
        "admitted {got} over {t:.2} s; C + r*T = {ideal:.1}; error {:+.2}%",
        err * 100.0
    );
    assert!(
        err.abs() <= 0.03,
        "admitted {got}, ideal {ideal:.1} ({:+.2}%)",
        err * 100.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_dash_9_and_restart_brings_back_the_cluster_state() {
    let (dir, ports, mut procs) = cluster();
    for p in &procs {
        ready(p).await;
    }
    for p in &procs {
        let r = client(p)
            .await
            .should_rate_limit(req("hourly", 30))
            .await
            .expect("answered")
            .into_inner();
        assert_eq!(r.overall_code, 1);
    }
    // States converge within a second after traffic stops.
    let converged_at = Instant::now();
    let mut all = Vec::new();
    while converged_at.elapsed() < Duration::from_secs(1) {
        all.clear();
        for p in &procs {
            all.push(remaining(p, "hourly").await);
        }
        if all.iter().all(|r| *r == 10) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(all, vec![10, 10, 10], "converged within 1 s");

    // kill -9 one node: no handoff, no goodbye. Its admissions were already replicated.
    let victim = procs.remove(1);
    drop(victim);
    let back = spawn("p1", dir.path(), ports[1], &ports);
    ready(&back).await;
    assert_eq!(
        remaining(&back, "hourly").await,
        10,
        "not a full bucket after restart"
    );
    let r = client(&back)
        .await
        .should_rate_limit(req("hourly", 11))
        .await
        .expect("answered")
        .into_inner();
    assert_eq!(r.overall_code, 2, "only 10 left cluster-wide");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_hands_off_before_exit() {
    let (_dir, _ports, mut procs) = cluster();
    for p in &procs {
        ready(p).await;
    }
    let leaving = procs.remove(0);
    let r = client(&leaving)
        .await
        .should_rate_limit(req("bye", 55))
        .await
        .expect("answered")
        .into_inner();
    assert_eq!(r.overall_code, 1);
    let mut leaving = leaving;
    signal(&leaving.child, "TERM");
    let status = exit_within(&mut leaving.child, Duration::from_secs(10)).await;
    assert!(status.success(), "{status}");
    for p in &procs {
        assert_eq!(remaining(p, "bye").await, 45);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handoff_with_no_peer_reachable_says_so_instead_of_claiming_success() {
    let dir = tempfile::tempdir().expect("tmp");
    std::fs::write(dir.path().join("c.yaml"), LIMITS).expect("config");
    let log = dir.path().join("node.log");
    let (peer, nobody) = (free_port(), free_port());
    let mut p = spawn_tollgate_logged(
        "lonely",
        dir.path(),
        peer,
        &[nobody],
        &["--log-level", "info", "--shutdown-timeout", "2s"],
        Some(&log),
    );
    let url = format!("http://127.0.0.1:{}/healthz", p.http);
    eventually("process serving", async || {
        reqwest::get(&url)
            .await
            .is_ok_and(|r| r.status().is_success())
    })
    .await;
    // Something admitted, so there is state to hand off.
    let _ = client(&p).await.should_rate_limit(req("fast", 1)).await;
    signal(&p.child, "TERM");
    exit_within(&mut p.child, Duration::from_secs(15)).await;
    let text = std::fs::read_to_string(&log).expect("log");
    assert!(
        text.contains("no peer is connected, so no peer acknowledged"),
        "the log says no peer took the state:\n{text}"
    );
    assert!(
        !text.contains("handoff complete"),
        "no handoff is claimed:\n{text}"
    );
}

/// The worst case the chart's grace period must cover: a request that never ends holds the
/// drain, and a frozen peer (`SIGSTOP`: its connections open, nothing acknowledged) holds the
/// handoff and the peer server's stop. `--shutdown-timeout` is one deadline for all of it;
/// it once applied to the drain and the handoff in turn, plus a fixed 5 s for the stop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_deadline_bounds_the_whole_shutdown_with_a_held_request_and_a_frozen_peer() {
    let dir = tempfile::tempdir().expect("tmp");
    std::fs::write(dir.path().join("limits.yaml"), LIMITS).expect("config");
    let (pa, pb) = (free_port(), free_port());
    let slow = [
        "--shutdown-timeout",
        "2s",
        "--peer-timeout",
        "20s",
        "--peer-dead-after",
        "30s",
    ];
    let mut a = spawn_tollgate("a", dir.path(), pa, &[pb], &slow);
    let b = spawn_tollgate("b", dir.path(), pb, &[pa], &slow);
    ready(&a).await;
    ready(&b).await;
    signal(&b.child, "STOP");
    // Admitted on a, never acknowledged by the frozen b: the handoff waits for it.
    let r = client(&a)
        .await
        .should_rate_limit(req("held", 5))
        .await
        .expect("answered")
        .into_inner();
    assert_eq!(r.overall_code, 1);
    let _held = hold_request(a.grpc);
    let sent = Instant::now();
    signal(&a.child, "TERM");
    let status = exit_within(&mut a.child, Duration::from_secs(20)).await;
    let took = sent.elapsed();
    signal(&b.child, "CONT");
    assert!(status.success(), "{status}");
    eprintln!("exit {took:?} after SIGTERM with --shutdown-timeout 2s");
    assert!(
        took >= Duration::from_millis(1500) && took < Duration::from_millis(2800),
        "the whole shutdown takes the one deadline, not more: {took:?}"
    );
}

/// A connection to the gRPC port `port` with one ShouldRateLimit request open: its headers
/// sent, its body never. The server counts it in flight until the connection closes.
fn hold_request(port: u16) -> std::net::TcpStream {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connects");
    crate::raw_h2::h2_handshake(&mut s);
    std::io::Write::write_all(
        &mut s,
        &crate::raw_h2::frame(0x1, 0x4, 1, &crate::raw_h2::request_headers()),
    )
    .expect("headers");
    s
}
