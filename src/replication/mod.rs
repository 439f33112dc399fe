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
//!   node is not ready until it holds every reachable peer's snapshot), the burst guard's
//!   acknowledgements, fair-share mode while a member is unreachable, and the handoff on
//!   shutdown.
//!
//! Fan-out happens in numbered rounds. A link publishes the latest round whose changes its peer
//! acknowledged; once every live member acknowledged a round, the own counts it carried are
//! known cluster-wide and the burst guard lets the next ones through (design section 4.3).
//! When a member has not been heard from for `peer_timeout`, every node that lost it decides
//! on its local share of each limit (fair-share mode, section 4.4) until all members are back
//! and caught up in both directions.

mod auth;
mod codec;
pub mod faults;
mod link;
mod members;
mod replicas;
mod service;
pub mod tls;

pub mod proto {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("tollgate.replication.v1");
}

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use metrics::{Counter, Gauge, Label};
use parking_lot::Mutex;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

pub use codec::{DeltaBuilder, FrameError};
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
    /// A member not heard from for this long is treated as partitioned away: fair-share mode.
    pub peer_timeout: Duration,
    /// Hold back own consumption that peers have not acknowledged (design section 4.3).
    pub burst_guard: bool,
    /// Injected network faults (tests only; `None` in every deployment).
    pub faults: Option<Arc<faults::Faults>>,
    /// Mutual TLS on both ends of the peer stream; `None`: plaintext.
    pub tls: Option<Arc<tls::PeerTls>>,
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
    pub fair_share: Gauge,
    pub fair_share_entered: Counter,
    pub members: Gauge,
    pub unacked_keys: Gauge,
}

