//! The handoff on shutdown: push every pending change to every connected peer and wait
//! (bounded by the shutdown's deadline) for their acknowledgements, then say Leave, so a node
//! scaled down loses nothing it admitted and the others do not wait for it as if partitioned.

use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::time::Instant;
use tracing::{info, warn};

use super::Shared;

/// How often the handoff looks at what is still unacknowledged.
const POLL: Duration = Duration::from_millis(5);

impl Shared {
    /// Returns whether every connected peer acknowledged this node's state.
    pub(super) async fn hand_off(&self, deadline: Instant) -> bool {
        self.fan_out();
        if !self.push_pending(deadline).await {
            return false;
        }
        self.say_leave(deadline).await;
        true
    }

    /// Wait until no connected peer has changes of ours unacknowledged.
    async fn push_pending(&self, deadline: Instant) -> bool {
        loop {
            let links = self.links.all();
            let connected: Vec<_> = links
                .iter()
                .filter(|l| l.connected_node().is_some())
                .collect();
            let pending: usize = connected.iter().map(|l| l.pending()).sum();
            if pending == 0 {
                if connected.is_empty() && !links.is_empty() {
                    // Nobody to hand to: what this node admitted since its last acknowledged
                    // frame lives only in the peers' own counts of what they saw.
                    warn!(
                        links = links.len(),
                        "handoff: no peer is connected, so no peer acknowledged this node's state"
                    );
                    return false;
                }
                info!(
                    peers = connected.len(),
                    unreachable = links.len() - connected.len(),
                    "handoff complete: every connected peer acknowledged this node's state"
                );
                return true;
            }
            if Instant::now() >= deadline {
                warn!(pending, "handoff timed out with changes not acknowledged");
                return false;
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Say Leave on every link; done once every connected peer has processed it (or at the
    /// deadline). The membership protocol gossips the departure too, to members this node has
    /// no stream with.
    async fn say_leave(&self, deadline: Instant) {
        self.leaving.store(true, Ordering::Release);
        self.links.wake_all();
        self.membership.leave();
        loop {
            let waiting = self
                .links
                .count(|l| l.connected_node().is_some() && !l.said_goodbye.load(Ordering::Acquire));
            if waiting == 0 {
                return;
            }
            if Instant::now() >= deadline {
                warn!(
                    waiting,
                    "handoff: not every peer confirmed this node's Leave"
                );
                return;
            }
            tokio::time::sleep(POLL).await;
        }
    }
}
