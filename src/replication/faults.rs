//! A controllable network for in-process cluster tests: frames a node's links send can be
//! dropped, duplicated, held back (reordered) or delayed, and pairs of nodes can be cut apart
//! and healed, all while the nodes run their real code over loopback gRPC.
//!
//! Why in the product and not only in tests: the faults must act on whole frames, after the
//! link has numbered them and before they reach the stream, which only the link can do. With
//! no `Faults` configured (every real deployment) the link pays one `Option` check per frame.

use std::collections::HashSet;
use std::time::Duration;

use parking_lot::Mutex;
use rand::Rng;

#[derive(Debug)]
pub struct Faults {
    state: Mutex<State>,
    /// Bumped on every cut and heal: an idle link wakes to check whether it was cut.
    changes: tokio::sync::watch::Sender<u64>,
}

impl Default for Faults {
    fn default() -> Self {
        Faults {
            state: Mutex::new(State::default()),
            changes: tokio::sync::watch::Sender::new(0),
        }
    }
}

#[derive(Debug, Default)]
struct State {
    /// Unordered pairs of node names that cannot reach each other.
    cut: HashSet<(String, String)>,
    /// Per-mille chances, applied to each Delta independently.
    drop: u32,
    duplicate: u32,
    reorder: u32,
    delay: Duration,
}

/// What to do with one outbound Delta.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Fate {
    pub drop: bool,
    pub duplicate: bool,
    /// Hold this frame back and send it after the next one.
    pub hold: bool,
    pub delay: Duration,
}

fn pair(a: &str, b: &str) -> (String, String) {
    if a <= b {
        (a.to_string(), b.to_string())
    } else {
        (b.to_string(), a.to_string())
    }
}

impl Faults {
    pub fn new() -> Faults {
        Faults::default()
    }

    /// Nodes `a` and `b` can no longer reach each other (both directions).
    pub fn cut(&self, a: &str, b: &str) {
        self.state.lock().cut.insert(pair(a, b));
        self.changed();
    }

    /// Split the cluster: every node of `side` is cut from every node of `rest`.
    pub fn partition(&self, side: &[&str], rest: &[&str]) {
        for a in side {
            for b in rest {
                self.cut(a, b);
            }
        }
    }

    /// Every cut is healed.
    pub fn heal(&self) {
        self.state.lock().cut.clear();
        self.changed();
    }

    fn changed(&self) {
        self.changes.send_modify(|v| *v += 1);
    }

    /// Notified of every cut and heal.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changes.subscribe()
    }

    pub fn is_cut(&self, a: &str, b: &str) -> bool {
        self.state.lock().cut.contains(&pair(a, b))
    }

    /// Chances, in per-mille, that a Delta is dropped, duplicated or reordered.
    pub fn set_loss(&self, drop: u32, duplicate: u32, reorder: u32) {
        let mut s = self.state.lock();
        s.drop = drop.min(1000);
        s.duplicate = duplicate.min(1000);
        s.reorder = reorder.min(1000);
    }

    /// Every Delta waits this long before it is sent.
    pub fn set_delay(&self, delay: Duration) {
        self.state.lock().delay = delay;
    }

    /// Draw the fate of one outbound Delta.
    pub fn fate(&self) -> Fate {
        let s = self.state.lock();
        let mut rng = rand::rng();
        let mut roll = |p: u32| p > 0 && rng.random_range(0..1000) < p;
        Fate {
            drop: roll(s.drop),
            duplicate: roll(s.duplicate),
            hold: roll(s.reorder),
            delay: s.delay,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cut_is_symmetric_and_heals() {
        let f = Faults::new();
        f.partition(&["a"], &["b", "c"]);
        assert!(f.is_cut("b", "a") && f.is_cut("a", "c"));
        assert!(!f.is_cut("b", "c"));
        f.heal();
        assert!(!f.is_cut("a", "b"));
    }

    #[test]
    fn no_faults_means_every_frame_goes_through_once() {
        let f = Faults::new();
        assert!((0..1000).all(|_| f.fate() == Fate::default()));
        f.set_loss(1000, 0, 0);
        assert!((0..100).all(|_| f.fate().drop));
    }
}
