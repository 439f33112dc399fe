//! The stream this node dials to one peer, carrying this node's changes out.
//!
//! A session has three phases, each a function here: the handshake (dial, Hellos, checks), the
//! catch-up (a peer seen for the first time, or with a new incarnation, gets a full snapshot,
//! shard by shard in frames of at most `max_frame_bytes`; one that reconnects with the same
//! incarnation gets the changes it missed; SnapshotEnd either way), and the steady phase: the
//! keys fan-out rounds hand the link ([`super::dissemination`] decides which), resends of what
//! goes unacknowledged ([`super::outbox`]), membership messages, and the node's report of whom
//! it hears from. An idle link wakes only for its keepalive.
//!
//! The link also tells the rest of replication what the peer has seen: the latest fan-out
//! round whose changes it acknowledged (the burst guard waits on it) and whether it is
//! connected (fair-share mode starts when a member's link stays down).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use metrics::{Counter, Gauge};
use parking_lot::Mutex;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::Streaming;
use tracing::{debug, info, warn};

use super::codec::DeltaBuilder;
use super::outbox::Outbox;
use super::proto::frame::Kind;
use super::proto::replication_client::ReplicationClient;
use super::proto::{Frame, Gossip, Hello, Leave, Ping, Pong, ReceivingFrom};
use super::Shared;
use crate::bucket::{BucketState, Limit};
use crate::clock::{Clock, Nanos};
use crate::store::KeyId;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
const HELLO_TIMEOUT: Duration = Duration::from_secs(5);
const MAX_BACKOFF: Duration = Duration::from_secs(1);
/// An idle link pings its peer this often per ten members (at least every 2 s, at most every
/// 30 s): often enough to re-measure the clock offset and keep the connection open, rare
/// enough that a node's idle cost does not grow with the cluster. Liveness does not depend
/// on it: the membership protocol probes a constant number of members per period.
const KEEPALIVE_PER_TEN_MEMBERS: Duration = Duration::from_secs(2);
const MAX_KEEPALIVE: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, PartialEq, Eq)]
enum Status {
    /// Not tried yet.
    Trying,
    /// Could not connect (down, or not there yet).
    Unreachable,
    /// Connected to this node.
    Connected { node: String },
    /// Refused us or we refused it (another cluster, config or secret).
    Refused,
    /// The address is this node itself.
    Myself,
    /// The address reaches a member another link is already connected to: it stands by
    /// (one live link per member, whatever the addresses it is known by).
    Alias { node: String },
}

/// How long a standby alias link waits before checking whether it is needed again.
const ALIAS_RETRY: Duration = Duration::from_secs(2);
/// Membership messages queued for the peer beyond this are dropped (the protocol treats a
/// lost message like an unanswered probe).
const MAX_GOSSIP_QUEUE: usize = 256;

