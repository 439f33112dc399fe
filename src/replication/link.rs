//! The stream this node dials to one peer, carrying this node's changes out.
//!
//! A peer seen for the first time, or with a new incarnation (it restarted and lost its
//! memory), gets a full snapshot, shard by shard in frames of at most `max_frame_bytes`, then
//! SnapshotEnd. After that, every `sync_interval` the keys changed since the last frame, the
//! most drained first. Frames not yet acknowledged when the stream breaks are queued again:
//! merging is idempotent, so a resend is always safe.

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use metrics::{Counter, Gauge};
use parking_lot::Mutex;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::Endpoint;
use tracing::{debug, info, warn};

use super::codec::DeltaBuilder;
use super::proto::frame::Kind;
use super::proto::replication_client::ReplicationClient;
use super::proto::{Frame, Ping, SnapshotEnd};
use super::Shared;
use crate::store::KeyId;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
const HELLO_TIMEOUT: Duration = Duration::from_secs(5);
const PING_INTERVAL: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(1);

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
}

pub(crate) struct Link {
    pub addr: String,
    /// Keys changed since they were last sent to this peer.
    pub dirty: Mutex<HashSet<KeyId>>,
    status: Mutex<Status>,
    /// The peer's incarnation when last connected: a different one means it restarted.
    known_incarnation: Mutex<Option<u64>>,
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
    pub fn new(shared: &Shared, addr: String, stop: CancellationToken) -> Link {
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

    /// Tried at least once (connected, or known unreachable/refused/self).
    pub fn tried(&self) -> bool {
        *self.status.lock() != Status::Trying
    }

    pub fn is_myself(&self) -> bool {
        *self.status.lock() == Status::Myself
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
        let mut unacked: VecDeque<(u64, Vec<KeyId>)> = VecDeque::new();
        let end = session(&shared, &link, &mut unacked).await;
        // Whatever was in flight goes out again on the next connection.
        {
            let mut dirty = link.dirty.lock();
            for (_, keys) in unacked.drain(..) {
                dirty.extend(keys);
            }
        }
        link.unacked.store(0, Ordering::Release);
        *link.oldest_unacked.lock() = None;
        match end {
            End::Stopped => return,
            End::Myself => {
                debug!(addr = %link.addr, "peer address is this node: ignored");
                link.set_status(Status::Myself);
                link.dirty.lock().clear();
                return;
            }
            End::Unreachable(e) => {
                debug!(addr = %link.addr, error = %e, "peer unreachable");
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
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

async fn session(shared: &Shared, link: &Link, unacked: &mut VecDeque<(u64, Vec<KeyId>)>) -> End {
    let endpoint = match Endpoint::from_shared(format!("http://{}", link.addr)) {
        Ok(e) => e.connect_timeout(CONNECT_TIMEOUT).tcp_nodelay(true),
        Err(e) => return End::Refused(format!("invalid peer address '{}': {e}", link.addr)),
    };
    let channel = tokio::select! {
        _ = link.stop.cancelled() => return End::Stopped,
        c = endpoint.connect() => match c {
            Ok(c) => c,
            Err(e) => return End::Unreachable(e.to_string()),
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
        Err(s) if s.code() == tonic::Code::Unavailable => {
            return End::Unreachable(s.message().to_string())
        }
        Err(s) => return End::Refused(format!("{}: {}", s.code(), s.message())),
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
    link.set_status(Status::Connected {
        node: hello.node.clone(),
    });
    shared.update_outlier();
    let mut seq = 0u64;
    let new_peer = {
        let mut known = link.known_incarnation.lock();
        let new = *known != Some(hello.incarnation);
        *known = Some(hello.incarnation);
        new
    };
    if new_peer {
        // It knows nothing of us: everything we hold goes over, then SnapshotEnd.
        info!(peer = %hello.node, addr = %link.addr, "sending full snapshot");
        link.dirty.lock().clear();
        for shard in 0..shared.store.shard_count() {
            let mut entries = Vec::new();
            shared
                .store
                .for_each_in_shard(shard, |k, l, s| entries.push((k, *l, s.clone())));
            for chunk in encode(shared, entries) {
                if let Err(e) = send_delta(link, &tx, &mut seq, chunk, unacked).await {
                    return e;
                }
            }
        }
        seq += 1;
        if tx
            .send(frame(Kind::SnapshotEnd(SnapshotEnd { seq })))
            .await
            .is_err()
        {
            return End::Broken("stream closed during snapshot".into());
        }
        unacked.push_back((seq, Vec::new()));
        link.unacked.store(unacked.len(), Ordering::Release);
    } else {
        info!(peer = %hello.node, addr = %link.addr, "resuming: resending unacknowledged changes");
    }

    let mut tick = tokio::time::interval(shared.settings.sync_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut ping = tokio::time::interval(PING_INTERVAL);
    loop {
        tokio::select! {
            _ = link.stop.cancelled() => return End::Stopped,
            _ = tick.tick() => {
                let keys: Vec<KeyId> = link.dirty.lock().drain().collect();
                if !keys.is_empty() {
                    let entries = keys
                        .into_iter()
                        .filter_map(|k| shared.store.get(k).map(|(l, s)| (k, l, s)))
                        .collect();
                    for chunk in encode(shared, entries) {
                        if let Err(e) = send_delta(link, &tx, &mut seq, chunk, unacked).await {
                            return e;
                        }
                    }
                }
                link.update_lag();
            }
            _ = ping.tick() => {
                if tx.send(frame(Kind::Ping(Ping { wall_ns: shared.now() }))).await.is_err() {
                    return End::Broken("stream closed".into());
                }
            }
            msg = inbound.message() => match msg {
                Ok(Some(Frame { kind: Some(Kind::Ack(a)) })) => {
                    while unacked.front().is_some_and(|(s, _)| *s <= a.seq) {
                        unacked.pop_front();
                    }
                    link.unacked.store(unacked.len(), Ordering::Release);
                    *link.oldest_unacked.lock() = if unacked.is_empty() { None } else { Some(Instant::now()) };
                    link.update_lag();
                }
                Ok(Some(Frame { kind: Some(Kind::Pong(p)) })) => {
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

async fn send_delta(
    link: &Link,
    tx: &mpsc::Sender<Frame>,
    seq: &mut u64,
    (mut delta, keys): (super::proto::Delta, Vec<KeyId>),
    unacked: &mut VecDeque<(u64, Vec<KeyId>)>,
) -> Result<(), End> {
    *seq += 1;
    delta.seq = *seq;
    let n = keys.len() as u64;
    let f = frame(Kind::Delta(delta));
    let bytes = prost::Message::encoded_len(&f) as u64;
    unacked.push_back((*seq, keys));
    link.unacked.store(unacked.len(), Ordering::Release);
    link.oldest_unacked.lock().get_or_insert_with(Instant::now);
    tokio::select! {
        _ = link.stop.cancelled() => return Err(End::Stopped),
        r = tx.send(f) => if r.is_err() {
            return Err(End::Broken("stream closed".into()));
        }
    }
    link.frames_sent.increment(1);
    link.bytes_sent.increment(bytes);
    link.keys_sent.increment(n);
    Ok(())
}
