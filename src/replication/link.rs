//! The stream this node dials to one peer, carrying this node's changes out.
//!
//! A peer seen for the first time, or with a new incarnation (it restarted and lost its
//! memory), gets a full snapshot, shard by shard in frames of at most `max_frame_bytes`, then
//! SnapshotEnd. A peer that reconnects with the same incarnation gets the changes it missed,
//! then SnapshotEnd too: either way SnapshotEnd tells it that it is caught up with this node.
//! After that, every `sync_interval` the keys changed since the last frame, the most drained
//! first. A frame is acknowledged by its own sequence number; one not acknowledged in time
//! (lost, or the stream broke) is queued again: merging is idempotent, so a resend is always
//! safe.
//!
//! The link also tells the rest of replication what the peer has seen: the latest fan-out
//! round whose changes it acknowledged (the burst guard waits on it) and when it last heard
//! from the peer (fair-share mode starts when a member goes quiet).

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use metrics::{Counter, Gauge};
use parking_lot::Mutex;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::codec::DeltaBuilder;
use super::faults::Faults;
use super::proto::frame::Kind;
use super::proto::replication_client::ReplicationClient;
use super::proto::{Frame, Gossip, Leave, Ping, SnapshotEnd};
use super::Shared;
use crate::store::KeyId;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
const HELLO_TIMEOUT: Duration = Duration::from_secs(5);
const MAX_BACKOFF: Duration = Duration::from_secs(1);
/// A frame not acknowledged for this long is sent again (with TCP underneath this only
/// happens when a frame was lost to a fault or a stalled peer; duplicates merge harmlessly).
const RESEND_AFTER: Duration = Duration::from_secs(1);

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

/// A frame sent and not acknowledged yet.
pub(crate) struct InFlight {
    seq: u64,
    keys: Vec<KeyId>,
    /// The fan-out round its keys were taken in.
    round: u64,
    sent: Instant,
}

pub(crate) struct Link {
    pub addr: String,
    /// Keys changed since they were last sent to this peer.
    pub dirty: Mutex<HashSet<KeyId>>,
    status: Mutex<Status>,
    /// The peer's incarnation when last connected: a different one means it restarted.
    known_incarnation: Mutex<Option<u64>>,
    /// The peer's node name when last connected (kept while it is away).
    last_node: Mutex<Option<String>>,
    /// Last ack or pong from the peer.
    last_heard: Mutex<Instant>,
    /// Every fan-out round up to this one is acknowledged by the peer.
    acked_round: AtomicU64,
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
    unacked: AtomicUsize,
    oldest_unacked: Mutex<Option<Instant>>,
    pub stop: CancellationToken,
    frames_sent: Counter,
    bytes_sent: Counter,
    keys_sent: Counter,
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
            up: m.peer_gauge("tollgate_peer_up", &addr),
            lag: m.peer_gauge("tollgate_replication_lag_seconds", &addr),
            offset: m.peer_gauge("tollgate_peer_clock_offset_seconds", &addr),
            addr,
            dirty: Mutex::new(HashSet::new()),
            status: Mutex::new(Status::Trying),
            known_incarnation: Mutex::new(None),
            last_node: Mutex::new(None),
            // A new link gets one peer timeout to answer before its peer counts as gone: adding
            // a member (learned from a Hello, or from DNS) must not flap fair-share mode.
            last_heard: Mutex::new(Instant::now()),
            acked_round: AtomicU64::new(0),
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

    /// Heard from within `timeout` (a link that never connected is alive only for its first
    /// `timeout`).
    pub fn alive(&self, now: Instant, timeout: Duration) -> bool {
        now.saturating_duration_since(*self.last_heard.lock()) < timeout
    }

    fn heard(&self) {
        *self.last_heard.lock() = Instant::now();
    }

    pub fn acked_round(&self) -> u64 {
        self.acked_round.load(Ordering::Acquire)
    }