pub(crate) struct Link {
    pub addr: String,
    /// Keys changed since they were last sent to this peer, each with how to send it.
    pub dirty: Mutex<HashMap<KeyId, Encoding>>,
    status: Mutex<Status>,
    /// The peer's incarnation when last connected: a different one means it restarted.
    known_incarnation: Mutex<Option<u64>>,
    /// The peer's node name when last connected (kept while it is away).
    last_node: Mutex<Option<String>>,
    /// Liveness time (the replicator's, injectable): every instant below is on it.
    clock: Arc<dyn Clock>,
    /// Last frame from the peer, or the moment the link disconnected.
    last_heard: Mutex<Nanos>,
    /// Since when a Ping has gone without its Pong (`None`: none outstanding).
    unanswered: Mutex<Option<Nanos>>,
    /// Every fan-out round up to this one is acknowledged by the peer.
    pub(super) acked_round: AtomicU64,
    /// The latest fan-out round that gave this link keys: rounds after it gave it nothing,
    /// so once the peer acknowledged this far it has acknowledged every round.
    given_round: AtomicU64,
    /// The round at the last (re)connection: the peer is resynced once it acked this far.
    resync_round: AtomicU64,
    /// Dialed because a peer announced this address, not because it is configured.
    pub learned: bool,
    /// Keys were added to `dirty`: send now rather than at the link's next tick, so a change
    /// waits for one sync interval, not up to two.
    pub pushed: tokio::sync::Notify,
    /// The peer dialed us: stop waiting out the reconnect backoff.
    pub wake: tokio::sync::Notify,
    /// Shutting down, the peer has processed our Leave.
    pub said_goodbye: std::sync::atomic::AtomicBool,
    /// Membership messages waiting for the stream.
    gossip: Mutex<VecDeque<bytes::Bytes>>,
    pub(super) unacked: AtomicUsize,
    pub(super) oldest_unacked: Mutex<Option<Nanos>>,
    pub stop: CancellationToken,
    pub(super) frames_sent: Counter,
    pub(super) bytes_sent: Counter,
    pub(super) keys_sent: Counter,
    /// Frames whose keys went again: unacknowledged past the resend timeout, or in flight
    /// when the stream broke. Loss on the link shows here.
    pub(super) frames_resent: Counter,
    /// Frames copied early (unacknowledged for a sync interval, or a fast link's round trip).
    pub(super) frames_copied: Counter,
    up: Gauge,
    lag: Gauge,
    offset: Gauge,
}

impl Link {
    pub fn new(shared: &Shared, addr: String, learned: bool, stop: CancellationToken) -> Link {
        let m = &shared.metrics;
        Link {
            frames_sent: m.peer_counter("tollgate_replication_frames_sent_total", &addr),
            bytes_sent: m.peer_counter("tollgate_replication_bytes_sent_total", &addr),
            keys_sent: m.peer_counter("tollgate_replication_keys_sent_total", &addr),
            frames_resent: m.peer_counter("tollgate_replication_frames_resent_total", &addr),
            frames_copied: m.peer_counter("tollgate_replication_frames_copied_total", &addr),
            up: m.peer_gauge("tollgate_peer_up", &addr),
            lag: m.peer_gauge("tollgate_replication_lag_seconds", &addr),
            offset: m.peer_gauge("tollgate_peer_clock_offset_seconds", &addr),
            addr,
            dirty: Mutex::new(HashMap::new()),
            status: Mutex::new(Status::Trying),
            known_incarnation: Mutex::new(None),
            last_node: Mutex::new(None),
            // A new link gets one peer timeout to answer before its peer counts as gone: adding
            // a member (learned from a Hello, or from DNS) must not flap fair-share mode.
            last_heard: Mutex::new(shared.monotonic()),
            clock: shared.clock.clone(),
            unanswered: Mutex::new(None),
            acked_round: AtomicU64::new(0),
            given_round: AtomicU64::new(0),
            resync_round: AtomicU64::new(u64::MAX),
            learned,
            pushed: tokio::sync::Notify::new(),
            wake: tokio::sync::Notify::new(),
            said_goodbye: std::sync::atomic::AtomicBool::new(false),
            gossip: Mutex::new(VecDeque::new()),
            unacked: AtomicUsize::new(0),
            oldest_unacked: Mutex::new(None),
            stop,
        }
    }

    /// The peer's node name while connected.
    pub fn connected_node(&self) -> Option<String> {
        match &*self.status.lock() {
            Status::Connected { node } => Some(node.clone()),
            _ => None,
        }
    }

    /// The peer's node name, connected or not, once it has ever answered.
    pub fn last_node(&self) -> Option<String> {
        self.last_node.lock().clone()
    }

    /// Tried at least once (connected, or known unreachable/refused/self).
    pub fn tried(&self) -> bool {
        *self.status.lock() != Status::Trying
    }

    pub fn mark_myself(&self) {
        self.set_status(Status::Myself);
    }

    pub fn is_myself(&self) -> bool {
        *self.status.lock() == Status::Myself
    }

