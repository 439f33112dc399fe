//! Replication: every node decides locally and exchanges bucket states with its peers over one
//! gRPC stream per peer (anti-entropy). Bucket states are CRDTs, so a state can be sent any
//! number of times, in any order, and merging converges.
//!
//! - [`link`]: the stream this node dials to each peer, which carries this node's changes out:
//!   a full snapshot when the peer is new (new incarnation), then coalesced deltas every
//!   `sync_interval`; [`outbox`] numbers them, sends an early copy of what goes
//!   unacknowledged for a sync interval and resends what goes unacknowledged for longer than
//!   the round trip warrants ([`in_flight`] keeps the frames until they are acknowledged).
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
mod burst_guard;
mod catch_up;
mod clock_health;
mod codec;
mod dissemination;
mod fair_share;
mod fan_out;
pub mod faults;
mod handoff;
mod hello;
mod in_flight;
mod link;
mod link_table;
mod member_links;
mod members;
mod membership;
mod memory_net;
mod outbox;
mod replicas;
mod service;
pub mod tls;

pub mod proto {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("tollgate.replication.v1");
}

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use metrics::{Counter, Gauge, Label};
use parking_lot::Mutex;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

pub use codec::{decode_delta, Decoded, DeltaBuilder, FrameError};
pub use membership::MemberId;
pub use replicas::{Replica, ReplicaTable};

use burst_guard::PendingAcks;
use catch_up::CatchUp;
use clock_health::ClockHealth;
use link_table::LinkTable;
use member_links::{Answers, Departed};

use crate::clock::{Clock, Nanos, SharedClock};
use crate::limiter::Limiter;
use crate::metrics::Metrics;
use crate::readiness::Readiness;
use crate::store::Store;

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
    /// Liveness time (tests only; `None`: the system's monotonic clock).
    pub clock: Option<SharedClock>,
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

pub(crate) struct Shared {
    pub settings: ReplicationSettings,
    pub store: Arc<Store>,
    pub limiter: Arc<Limiter>,
    pub replicas: Arc<ReplicaTable>,
    pub metrics: ReplMetrics,
    /// Who the members are (SWIM over the peer streams).
    pub membership: membership::Membership,
    readiness: Arc<Readiness>,
    /// Liveness time: link silence, resend timers, the sync timeout. Not the buckets' clock
    /// (`limiter.clock()`): tests freeze that one to count tokens exactly while links live.
    clock: Arc<dyn Clock>,
    /// When replication started, on `clock`: the sync timeout runs from here.
    started: Nanos,
    links: LinkTable,
    relay: dissemination::Relay,
    clock_health: ClockHealth,
    catch_up: CatchUp,
    pending_acks: PendingAcks,
    departed: Departed,
    answers: Answers,
    /// The last fan-out round; its changes are in the dirty sets of the links they go to.
    round: AtomicU64,
    /// Shutting down: links say Leave once their changes are acknowledged.
    leaving: AtomicBool,
    /// The replicator's stop token, for links opened from membership changes.
    stop: std::sync::OnceLock<CancellationToken>,
}

/// The sending half of a peer's stream to this node.
pub(crate) type InboundTx = tokio::sync::mpsc::Sender<Result<proto::Frame, tonic::Status>>;

impl Shared {
    /// Bucket time: what states are stamped and merged with.
    pub fn now(&self) -> Nanos {
        self.limiter.clock().now()
    }

    /// Liveness time: what silence, resend timers and the sync timeout are measured on.
    pub fn monotonic(&self) -> Nanos {
        self.clock.now()
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
}

/// The running replication of one node.
pub struct Replicator {
    shared: Arc<Shared>,
    stop: CancellationToken,
    server: tokio::task::JoinHandle<()>,
    pub peer_addr: SocketAddr,
}

/// Where this node listens for peers.
pub enum PeerListener {
    Tcp(TcpListener),
    /// At this address on the in-process test network's memory ([`faults::Faults::in_memory`]).
    Memory(SocketAddr, Arc<memory_net::MemoryNet>),
}

impl PeerListener {
    /// Bind `addr`: on a socket, or in memory when `faults` is an in-memory test network.
    pub async fn bind(addr: SocketAddr, faults: Option<&faults::Faults>) -> std::io::Result<Self> {
        if let Some(net) = faults.and_then(|f| f.memory()) {
            return Ok(PeerListener::Memory(addr, net.clone()));
        }
        Ok(PeerListener::Tcp(TcpListener::bind(addr).await?))
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        match self {
            PeerListener::Tcp(l) => l.local_addr(),
            PeerListener::Memory(a, _) => Ok(*a),
        }
    }
}

impl Replicator {
    /// Listen for peers on `listener` and start dialing them. Readiness goes true once the
    /// node holds its peers' snapshots.
    pub async fn start(
        settings: ReplicationSettings,
        replicas: Arc<ReplicaTable>,
        listener: PeerListener,
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
        let clock = match &settings.clock {
            Some(c) => c.0.clone(),
            None => Arc::new(crate::clock::SystemClock::new()),
        };
        let shared = Arc::new(Shared {
            metrics: ReplMetrics::new(limiter.metrics().clone(), settings.max_members),
            membership,
            stop: std::sync::OnceLock::new(),
            settings,
            store,
            limiter,
            readiness,
            replicas,
            started: clock.now(),
            clock,
            links: LinkTable::default(),
            relay: dissemination::Relay::default(),
            clock_health: ClockHealth::default(),
            catch_up: CatchUp::default(),
            pending_acks: PendingAcks::default(),
            departed: Departed::default(),
            answers: Answers::default(),
            round: AtomicU64::new(0),
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
        self.shared.hand_off(deadline).await
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
    let mut last_check: Option<Nanos> = None;
    let every = MODE_CHECK_INTERVAL.as_nanos() as Nanos;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {
                shared.fan_out();
                shared.settle_acks();
                let now = shared.monotonic();
                if last_check.is_some_and(|t| now.saturating_sub(t) < every) {
                    continue;
                }
                last_check = Some(now);
                shared.update_mode();
                shared.check_ready();
                shared.update_link_gauges();
            }
        }
    }
}

impl Shared {
    fn update_link_gauges(&self) {
        let peers = self.links.count(|l| !l.is_myself() && !l.is_alias());
        let connected = self.links.count(|l| l.connected_node().is_some());
        self.metrics.peers.set(peers as f64);
        self.metrics.connected.set(connected as f64);
    }
}
