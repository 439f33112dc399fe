//! Replication: every node decides locally and exchanges bucket states with its peers over one
//! gRPC stream per peer (anti-entropy). Bucket states are CRDTs, so a state can be sent any
//! number of times, in any order, and merging converges.
//!
//! - [`link`]: the stream this node dials to each peer, which carries this node's changes out:
//!   a full snapshot when the peer is new (new incarnation), then coalesced deltas every
//!   `sync_interval`, resent after a reconnect until acknowledged.
//! - [`service`]: the other end: merges what peers send, acknowledges, answers pings.
//! - [`members`]: who the peers are (a static list, a DNS name re-resolved periodically).
//! - this module: the shared state, the fan-out of changed keys to every link, readiness (a new
//!   node is not ready until it holds every reachable peer's snapshot), and the handoff on
//!   shutdown.

mod auth;
mod codec;
mod link;
mod members;
mod replicas;
mod service;

pub mod proto {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("tollgate.replication.v1");
}

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use metrics::{Counter, Gauge, Label};
use parking_lot::Mutex;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

pub use codec::FrameError;
pub use replicas::{Replica, ReplicaTable};

use crate::limiter::Limiter;
use crate::metrics::Metrics;
use crate::readiness::Readiness;
use crate::store::{KeyId, Store};
use link::Link;

/// Major version of the peer protocol; a peer speaking another major version is refused.
pub const PROTOCOL_VERSION: u32 = 1;

#[derive(Debug, Clone)]
pub struct ReplicationSettings {
    pub node_id: String,
    pub incarnation: u64,
    pub cluster_id: String,
    pub secret: Option<Vec<u8>>,
    /// Peer stream addresses (`host:port`); this node's own address may be among them.
    pub peers: Vec<String>,
    /// `NAME:PORT`: a DNS name (Kubernetes headless Service) re-resolved every few seconds.
    pub peer_dns: Option<String>,
    pub sync_interval: Duration,
    /// How long a starting node waits for its peers' snapshots before serving anyway.
    pub sync_timeout: Duration,
    pub max_frame_bytes: usize,
    /// A peer whose clock is further off than this is quarantined (its states are not merged).
    pub max_clock_offset: Duration,
    /// The peer address other nodes dial to reach this one; empty when it cannot be known here
    /// (listening on 0.0.0.0 with no --peer-dns: peers must then list it themselves).
    pub advertise_addr: String,
}

impl ReplicationSettings {
    pub fn enabled(&self) -> bool {
        !self.peers.is_empty() || self.peer_dns.is_some()
    }
}

/// Replication metrics, per peer where it helps the on-call find the broken link.
pub(crate) struct ReplMetrics {
    metrics: Arc<Metrics>,
    pub peers: Gauge,
    pub connected: Gauge,
    pub merges: Counter,
    pub quarantined: Gauge,
}

impl ReplMetrics {
    fn new(metrics: Arc<Metrics>) -> Self {
        ReplMetrics {
            peers: metrics.gauge("tollgate_peers", vec![]),
            connected: metrics.gauge("tollgate_peers_connected", vec![]),
            merges: metrics.counter("tollgate_replication_merges_total", vec![]),
            quarantined: metrics.gauge("tollgate_peers_quarantined", vec![]),
            metrics,
        }
    }

    pub fn refused(&self, reason: &'static str) {
        self.metrics
            .counter(
                "tollgate_replication_frames_refused_total",
                vec![Label::new("reason", reason)],
            )
            .increment(1);
    }

    pub fn peer_counter(&self, name: &'static str, peer: &str) -> Counter {
        self.metrics
            .counter(name, vec![Label::new("peer", peer.to_string())])
    }

    pub fn peer_gauge(&self, name: &'static str, peer: &str) -> Gauge {
        self.metrics
            .gauge(name, vec![Label::new("peer", peer.to_string())])
    }
}

pub(crate) struct Shared {
    pub settings: ReplicationSettings,
    pub store: Arc<Store>,
    pub limiter: Arc<Limiter>,
    pub readiness: Arc<Readiness>,
    pub replicas: Arc<ReplicaTable>,
    /// Outbound links, by peer address.
    pub links: Mutex<HashMap<String, Arc<Link>>>,
    /// Nodes whose full snapshot this process has received.
    pub snapshots_from: Mutex<HashSet<String>>,
    /// Keys just merged from a node that already holds the merged state: not sent back to it.
    pub suppress: Mutex<HashMap<KeyId, (String, u32)>>,
    /// Nodes whose clocks are too far off: their states are not merged.
    pub quarantined: Mutex<HashSet<String>>,
    pub metrics: ReplMetrics,
    pub started: Instant,
    pub synced: AtomicBool,
}