    /// The peer refused us or we refused it (another cluster, config or secret).
    pub fn is_refused(&self) -> bool {
        *self.status.lock() == Status::Refused
    }

    /// Standing by: another link reaches the same member.
    pub fn is_alias(&self) -> bool {
        matches!(*self.status.lock(), Status::Alias { .. })
    }

    /// Queue a membership message for the peer and wake the session to send it.
    pub fn queue_gossip(&self, data: bytes::Bytes) {
        let mut q = self.gossip.lock();
        if q.len() >= MAX_GOSSIP_QUEUE {
            q.pop_front();
        }
        q.push_back(data);
        drop(q);
        self.pushed.notify_one();
    }

    fn take_gossip(&self) -> Vec<bytes::Bytes> {
        self.gossip.lock().drain(..).collect()
    }

    /// Connected, unless something sent (a frame to acknowledge, a Ping to answer) has waited
    /// for `timeout` and nothing at all came back meanwhile: an idle link is alive without a
    /// word, a busy one (a long snapshot) while acknowledgements keep coming, and a peer that
    /// stopped answering is not, even with its connection open. Disconnected: alive for
    /// `timeout` after the disconnection (a link that never connected, for its first
    /// `timeout`).
    pub fn alive(&self, now: Nanos, timeout: Duration) -> bool {
        let waiting = [*self.oldest_unacked.lock(), *self.unanswered.lock()]
            .into_iter()
            .flatten()
            .min();
        Liveness {
            connected: self.connected_node().is_some(),
            last_heard: *self.last_heard.lock(),
            waiting_since: waiting,
        }
        .alive(now, timeout)
    }

    /// Liveness time, as the link measures it.
    pub fn now(&self) -> Nanos {
        self.clock.now()
    }

    /// A Ping went out: its Pong is awaited from now, unless an earlier one still is.
    fn pinged(&self) {
        let now = self.now();
        self.unanswered.lock().get_or_insert(now);
    }

    /// A Pong came back; `all`: every Ping sent is answered.
    fn ponged(&self, all: bool) {
        let now = self.now();
        *self.unanswered.lock() = if all { None } else { Some(now) };
    }

    fn heard(&self) {
        *self.last_heard.lock() = self.now();
    }

    pub fn acked_round(&self) -> u64 {
        self.acked_round.load(Ordering::Acquire)
    }

    /// Fan-out round `round` gave this link keys.
    pub fn given(&self, round: u64) {
        self.given_round.store(round, Ordering::Release);
    }

    /// Every round up to the returned one is acknowledged by the peer, `current` being the
    /// latest round: an idle link, or one that fan-out rounds have not given keys since its
    /// peer's last acknowledgement, is acknowledged through `current` without sending a
    /// thing.
    pub fn acked_through(&self, current: u64) -> u64 {
        let acked = self.acked_round();
        if acked >= self.given_round.load(Ordering::Acquire) {
            current.max(acked)
        } else {
            acked
        }
    }

    /// The peer acknowledged everything this node sent up to its last reconnection.
    pub fn resynced(&self, current: u64) -> bool {
        self.acked_through(current) >= self.resync_round.load(Ordering::Acquire)
    }

    /// Changes not yet acknowledged by the peer: queued plus in flight.
    pub fn pending(&self) -> usize {
        self.dirty.lock().len() + self.unacked.load(Ordering::Acquire)
    }

    fn set_status(&self, s: Status) {
        let connected = matches!(s, Status::Connected { .. });
        self.up.set(if connected { 1.0 } else { 0.0 });
        let was = std::mem::replace(&mut *self.status.lock(), s);
        if !connected && matches!(was, Status::Connected { .. }) {
            // Last known good: the peer timeout runs from the disconnection.
            self.heard();
        }
    }

    pub(super) fn update_lag(&self) {
        let now = self.now();
        let lag = self
            .oldest_unacked
            .lock()
            .map_or(0.0, |t| now.saturating_sub(t).max(0) as f64 / 1e9);
        self.lag.set(lag);
    }
}

