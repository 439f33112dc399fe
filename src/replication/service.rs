//! The receiving end of peer streams: check the Hello, merge Deltas, acknowledge, answer Pings.
//! A malformed or unexpected frame closes that one stream with a status that says what was
//! wrong; the node and its other streams carry on.

use std::sync::Arc;
use std::time::Duration;

use metrics::Counter;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};
use tracing::{debug, info, warn};

use super::codec::{decode_delta, FrameError};
use super::proto::frame::Kind;
use super::proto::replication_server::{Replication, ReplicationServer};
use super::proto::{Ack, Frame, Pong};
use super::{PeerListener, Shared};

const HELLO_TIMEOUT: Duration = Duration::from_secs(5);

/// Connections the peer port holds at once: a handful per member (links, a redial racing an
/// old link) at `--max-members`' default of 256, so a flood of junk connections cannot take
/// the file descriptors the public ports need.
const MAX_PEER_CONNECTIONS: usize = 1024;
/// A peer connection silent this long is closed: a live link sends a keepalive at least every
/// 30 s, so only a dead or hostile one is ever this quiet.
const PEER_IDLE_TIMEOUT: Duration = Duration::from_secs(600);

pub(crate) async fn serve(shared: Arc<Shared>, listener: PeerListener, stop: CancellationToken) {
    let max = shared.settings.max_frame_bytes * 2;
    let builder = super::tls::server_builder(shared.settings.tls.as_deref());
    let svc = ReplicationServer::new(PeerService {
        shared: shared.clone(),
        stop: stop.clone(),
    })
    .max_decoding_message_size(max)
    .max_encoding_message_size(max);
    let router = builder.tcp_nodelay(true).add_service(svc);
    let served = match listener {
        PeerListener::Tcp(listener) => {
            let limits = crate::listener::Limits {
                max_connections: MAX_PEER_CONNECTIONS,
                idle_timeout: PEER_IDLE_TIMEOUT,
                header_read_timeout: HELLO_TIMEOUT,
            };
            let listener = crate::listener::Listener::new(
                listener,
                "peer",
                &limits,
                &shared.metrics.metrics,
                false,
            );
            let incoming = super::tls::incoming(shared.settings.tls.as_deref(), listener);
            router
                .serve_with_incoming_shutdown(incoming, stop.cancelled_owned())
                .await
        }
        PeerListener::Memory(addr, net) => {
            let pipes = net.listen(&addr.to_string());
            let incoming = tokio_stream::wrappers::UnboundedReceiverStream::new(pipes)
                .map(Ok::<_, std::io::Error>);
            router
                .serve_with_incoming_shutdown(incoming, stop.cancelled_owned())
                .await
        }
    };
    if let Err(e) = served {
        warn!(error = %e, "peer server stopped");
    }
}

struct PeerService {
    shared: Arc<Shared>,
    stop: CancellationToken,
}

fn frame(kind: Kind) -> Frame {
    Frame { kind: Some(kind) }
}

fn kind_name(k: &Kind) -> &'static str {
    match k {
        Kind::Hello(_) => "Hello",
        Kind::Delta(_) => "Delta",
        Kind::Ack(_) => "Ack",
        Kind::Ping(_) => "Ping",
        Kind::Pong(_) => "Pong",
        Kind::SnapshotEnd(_) => "SnapshotEnd",
        Kind::Leave(_) => "Leave",
        Kind::Gossip(_) => "Gossip",
    }
}

#[tonic::async_trait]
impl Replication for PeerService {
    type SyncStream = ReceiverStream<Result<Frame, Status>>;

