//! End to end against the in-process no-op server on ephemeral 127.0.0.1 ports.
//!
//! The listener is bound before the server task starts, so a client can connect at once: the
//! kernel queues the connection until `serve` accepts it. No sleeps.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use tollgate_load::cli::{Cli, Command};
use tollgate_load::driver::{self, Pace, Plan, RunResult, Stop};
use tollgate_load::keys::KeyDist;
use tollgate_load::noop;
use tollgate_load::report::{Report, Setup};
use tollgate_load::request::RequestShape;
use tollgate_load::scenario;

/// A running no-op server; stops and is awaited when `stop` is called.
struct Noop {
    url: String,
    stop: oneshot::Sender<()>,
    task: JoinHandle<Result<(), tonic::transport::Error>>,
}

impl Noop {
    async fn start() -> Noop {
        let any: SocketAddr = "127.0.0.1:0".parse().expect("valid address");
        let listener = noop::bind(any).await.expect("bind an ephemeral port");
        let addr = listener.local_addr().expect("bound address");
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(noop::serve(listener, async {
            let _ = stopped.await;
        }));
        Noop {
            url: format!("http://{addr}"),
            stop,
            task,
        }
    }

    async fn stop(self) {
        let _ = self.stop.send(());
        self.task
            .await
            .expect("server task joined")
            .expect("server ended cleanly");
    }
}

fn plan(targets: Vec<String>, pace: Pace, stop: Stop) -> Plan {
    Plan {
        targets,
        connections: 2,
        streams: 4,
        pace,
        stop,
        timeout: Duration::from_secs(5),
        shape: RequestShape::new("loadtest", 2, &[], "it", None, None),
        keys: KeyDist::Uniform { n: 10 },
        track_keys: true,
        progress: false,
        seed: 1,
    }
}