/// What a link's liveness is judged on, read once.
#[derive(Debug, Clone, Copy)]
struct Liveness {
    connected: bool,
    /// The last frame from the peer, or the disconnection.
    last_heard: Nanos,
    /// Since when the oldest thing sent (a frame to acknowledge, a Ping) awaits its answer.
    waiting_since: Option<Nanos>,
}

impl Liveness {
    fn alive(self, now: Nanos, timeout: Duration) -> bool {
        let timeout = timeout.as_nanos().min(i64::MAX as u128) as Nanos;
        let within = |t: Nanos| now.saturating_sub(t) < timeout;
        let heard = within(self.last_heard);
        if self.connected {
            return heard || self.waiting_since.is_none_or(within);
        }
        heard
    }
}

/// How a queued key goes to the peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Encoding {
    /// Only this node's own slot: its own change, to a peer that gets the rest of the key
    /// from the other nodes directly.
    Own,
    /// The whole state: a snapshot, a relay, or a peer that cannot take partial states.
    Whole,
}

impl Encoding {
    /// Queue `key` as `how` in `dirty`, keeping the whole state if either asks for it.
    pub fn queue(dirty: &mut HashMap<KeyId, Encoding>, key: KeyId, how: Encoding) {
        let e = dirty.entry(key).or_insert(how);
        *e = (*e).max(how);
    }
}

/// Why a session ended.
pub(crate) enum End {
    Unreachable(String),
    Refused(String),
    Myself,
    Alias(String),
    Broken(String),
    Stopped,
}

