//! This node's outbound links, by the address dialed (a seed, or a member's advertised
//! address). Adding and closing links belongs to [`super::members`] (the seeds) and
//! [`super::member_links`] (members learned from gossip); everyone else reads.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;

use super::link::{self, Link};
use super::Shared;

#[derive(Default)]
pub(crate) struct LinkTable {
    by_addr: Mutex<HashMap<String, Arc<Link>>>,
}

impl LinkTable {
    /// Every link, read once: callers work on the copy, not under the lock.
    pub fn all(&self) -> Vec<Arc<Link>> {
        self.by_addr.lock().values().cloned().collect()
    }

    pub fn find(&self, f: impl Fn(&Link) -> bool) -> Option<Arc<Link>> {
        self.by_addr.lock().values().find(|l| f(l)).cloned()
    }

    pub fn count(&self, f: impl Fn(&Link) -> bool) -> usize {
        self.by_addr.lock().values().filter(|l| f(l)).count()
    }

    /// Wake every link's session: something it reports or waits for changed.
    pub fn wake_all(&self) {
        for l in self.by_addr.lock().values() {
            l.pushed.notify_one();
        }
    }

    /// Change the table under one lock (open links for new members, close the ones gone).
    pub fn edit<R>(&self, f: impl FnOnce(&mut HashMap<String, Arc<Link>>) -> R) -> R {
        f(&mut self.by_addr.lock())
    }
}

impl Shared {
    /// A peer dialed us: if our link to it is waiting out a reconnect backoff, retry now.
    pub(super) fn wake(&self, node: &str, addr: &str) {
        for l in self.links.all() {
            if l.connected_node().is_none()
                && (l.addr == addr || l.last_node().as_deref() == Some(node))
            {
                l.wake.notify_one();
            }
        }
    }

    /// Start dialing `addr` unless a link to it exists; returns whether one was added.
    pub(super) fn add_link(
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
