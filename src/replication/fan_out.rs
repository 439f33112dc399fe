//! Fan-out rounds: every sync interval the keys changed since the last round go into the
//! dirty sets of the links that need them ([`super::dissemination`] says which), and the round
//! number is published. A link publishes the latest round its peer acknowledged; the burst
//! guard and fair-share mode read those.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::dissemination::{self, Senders};
use super::link::{Encoding, Link};
use super::Shared;
use crate::store::KeyId;

/// What one round drained from the store.
#[derive(Default)]
pub(super) struct Drained {
    /// The keys, and for each whether this node changed it (not only merged it).
    keys: Vec<(KeyId, bool)>,
    /// The nodes whose frames changed each merged key.
    senders: HashMap<KeyId, Senders>,
    /// The own (consumed, requested) counts of the keys this node changed: the burst guard's.
    counts: Vec<(KeyId, (u64, u64))>,
}

impl Shared {
    /// Hand the keys changed since the last call to the links that need them: a change made
    /// here to every link, a merged one only to the peers that cannot get it from its sender.
    pub(super) fn fan_out(&self) {
        let d = self.drain_changes();
        if d.keys.is_empty() {
            return;
        }
        // Every link's dirty set gets this round's keys before the round number is published,
        // so a link that drains after reading round `r` has every key of rounds up to `r`.
        let round = self.round() + 1;
        if self.settings.burst_guard {
            self.pending_acks.hold(round, d.counts);
        }
        let woken: Vec<Arc<Link>> = self.relay.with_reports(|reports| {
            self.links
                .all()
                .into_iter()
                .filter(|link| queue(link, &d.keys, &d.senders, reports, round))
                .collect()
        });
        self.round.store(round, Ordering::Release);
        for link in woken {
            link.pushed.notify_one();
        }
    }

    /// The store's dirty keys with their senders. The senders are held while draining: a
    /// frame being merged holds them too, so the drain sees either none or all of a frame's
    /// keys together with their senders (taking them after the drain would consume the
    /// senders of keys only the next round drains, and those keys would go to every peer).
    fn drain_changes(&self) -> Drained {
        let guard = self.settings.burst_guard;
        let mut d = Drained::default();
        self.relay.with_origins(|origins| {
            self.store.drain_dirty_with(|c| {
                d.keys.push((c.key, c.own_changed));
                if guard && c.own_changed {
                    d.counts.push((c.key, c.own));
                }
            });
            d.senders = origins.take();
        });
        d
    }
}

/// Queue a round's keys on one link, each as its encoding for that peer; returns whether any
/// went (the link then has something to send).
fn queue(
    link: &Link,
    keys: &[(KeyId, bool)],
    senders: &HashMap<KeyId, Senders>,
    reports: &dissemination::Reports,
    round: u64,
) -> bool {
    if link.is_alias() || link.is_myself() {
        // Standing by: the member's live link carries these keys.
        return false;
    }
    let node = link.connected_node().or_else(|| link.last_node());
    let hears = node.as_deref().and_then(|n| reports.of(n));
    let mut dirty = link.dirty.lock();
    let mut added = false;
    for &(k, own_changed) in keys {
        if let Some(how) =
            dissemination::encoding(own_changed, senders.get(&k), node.as_deref(), hears)
        {
            Encoding::queue(&mut dirty, k, how);
            added = true;
        }
    }
    drop(dirty);
    if added {
        link.given(round);
    }
    added
}