/// Keep a stream to the peer up until the link is stopped.
pub(crate) async fn run(shared: Arc<Shared>, link: Arc<Link>) {
    let mut backoff = Duration::from_millis(50);
    loop {
        if link.stop.is_cancelled() {
            return;
        }
        let mut out = Outbox::new(&shared, &link);
        let end = session(&shared, &link, &mut out).await;
        // Whatever was in flight goes out again on the next connection; until then the peer
        // has acknowledged no more than before the oldest of it.
        out.requeue_all();
        match end {
            End::Stopped => return,
            End::Myself => {
                debug!(addr = %link.addr, "peer address is this node: ignored");
                link.set_status(Status::Myself);
                link.dirty.lock().clear();
                return;
            }
            End::Alias(node) => {
                debug!(addr = %link.addr, %node, "address reaches a member another link is connected to: standing by");
                link.set_status(Status::Alias { node });
                link.dirty.lock().clear();
                backoff = ALIAS_RETRY;
            }
            End::Unreachable(e) => {
                // Said once when a peer goes away (or was never there), then quietly retried.
                if matches!(*link.status.lock(), Status::Unreachable) {
                    debug!(addr = %link.addr, error = %e, "peer still unreachable");
                } else {
                    warn!(addr = %link.addr, error = %e, "peer unreachable; retrying");
                }
                link.set_status(Status::Unreachable);
            }
            End::Refused(e) => {
                warn!(addr = %link.addr, error = %e, "peer refused");
                link.set_status(Status::Refused);
                backoff = MAX_BACKOFF;
            }
            End::Broken(e) => {
                info!(addr = %link.addr, error = %e, "peer stream broken; reconnecting");
                link.set_status(Status::Unreachable);
                backoff = Duration::from_millis(50);
            }
        }
        shared.update_outlier();
        tokio::select! {
            _ = link.stop.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
            // A peer that just dialed us is up: no reason to wait up to a second to answer.
            _ = link.wake.notified() => {}
        }
        if !link.is_alias() {
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }
}

/// One connection to the peer, from the dial to its end: the handshake, the catch-up (a
/// snapshot or the missed changes), then the steady phase until the stream breaks or stops.
async fn session(shared: &Shared, link: &Link, out: &mut Outbox<'_>) -> End {
    let (tx, inbound, hello) = match handshake(shared, link).await {
        Ok(h) => h,
        Err(e) => return e,
    };
    if let Err(e) = admit(shared, link, &hello) {
        return e;
    }
    if let Err(e) = catch_up(shared, link, out, &tx, &hello).await {
        return e;
    }
    out.copy_from_now();
    Steady::new(shared, link, &hello.node)
        .run(out, &tx, inbound)
        .await
}

/// Dial, exchange Hellos and check the peer's.
async fn handshake(
    shared: &Shared,
    link: &Link,
) -> Result<(mpsc::Sender<Frame>, Streaming<Frame>, Hello), End> {
    let endpoint = match super::tls::endpoint(shared.settings.tls.as_deref(), &link.addr) {
        Ok(e) => e.connect_timeout(CONNECT_TIMEOUT).tcp_nodelay(true),
        Err(e) => {
            return Err(End::Refused(format!(
                "invalid peer address '{}': {e}",
                link.addr
            )))
        }
    };
    let channel = tokio::select! {
        _ = link.stop.cancelled() => return Err(End::Stopped),
        c = connect(shared, endpoint, &link.addr) => c.map_err(|e| End::Unreachable(super::tls::chain(&e)))?,
    };
    let max = shared.settings.max_frame_bytes * 2;
    let mut client = ReplicationClient::new(channel)
        .max_decoding_message_size(max)
        .max_encoding_message_size(max);
    let (tx, rx) = mpsc::channel::<Frame>(16);
    if tx.send(frame(Kind::Hello(shared.hello()))).await.is_err() {
        return Err(End::Broken("stream closed".into()));
    }
    let mut inbound = match client.sync(ReceiverStream::new(rx)).await {
        Ok(r) => r.into_inner(),
        Err(s) if s.code() == tonic::Code::AlreadyExists => return Err(End::Myself),
        // Only the peer's own verdict on our Hello is a refusal; anything else (a connection
        // cut during the handshake, a proxy closing it) is the network, and a member behind
        // it is still a member: it must count towards fair-share mode, not drop out.
        Err(s)
            if matches!(
                s.code(),
                tonic::Code::Unauthenticated
                    | tonic::Code::FailedPrecondition
                    | tonic::Code::PermissionDenied
            ) =>
        {
            return Err(End::Refused(format!("{}: {}", s.code(), s.message())))
        }
        Err(s) => return Err(End::Unreachable(format!("{}: {}", s.code(), s.message()))),
    };
    let hello = match tokio::time::timeout(HELLO_TIMEOUT, inbound.message()).await {
        Ok(Ok(Some(Frame {
            kind: Some(Kind::Hello(h)),
        }))) => h,
        Ok(Ok(_)) => return Err(End::Broken("peer did not answer with a Hello".into())),
        Ok(Err(s)) => return Err(End::Broken(s.to_string())),
        Err(_) => return Err(End::Broken("no Hello from the peer within 5 s".into())),
    };
    if let Err((reason, msg)) = shared.check_hello(&hello) {
        shared.metrics.refused(reason);
        return Err(End::Refused(msg));
    }
    // A test's network goes between the link and its stream from here on (None deployed).
    let tx = match &shared.settings.faults {
        None => tx,
        Some(net) => net
            .wrap(&shared.me().node, &hello.node, tx)
            .ok_or_else(|| End::Unreachable("cut off by the test network".into()))?,
    };
    Ok((tx, inbound, hello))
}

/// Connect over TCP, or on the in-memory test network when a test installed one.
async fn connect(
    shared: &Shared,
    endpoint: tonic::transport::Endpoint,
    addr: &str,
) -> Result<tonic::transport::Channel, tonic::transport::Error> {
    match shared.settings.faults.as_ref().and_then(|f| f.memory()) {
        Some(net) => {
            let dial = super::memory_net::Dial {
                net: net.clone(),
                addr: addr.to_string(),
            };
            endpoint.connect_with_connector(dial).await
        }
        None => endpoint.connect().await,
    }
}

/// The peer answered: this link is now its member's live link, unless another link already
/// reaches that member (then this one stands by as an alias).
fn admit(shared: &Shared, link: &Link, hello: &Hello) -> Result<(), End> {
    *link.last_node.lock() = Some(hello.node.clone());
    let other = shared
        .links
        .find(|l| !std::ptr::eq(l, link) && l.connected_node().as_deref() == Some(&hello.node));
    if other.is_some() {
        // It answered: from now on this address is known to reach that node, so it never
        // counts as a seed that never answered (an extra, unreachable member once the node
        // is gone).
        return Err(End::Alias(hello.node.clone()));
    }
    shared.departed.returned(&hello.node);
    link.heard();
    link.ponged(true);
    link.set_status(Status::Connected {
        node: hello.node.clone(),
    });
    shared.update_outlier();
    // Ask to be let in (or learn who is in): the peer's membership answers on this stream.
    shared
        .membership
        .announce(&hello.node, &hello.advertise_addr);
    Ok(())
}

/// Bring the peer up to date with this node: everything when it is new to us (a new
/// incarnation knows nothing), otherwise what it missed; then SnapshotEnd.
async fn catch_up(
    shared: &Shared,
    link: &Link,
    out: &mut Outbox<'_>,
    tx: &mpsc::Sender<Frame>,
    hello: &Hello,
) -> Result<(), End> {
    let round = shared.round();
    link.resync_round.store(round, Ordering::Release);
    let new_peer = {
        let mut known = link.known_incarnation.lock();
        let new = *known != Some(hello.incarnation);
        *known = Some(hello.incarnation);
        new
    };
    // From the resync's start to its SnapshotEnd: a span when traces are exported.
    let _resync = tracing::info_span!("peer_resync", peer = %hello.node, full_snapshot = new_peer);
    if new_peer {
        info!(peer = %hello.node, addr = %link.addr, "sending full snapshot");
        // Everything goes: what was queued for the peer is in the snapshot.
        out.drain(round);
        for shard in 0..shared.store.shard_count() {
            let mut entries = Vec::new();
            shared.store.for_each_in_shard(shard, |k, l, s| {
                entries.push((k, Encoding::Whole, *l, s.clone()))
            });
            out.send_entries(shared, tx, entries, round).await?;
        }
    } else {
        info!(peer = %hello.node, addr = %link.addr, "resuming: resending unacknowledged changes");
        out.flush(shared, tx, round).await?;
    }
    out.send_end(tx, round).await
}

/// The steady phase: send what fan-out rounds and the membership protocol queue, resend
/// what goes unacknowledged, report whom this node hears from, ping now and then, and take
/// the peer's acks, pongs and membership messages. An idle link wakes only for its
/// keepalive.
struct Steady<'a> {
    shared: &'a Shared,
    link: &'a Link,
    peer: &'a str,
    /// Pings and Pongs pair up in order, so the Pong of the Ping sent right after Leave
    /// proves the peer has processed the Leave.
    pings: u64,
    pongs: u64,
    goodbye: Option<u64>,
    /// A Ping being timed (its number and when it went, in liveness time): its Pong is a
    /// round-trip sample for the outbox, so that a link's first frames, before any of them
    /// is acknowledged, already get their early copy after the round trip.
    timed_ping: Option<(u64, Nanos)>,
    /// The version of the receiving-from report last sent (`None`: none yet).
    reported: Option<u64>,
}

