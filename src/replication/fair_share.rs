//! Fair-share mode (design section 4.4): while a member is suspected by the membership
//! protocol or has gone quiet on its link, every node decides on its 1/N of each limit, so a
//! partition cannot admit more than the limit in total. Off again once every member is heard
//! from and caught up both ways (it acknowledged what we sent since it came back, and its
//! stream to us delivered SnapshotEnd), so no consumption of the split is missing. A member
//! declared dead is no longer a member: it stops counting. The burst guard's 1/N and the debt
//! cap follow the same member count, so they are set here too.

use std::time::Duration;

use tracing::{info, warn};

use super::member_links::Reach;
use super::Shared;
use crate::bucket::{BurstGuard, Mode};

/// What the mode is decided on, read once per check.
struct Cluster<'a> {
    /// Members, this node included.
    n: u32,
    /// Members suspected, or quiet on their link for the peer timeout.
    unreachable: Vec<&'a str>,
    /// Some member has not caught up with us, or we with it, since it came back.
    behind: bool,
}

/// The fair-share N to decide on, given the current one: on while anyone is unreachable, and,
/// once on, until nobody is behind either.
fn wanted(current: Option<u32>, c: &Cluster<'_>) -> Option<u32> {
    let on = !c.unreachable.is_empty() || (current.is_some() && c.behind);
    on.then_some(c.n)
}

impl Shared {
    pub(super) fn update_mode(&self) {
        let members = self.member_links();
        let c = self.read_cluster(&members);
        self.metrics.members.set(c.n as f64);
        let current = self.store.fair_share();
        let want = wanted(current, &c);
        if want != current {
            match want {
                Some(n) => {
                    if current.is_none() {
                        self.metrics.fair_share_entered.increment(1);
                    }
                    warn!(members = n, unreachable = ?c.unreachable, "fair-share mode: deciding on this node's 1/{n} of every limit");
                }
                None => info!("every member is back and caught up: leaving fair-share mode"),
            }
        }
        // An ack takes up to a sync interval to be sent, one to be settled, and one more for
        // the change to leave the store, plus the network.
        let round_trip = self.settings.sync_interval * 3 + Duration::from_millis(1);
        let guard = BurstGuard::new(c.n, round_trip).filter(|_| self.settings.burst_guard);
        self.store.set_mode(Mode::new(want, guard), self.now());
        self.metrics
            .fair_share
            .set(if want.is_some() { 1.0 } else { 0.0 });
        // Late remote consumption is debt; cap it at about one capacity per other member so a
        // heal after a partition cannot lock a key out for long.
        self.store.set_debt_cap_capacities(c.n.max(2));
        if self.settings.burst_guard {
            self.metrics
                .unacked_keys
                .set(self.store.unacked_keys() as f64);
        }
    }

    fn read_cluster<'a>(&self, members: &'a [Reach]) -> Cluster<'a> {
        let now = self.monotonic();
        let timeout = self.settings.peer_timeout;
        let suspects = members.iter().filter(|r| r.suspect).count();
        self.metrics.suspects.set(suspects as f64);
        let round = self.round();
        Cluster {
            n: 1 + members.len() as u32,
            unreachable: members
                .iter()
                .filter(|r| r.suspect || r.link.as_ref().is_none_or(|l| !l.alive(now, timeout)))
                .map(|r| r.name.as_str())
                .collect(),
            behind: members.iter().any(|r| {
                r.link.as_ref().is_none_or(|l| !l.resynced(round)) || !self.catch_up.has(&r.name)
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster(unreachable: Vec<&str>, behind: bool) -> Cluster<'_> {
        Cluster {
            n: 3,
            unreachable,
            behind,
        }
    }

    #[test]
    fn an_unreachable_member_turns_fair_share_on_for_every_member() {
        assert_eq!(wanted(None, &cluster(vec!["b"], false)), Some(3));
    }

    #[test]
    fn a_member_behind_keeps_fair_share_on_but_does_not_turn_it_on() {
        assert_eq!(wanted(Some(3), &cluster(vec![], true)), Some(3));
        assert_eq!(wanted(None, &cluster(vec![], true)), None);
    }

    #[test]
    fn fair_share_ends_once_everyone_is_back_and_caught_up() {
        assert_eq!(wanted(Some(3), &cluster(vec![], false)), None);
    }

    #[test]
    fn fair_share_follows_the_member_count() {
        assert_eq!(wanted(Some(4), &cluster(vec!["b"], false)), Some(3));
    }
}