impl Shared {
    pub fn now(&self) -> i64 {
        self.limiter.clock().now()
    }

    pub fn me(&self) -> Replica {
        self.replicas.me()
    }

    /// This node's Hello, signed.
    pub fn hello(&self) -> proto::Hello {
        let me = self.me();
        let mut h = proto::Hello {
            protocol_version: PROTOCOL_VERSION,
            cluster_id: self.settings.cluster_id.clone(),
            config_hash: self.limiter.active().config.fingerprint(),
            node: me.node,
            incarnation: me.incarnation,
            wall_ns: self.now(),
            auth: Vec::new(),
            advertise_addr: self.settings.advertise_addr.clone(),
        };
        auth::sign(self.settings.secret.as_deref(), &mut h);
        h
    }

    /// Check a peer's Hello: same protocol, cluster, config and secret. The error names the
    /// reason (for the metric label) and says what differs.
    pub fn check_hello(&self, h: &proto::Hello) -> Result<(), (&'static str, String)> {
        if h.protocol_version != PROTOCOL_VERSION {
            return Err((
                "protocol_version",
                format!(
                    "peer {} speaks protocol version {}, this node {}",
                    h.node, h.protocol_version, PROTOCOL_VERSION
                ),
            ));
        }
        if h.cluster_id != self.settings.cluster_id {
            return Err((
                "cluster_id",
                format!(
                    "peer {} is in cluster '{}', this node in '{}'",
                    h.node, h.cluster_id, self.settings.cluster_id
                ),
            ));
        }
        auth::verify(self.settings.secret.as_deref(), h, self.now())
            .map_err(|e| ("auth", format!("peer {}: {e}", h.node)))?;
        let ours = self.limiter.active().config.fingerprint();
        if h.config_hash != ours {
            return Err((
                "config_hash",
                format!(
                    "peer {} serves another rate limit config (hash {:016x}, ours {ours:016x})",
                    h.node, h.config_hash
                ),
            ));
        }
        Ok(())
    }

    /// Hand the keys changed since the last call to every link, except back to a node that
    /// already holds the merged state.
    fn fan_out(&self, buf: &mut Vec<KeyId>) {
        buf.clear();
        self.store.drain_dirty(buf);
        let suppress = std::mem::take(&mut *self.suppress.lock());
        if buf.is_empty() {
            return;
        }
        let skip: Vec<Option<String>> = buf
            .iter()
            .map(|k| {
                suppress.get(k).and_then(|(node, v)| {
                    (self.store.version(*k) == Some(*v)).then(|| node.clone())
                })
            })
            .collect();
        let links: Vec<Arc<Link>> = self.links.lock().values().cloned().collect();
        for link in links {
            let node = link.connected_node();
            let mut dirty = link.dirty.lock();
            for (k, skip) in buf.iter().zip(&skip) {
                if skip.is_some() && skip.as_deref() == node.as_deref() {
                    continue;
                }
                dirty.insert(*k);
            }
        }
    }

    /// A new node is ready once every peer it could reach has sent its full snapshot, or when
    /// the sync timeout passes (logged: it then serves on what it has).
    fn check_ready(&self) {
        if self.synced.load(Ordering::Acquire) {
            return;
        }
        let links: Vec<Arc<Link>> = self.links.lock().values().cloned().collect();
        let all_tried = links.iter().all(|l| l.tried());
        // A quarantined peer's states are not merged, so its snapshot is not waited for.
        let waiting: Vec<String> = {
            let got = self.snapshots_from.lock();
            let quarantined = self.quarantined.lock();
            links
                .iter()
                .filter_map(|l| l.connected_node())
                .filter(|n| !got.contains(n) && !quarantined.contains(n))
                .collect()
        };
        let timed_out = self.started.elapsed() >= self.settings.sync_timeout;
        if (all_tried && waiting.is_empty()) || timed_out {
            if timed_out && !waiting.is_empty() {
                warn!(
                    ?waiting,
                    "sync timeout: serving without the snapshots of these peers"
                );
            }
            self.synced.store(true, Ordering::Release);
            self.readiness.set_synced(true);
            self.limiter.metrics().ready.set(1.0);
            info!(elapsed = ?self.started.elapsed(), "synced with peers: ready");
        }
    }