impl ReplMetrics {
    fn new(metrics: Arc<Metrics>) -> Self {
        ReplMetrics {
            peers: metrics.gauge("tollgate_peers", vec![]),
            connected: metrics.gauge("tollgate_peers_connected", vec![]),
            merges: metrics.counter("tollgate_replication_merges_total", vec![]),
            quarantined: metrics.gauge("tollgate_peers_quarantined", vec![]),
            fair_share: metrics.gauge("tollgate_fair_share_mode", vec![]),
            fair_share_entered: metrics.counter("tollgate_fair_share_mode_entered_total", vec![]),
            members: metrics.gauge("tollgate_cluster_members", vec![]),
            unacked_keys: metrics.gauge("tollgate_burst_guard_unacked_keys", vec![]),
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

/// One fan-out round: its number and the own (consumed, requested) counts of its keys.
type Round = (u64, Vec<(KeyId, (u64, u64))>);

pub(crate) struct Shared {
    pub settings: ReplicationSettings,
    pub store: Arc<Store>,
    pub limiter: Arc<Limiter>,
    pub readiness: Arc<Readiness>,
    pub replicas: Arc<ReplicaTable>,
    /// Outbound links, by peer address.
    pub links: Mutex<HashMap<String, Arc<Link>>>,
    /// Keys just merged from a node that already holds the merged state: not sent back to it.
    pub suppress: Mutex<HashMap<KeyId, (String, u32)>>,
    /// Nodes whose clocks are too far off: their states are not merged.
    pub quarantined: Mutex<HashSet<String>>,
    pub metrics: ReplMetrics,
    pub started: Instant,
    pub synced: AtomicBool,
    /// The last fan-out round; its changes are in every link's dirty set.
    round: AtomicU64,
    /// Own counts of the keys of each round not yet acknowledged by every live member.
    rounds: Mutex<VecDeque<Round>>,
    /// Nodes that said Leave: not members until they say Hello again.
    pub left: Mutex<HashSet<String>>,
    /// Nodes whose current stream to us delivered SnapshotEnd (a full snapshot, or what they
    /// changed while away), by stream id: readiness and leaving fair-share mode wait on it.
    pub caught_up: Mutex<HashMap<String, u64>>,
    pub stream_ids: AtomicU64,
    /// Shutting down: links say Leave once their changes are acknowledged.
    leaving: AtomicBool,
}

impl Shared {
    pub fn now(&self) -> i64 {
        self.limiter.clock().now()
    }

    /// The current fan-out round.
    pub fn round(&self) -> u64 {
        self.round.load(Ordering::Acquire)
    }

    /// How often a link pings its peer: often enough that `peer_timeout` sees several.
    pub fn heartbeat(&self) -> Duration {
        (self.settings.peer_timeout / 5).clamp(Duration::from_millis(10), Duration::from_secs(1))
    }

    pub fn is_leaving(&self) -> bool {
        self.leaving.load(Ordering::Acquire)
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
        let mut counts = Vec::new();
        let guard = self.settings.burst_guard;
        // Taken before the dirty keys, and held while draining them: a frame being merged holds
        // this lock, so the drain sees either none or all of a frame's keys together with their
        // no-echo marks (taking the marks after the drain would consume the marks of keys that
        // only the next round drains, and those keys would go back to their sender).
        let mut marks = self.suppress.lock();
        self.store.drain_dirty_with(|k, own| {
            buf.push(k);
            if guard {
                counts.push((k, own));
            }
        });
        let suppress = std::mem::take(&mut *marks);
        drop(marks);
        if buf.is_empty() {
            return;
        }
        // Every link's dirty set gets this round's keys before the round number is published,
        // so a link that drains after reading round `r` has every key of rounds up to `r`.
        let round = self.round() + 1;
        if guard {
            self.rounds.lock().push_back((round, counts));
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
        self.round.store(round, Ordering::Release);
        for link in self.links.lock().values() {
            link.pushed.notify_one();
        }
    }

    /// Apply the acknowledgements of every round all live members have acknowledged: the
    /// burst guard then lets the next own consumption of those keys through.
    fn settle_acks(&self) {
        if !self.settings.burst_guard {
            return;
        }
        let now = Instant::now();
        let timeout = self.settings.peer_timeout;
        let acked = self
            .links
            .lock()
            .values()
            .filter(|l| self.is_member(l) && l.alive(now, timeout))
            .map(|l| l.acked_round())
            .min()
            .unwrap_or_else(|| self.round());
        let mut done = Vec::new();
        {
            let mut rounds = self.rounds.lock();
            while rounds.front().is_some_and(|(r, _)| *r <= acked) {
                if let Some((_, keys)) = rounds.pop_front() {
                    done.extend(keys);
                }
            }
        }
        if !done.is_empty() {
            self.store.acknowledge(&done);
        }
    }

    /// A member: a peer of this cluster that has not said Leave.
    fn is_member(&self, l: &Link) -> bool {
        l.is_member() && l.last_node().is_none_or(|n| !self.left.lock().contains(&n))
    }

    /// Fair-share mode on when a member has gone quiet; off again once every member is heard
    /// from and caught up both ways (it acknowledged what we sent since it came back, and its
    /// stream to us delivered SnapshotEnd), so no consumption of the split is missing.
    fn update_mode(&self) {
        let now = Instant::now();
        let timeout = self.settings.peer_timeout;
        let links: Vec<Arc<Link>> = self.links.lock().values().cloned().collect();
        let members: Vec<&Arc<Link>> = links.iter().filter(|l| self.is_member(l)).collect();
        let n = 1 + members.len() as u32;
        self.metrics.members.set(n as f64);
        let dead: Vec<&str> = members
            .iter()
            .filter(|l| !l.alive(now, timeout))
            .map(|l| l.addr.as_str())
            .collect();
        let caught_up = self.caught_up.lock();
        let behind: Vec<&str> = members
            .iter()
            .filter(|l| !l.resynced() || l.last_node().is_none_or(|n| !caught_up.contains_key(&n)))
            .map(|l| l.addr.as_str())
            .collect();
        drop(caught_up);
        let current = self.store.fair_share();
        let want = if !dead.is_empty() || (current.is_some() && !behind.is_empty()) {
            Some(n)
        } else {
            None
        };
        if want != current {
            match want {
                Some(n) => {
                    if current.is_none() {
                        self.metrics.fair_share_entered.increment(1);
                    }
                    warn!(members = n, unreachable = ?dead, "fair-share mode: deciding on this node's 1/{n} of every limit");
                }
                None => info!("every member is back and caught up: leaving fair-share mode"),
            }
            self.store.set_fair_share(want, self.now());
        }
        self.metrics
            .fair_share
            .set(if want.is_some() { 1.0 } else { 0.0 });
        if self.settings.burst_guard {
            // An ack takes up to a sync interval to be sent, one to be settled, and one more
            // for the change to leave the store, plus the network.
            let round_trip = self.settings.sync_interval * 3 + Duration::from_millis(1);
            self.store.set_burst_guard(n, round_trip);
            self.metrics
                .unacked_keys
                .set(self.store.unacked_keys() as f64);
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
            let got = self.caught_up.lock();
            let quarantined = self.quarantined.lock();
            links
                .iter()
                .filter_map(|l| l.connected_node())
                .filter(|n| !got.contains_key(n) && !quarantined.contains(n))
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
        if self.add_link(&mut self.links.lock(), addr, true, stop) {
            info!(%addr, "learned a new peer");
        }
    }

    /// A peer dialed us: if our link to it is waiting out a reconnect backoff, retry now.
    pub fn wake(&self, node: &str, addr: &str) {
        for l in self.links.lock().values() {
            if l.connected_node().is_none()
                && (l.addr == addr || l.last_node().as_deref() == Some(node))
            {
                l.wake.notify_one();
            }
        }
    }

    /// Start dialing `addr` unless a link to it exists; returns whether one was added.
    pub fn add_link(
        self: &Arc<Self>,
        links: &mut HashMap<String, Arc<Link>>,
        addr: &str,
        learned: bool,
        stop: &CancellationToken,
    ) -> bool {
        if links.contains_key(addr) {
            return false;
        }
        let l = Arc::new(Link::new(
            self,
            addr.to_string(),
            learned,
            stop.child_token(),
        ));
        if addr == self.settings.advertise_addr {
            // Our own address in --peers: known without dialing, so it never counts as a
            // member, not even for the moment before the dial would tell.
            l.mark_myself();
            links.insert(addr.to_string(), l);
            return true;
        }
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
            suppress: Mutex::new(HashMap::new()),
            quarantined: Mutex::new(HashSet::new()),
            started: Instant::now(),
            synced: AtomicBool::new(false),
            round: AtomicU64::new(0),
            rounds: Mutex::new(VecDeque::new()),
            left: Mutex::new(HashSet::new()),
            caught_up: Mutex::new(HashMap::new()),
            stream_ids: AtomicU64::new(0),
            leaving: AtomicBool::new(false),
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
                break;
            }
            if tokio::time::Instant::now() >= deadline {
                warn!(pending, "handoff timed out with changes not acknowledged");
                return false;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // Say Leave, so the others do not wait for this node as if partitioned; done once every
        // connected peer has processed it (or at the same deadline).
        self.shared.leaving.store(true, Ordering::Release);
        loop {
            let waiting = self
                .shared
                .links
                .lock()
                .values()
                .filter(|l| l.connected_node().is_some() && !l.said_goodbye.load(Ordering::Acquire))
                .count();
            if waiting == 0 {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                warn!(
                    waiting,
                    "handoff: not every peer confirmed this node's Leave"
                );
                return true;
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
                shared.settle_acks();
                shared.update_mode();
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
