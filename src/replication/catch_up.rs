//! Which peers have caught this node up: a peer's stream to us is caught up once it delivered
//! SnapshotEnd (a full snapshot, or what the peer changed while away), until that stream ends.
//!
//! Three things wait on it: readiness (a new node serves once every peer it could reach has
//! caught it up, or the sync timeout passed), leaving fair-share mode (no consumption of the
//! split may be missing), and dissemination (each link reports the set to its peer, which
//! then relays to us only what we cannot get from its senders directly).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;
use tracing::{info, warn};

use super::Shared;

#[derive(Debug, Default)]
pub(crate) struct CatchUp {
    /// The caught-up nodes, each with the id of the stream that caught us up.
    nodes: Mutex<HashMap<String, u64>>,
    /// Bumped on every change: a link reports the set again when it moved.
    version: AtomicU64,
}

impl CatchUp {
    /// `node`'s stream `stream` delivered SnapshotEnd.
    pub fn mark(&self, node: &str, stream: u64) {
        self.nodes.lock().insert(node.to_string(), stream);
        self.version.fetch_add(1, Ordering::AcqRel);
    }

    /// `node`'s stream `stream` ended; returns whether that changed the set (a newer stream of
    /// the same node keeps its own mark).
    pub fn clear(&self, node: &str, stream: u64) -> bool {
        let mut c = self.nodes.lock();
        if c.get(node) != Some(&stream) {
            return false;
        }
        c.remove(node);
        self.version.fetch_add(1, Ordering::AcqRel);
        true
    }

    pub fn has(&self, node: &str) -> bool {
        self.nodes.lock().contains_key(node)
    }

    /// The caught-up nodes and the version of that set, read together.
    pub fn report(&self) -> (u64, Vec<String>) {
        let c = self.nodes.lock();
        (self.version(), c.keys().cloned().collect())
    }

    pub fn version(&self) -> u64 {
        self.version.load(Ordering::Acquire)
    }

    /// Of `nodes`, those that have not caught us up.
    pub fn missing<'a>(&self, nodes: impl IntoIterator<Item = &'a str>) -> Vec<String> {
        let c = self.nodes.lock();
        nodes
            .into_iter()
            .filter(|n| !c.contains_key(*n))
            .map(str::to_string)
            .collect()
    }
}

impl Shared {
    /// `node`'s stream `stream` delivered SnapshotEnd: it is caught up with us.
    pub(super) fn mark_caught_up(&self, node: &str, stream: u64) {
        self.catch_up.mark(node, stream);
        self.links.wake_all();
    }

    /// `node`'s stream `stream` ended (a newer stream of the same node keeps its own mark).
    pub(super) fn clear_caught_up(&self, node: &str, stream: u64) {
        if self.catch_up.clear(node, stream) {
            self.links.wake_all();
        }
    }

    /// A new node is ready once every peer it could reach has sent its full snapshot, or when
    /// the sync timeout passes (logged: it then serves on what it has).
    pub(super) fn check_ready(&self) {
        if self.readiness.synced() {
            return;
        }
        let links = self.links.all();
        let all_tried = links.iter().all(|l| l.tried());
        // A quarantined peer's states are not merged, so its snapshot is not waited for.
        let connected: Vec<String> = links
            .iter()
            .filter_map(|l| l.connected_node())
            .filter(|n| !self.clock_health.is_quarantined(n))
            .collect();
        let waiting = self.catch_up.missing(connected.iter().map(String::as_str));
        let elapsed = std::time::Duration::from_nanos(
            self.monotonic().saturating_sub(self.started).max(0) as u64,
        );
        let timed_out = elapsed >= self.settings.sync_timeout;
        if (all_tried && waiting.is_empty()) || timed_out {
            if timed_out && !waiting.is_empty() {
                warn!(
                    ?waiting,
                    "sync timeout: serving without the snapshots of these peers"
                );
            }
            self.readiness.set_synced(true);
            info!(?elapsed, "synced with peers: ready");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_end_of_an_old_stream_keeps_the_mark_of_the_newer_one() {
        let c = CatchUp::default();
        c.mark("b", 1);
        c.mark("b", 2);
        assert!(!c.clear("b", 1), "stream 1 was replaced by stream 2");
        assert!(c.has("b"));
        assert!(c.clear("b", 2));
        assert!(!c.has("b"));
    }

    #[test]
    fn every_change_moves_the_version_and_nothing_else_does() {
        let c = CatchUp::default();
        let v0 = c.version();
        c.mark("b", 1);
        let v1 = c.version();
        assert!(v1 > v0);
        c.clear("b", 7);
        assert_eq!(c.version(), v1, "a stale clear changes nothing");
        c.clear("b", 1);
        assert!(c.version() > v1);
        assert_eq!(c.report(), (c.version(), vec![]));
    }

    #[test]
    fn missing_names_the_nodes_not_caught_up() {
        let c = CatchUp::default();
        c.mark("b", 1);
        assert_eq!(c.missing(["a", "b", "c"]), vec!["a", "c"]);
    }
}
