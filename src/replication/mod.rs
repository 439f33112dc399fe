//! Replication: every node decides locally and exchanges bucket states with its peers over one
//! gRPC stream per peer (anti-entropy). Bucket states are CRDTs, so a state can be sent any
//! number of times, in any order, and merging converges.
//!
//! - [`link`]: the stream this node dials to each peer, which carries this node's changes out:
//!   a full snapshot when the peer is new (new incarnation), then coalesced deltas every
//!   `sync_interval`; [`outbox`] numbers them and resends what goes unacknowledged.
//! - [`dissemination`]: which peers a changed key goes to: an own change to every member, a
//!   merged one only to peers that cannot get it from its sender (N-1 crossings per change).
//! - [`service`]: the other end: merges what peers send, acknowledges, answers pings, takes
//!   each peer's report of whom it hears from.
//! - [`members`]: the seeds: a static list, a DNS name re-resolved periodically. They are only
//!   where to start: who the members are is [`membership`]'s answer.
//! - [`membership`]: the members by identity (node + incarnation), learned transitively and
//!   failure-detected with SWIM (the `foca` crate), its messages riding on the peer streams.
//! - this module: the shared state, the fan-out of changed keys to the links, readiness (a new
//!   node is not ready until it holds every reachable peer's snapshot), the burst guard's
//!   acknowledgements, fair-share mode while a member is unreachable, and the handoff on
//!   shutdown.
//!
//! Fan-out happens in numbered rounds. A link publishes the latest round whose changes its peer
//! acknowledged; once every live member acknowledged a round, the own counts it carried are
//! known cluster-wide and the burst guard lets the next ones through (design section 4.3).
//! When a member's link has been down for `peer_timeout`, or any member is suspected by the
//! membership protocol, every node decides on its local share of each limit (fair-share mode,
//! section 4.4) until all members are back and caught up in both directions, or the suspected
//! member is declared dead (`peer_dead_after`) and forgotten. Fair-share N, the burst guard's
//! 1/N and the debt cap all follow the live membership.

mod auth;
mod codec;
mod dissemination;
pub mod faults;
mod link;
mod member_links;
mod members;
mod membership;
mod outbox;
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

pub use codec::{decode_delta, Decoded, DeltaBuilder, FrameError};
pub use membership::MemberId;
pub use replicas::{Replica, ReplicaTable};

use crate::bucket::{BurstGuard, Mode};
use crate::limiter::Limiter;
use crate::metrics::Metrics;
use crate::readiness::Readiness;
use crate::store::{KeyId, Store};
use link::{Encoding, Link};

/// Major version of the peer protocol; a peer speaking another major version is refused.
pub const PROTOCOL_VERSION: u32 = 1;

/// Replica slots (node incarnations) the replica table admits per allowed member: room for
/// many restarts of every member, but a bound on what peers can make this node remember.
pub const REPLICAS_PER_MEMBER: usize = 64;

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
    /// A member whose link is down this long (or that the membership protocol suspects) is
    /// treated as partitioned away: fair-share mode.
    pub peer_timeout: Duration,
    /// Hold back own consumption that peers have not acknowledged (design section 4.3).
    pub burst_guard: bool,
    /// A member unreachable this long is declared dead and forgotten (survivors leave fair
    /// share); it must be longer than `peer_timeout`.
    pub peer_dead_after: Duration,
    /// Bound on the members (this node included) peers can introduce; replica slots are bounded
    /// to [`REPLICAS_PER_MEMBER`] times this.
    pub max_members: usize,
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
    pub suspects: Gauge,
    /// Node names already used as label values: at most `max_members` of them, the rest
    /// share the value "other", so made-up names cannot grow /metrics.
    node_labels: Mutex<HashSet<String>>,
    max_node_labels: usize,
}

