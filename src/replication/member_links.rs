//! Members to links: which link reaches which member, dialing members learned from gossip,
//! dropping links to members declared dead, and routing membership messages.
//!
//! Links are keyed by the address dialed (a seed, or a member's advertised address), members by
//! node name. A link belongs to the member its peer's Hello names, whatever address it dialed:
//! a member reachable at several addresses has one live link, the others stand by as aliases.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::Mutex;
use tracing::info;

use super::link::Link;
use super::proto::frame::Kind;
use super::proto::{Frame, Gossip};
use super::{InboundTx, Shared};

/// A link's status, read once.
struct LinkView {
    link: Arc<Link>,
    connected: Option<String>,
    last: Option<String>,
    alias: bool,
    skip: bool,
}

/// One member as fair share, the burst guard and readiness count it: who, whether the
/// membership protocol suspects it, and the link that reaches it.
pub(crate) struct Reach {
    /// Node name, or the address of a seed that has not answered yet.
    pub name: String,
    pub suspect: bool,
    pub link: Option<Arc<Link>>,
}

/// Nodes that said Leave: not members until they say Hello again.
#[derive(Default)]
pub(crate) struct Departed {
    nodes: Mutex<HashSet<String>>,
}

impl Departed {
    pub fn left(&self, node: &str) {
        self.nodes.lock().insert(node.to_string());
    }

    /// `node` said Hello: a member again.
    pub fn returned(&self, node: &str) {
        self.nodes.lock().remove(node);
    }

    fn snapshot(&self) -> HashSet<String> {
        self.nodes.lock().clone()
    }
}

/// The answer side of each peer's current stream to us, by node: membership messages to a
/// node this one has no link to yet (a joiner) go back this way.
#[derive(Default)]
pub(crate) struct Answers {
    by_node: Mutex<HashMap<String, (u64, InboundTx)>>,
    stream_ids: AtomicU64,
}

impl Answers {
    /// `node`'s new stream to us answers through `tx`; returns the stream's id.
    pub fn open(&self, node: &str, tx: InboundTx) -> u64 {
        let stream = self.stream_ids.fetch_add(1, Ordering::Relaxed);
        self.by_node.lock().insert(node.to_string(), (stream, tx));
        stream
    }

    /// `node`'s stream `stream` ended; returns whether it was that node's current one.
    pub fn close(&self, node: &str, stream: u64) -> bool {
        let mut by_node = self.by_node.lock();
        if by_node.get(node).is_some_and(|(s, _)| *s == stream) {
            by_node.remove(node);
            return true;
        }
        false
    }

    /// Send a frame back on `node`'s stream, if it has one with room.
    fn try_send(&self, node: &str, f: Frame) {
        if let Some((_, tx)) = self.by_node.lock().get(node) {
            let _ = tx.try_send(Ok(f));
        }
    }
}

impl Shared {
    /// Everyone this node must count as a member, this node aside: the members the membership
    /// protocol knows (alive or suspected), a peer connected to us that it has not admitted
    /// yet, and each seed that never answered (unreachable is not gone: a seed cut off since
    /// before its first Hello may be a member on the other side of a partition). Counted once
    /// per node, whatever the addresses it is reached at.
    pub(crate) fn member_links(&self) -> Vec<Reach> {
        // Each link's status read once: this runs every sync interval, so it stays linear in
        // the links, not links times members.
        let links: Vec<LinkView> = self
            .links
            .all()
            .into_iter()
            .map(|l| LinkView {
                connected: l.connected_node(),
                last: l.last_node(),
                alias: l.is_alias(),
                skip: l.is_myself() || l.is_refused() || l.is_alias(),
                link: l,
            })
            .collect();
        let mut by_connected = HashMap::new();
        let mut by_last = HashMap::new();
        let mut by_addr = HashMap::new();
        for v in &links {
            if let Some(n) = &v.connected {
                by_connected.entry(n.as_str()).or_insert(&v.link);
            }
            if let (Some(n), false) = (&v.last, v.alias) {
                by_last.entry(n.as_str()).or_insert(&v.link);
            }
            by_addr.entry(v.link.addr.as_str()).or_insert(&v.link);
        }
        let left = self.departed.snapshot();
        let mut out: Vec<Reach> = self
            .membership
            .members()
            .into_iter()
            .filter(|m| !left.contains(&m.id.node))
            .map(|m| {
                let node = m.id.node.as_str();
                let link = by_connected
                    .get(node)
                    .or_else(|| by_last.get(node))
                    .or_else(|| by_addr.get(m.id.addr.as_str()))
                    .map(|l| (*l).clone());
                Reach {
                    name: m.id.node,
                    suspect: m.suspect,
                    link,
                }
            })
            .collect();
        let mut counted: HashSet<String> = out.iter().map(|r| r.name.clone()).collect();
        for v in &links {
            if v.skip {
                continue;
            }
            let pending = match (&v.connected, &v.last) {
                // Connected, not admitted by the membership yet (it is announcing itself).
                (Some(n), _) => (!left.contains(n) && !counted.contains(n)).then(|| n.clone()),
                // A seed that never answered.
                (None, None) if !v.link.learned => Some(v.link.addr.clone()),
                _ => None,
            };
            if let Some(name) = pending {
                counted.insert(name.clone());
                out.push(Reach {
                    name,
                    suspect: false,
                    link: Some(v.link.clone()),
                });
            }
        }
        out
    }

    /// After the membership changed: dial every member no link reaches yet, and stop the
    /// learned links of members that are gone (configured seeds stay, they are retried).
    pub(crate) fn reconcile_links(self: &Arc<Self>) {
        let Some(stop) = self.stop.get() else {
            return;
        };
        let members = self.membership.members();
        let bound = self.membership_link_bound();
        self.links.edit(|links| {
            for m in &members {
                let node = Some(m.id.node.as_str());
                let reached = links
                    .values()
                    .any(|l| l.addr == m.id.addr || l.last_node().as_deref() == node);
                if !reached && !m.id.addr.is_empty() && links.len() < bound {
                    info!(node = %m.id.node, addr = %m.id.addr, "dialing a member learned from gossip");
                    self.add_link(links, &m.id.addr, true, stop);
                }
            }
            links.retain(|addr, l| {
                let gone = l.learned
                    && l.last_node()
                        .is_some_and(|n| !members.iter().any(|m| m.id.node == n));
                let orphan =
                    l.learned && l.last_node().is_none() && !members.iter().any(|m| &m.id.addr == addr);
                if gone || orphan {
                    info!(%addr, "member gone: its link is closed");
                    l.stop.cancel();
                }
                !(gone || orphan)
            });
        });
    }

    /// Links beyond this are not opened from gossip: seeds plus the member bound.
    fn membership_link_bound(&self) -> usize {
        self.settings.max_members + self.settings.peers.len() + 16
    }

    /// Send a membership message to `node`: on our link to it, or back on its stream to us.
    /// A message with no way there is dropped: the protocol treats that as a lost packet.
    pub(crate) fn send_gossip(&self, node: &str, data: Bytes) {
        let link = self
            .links
            .find(|l| l.connected_node().as_deref() == Some(node));
        if let Some(l) = link {
            l.queue_gossip(data);
            return;
        }
        self.answers.try_send(
            node,
            Frame {
                kind: Some(Kind::Gossip(Gossip {
                    data: data.to_vec(),
                })),
            },
        );
    }
}
