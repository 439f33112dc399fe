//! Which peers a changed key goes to.
//!
//! A change made on this node (an admission, a refund) goes to every member directly: N-1
//! link crossings, whatever the cluster's size. A change merged from a peer is relayed only to
//! the peers that cannot get it from the node that sent it: each peer reports, on its own
//! stream to this node, the nodes whose streams to it are caught up, and a merged change goes
//! on only to a peer whose report lacks its sender. With the mesh whole nothing is relayed;
//! in a partial partition (A cannot reach B, both reach C) C relays A's changes to B and B's
//! to A, and a longer chain relays hop by hop (each hop's sender is the one the next peer
//! lacks, so the change keeps moving until every reachable member holds it).
//!
//! A peer that has sent no report (it runs an older version, or its stream to this node is
//! not up) gets every merged change: relaying too much costs bytes, relaying too little would
//! cost accuracy.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use parking_lot::Mutex;
use smallvec::SmallVec;

use super::link::Encoding;
use crate::store::KeyId;

/// What relaying needs, owned in one place: the senders of the keys merged since the last
/// fan-out round, and each peer's report of whom it hears from.
#[derive(Default)]
pub(crate) struct Relay {
    origins: Mutex<Origins>,
    reports: Mutex<Reports>,
}

impl Relay {
    /// Run `f` holding the senders: a frame being merged holds them for the whole frame, and
    /// a fan-out round for its whole drain, so the drain sees either none or all of a frame's
    /// keys together with their senders (a key drained without its sender would go to every
    /// peer, that sender included).
    pub fn with_origins<R>(&self, f: impl FnOnce(&mut Origins) -> R) -> R {
        f(&mut self.origins.lock())
    }

    /// `peer` reported the nodes whose streams to it are caught up.
    pub fn set_report(&self, peer: &str, hears: HashSet<String>) {
        self.reports.lock().set(peer, hears);
    }

    /// `peer`'s stream to us, which carried its report, ended: until a new one it gets every
    /// merged change.
    pub fn forget_report(&self, peer: &str) {
        self.reports.lock().forget(peer);
    }

    pub fn with_reports<R>(&self, f: impl FnOnce(&Reports) -> R) -> R {
        f(&self.reports.lock())
    }
}

/// The nodes whose frames changed a key since the last fan-out round.
pub(crate) type Senders = SmallVec<[Arc<str>; 2]>;

/// Keys merged since the last fan-out round, each with the nodes that sent the changes.
#[derive(Default)]
pub(crate) struct Origins {
    by_key: HashMap<KeyId, Senders>,
}

impl Origins {
    /// `sender`'s frame changed `key`.
    pub fn record(&mut self, key: KeyId, sender: &Arc<str>) {
        let s = self.by_key.entry(key).or_default();
        if !s.iter().any(|x| Arc::ptr_eq(x, sender) || **x == **sender) {
            s.push(sender.clone());
        }
    }

    /// Everything recorded since the last call.
    pub fn take(&mut self) -> HashMap<KeyId, Senders> {
        std::mem::take(&mut self.by_key)
    }
}

/// What each peer last reported: the nodes whose streams to it are caught up.
#[derive(Default)]
pub(crate) struct Reports {
    by_peer: HashMap<String, HashSet<String>>,
}

impl Reports {
    pub fn set(&mut self, peer: &str, hears: HashSet<String>) {
        self.by_peer.insert(peer.to_string(), hears);
    }

    /// The peer's stream to this node ended: its report may be stale, so it gets everything
    /// until it reports again.
    pub fn forget(&mut self, peer: &str) {
        self.by_peer.remove(peer);
    }

    pub fn of(&self, peer: &str) -> Option<&HashSet<String>> {
        self.by_peer.get(peer)
    }
}

/// Whether a change goes to `peer`, and how: `None` when the peer gets it elsewhere; only
/// this node's own slot when it is only this node's change and the peer reports whom it
/// hears from (so it gets the rest of the key from the other nodes, and it is recent enough
/// to merge partial states); otherwise the whole state.
pub(crate) fn encoding(
    own_changed: bool,
    senders: Option<&Senders>,
    peer: Option<&str>,
    hears: Option<&HashSet<String>>,
) -> Option<Encoding> {
    let relay = senders.is_some_and(|s| !s.is_empty() && lacks_a_sender(s, peer, hears));
    if relay || (own_changed && hears.is_none()) || (!own_changed && senders.is_none()) {
        Some(Encoding::Whole)
    } else if own_changed {
        Some(Encoding::Own)
    } else {
        None
    }
}