    async fn sync(
        &self,
        req: Request<Streaming<Frame>>,
    ) -> Result<Response<Self::SyncStream>, Status> {
        let shared = &self.shared;
        let mut inbound = req.into_inner();
        let hello = match tokio::time::timeout(HELLO_TIMEOUT, inbound.message()).await {
            Ok(Ok(Some(Frame {
                kind: Some(Kind::Hello(h)),
            }))) => h,
            Ok(Ok(Some(_))) => {
                shared.metrics.refused("malformed");
                return Err(Status::invalid_argument(
                    "the first frame of a peer stream must be Hello",
                ));
            }
            Ok(Ok(None)) => {
                return Err(Status::cancelled("peer closed the stream before its Hello"))
            }
            Ok(Err(s)) => {
                shared.metrics.refused("malformed");
                return Err(Status::invalid_argument(format!(
                    "cannot read the peer's Hello: {}",
                    s.message()
                )));
            }
            Err(_) => return Err(Status::deadline_exceeded("no Hello within 5 s")),
        };
        let me = shared.me();
        if hello.node == me.node && hello.incarnation == me.incarnation {
            return Err(Status::already_exists("this is the node itself"));
        }
        if let Err((reason, msg)) = shared.check_hello(&hello) {
            shared.metrics.refused(reason);
            let ours = shared.limiter.active().config.fingerprint();
            warn!(peer = %hello.node, %msg, config_hash = %format!("{ours:016x}"), "refused a peer");
            return Err(match reason {
                "auth" => Status::unauthenticated(msg),
                _ => Status::failed_precondition(msg),
            });
        }
        shared.departed.returned(&hello.node);
        shared.wake(&hello.node, &hello.advertise_addr);
        let (tx, rx) = mpsc::channel(64);
        tx.send(Ok(frame(Kind::Hello(shared.hello()))))
            .await
            .map_err(|_| Status::cancelled("stream closed"))?;
        // A test's network delays the answers too (None deployed).
        let tx = match &shared.settings.faults {
            None => tx,
            Some(net) => net.delay_answers(tx),
        };
        tokio::spawn(receive(
            shared.clone(),
            hello.node,
            inbound,
            tx,
            self.stop.clone(),
        ));
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// Merge what one peer sends, until its stream ends or misbehaves.
async fn receive(
    shared: Arc<Shared>,
    node: String,
    mut inbound: Streaming<Frame>,
    tx: mpsc::Sender<Result<Frame, Status>>,
    stop: CancellationToken,
) {
    let frames = shared
        .metrics
        .node_counter("tollgate_replication_frames_received_total", &node);
    let bytes = shared
        .metrics
        .node_counter("tollgate_replication_bytes_received_total", &node);
    let keys_in = shared
        .metrics
        .node_counter("tollgate_replication_keys_received_total", &node);
    let stream = shared.answers.open(&node, tx.clone());
    let sender: Arc<str> = Arc::from(node.as_str());
    let _caught_up = CaughtUp {
        shared: &shared,
        node: &node,
        stream,
    };
    loop {
        // Ending this task on stop ends the response stream, which lets the peer server's
        // graceful shutdown finish and free the port.
        let next = tokio::select! {
            _ = stop.cancelled() => return,
            m = inbound.message() => m,
        };
        let f = match next {
            Ok(Some(f)) => f,
            Ok(None) => return,
            Err(s) => {
                refuse_unreadable(&shared, &node, &tx, s).await;
                return;
            }
        };
        frames.increment(1);
        bytes.increment(prost::Message::encoded_len(&f) as u64);
        let peer = Peer {
            shared: &shared,
            node: &node,
            sender: &sender,
            stream,
        };
        match peer.take(f.kind, &keys_in) {
            Ok(Some(reply)) => {
                if tx.send(Ok(frame(reply))).await.is_err() {
                    return;
                }
            }
            Ok(None) => {}
            Err(Refusal::Quarantined) => {
                shared.metrics.refused("quarantined");
                let _ = tx
                    .send(Err(Status::failed_precondition(format!(
                        "node {node} is quarantined: its clock is too far from this node's"
                    ))))
                    .await;
                return;
            }
            Err(Refusal::Malformed(e)) => {
                close_malformed(&shared, &node, &tx, e).await;
                return;
            }
        }
    }
}

/// Why a peer's stream is closed.
enum Refusal {
    Quarantined,
    Malformed(FrameError),
}

/// The peer at the other end of one stream, as one frame is taken.
struct Peer<'a> {
    shared: &'a Shared,
    node: &'a str,
    sender: &'a Arc<str>,
    stream: u64,
}

impl Peer<'_> {
    /// Take one frame; returns the reply, if the frame gets one.
    fn take(&self, kind: Option<Kind>, keys_in: &Counter) -> Result<Option<Kind>, Refusal> {
        let shared = self.shared;
        let node = self.node;
        Ok(Some(match kind {
            Some(Kind::Delta(d)) => {
                if shared.clock_health.is_quarantined(node) {
                    return Err(Refusal::Quarantined);
                }
                let decoded = decode_delta(&d, &shared.replicas).map_err(Refusal::Malformed)?;
                keys_in.increment(decoded.len() as u64);
                merge(shared, &decoded, self.sender);
                Kind::Ack(Ack { seq: d.seq })
            }
            Some(Kind::SnapshotEnd(e)) => {
                shared.mark_caught_up(node, self.stream);
                Kind::Ack(Ack { seq: e.seq })
            }
            Some(Kind::Leave(_)) => {
                info!(peer = %node, "peer left the cluster (scaled down): no longer a member");
                shared.departed.left(node);
                shared.membership.forget(node);
                return Ok(None);
            }
            Some(Kind::Gossip(g)) => {
                shared.membership.receive(g.data);
                return Ok(None);
            }
            Some(Kind::Ping(p)) => {
                if let Some(r) = p.receiving_from {
                    take_report(shared, node, r).map_err(Refusal::Malformed)?;
                }
                Kind::Pong(Pong {
                    wall_ns: shared.now(),
                    echo_wall_ns: p.wall_ns,
                })
            }
            Some(other) => {
                return Err(Refusal::Malformed(FrameError::Unexpected(kind_name(
                    &other,
                ))))
            }
            None => return Err(Refusal::Malformed(FrameError::Empty)),
        }))
    }
}