impl ReplMetrics {
    fn new(metrics: Arc<Metrics>, max_node_labels: usize) -> Self {
        ReplMetrics {
            peers: metrics.gauge("tollgate_peers", vec![]),
            connected: metrics.gauge("tollgate_peers_connected", vec![]),
            merges: metrics.counter("tollgate_replication_merges_total", vec![]),
            quarantined: metrics.gauge("tollgate_peers_quarantined", vec![]),
            fair_share: metrics.gauge("tollgate_fair_share_mode", vec![]),
            fair_share_entered: metrics.counter("tollgate_fair_share_mode_entered_total", vec![]),
            members: metrics.gauge("tollgate_cluster_members", vec![]),
            unacked_keys: metrics.gauge("tollgate_burst_guard_unacked_keys", vec![]),
            suspects: metrics.gauge("tollgate_cluster_members_suspected", vec![]),
            node_labels: Mutex::new(HashSet::new()),
            max_node_labels,
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

    /// A per-node counter whose label is the node name while the label budget lasts.
    pub fn node_counter(&self, name: &'static str, node: &str) -> Counter {
        let label = {
            let mut seen = self.node_labels.lock();
            if seen.contains(node) || seen.len() < self.max_node_labels {
                seen.insert(node.to_string());
                node.to_string()
            } else {
                "other".to_string()
            }
        };
        self.metrics.counter(name, vec![Label::new("peer", label)])
    }

    /// A bound was hit: `limit` is "members" or "replicas".
    pub fn limit_hit(&self, limit: &'static str) -> Counter {
        self.metrics.counter(
            "tollgate_cluster_limit_hits_total",
            vec![Label::new("limit", limit)],
        )
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
    /// Keys merged since the last fan-out round, with the nodes that sent them: relayed only
    /// to peers that cannot get them from those nodes.
    pub origins: Mutex<dissemination::Origins>,
    /// Each peer's report of the nodes whose streams to it are caught up.
    pub reports: Mutex<dissemination::Reports>,
    /// Nodes whose clocks are too far off: their states are not merged.
    pub quarantined: Mutex<HashSet<String>>,
    pub metrics: ReplMetrics,
    pub started: Instant,
    pub synced: AtomicBool,
    /// The last fan-out round; its changes are in the dirty sets of the links they go to.
    round: AtomicU64,
    /// Own counts of the keys of each round not yet acknowledged by every live member.
    rounds: Mutex<VecDeque<Round>>,
    /// Nodes that said Leave: not members until they say Hello again.
    pub left: Mutex<HashSet<String>>,
    /// Nodes whose current stream to us delivered SnapshotEnd (a full snapshot, or what they
    /// changed while away), by stream id: readiness and leaving fair-share mode wait on it.
    caught_up: Mutex<HashMap<String, u64>>,
    /// Bumped whenever `caught_up` changes: links then report it to their peers.
    caught_up_version: AtomicU64,
    pub stream_ids: AtomicU64,
    /// Shutting down: links say Leave once their changes are acknowledged.
    leaving: AtomicBool,
    /// Who the members are (SWIM over the peer streams).
    pub membership: membership::Membership,
    /// The answer side of each peer's current stream to us, by node: membership messages to a
    /// node this one has no link to yet (a joiner) go back this way.
    pub inbound: Mutex<HashMap<String, (u64, InboundTx)>>,
    /// The replicator's stop token, for links opened from membership changes.
    stop: std::sync::OnceLock<CancellationToken>,
}

/// The sending half of a peer's stream to this node.
pub(crate) type InboundTx = tokio::sync::mpsc::Sender<Result<proto::Frame, tonic::Status>>;

impl Shared {
    pub fn now(&self) -> i64 {
        self.limiter.clock().now()
    }

    /// The current fan-out round.
    pub fn round(&self) -> u64 {
        self.round.load(Ordering::Acquire)
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
            // Our hash stays out of the message: it goes back to the peer, and a forger would
            // need nothing else. This node's log has it (`config_hash` in the warning).
            return Err((
                "config_hash",
                format!(
                    "peer {} serves another rate limit config (its hash {:016x})",
                    h.node, h.config_hash
                ),
            ));
        }
        Ok(())
    }

    /// Hand the keys changed since the last call to the links that need them: a change made
    /// here to every link, a merged one only to the peers that cannot get it from its sender
    /// ([`dissemination`]).
    fn fan_out(&self, buf: &mut Vec<KeyId>) {
        buf.clear();
        let mut own = Vec::new();
        let mut counts = Vec::new();
        let guard = self.settings.burst_guard;
        // Taken before the dirty keys, and held while draining them: a frame being merged holds
        // this lock, so the drain sees either none or all of a frame's keys together with
        // their senders (taking them after the drain would consume the senders of keys that
        // only the next round drains, and those keys would then go to every peer).
        let mut origins = self.origins.lock();
        self.store.drain_dirty_with(|d| {
            buf.push(d.key);
            own.push(d.own_changed);
            if guard && d.own_changed {
                counts.push((d.key, d.own));
            }
        });
        let senders = origins.take();
        drop(origins);
        if buf.is_empty() {
            return;
        }
        // Every link's dirty set gets this round's keys before the round number is published,
        // so a link that drains after reading round `r` has every key of rounds up to `r`.
        let round = self.round() + 1;
        if guard {
            self.rounds.lock().push_back((round, counts));
        }
        let links: Vec<Arc<Link>> = self.links.lock().values().cloned().collect();
        let mut woken = Vec::with_capacity(links.len());
        {
            let reports = self.reports.lock();
            for link in links {
                if link.is_alias() || link.is_myself() {
                    // Standing by: the member's live link carries these keys.
                    continue;
                }
                let node = link.connected_node().or_else(|| link.last_node());
                let hears = node.as_deref().and_then(|n| reports.of(n));
                let mut dirty = link.dirty.lock();
                let mut added = false;
                for (k, own_changed) in buf.iter().zip(&own) {
                    let how = dissemination::encoding(
                        *own_changed,
                        senders.get(k),
                        node.as_deref(),
                        hears,
                    );
                    if let Some(how) = how {
                        Encoding::queue(&mut dirty, *k, how);
                        added = true;
                    }
                }
                drop(dirty);
                if added {
                    link.given(round);
                    woken.push(link);
                }
            }
        }
        self.round.store(round, Ordering::Release);
        for link in woken {
            link.pushed.notify_one();
        }
    }

    /// `node`'s stream `stream` delivered SnapshotEnd: it is caught up with us.
    pub fn mark_caught_up(&self, node: &str, stream: u64) {
        self.caught_up.lock().insert(node.to_string(), stream);
        self.caught_up_changed();
    }

    /// `node`'s stream `stream` ended (a newer stream of the same node keeps its own mark).
    pub fn clear_caught_up(&self, node: &str, stream: u64) {
        let mut c = self.caught_up.lock();
        if c.get(node) == Some(&stream) {
            c.remove(node);
            drop(c);
            self.caught_up_changed();
        }
    }

    fn caught_up_changed(&self) {
        self.caught_up_version.fetch_add(1, Ordering::AcqRel);
        for l in self.links.lock().values() {
            l.pushed.notify_one();
        }
    }

    /// The nodes whose streams to us are caught up, and the version of that set: what a link
    /// reports to its peer when the version moved.
    pub fn receiving_from(&self) -> (u64, Vec<String>) {
        let c = self.caught_up.lock();
        let v = self.caught_up_version.load(Ordering::Acquire);
        (v, c.keys().cloned().collect())
    }

    pub fn caught_up_version(&self) -> u64 {
        self.caught_up_version.load(Ordering::Acquire)
    }

    /// Apply the acknowledgements of every round all live members have acknowledged: the
    /// burst guard then lets the next own consumption of those keys through.
    fn settle_acks(&self) {
        if !self.settings.burst_guard || self.rounds.lock().is_empty() {
            return;
        }
        let now = Instant::now();
        let timeout = self.settings.peer_timeout;
        // A suspected member (frozen, its connection still open) holds nothing back: the
        // cluster is in fair-share mode meanwhile.
        let acked = self
            .member_links()
            .into_iter()
            .filter(|r| !r.suspect)
            .filter_map(|r| r.link)
            .filter(|l| l.alive(now, timeout))
            .map(|l| l.acked_through(self.round()))
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

    /// Fair-share mode on while a member is suspected or has gone quiet on its link; off again
    /// once every member is heard from and caught up both ways (it acknowledged what we sent
    /// since it came back, and its stream to us delivered SnapshotEnd), so no consumption of
    /// the split is missing. A member declared dead is no longer a member: it stops counting.
    fn update_mode(&self) {
        let now = Instant::now();
        let timeout = self.settings.peer_timeout;
        let members = self.member_links();
        let n = 1 + members.len() as u32;
        self.metrics.members.set(n as f64);
        let suspects = members.iter().filter(|r| r.suspect).count();
        self.metrics.suspects.set(suspects as f64);
        let unreachable: Vec<&str> = members
            .iter()
            .filter(|r| r.suspect || r.link.as_ref().is_none_or(|l| !l.alive(now, timeout)))
            .map(|r| r.name.as_str())
            .collect();
        let round = self.round();
        let caught_up = self.caught_up.lock();
        let behind = members.iter().any(|r| {
            r.link.as_ref().is_none_or(|l| !l.resynced(round)) || !caught_up.contains_key(&r.name)
        });
        drop(caught_up);
        let current = self.store.fair_share();
        let want = if !unreachable.is_empty() || (current.is_some() && behind) {
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
                    warn!(members = n, unreachable = ?unreachable, "fair-share mode: deciding on this node's 1/{n} of every limit");
                }
                None => info!("every member is back and caught up: leaving fair-share mode"),
            }
        }
        // An ack takes up to a sync interval to be sent, one to be settled, and one more for
        // the change to leave the store, plus the network.
        let round_trip = self.settings.sync_interval * 3 + Duration::from_millis(1);
        let guard = BurstGuard::new(n, round_trip).filter(|_| self.settings.burst_guard);
        self.store.set_mode(Mode::new(want, guard), self.now());
        self.metrics
            .fair_share
            .set(if want.is_some() { 1.0 } else { 0.0 });
        // Late remote consumption is debt; cap it at about one capacity per other member so a
        // heal after a partition cannot lock a key out for long.
        self.store.set_debt_cap_capacities(n.max(2));
        if self.settings.burst_guard {
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
        if settings.secret.is_none() && settings.tls.is_none() {
            warn!(
                "replication is on with neither --cluster-secret-file nor peer mTLS: anything that \
                 reaches the peer port can join the cluster and feed it bucket states"
            );
        }
        let membership = membership::Membership::new(
            &settings.node_id,
            settings.incarnation,
            &settings.advertise_addr,
            membership::MembershipSettings::new(
                settings.peer_timeout,
                settings.peer_dead_after,
                settings.max_members,
            ),
        );
        let shared = Arc::new(Shared {
            metrics: ReplMetrics::new(limiter.metrics().clone(), settings.max_members),
            membership,
            inbound: Mutex::new(HashMap::new()),
            stop: std::sync::OnceLock::new(),
            settings,
            store,
            limiter,
            readiness,
            replicas,
            links: Mutex::new(HashMap::new()),
            origins: Mutex::new(dissemination::Origins::default()),
            reports: Mutex::new(dissemination::Reports::default()),
            quarantined: Mutex::new(HashSet::new()),
            started: Instant::now(),
            synced: AtomicBool::new(false),
            round: AtomicU64::new(0),
            rounds: Mutex::new(VecDeque::new()),
            left: Mutex::new(HashSet::new()),
            caught_up: Mutex::new(HashMap::new()),
            caught_up_version: AtomicU64::new(0),
            stream_ids: AtomicU64::new(0),
            leaving: AtomicBool::new(false),
        });
        let stop = CancellationToken::new();
        let _ = shared.stop.set(stop.clone());
        tokio::spawn(membership::run(shared.clone(), stop.clone()));
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
    pub async fn hand_off(&self, deadline: tokio::time::Instant) -> bool {
        let mut buf = Vec::new();
        self.shared.fan_out(&mut buf);
        loop {
            let (links, connected, pending) = {
                let links = self.shared.links.lock();
                let connected: Vec<_> = links
                    .values()
                    .filter(|l| l.connected_node().is_some())
                    .collect();
                let pending: usize = connected.iter().map(|l| l.pending()).sum();
                (links.len(), connected.len(), pending)
            };
            if pending == 0 {
                if connected == 0 && links > 0 {
                    // Nobody to hand to: what this node admitted since its last acknowledged
                    // frame lives only in the peers' own counts of what they saw.
                    warn!(
                        links,
                        "handoff: no peer is connected, so no peer acknowledged this node's state"
                    );
                    return false;
                }
                info!(
                    peers = connected,
                    unreachable = links - connected,
                    "handoff complete: every connected peer acknowledged this node's state"
                );
                break;
            }
            if tokio::time::Instant::now() >= deadline {
                warn!(pending, "handoff timed out with changes not acknowledged");
                return false;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // Say Leave, so the others do not wait for this node as if partitioned; done once every
        // connected peer has processed it (or at the same deadline). The membership protocol
        // gossips the departure too, to members this node has no stream with.
        self.shared.leaving.store(true, Ordering::Release);
        for l in self.shared.links.lock().values() {
            l.pushed.notify_one();
        }
        self.shared.membership.leave();
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

    /// Stop every link and the peer server, and wait until the peer port is free or
    /// `deadline` (the shutdown's) passes.
    pub async fn stop(mut self, deadline: tokio::time::Instant) {
        self.stop.cancel();
        let server = &mut self.server;
        if tokio::time::timeout_at(deadline, server).await.is_err() {
            warn!("peer server had not stopped by the shutdown deadline");
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

/// The cluster's mode (fair share, the burst guard's N), readiness and the link gauges are
/// re-checked this often at most: a tenth or so of `peer_timeout`'s default, and their cost
/// (a pass over every member) stays off the sync interval's cadence.
const MODE_CHECK_INTERVAL: Duration = Duration::from_millis(50);

/// Every `sync_interval`: fan changed keys out to the links and settle acknowledgements;
/// every [`MODE_CHECK_INTERVAL`] (or every tick when the sync interval is longer): the mode,
/// readiness and the link gauges.
async fn ticker(shared: Arc<Shared>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(shared.settings.sync_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut buf = Vec::new();
    let mut last_check: Option<Instant> = None;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {
                shared.fan_out(&mut buf);
                shared.settle_acks();
                if last_check.is_some_and(|t| t.elapsed() < MODE_CHECK_INTERVAL) {
                    continue;
                }
                last_check = Some(Instant::now());
                shared.update_mode();
                shared.check_ready();
                shared.update_link_gauges();
            }
        }
    }
}

impl Shared {
    fn update_link_gauges(&self) {
        let (peers, connected) = {
            let links = self.links.lock();
            (
                links
                    .values()
                    .filter(|l| !l.is_myself() && !l.is_alias())
                    .count(),
                links
                    .values()
                    .filter(|l| l.connected_node().is_some())
                    .count(),
            )
        };
        self.metrics.peers.set(peers as f64);
        self.metrics.connected.set(connected as f64);
    }
}
