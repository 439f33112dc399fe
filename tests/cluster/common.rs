pub use crate::ports::free_port;
use std::collections::BTreeMap;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::Entry;
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_client::RateLimitServiceClient;
use envoy_types::pb::envoy::service::ratelimit::v3::RateLimitRequest;
use envoy_types::pb::google::protobuf::UInt64Value;
use tempfile::TempDir;
use tollgate::clock::ManualClock;
use tollgate::replication::faults::Faults;
use tollgate::server::{self, Running};
use tollgate::settings::Settings;
use tonic::transport::Channel;

pub type View = (u32, i128, i128, Vec<(String, u64, u64, u64)>);

pub const T0: i64 = 1_700_000_000_000_000_000;

pub const CONFIG: &str =
    "domain: d\ndescriptors:\n  - key: k\n    rate_limit: {unit: hour, requests_per_unit: 100}\n";

pub struct Node {
    pub name: String,
    pub server: Running,
    pub clock: ManualClock,
    pub client: RateLimitServiceClient<Channel>,
}

impl Node {
    pub async fn start(
        name: &str,
        config_dir: &std::path::Path,
        peer_port: u16,
        peers: &[u16],
        clock: ManualClock,
        tweak: impl FnOnce(&mut Settings),
    ) -> Node {
        let mut settings = Settings {
            config: Some(config_dir.to_path_buf()),
            grpc_addr: "127.0.0.1:0".parse().expect("addr"),
            http_addr: "127.0.0.1:0".parse().expect("addr"),
            peer_addr: format!("127.0.0.1:{peer_port}").parse().expect("addr"),
            peers: peers.iter().map(|p| format!("127.0.0.1:{p}")).collect(),
            node_id: name.to_string(),
            sync_interval: Duration::from_millis(10),
            sync_timeout: Duration::from_secs(5),
            shutdown_timeout: Duration::from_secs(5),
            ..Settings::default()
        };
        tweak(&mut settings);
        let server = server::start_with_clock(settings, Arc::new(clock.clone()))
            .await
            .expect("node starts");
        let client = RateLimitServiceClient::connect(format!("http://{}", server.grpc_addr))
            .await
            .expect("connects");
        Node {
            name: name.to_string(),
            server,
            clock,
            client,
        }
    }

    pub fn ready(&self) -> bool {
        self.server.readiness.ready()
    }

    /// Deciding on its local share of every limit (a member is unreachable).
    pub fn fair_share(&self) -> bool {
        self.server.limiter.store().fair_share().is_some()
    }

    /// Take `hits` from key `value`; returns remaining tokens (None when refused).
    pub async fn take(&mut self, value: &str, hits: u64) -> Option<u32> {
        let r = self
            .client
            .should_rate_limit(req(value, hits))
            .await
            .expect("answered")
            .into_inner();
        (r.overall_code == 1).then(|| r.statuses[0].limit_remaining)
    }

    /// Remaining tokens of key `value`, without taking any.
    pub async fn remaining(&mut self, value: &str) -> u32 {
        self.client
            .should_rate_limit(req(value, 0))
            .await
            .expect("answered")
            .into_inner()
            .statuses[0]
            .limit_remaining
    }

    /// Every key's state with its slots named by replica (node, incarnation): replica ids
    /// are local to each node, so this is what two nodes can compare.
    pub fn view(&self) -> BTreeMap<u128, View> {
        let mut out = BTreeMap::new();
        self.server.limiter.store().for_each(|k, _, s| {
            let mut slots: Vec<_> = s
                .slots()
                .iter()
                .map(|x| {
                    let r = self.server.replicas.get(x.replica).expect("known replica");
                    (r.node, r.incarnation, x.consumed, x.requested)
                })
                .collect();
            slots.sort();
            out.insert(k.0, (s.gen(), s.base(), s.forgiven(), slots));
        });
        out
    }

    pub async fn metrics(&self) -> String {
        reqwest::get(format!("http://{}/metrics", self.server.http_addr))
            .await
            .expect("scrape")
            .text()
            .await
            .expect("body")
    }
}

pub fn req(value: &str, hits: u64) -> RateLimitRequest {
    RateLimitRequest {
        domain: "d".into(),
        descriptors: vec![RateLimitDescriptor {
            entries: vec![Entry {
                key: "k".into(),
                value: value.into(),
            }],
            hits_addend: Some(UInt64Value { value: hits }),
            ..Default::default()
        }],
        hits_addend: 0,
    }
}

pub struct Cluster {
    pub dir: TempDir,
    pub ports: Vec<u16>,
    pub nodes: Vec<Node>,
}

impl Cluster {
    /// `n` nodes, each listing every peer port, all on clocks at T0.
    pub async fn start(n: usize) -> Cluster {
        Cluster::start_with(n, |_| {}).await
    }