impl<'a> Steady<'a> {
    fn new(shared: &'a Shared, link: &'a Link, peer: &'a str) -> Self {
        Steady {
            shared,
            link,
            peer,
            pings: 0,
            pongs: 0,
            goodbye: None,
            timed_ping: None,
            reported: None,
        }
    }

    async fn run(
        mut self,
        out: &mut Outbox<'_>,
        tx: &mpsc::Sender<Frame>,
        mut inbound: Streaming<Frame>,
    ) -> End {
        let shared = self.shared;
        let link = self.link;
        let mut keepalive = tokio::time::interval(keepalive(shared.membership.members().len()));
        keepalive.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let resend = out.next_resend().map(|at| at.saturating_sub(link.now()));
            let step = tokio::select! {
                _ = link.stop.cancelled() => return End::Stopped,
                _ = link.pushed.notified() => self.push(out, tx).await,
                _ = sleep_for(resend) => self.push(out, tx).await,
                _ = keepalive.tick() => self.ping(out, tx, None).await,
                msg = inbound.message() => self.receive(out, msg),
            };
            if let Err(e) = step {
                return e;
            }
        }
    }

    /// Send what is queued: membership messages, a new receiving-from report, resends and
    /// early copies due, the dirty keys; when leaving and all is acknowledged, Leave.
    async fn push(&mut self, out: &mut Outbox<'_>, tx: &mpsc::Sender<Frame>) -> Result<(), End> {
        let shared = self.shared;
        for g in self.link.take_gossip() {
            out.send(tx, frame(Kind::Gossip(Gossip { data: g.to_vec() })))
                .await?;
        }
        if self.reported != Some(shared.catch_up.version()) {
            let (version, nodes) = shared.catch_up.report();
            self.ping(out, tx, Some(ReceivingFrom { nodes })).await?;
            self.reported = Some(version);
        }
        out.requeue(Some(out.resend_after()));
        out.copy_unacked();
        out.flush(shared, tx, shared.round()).await?;
        if shared.is_leaving() && self.goodbye.is_none() && out.all_acked() {
            out.send(tx, frame(Kind::Leave(Leave {}))).await?;
            self.ping(out, tx, None).await?;
            self.goodbye = Some(self.pings);
        }
        Ok(())
    }

    async fn ping(
        &mut self,
        out: &mut Outbox<'_>,
        tx: &mpsc::Sender<Frame>,
        receiving_from: Option<ReceivingFrom>,
    ) -> Result<(), End> {
        let ping = Ping {
            wall_ns: self.shared.now(),
            receiving_from,
        };
        out.send(tx, frame(Kind::Ping(ping))).await?;
        self.pings += 1;
        self.timed_ping.get_or_insert((self.pings, self.link.now()));
        self.link.pinged();
        Ok(())
    }

    /// One frame from the peer's side of the stream.
    fn receive(
        &mut self,
        out: &mut Outbox<'_>,
        msg: Result<Option<Frame>, tonic::Status>,
    ) -> Result<(), End> {
        match msg {
            Ok(Some(Frame {
                kind: Some(Kind::Ack(a)),
            })) => {
                self.link.heard();
                out.ack(a.seq);
            }
            Ok(Some(Frame {
                kind: Some(Kind::Gossip(g)),
            })) => {
                self.link.heard();
                self.shared.membership.receive(g.data);
            }
            Ok(Some(Frame {
                kind: Some(Kind::Pong(p)),
            })) => {
                self.pongs += 1;
                if let Some((n, sent)) = self.timed_ping.filter(|(n, _)| *n <= self.pongs) {
                    if n == self.pongs {
                        out.ping_answered(self.link.now().saturating_sub(sent));
                    }
                    self.timed_ping = None;
                }
                self.link.ponged(self.pongs >= self.pings);
                if self.goodbye.is_some_and(|g| self.pongs >= g) {
                    self.link.said_goodbye.store(true, Ordering::Release);
                }
                self.link.heard();
                self.clock_check(&p);
            }
            Ok(Some(other)) => {
                self.shared.metrics.refused("malformed");
                return Err(End::Broken(format!(
                    "unexpected frame from the peer: {:?}",
                    other.kind.map(|k| std::mem::discriminant(&k))
                )));
            }
            Ok(None) => return Err(End::Broken("peer closed the stream".into())),
            Err(s) => return Err(End::Broken(format!("{}: {}", s.code(), s.message()))),
        }
        Ok(())
    }

    /// The peer's clock from a Pong, RTT-corrected: too far off quarantines it.
    fn clock_check(&self, p: &Pong) {
        let shared = self.shared;
        let now = shared.now();
        let rtt = now.saturating_sub(p.echo_wall_ns).max(0);
        let offset = p
            .wall_ns
            .saturating_sub(p.echo_wall_ns.saturating_add(rtt / 2));
        self.link.offset.set(offset as f64 / 1e9);
        let limit = shared.settings.max_clock_offset.as_nanos() as i64;
        shared.clock_health.observe(self.peer, offset, limit);
        shared.update_outlier();
    }
}