    /// This node is the clock outlier when it quarantines more than half of two or more
    /// connected peers: then it is the one that is off, and it stops taking traffic. (With a
    /// single peer nobody can tell which clock is wrong, so neither steps back.)
    pub fn update_outlier(&self) {
        let connected = self
            .links
            .lock()
            .values()
            .filter(|l| l.connected_node().is_some())
            .count();
        let quarantined = self.quarantined.lock().len();
        self.metrics.quarantined.set(quarantined as f64);
        let outlier = connected >= 2 && quarantined * 2 > connected;
        self.readiness.set_outlier(outlier);
    }
}

impl Shared {
    /// A peer that dialed us from an address we do not dial yet: dial it back, so a joining
    /// node needs to know only one member.
    pub fn learn(self: &Arc<Self>, addr: &str, stop: &CancellationToken) {
        if addr.is_empty() || addr == self.settings.advertise_addr {
            return;
        }
        if self.add_link(&mut self.links.lock(), addr, stop) {
            info!(%addr, "learned a new peer");
        }
    }

    /// Start dialing `addr` unless a link to it exists; returns whether one was added.
    pub fn add_link(
        self: &Arc<Self>,
        links: &mut HashMap<String, Arc<Link>>,
        addr: &str,
        stop: &CancellationToken,
    ) -> bool {
        if links.contains_key(addr) {
            return false;
        }
        let l = Arc::new(Link::new(self, addr.to_string(), stop.child_token()));
        links.insert(addr.to_string(), l.clone());
        tokio::spawn(link::run(self.clone(), l));
        true
    }
}

/// The running replication of one node.
pub struct Replicator {
    shared: Arc<Shared>,
    stop: CancellationToken,
    server: tokio::task::JoinHandle<()>,
    pub peer_addr: SocketAddr,
}

impl Replicator {
    /// Listen for peers on `listener` and start dialing them. Readiness goes true once the
    /// node holds its peers' snapshots.
    pub async fn start(
        settings: ReplicationSettings,
        replicas: Arc<ReplicaTable>,
        listener: TcpListener,
        store: Arc<Store>,
        limiter: Arc<Limiter>,
        readiness: Arc<Readiness>,
    ) -> anyhow::Result<Replicator> {
        let peer_addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            metrics: ReplMetrics::new(limiter.metrics().clone()),
            settings,
            store,
            limiter,
            readiness,
            replicas,
            links: Mutex::new(HashMap::new()),
            snapshots_from: Mutex::new(HashSet::new()),
            suppress: Mutex::new(HashMap::new()),
            quarantined: Mutex::new(HashSet::new()),
            started: Instant::now(),
            synced: AtomicBool::new(false),
        });
        let stop = CancellationToken::new();
        let server = tokio::spawn(service::serve(shared.clone(), listener, stop.clone()));
        members::update(&shared, &stop).await;
        tokio::spawn(members::run(shared.clone(), stop.clone()));
        tokio::spawn(ticker(shared.clone(), stop.clone()));
        info!(%peer_addr, node = %shared.settings.node_id, incarnation = shared.settings.incarnation, "replication started");
        Ok(Replicator {
            shared,
            stop,
            server,
            peer_addr,
        })
    }

    /// Shutdown handoff: push every pending change to every connected peer and wait (bounded)
    /// for their acknowledgements, so a node scaled down loses nothing it admitted.
    pub async fn hand_off(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut buf = Vec::new();
        self.shared.fan_out(&mut buf);
        loop {
            let pending: usize = self
                .shared
                .links
                .lock()
                .values()
                .filter(|l| l.connected_node().is_some())
                .map(|l| l.pending())
                .sum();
            if pending == 0 {
                info!("handoff complete: every peer acknowledged this node's state");
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                warn!(pending, "handoff timed out with changes not acknowledged");
                return false;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Stop every link and the peer server, and wait (bounded) until the peer port is free.
    pub async fn stop(mut self) {
        self.stop.cancel();
        let server = &mut self.server;
        if tokio::time::timeout(Duration::from_secs(5), server)
            .await
            .is_err()
        {
            warn!("peer server did not stop within 5 s");
        }
    }

    pub fn node_id(&self) -> &str {
        &self.shared.settings.node_id
    }
}

impl Drop for Replicator {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Every `sync_interval`: fan changed keys out to the links, and check readiness.
async fn ticker(shared: Arc<Shared>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(shared.settings.sync_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut buf = Vec::new();
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {
                shared.fan_out(&mut buf);
                shared.check_ready();
                let (peers, connected) = {
                    let links = shared.links.lock();
                    (
                        links.values().filter(|l| !l.is_myself()).count(),
                        links.values().filter(|l| l.connected_node().is_some()).count(),
                    )
                };
                shared.metrics.peers.set(peers as f64);
                shared.metrics.connected.set(connected as f64);
            }
        }
    }
}