    /// The peer acknowledged everything this node sent up to its last reconnection.
    pub fn resynced(&self) -> bool {
        self.acked_round() >= self.resync_round.load(Ordering::Acquire)
    }

    /// Changes not yet acknowledged by the peer: queued plus in flight.
    pub fn pending(&self) -> usize {
        self.dirty.lock().len() + self.unacked.load(Ordering::Acquire)
    }

    fn set_status(&self, s: Status) {
        self.up.set(if matches!(s, Status::Connected { .. }) {
            1.0
        } else {
            0.0
        });
        *self.status.lock() = s;
    }

    fn update_lag(&self) {
        let lag = self
            .oldest_unacked
            .lock()
            .map_or(0.0, |t| t.elapsed().as_secs_f64());
        self.lag.set(lag);
    }
}

/// Why a session ended.
enum End {
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

/// The sending side of one session: numbers frames, remembers them until acknowledged, and
/// publishes how far the peer has acknowledged.
pub(crate) struct Outbox<'a> {
    link: &'a Link,
    faults: Option<&'a Faults>,
    seq: u64,
    in_flight: VecDeque<InFlight>,
    /// Round of the last drain of the dirty set: everything up to it was sent or is in flight.
    drained_round: u64,
    /// Keys sent back to the dirty set since the last drain hold acks back to before their round.
    requeued_floor: Option<u64>,
    /// A frame held back to be sent after the next one (reorder fault).
    held: Option<Frame>,
}

impl<'a> Outbox<'a> {
    fn new(shared: &'a Shared, link: &'a Link) -> Self {
        Outbox {
            link,
            faults: shared.settings.faults.as_deref(),
            seq: 0,
            in_flight: VecDeque::new(),
            drained_round: link.acked_round(),
            requeued_floor: None,
            held: None,
        }
    }

    /// Publish the latest round every change of which the peer acknowledged.
    fn publish(&self) {
        let mut r = self.drained_round;
        if let Some(f) = self.in_flight.iter().map(|f| f.round).min() {
            r = r.min(f.saturating_sub(1));
        }
        if let Some(f) = self.requeued_floor {
            r = r.min(f);
        }
        self.link.acked_round.store(r, Ordering::Release);
        self.link
            .unacked
            .store(self.in_flight.len(), Ordering::Release);
        *self.link.oldest_unacked.lock() = self.in_flight.iter().map(|f| f.sent).min();
        self.link.update_lag();
    }

    fn ack(&mut self, seq: u64) {
        if let Some(i) = self.in_flight.iter().position(|f| f.seq == seq) {
            self.in_flight.remove(i);
        }
        self.publish();
    }

    /// Put frames back into the dirty set: all of them, or those unacknowledged for too long.
    fn requeue(&mut self, older_than: Option<Duration>) {
        let now = Instant::now();
        let mut dirty = self.link.dirty.lock();
        let mut kept = VecDeque::new();
        for f in self.in_flight.drain(..) {
            if older_than.is_some_and(|d| now.duration_since(f.sent) < d) {
                kept.push_back(f);
                continue;
            }
            let floor = f.round.saturating_sub(1);
            self.requeued_floor = Some(self.requeued_floor.map_or(floor, |r| r.min(floor)));
            dirty.extend(f.keys);
        }
        drop(dirty);
        self.in_flight = kept;
        self.publish();
    }

    fn requeue_all(&mut self) {
        self.requeue(None);
    }

    /// Take the dirty set, as of fan-out round `round`.
    fn drain(&mut self, round: u64) -> Vec<KeyId> {
        let keys: Vec<KeyId> = self.link.dirty.lock().drain().collect();
        self.drained_round = round;
        self.requeued_floor = None;
        keys
    }

    async fn send(&mut self, tx: &mpsc::Sender<Frame>, f: Frame) -> Result<(), End> {
        tokio::select! {
            _ = self.link.stop.cancelled() => Err(End::Stopped),
            r = tx.send(f) => r.map_err(|_| End::Broken("stream closed".into())),
        }
    }