/// The keepalive period of a link in a cluster of `members` other members.
fn keepalive(members: usize) -> Duration {
    let tens = (members as u32).div_ceil(10).max(1);
    (KEEPALIVE_PER_TEN_MEMBERS * tens).min(MAX_KEEPALIVE)
}

/// Sleep `nanos` (none when due already; forever when `None`).
async fn sleep_for(nanos: Option<Nanos>) {
    match nanos {
        Some(n) => tokio::time::sleep(Duration::from_nanos(n.max(0) as u64)).await,
        None => std::future::pending().await,
    }
}

pub(crate) fn frame(kind: Kind) -> Frame {
    Frame { kind: Some(kind) }
}

/// Encode entries into Deltas of at most `max_frame_bytes`, the most drained keys first (they
/// are the ones where a late update admits too much).
pub(crate) fn encode(
    shared: &Shared,
    mut entries: Vec<(KeyId, Encoding, Limit, BucketState)>,
) -> Vec<(super::proto::Delta, Vec<(KeyId, Encoding)>)> {
    let now = shared.now();
    entries.sort_by_cached_key(|(_, _, l, s)| {
        let room = s.tokens(l, now);
        // Share of the bucket still free, in per-mille: comparable across limits.
        (room.clamp(-1_000_000_000, 1_000_000_000) * 1000) / l.capacity().max(1) as i128
    });
    let own = shared.store.local_replica();
    let mut out = Vec::new();
    let mut b = DeltaBuilder::new(&shared.replicas);
    let mut keys = Vec::new();
    for (k, how, l, s) in entries {
        match how {
            Encoding::Own => b.push_own(k, &l, &s, own),
            Encoding::Whole => b.push(k, &l, &s),
        }
        keys.push((k, how));
        if b.bytes() >= shared.settings.max_frame_bytes {
            out.push((std::mem::take(&mut b.delta), std::mem::take(&mut keys)));
            b = DeltaBuilder::new(&shared.replicas);
        }
    }
    if !b.is_empty() {
        out.push((b.delta, keys));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Nanos = 1_000_000_000;
    const TIMEOUT: Duration = Duration::from_secs(2);

    fn connected(last_heard: Nanos, waiting_since: Option<Nanos>) -> Liveness {
        Liveness {
            connected: true,
            last_heard,
            waiting_since,
        }
    }

    #[test]
    fn an_idle_connected_link_is_alive_without_a_word() {
        assert!(connected(0, None).alive(3600 * S, TIMEOUT));
    }

    #[test]
    fn a_connected_peer_that_leaves_a_frame_unanswered_past_the_timeout_is_not_alive() {
        let l = connected(0, Some(10 * S));
        assert!(
            l.alive(11 * S, TIMEOUT),
            "waiting for less than the timeout"
        );
        assert!(
            !l.alive(12 * S, TIMEOUT),
            "waited the whole timeout, heard nothing"
        );
    }

    #[test]
    fn a_busy_link_stays_alive_while_answers_keep_coming() {
        // Frames wait on it for minutes (a long snapshot), but acks arrive every second.
        assert!(connected(59 * S, Some(0)).alive(60 * S, TIMEOUT));
    }

    #[test]
    fn a_disconnected_link_is_alive_for_the_timeout_after_the_disconnection() {
        let l = Liveness {
            connected: false,
            last_heard: 5 * S,
            waiting_since: None,
        };
        assert!(l.alive(6 * S, TIMEOUT));
        assert!(!l.alive(7 * S, TIMEOUT));
    }
}