/// Merge one Delta's keys. The senders are held across the whole frame: a fan-out that drains
/// these keys mid-frame then waits here and finds every one's sender (a key drained without it
/// would go to every peer, this frame's sender included).
fn merge(shared: &Shared, decoded: &[super::Decoded], sender: &Arc<str>) {
    let now = shared.now();
    shared.relay.with_origins(|origins| {
        for k in decoded {
            let merged = if k.partial {
                shared.store.merge_partial(k.key, k.limit, &k.state, now)
            } else {
                shared.store.merge(k.key, k.limit, &k.state, now)
            };
            if merged.changed() {
                shared.metrics.merges.increment(1);
                origins.record(k.key, sender);
            }
        }
    });
}

/// While a peer's stream is open after its SnapshotEnd, that peer is caught up with us; when
/// the stream ends it no longer is (a newer stream of the same peer keeps its own mark).
struct CaughtUp<'a> {
    shared: &'a Shared,
    node: &'a str,
    stream: u64,
}

impl Drop for CaughtUp<'_> {
    fn drop(&mut self) {
        self.shared.clear_caught_up(self.node, self.stream);
        if self.shared.answers.close(self.node, self.stream) {
            // Its report came on this stream: until a new one, it gets every merged change.
            self.shared.relay.forget_report(self.node);
        }
    }
}

/// A peer's report of the nodes whose streams to it are caught up (see `dissemination`):
/// bounded by the member bound, names by the longest node name a Hello carries.
fn take_report(
    shared: &Shared,
    node: &str,
    r: super::proto::ReceivingFrom,
) -> Result<(), FrameError> {
    if r.nodes.len() > shared.settings.max_members {
        return Err(FrameError::TooManyNodes {
            listed: r.nodes.len(),
            max: shared.settings.max_members,
        });
    }
    let hears = r.nodes.into_iter().collect();
    shared.relay.set_report(node, hears);
    Ok(())
}

/// A frame the stream could not read. One over the decoder's limit, or one that does not
/// decode, is the peer's fault: counted, logged, and answered with a status that says why.
/// Anything else (the peer went away, a reset) just ends the stream.
async fn refuse_unreadable(
    shared: &Shared,
    node: &str,
    tx: &mpsc::Sender<Result<Frame, Status>>,
    s: Status,
) {
    let reason = match s.code() {
        tonic::Code::OutOfRange | tonic::Code::ResourceExhausted => "oversized",
        tonic::Code::Internal if s.message().contains("decode") => "malformed",
        _ => {
            debug!(peer = %node, status = %s, "peer stream ended");
            return;
        }
    };
    shared.metrics.refused(reason);
    warn!(peer = %node, reason, error = %s.message(), "unreadable frame: closing this peer stream");
    let _ = tx
        .send(Err(Status::invalid_argument(format!(
            "{reason} frame: {}",
            s.message()
        ))))
        .await;
}

async fn close_malformed(
    shared: &Shared,
    node: &str,
    tx: &mpsc::Sender<Result<Frame, Status>>,
    e: FrameError,
) {
    if e == FrameError::TooManyReplicas {
        shared.metrics.limit_hit("replicas").increment(1);
        shared.metrics.refused("replica_limit");
    } else {
        shared.metrics.refused("malformed");
    }
    warn!(peer = %node, error = %e, "malformed frame: closing this peer stream");
    let _ = tx
        .send(Err(Status::invalid_argument(format!(
            "malformed frame: {e}"
        ))))
        .await;
}