    /// Send one Delta (through the fault plan, in tests).
    async fn send_delta(
        &mut self,
        tx: &mpsc::Sender<Frame>,
        (mut delta, keys): (super::proto::Delta, Vec<KeyId>),
        round: u64,
    ) -> Result<(), End> {
        self.seq += 1;
        delta.seq = self.seq;
        let n = keys.len() as u64;
        let f = frame(Kind::Delta(delta));
        let bytes = prost::Message::encoded_len(&f) as u64;
        self.in_flight.push_back(InFlight {
            seq: self.seq,
            keys,
            round,
            sent: Instant::now(),
        });
        self.publish();
        let fate = self.faults.map(Faults::fate).unwrap_or_default();
        if !fate.delay.is_zero() {
            // Latency, not bandwidth: the frame arrives later, the link carries on.
            let (tx, delay) = (tx.clone(), fate.delay);
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                let _ = tx.send(f).await;
            });
            return Ok(());
        }
        if fate.drop {
            return Ok(());
        }
        if fate.hold && self.held.is_none() {
            self.held = Some(f);
            return Ok(());
        }
        if fate.duplicate {
            self.send(tx, f.clone()).await?;
        }
        self.send(tx, f).await?;
        if let Some(h) = self.held.take() {
            self.send(tx, h).await?;
        }
        self.link.frames_sent.increment(1);
        self.link.bytes_sent.increment(bytes);
        self.link.keys_sent.increment(n);
        Ok(())
    }

    /// SnapshotEnd: everything up to `round` has been sent.
    async fn send_end(&mut self, tx: &mpsc::Sender<Frame>, round: u64) -> Result<(), End> {
        self.seq += 1;
        let seq = self.seq;
        self.in_flight.push_back(InFlight {
            seq,
            keys: Vec::new(),
            round,
            sent: Instant::now(),
        });
        self.publish();
        self.send(tx, frame(Kind::SnapshotEnd(SnapshotEnd { seq })))
            .await
    }

    /// Encode and send `entries` as Deltas of the given round.
    async fn send_entries(
        &mut self,
        shared: &Shared,
        tx: &mpsc::Sender<Frame>,
        entries: Vec<(KeyId, crate::bucket::Limit, crate::bucket::BucketState)>,
        round: u64,
    ) -> Result<(), End> {
        for chunk in encode(shared, entries) {
            self.send_delta(tx, chunk, round).await?;
        }
        Ok(())
    }

    /// Send the dirty set's current states.
    async fn flush(
        &mut self,
        shared: &Shared,
        tx: &mpsc::Sender<Frame>,
        round: u64,
    ) -> Result<(), End> {
        let keys = self.drain(round);
        if keys.is_empty() {
            self.publish();
            return Ok(());
        }
        let entries = keys
            .into_iter()
            .filter_map(|k| shared.store.get(k).map(|(l, s)| (k, l, s)))
            .collect();
        self.send_entries(shared, tx, entries, round).await
    }
}