/// Whether `peer` cannot get a merged change from one of the nodes that sent it (`hears`: the
/// peer's report; `None`: no report, or a link that never learned its peer, so it gets
/// everything).
fn lacks_a_sender(senders: &Senders, peer: Option<&str>, hears: Option<&HashSet<String>>) -> bool {
    let (Some(peer), Some(hears)) = (peer, hears) else {
        return true;
    };
    senders
        .iter()
        .any(|s| &**s != peer && !hears.contains(&**s))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn senders(names: &[&str]) -> Senders {
        names.iter().map(|n| Arc::<str>::from(*n)).collect()
    }

    fn set(names: &[&str]) -> HashSet<String> {
        names.iter().map(|n| n.to_string()).collect()
    }

    #[test]
    fn an_own_change_goes_to_every_peer() {
        assert!(encoding(true, None, Some("b"), Some(&set(&["a", "c"]))).is_some());
    }

    #[test]
    fn a_merged_change_is_not_relayed_to_a_peer_that_hears_its_sender() {
        let from_a = senders(&["a"]);
        assert!(!lacks_a_sender(&from_a, Some("b"), Some(&set(&["a", "c"]))));
    }

    #[test]
    fn a_merged_change_is_never_sent_back_to_its_sender() {
        let from_a = senders(&["a"]);
        assert!(!lacks_a_sender(&from_a, Some("a"), Some(&set(&["c"]))));
    }

    #[test]
    fn a_merged_change_is_relayed_to_a_peer_cut_off_from_its_sender() {
        let from_a = senders(&["a"]);
        assert!(lacks_a_sender(&from_a, Some("b"), Some(&set(&["c"]))));
    }

    #[test]
    fn a_key_changed_by_two_senders_is_relayed_if_the_peer_lacks_either() {
        let both = senders(&["a", "d"]);
        assert!(lacks_a_sender(&both, Some("b"), Some(&set(&["a"]))));
        assert!(!lacks_a_sender(&both, Some("b"), Some(&set(&["a", "d"]))));
    }

    #[test]
    fn without_a_report_or_known_senders_everything_is_relayed() {
        let from_a = senders(&["a"]);
        assert!(lacks_a_sender(&from_a, Some("b"), None));
        assert!(encoding(false, None, Some("b"), Some(&set(&["a"]))).is_some());
        assert!(lacks_a_sender(&from_a, None, Some(&set(&["a"]))));
    }

    #[test]
    fn an_own_change_goes_as_its_own_slot_to_a_peer_that_reports_and_whole_to_one_that_does_not() {
        let hears = set(&["a"]);
        assert_eq!(
            encoding(true, None, Some("b"), Some(&hears)),
            Some(Encoding::Own)
        );
        assert_eq!(encoding(true, None, Some("b"), None), Some(Encoding::Whole));
    }

    #[test]
    fn a_relayed_change_goes_whole_and_one_the_peer_has_goes_nowhere() {
        let from_a = senders(&["a"]);
        let cut_from_a = set(&["c"]);
        let hears_a = set(&["a"]);
        assert_eq!(
            encoding(true, Some(&from_a), Some("b"), Some(&cut_from_a)),
            Some(Encoding::Whole)
        );
        assert_eq!(
            encoding(false, Some(&from_a), Some("b"), Some(&cut_from_a)),
            Some(Encoding::Whole)
        );
        assert_eq!(
            encoding(false, Some(&from_a), Some("b"), Some(&hears_a)),
            None
        );
        assert_eq!(
            encoding(true, Some(&from_a), Some("b"), Some(&hears_a)),
            Some(Encoding::Own)
        );
    }

    #[test]
    fn a_sender_is_recorded_once_per_key_and_taking_empties_the_record() {
        let mut o = Origins::default();
        let a: Arc<str> = Arc::from("a");
        o.record(KeyId(1), &a);
        o.record(KeyId(1), &Arc::from("a"));
        o.record(KeyId(1), &Arc::from("b"));
        let taken = o.take();
        assert_eq!(taken[&KeyId(1)].len(), 2);
        assert!(o.take().is_empty());
    }
}