    /// `n` nodes whose links all go through one controllable network.
    pub async fn start_faulty(n: usize) -> (Cluster, Arc<Faults>) {
        let faults = Arc::new(Faults::new());
        let f = faults.clone();
        let c = Cluster::start_with(n, move |s| s.faults = Some(f.clone())).await;
        (c, faults)
    }

    /// `n` nodes with `tweak` applied to every node's settings.
    pub async fn start_with(n: usize, tweak: impl Fn(&mut Settings)) -> Cluster {
        Cluster::start_with_config(n, CONFIG, tweak).await
    }

    /// `n` nodes serving `config` instead of [`CONFIG`].
    pub async fn start_with_config(
        n: usize,
        config: &str,
        tweak: impl Fn(&mut Settings),
    ) -> Cluster {
        let dir = tempfile::tempdir().expect("tmp");
        std::fs::write(dir.path().join("c.yaml"), config).expect("config");
        let ports: Vec<u16> = (0..n).map(|_| free_port()).collect();
        let mut nodes = Vec::new();
        for (i, p) in ports.iter().enumerate() {
            nodes.push(
                Node::start(
                    &format!("n{i}"),
                    dir.path(),
                    *p,
                    &ports,
                    ManualClock::new(T0),
                    &tweak,
                )
                .await,
            );
        }
        let c = Cluster { dir, ports, nodes };
        eventually("every node ready", async || c.nodes.iter().all(Node::ready)).await;
        // The first nodes started before the others answered: they served in fair-share mode
        // until every member was up and caught up.
        eventually("no node in fair-share mode", async || {
            c.nodes.iter().all(|n| !n.fair_share())
        })
        .await;
        c
    }

    /// Converged, and every node's own consumption acknowledged by every peer (the burst
    /// guard holds nothing back).
    pub async fn settled(&self) {
        self.converged().await;
        eventually("every change acknowledged", async || {
            self.nodes
                .iter()
                .all(|n| n.server.limiter.store().unacked_keys() == 0)
        })
        .await;
    }

    /// Wait until every node holds the same state for every key.
    pub async fn converged(&self) {
        eventually("states converge", async || {
            let first = self.nodes[0].view();
            !first.is_empty() && self.nodes.iter().all(|n| n.view() == first)
        })
        .await;
    }
}

/// Poll until `f` holds, for at most 10 s.
pub async fn eventually(what: &str, mut f: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while tokio::time::Instant::now() < deadline {
        if f().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting for: {what}");
}

pub fn series(text: &str, prefix: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()))
        .sum()
}

/// A real `tollgate serve` process on loopback, killed when dropped.
pub struct Proc {
    pub name: String,
    pub child: Child,
    pub grpc: u16,
    pub http: u16,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Start `tollgate serve` as node `name`, serving the configs in `dir` on fresh gRPC and HTTP
/// ports, replicating on `peer` with `seeds` as its `--peers`, with `extra` flags after these.
pub fn spawn_tollgate(
    name: &str,
    dir: &std::path::Path,
    peer: u16,
    seeds: &[u16],
    extra: &[&str],
) -> Proc {
    spawn_tollgate_logged(name, dir, peer, seeds, extra, None)
}

/// [`spawn_tollgate`], with the process's log (stderr) written to `log` when given.
pub fn spawn_tollgate_logged(
    name: &str,
    dir: &std::path::Path,
    peer: u16,
    seeds: &[u16],
    extra: &[&str],
    log: Option<&std::path::Path>,
) -> Proc {
    let stderr = match log {
        Some(path) => Stdio::from(std::fs::File::create(path).expect("log file")),
        None => Stdio::null(),
    };
    let (grpc, http) = (free_port(), free_port());
    let list: Vec<String> = seeds.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    let child = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .arg("serve")
        .arg("--config")
        .arg(dir)
        .args(["--grpc-addr", &format!("127.0.0.1:{grpc}")])
        .args(["--http-addr", &format!("127.0.0.1:{http}")])
        .args(["--peer-addr", &format!("127.0.0.1:{peer}")])
        .args(["--peers", &list.join(",")])
        .args(["--node-id", name, "--sync-interval", "20ms"])
        .args(if extra.contains(&"--log-level") {
            &[][..]
        } else {
            &["--log-level", "warn"][..]
        })
        .args(extra)
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .expect("starts");
    Proc {
        name: name.to_string(),
        child,
        grpc,
        http,
    }
}

/// Send `signal` (`TERM`, `STOP`, `CONT`, ...) to a node's process, as kill(1) does.
pub fn signal(child: &Child, signal: &str) {
    let sent = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(child.id().to_string())
        .status()
        .expect("kill runs");
    assert!(sent.success(), "kill -{signal} {}", child.id());
}

/// Wait for a node's process to exit, at most `within`: its status.
pub async fn exit_within(child: &mut Child, within: Duration) -> ExitStatus {
    let deadline = Instant::now() + within;
    loop {
        if let Some(s) = child.try_wait().expect("wait") {
            return s;
        }
        assert!(Instant::now() < deadline, "no exit within {within:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