async fn session(shared: &Shared, link: &Link, out: &mut Outbox<'_>) -> End {
    let endpoint = match super::tls::endpoint(shared.settings.tls.as_deref(), &link.addr) {
        Ok(e) => e.connect_timeout(CONNECT_TIMEOUT).tcp_nodelay(true),
        Err(e) => return End::Refused(format!("invalid peer address '{}': {e}", link.addr)),
    };
    let channel = tokio::select! {
        _ = link.stop.cancelled() => return End::Stopped,
        c = endpoint.connect() => match c {
            Ok(c) => c,
            Err(e) => return End::Unreachable(super::tls::chain(&e)),
        },
    };
    let max = shared.settings.max_frame_bytes * 2;
    let mut client = ReplicationClient::new(channel)
        .max_decoding_message_size(max)
        .max_encoding_message_size(max);
    let (tx, rx) = mpsc::channel::<Frame>(16);
    if tx.send(frame(Kind::Hello(shared.hello()))).await.is_err() {
        return End::Broken("stream closed".into());
    }
    let mut inbound = match client.sync(ReceiverStream::new(rx)).await {
        Ok(r) => r.into_inner(),
        Err(s) if s.code() == tonic::Code::AlreadyExists => return End::Myself,
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
            return End::Refused(format!("{}: {}", s.code(), s.message()))
        }
        Err(s) => return End::Unreachable(format!("{}: {}", s.code(), s.message())),
    };
    let hello = match tokio::time::timeout(HELLO_TIMEOUT, inbound.message()).await {
        Ok(Ok(Some(Frame {
            kind: Some(Kind::Hello(h)),
        }))) => h,
        Ok(Ok(_)) => return End::Broken("peer did not answer with a Hello".into()),
        Ok(Err(s)) => return End::Broken(s.to_string()),
        Err(_) => return End::Broken("no Hello from the peer within 5 s".into()),
    };
    if let Err((reason, msg)) = shared.check_hello(&hello) {
        shared.metrics.refused(reason);
        return End::Refused(msg);
    }
    let me = shared.me();
    let cut = || {
        shared
            .settings
            .faults
            .as_ref()
            .is_some_and(|f| f.is_cut(&me.node, &hello.node))
    };
    if cut() {
        return End::Unreachable("cut off by the test network".into());
    }
    if shared.links.lock().values().any(|l| {
        !std::ptr::eq(Arc::as_ptr(l), link) && l.connected_node().as_deref() == Some(&hello.node)
    }) {
        // It answered: from now on this address is known to reach that node, so it never
        // counts as a seed that never answered (an extra, unreachable member once the node
        // is gone).
        *link.last_node.lock() = Some(hello.node.clone());
        return End::Alias(hello.node.clone());
    }
    *link.last_node.lock() = Some(hello.node.clone());
    shared.left.lock().remove(&hello.node);
    link.heard();
    link.set_status(Status::Connected {
        node: hello.node.clone(),
    });
    shared.update_outlier();
    // Ask to be let in (or learn who is in): the peer's membership answers on this stream.
    shared
        .membership
        .announce(&hello.node, &hello.advertise_addr);
    let round = shared.round();
    link.resync_round.store(round, Ordering::Release);
    let new_peer = {
        let mut known = link.known_incarnation.lock();
        let new = *known != Some(hello.incarnation);
        *known = Some(hello.incarnation);
        new
    };
    // From the resync's start to its SnapshotEnd: a span when traces are exported.
    let resync = tracing::info_span!("peer_resync", peer = %hello.node, full_snapshot = new_peer);
    if new_peer {
        // It knows nothing of us: everything we hold goes over, then SnapshotEnd.
        info!(peer = %hello.node, addr = %link.addr, "sending full snapshot");
        out.drain(round);
        for shard in 0..shared.store.shard_count() {
            let mut entries = Vec::new();
            shared
                .store
                .for_each_in_shard(shard, |k, l, s| entries.push((k, *l, s.clone())));
            if let Err(e) = out.send_entries(shared, &tx, entries, round).await {
                return e;
            }
        }
    } else {
        info!(peer = %hello.node, addr = %link.addr, "resuming: resending unacknowledged changes");
        if let Err(e) = out.flush(shared, &tx, round).await {
            return e;
        }
    }
    if let Err(e) = out.send_end(&tx, round).await {
        return e;
    }
    drop(resync);

    let mut tick = tokio::time::interval(shared.settings.sync_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut ping = tokio::time::interval(shared.heartbeat());
    // Pings and Pongs pair up in order, so the Pong of the Ping sent right after Leave proves
    // the peer has processed the Leave.
    let (mut pings, mut pongs) = (0u64, 0u64);
    let mut goodbye: Option<u64> = None;
    loop {
        tokio::select! {
            _ = link.stop.cancelled() => return End::Stopped,
            _ = async {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = link.pushed.notified() => {}
                }
            } => {
                if cut() {
                    return End::Broken("cut off by the test network".into());
                }
                for g in link.take_gossip() {
                    if let Err(e) = out.send(&tx, frame(Kind::Gossip(Gossip { data: g.to_vec() }))).await {
                        return e;
                    }
                }
                out.requeue(Some(RESEND_AFTER));
                let round = shared.round();
                if let Err(e) = out.flush(shared, &tx, round).await {
                    return e;
                }
                if shared.is_leaving() && goodbye.is_none() && out.in_flight.is_empty() {
                    if let Err(e) = out.send(&tx, frame(Kind::Leave(Leave {}))).await {
                        return e;
                    }
                    if let Err(e) = out.send(&tx, frame(Kind::Ping(Ping { wall_ns: shared.now() }))).await {
                        return e;
                    }
                    pings += 1;
                    goodbye = Some(pings);
                }
            }
            _ = ping.tick() => {
                if let Err(e) = out.send(&tx, frame(Kind::Ping(Ping { wall_ns: shared.now() }))).await {
                    return e;
                }
                pings += 1;
            }
            msg = inbound.message() => match msg {
                Ok(Some(Frame { kind: Some(Kind::Ack(a)) })) => {
                    if !cut() {
                        link.heard();
                        out.ack(a.seq);
                    }
                }
                Ok(Some(Frame { kind: Some(Kind::Gossip(g)) })) => {
                    if !cut() {
                        shared.membership.receive(g.data);
                    }
                }
                Ok(Some(Frame { kind: Some(Kind::Pong(p)) })) => {
                    pongs += 1;
                    if goodbye.is_some_and(|g| pongs >= g) {
                        link.said_goodbye.store(true, Ordering::Release);
                    }
                    if cut() {
                        continue;
                    }
                    link.heard();
                    let now = shared.now();
                    let rtt = now.saturating_sub(p.echo_wall_ns).max(0);
                    let offset = p.wall_ns.saturating_sub(p.echo_wall_ns.saturating_add(rtt / 2));
                    link.offset.set(offset as f64 / 1e9);
                    let limit = shared.settings.max_clock_offset.as_nanos() as i64;
                    let mut q = shared.quarantined.lock();
                    if offset.abs() > limit {
                        if q.insert(hello.node.clone()) {
                            warn!(peer = %hello.node, offset_ms = offset / 1_000_000, "peer clock too far off: quarantined (its states are not merged)");
                        }
                    } else if q.remove(&hello.node) {
                        info!(peer = %hello.node, offset_ms = offset / 1_000_000, "peer clock back within bounds: quarantine lifted");
                    }
                    drop(q);
                    shared.update_outlier();
                }
                Ok(Some(other)) => {
                    shared.metrics.refused("malformed");
                    return End::Broken(format!("unexpected frame from the peer: {:?}", other.kind.map(|k| std::mem::discriminant(&k))));
                }
                Ok(None) => return End::Broken("peer closed the stream".into()),
                Err(s) => return End::Broken(format!("{}: {}", s.code(), s.message())),
            }
        }
    }
}

fn frame(kind: Kind) -> Frame {
    Frame { kind: Some(kind) }
}

/// Encode entries into Deltas of at most `max_frame_bytes`, the most drained keys first (they
/// are the ones where a late update admits too much).
fn encode(
    shared: &Shared,
    mut entries: Vec<(KeyId, crate::bucket::Limit, crate::bucket::BucketState)>,
) -> Vec<(super::proto::Delta, Vec<KeyId>)> {
    let now = shared.now();
    entries.sort_by_cached_key(|(_, l, s)| {
        let room = s.tokens(l, now);
        // Share of the bucket still free, in per-mille: comparable across limits.
        (room.clamp(-1_000_000_000, 1_000_000_000) * 1000) / l.capacity().max(1) as i128
    });
    let mut out = Vec::new();
    let mut b = DeltaBuilder::new(&shared.replicas);
    let mut keys = Vec::new();
    for (k, l, s) in entries {
        b.push(k, &l, &s);
        keys.push(k);
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