fn assert_all_ok(result: &RunResult, expected: u64) {
    let r = &result.recorder;
    assert_eq!(r.total.requests, expected);
    assert_eq!(r.total.ok, expected, "every decision is OK");
    assert_eq!(
        (r.total.over_limit, r.total.unknown, r.total.errors),
        (0, 0, 0)
    );
    assert!(r.errors.is_empty(), "errors: {:?}", r.errors);
    assert_eq!(r.latency.len(), expected);
    let per_key = r.per_key.as_ref().expect("keys tracked");
    let offered: u64 = per_key.values().map(|k| k.offered).sum();
    let admitted: u64 = per_key.values().map(|k| k.admitted).sum();
    assert_eq!((offered, admitted), (expected, expected));
    assert!(per_key.keys().all(|&k| k < 10));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_loop_request_count_is_exact_and_all_ok() {
    let server = Noop::start().await;
    let result = driver::run(plan(
        vec![server.url.clone()],
        Pace::Closed,
        Stop::Requests(500),
    ))
    .await
    .expect("run");
    assert_all_ok(&result, 500);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_loop_for_a_duration_stops_by_itself() {
    let server = Noop::start().await;
    let result = driver::run(plan(
        vec![server.url.clone()],
        Pace::Closed,
        Stop::After(Duration::from_millis(300)),
    ))
    .await
    .expect("run");
    let n = result.recorder.total.requests;
    assert!(n > 0, "some requests completed");
    assert_all_ok(&result, n);
    assert!(result.elapsed >= Duration::from_millis(300));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_loop_one_second_at_200_per_second_sends_200() {
    let server = Noop::start().await;
    let result = driver::run(plan(
        vec![server.url.clone()],
        Pace::Open { rate: 200.0 },
        Stop::After(Duration::from_secs(1)),
    ))
    .await
    .expect("run");
    assert_all_ok(&result, 200);
    // The pacer never releases request i before i / rate: the last one (199) at 0.995 s.
    assert!(
        result.elapsed >= Duration::from_millis(995),
        "{:?}",
        result.elapsed
    );
    assert!(
        result.elapsed < Duration::from_secs(5),
        "{:?}",
        result.elapsed
    );
    let report = Report::build(
        Setup::of(
            "run",
            &plan(
                vec![server.url.clone()],
                Pace::Open { rate: 200.0 },
                Stop::Requests(200),
            ),
        ),
        result,
        None,
    );
    assert!(report.throughput_rps > 0.0 && report.throughput_rps <= 202.0);
    assert_eq!(report.decisions.ok, 200);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_round_robin_across_targets() {
    let (a, b) = (Noop::start().await, Noop::start().await);
    let result = driver::run(plan(
        vec![a.url.clone(), b.url.clone()],
        Pace::Closed,
        Stop::Requests(101),
    ))
    .await
    .expect("run");
    assert_all_ok(&result, 101);
    let per_target: Vec<u64> = result
        .recorder
        .per_target
        .iter()
        .map(|c| c.requests)
        .collect();
    assert_eq!(per_target, [51, 50]);
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cold_burst_on_a_limitless_server_shows_over_admission() {
    let (a, b) = (Noop::start().await, Noop::start().await);
    let targets = format!("{},{}", a.url, b.url);
    let cli = Cli::try_parse_from([
        "tollgate-load",
        "scenario",
        "cold-burst",
        "--targets",
        &targets,
        "--per-target",
        "20",
        "--connections",
        "2",
        "--limit",
        "10/s",
        "--override",
    ])
    .expect("valid flags");
    let Command::Scenario(args) = cli.command else {
        panic!("expected scenario");
    };
    let report = scenario::run(&args).await.expect("scenario");
    assert_eq!(report.requests, 40);
    assert_eq!(report.decisions.ok, 40);
    assert!(report.per_target.iter().all(|t| t.counts.ok == 20));
    let accuracy = report.accuracy.as_ref().expect("limit given");
    assert_eq!(accuracy.keys, 1);
    assert_eq!(accuracy.total.admitted, 40);
    // The no-op server admits everything: 40 against C + r*T = 10 + 10 * T.
    assert!(accuracy.total.error > 0.0, "{accuracy:?}");
    let json: serde_json::Value =
        serde_json::from_str(&report.to_json()).expect("report is valid JSON");
    assert_eq!(json["setup"]["mode"], "cold-burst");
    assert_eq!(json["decisions"]["OK"], 40);
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_target_is_a_clear_error() {
    let any: SocketAddr = "127.0.0.1:0".parse().expect("valid address");
    let listener = noop::bind(any).await.expect("bind");
    let addr = listener.local_addr().expect("bound address");
    drop(listener);
    let err = driver::run(plan(
        vec![format!("http://{addr}")],
        Pace::Closed,
        Stop::Requests(1),
    ))
    .await
    .expect_err("nothing listens there");
    assert!(format!("{err:#}").contains("cannot connect"), "{err:#}");
}

/// A server that accepts connections and never answers: every call times out.
async fn black_hole() -> (String, JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("bound address");
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    (format!("http://{addr}"), task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_that_falls_behind_gets_timeouts_by_code_and_unsent_requests() {
    let (url, task) = black_hole().await;
    let mut p = plan(
        vec![url],
        Pace::Open { rate: 100.0 },
        Stop::After(Duration::from_millis(200)),
    );
    (p.connections, p.streams) = (1, 1);
    p.timeout = Duration::from_millis(100);
    let result = driver::run(p).await.expect("run");
    let r = &result.recorder;
    // 20 scheduled; one worker, each call 100 ms: a few time out before the cutoff at
    // 0.2 s + 0.1 s, the rest are not sent.
    assert_eq!(r.total.errors + r.unsent, 20);
    assert!(r.total.errors >= 1 && r.unsent >= 1, "{r:?}");
    assert_eq!(r.total.ok, 0);
    assert_eq!(r.errors.get("DeadlineExceeded"), Some(&r.total.errors));
    task.abort();
}
