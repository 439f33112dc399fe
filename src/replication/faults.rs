//! A controllable network for in-process cluster tests: frames a node's links send can be
//! dropped, duplicated, held back (reordered) or delayed, and pairs of nodes can be cut apart
//! and healed, all while the nodes run their real code over gRPC (on loopback TCP, or with
//! [`Faults::in_memory`] on in-memory connections).
//!
//! It is a sink the link's frames go through, installed once per session when a test
//! configured one ([`Faults::wrap`]): the production send path has no fault branches. A cut
//! refuses the session after the Hellos and closes a session in progress; the faults act on
//! whole Deltas, after the link numbered them, which is what a lossy network does to frames.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use rand::Rng;
use tokio::sync::mpsc;

use super::proto::frame::Kind;
use super::proto::Frame;

#[derive(Debug)]
pub struct Faults {
    state: Mutex<State>,
    /// Peer connections in memory instead of over loopback TCP ([`Faults::in_memory`]).
    memory: Option<Arc<super::memory_net::MemoryNet>>,
    /// Bumped on every cut and heal: an idle link wakes to check whether it was cut.
    changes: tokio::sync::watch::Sender<u64>,
}

impl Default for Faults {
    fn default() -> Self {
        Faults {
            state: Mutex::new(State::default()),
            memory: None,
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

    /// A test network whose peer connections are in memory, not sockets: for fleets larger
    /// than the file descriptor limit allows over loopback (two per link).
    pub fn in_memory() -> Faults {
        Faults {
            memory: Some(Default::default()),
            ..Faults::default()
        }
    }

    pub(crate) fn memory(&self) -> Option<&Arc<super::memory_net::MemoryNet>> {
        self.memory.as_ref()
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

impl Faults {
    /// Put the test network between the link of node `from` to `to` and its stream `out`:
    /// the link sends on the returned sender. `None`: the two are cut apart. The stream
    /// closes when they are cut later, as a connection through a broken network would.
    pub(crate) fn wrap(
        self: &Arc<Self>,
        from: &str,
        to: &str,
        out: mpsc::Sender<Frame>,
    ) -> Option<mpsc::Sender<Frame>> {
        if self.is_cut(from, to) {
            return None;
        }
        let (tx, rx) = mpsc::channel(16);
        let wire = Wire {
            net: self.clone(),
            from: from.to_string(),
            to: to.to_string(),
            out,
            held: None,
        };
        tokio::spawn(wire.run(rx));
        Some(tx)
    }
}

/// One link's frames on their way through the test network.
struct Wire {
    net: Arc<Faults>,
    from: String,
    to: String,
    out: mpsc::Sender<Frame>,
    /// A Delta held back to go after the next one (reorder).
    held: Option<Frame>,
}

impl Wire {
    /// Forward until the link's side closes, the stream closes, or the pair is cut (returning
    /// drops `out`, which closes the stream).
    async fn run(mut self, mut rx: mpsc::Receiver<Frame>) {
        let mut changes = self.net.changes.subscribe();
        loop {
            tokio::select! {
                f = rx.recv() => match f {
                    Some(f) => {
                        if self.pass(f).await.is_err() {
                            return;
                        }
                    }
                    None => return,
                },
                c = changes.changed() => {
                    if c.is_err() || self.net.is_cut(&self.from, &self.to) {
                        return;
                    }
                }
            }
        }
    }

    /// One frame: a Delta meets its fate, anything else goes straight through. Every fault
    /// applies with or without latency: a lost Delta is lost on a slow link too.
    async fn pass(&mut self, f: Frame) -> Result<(), ()> {
        if !matches!(f.kind, Some(Kind::Delta(_))) {
            return self.send(f).await;
        }
        let fate = self.net.fate();
        if fate.drop {
            return Ok(());
        }
        if fate.hold && self.held.is_none() {
            self.held = Some(f);
            return Ok(());
        }
        let mut frames = Vec::with_capacity(3);
        if fate.duplicate {
            frames.push(f.clone());
        }
        frames.push(f);
        frames.extend(self.held.take());
        if fate.delay.is_zero() {
            for f in frames {
                self.send(f).await?;
            }
            return Ok(());
        }
        // Latency, not bandwidth: the frames arrive later, the link carries on.
        let out = self.out.clone();
        tokio::spawn(async move {
            tokio::time::sleep(fate.delay).await;
            for f in frames {
                if out.send(f).await.is_err() {
                    return;
                }
            }
        });
        Ok(())
    }

    async fn send(&self, f: Frame) -> Result<(), ()> {
        self.out.send(f).await.map_err(|_| ())
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

    fn delta() -> Frame {
        Frame {
            kind: Some(Kind::Delta(Default::default())),
        }
    }

    fn ping() -> Frame {
        Frame {
            kind: Some(Kind::Ping(Default::default())),
        }
    }

    #[tokio::test]
    async fn a_cut_pair_gets_no_wire_and_a_later_cut_closes_the_stream() {
        let net = Arc::new(Faults::new());
        net.cut("a", "b");
        let (out, _rx) = mpsc::channel(4);
        assert!(net.wrap("a", "b", out).is_none());
        net.heal();
        let (out, mut rx) = mpsc::channel(4);
        let tx = net.wrap("a", "b", out).expect("healed");
        tx.send(ping()).await.expect("open");
        assert!(rx.recv().await.is_some());
        net.cut("b", "a");
        assert!(rx.recv().await.is_none(), "the stream closes on the cut");
    }

    #[tokio::test]
    async fn only_deltas_meet_their_fate() {
        let net = Arc::new(Faults::new());
        net.set_loss(1000, 0, 0);
        let (out, mut rx) = mpsc::channel(4);
        let tx = net.wrap("a", "b", out).expect("not cut");
        tx.send(delta()).await.expect("open");
        tx.send(ping()).await.expect("open");
        let f = rx.recv().await.expect("the ping");
        assert!(
            matches!(f.kind, Some(Kind::Ping(_))),
            "the Delta was dropped"
        );
    }

    #[tokio::test]
    async fn a_slow_link_loses_deltas_too() {
        let net = Arc::new(Faults::new());
        net.set_delay(Duration::from_millis(5));
        net.set_loss(1000, 0, 0);
        let (out, mut rx) = mpsc::channel(4);
        let tx = net.wrap("a", "b", out).expect("not cut");
        tx.send(delta()).await.expect("open");
        tx.send(ping()).await.expect("open");
        let f = rx.recv().await.expect("the ping");
        assert!(matches!(f.kind, Some(Kind::Ping(_))), "{f:?}");
        net.set_loss(0, 0, 0);
        tx.send(delta()).await.expect("open");
        let f = rx.recv().await.expect("the Delta, late");
        assert!(matches!(f.kind, Some(Kind::Delta(_))), "{f:?}");
    }

    #[tokio::test]
    async fn a_held_delta_goes_after_the_next_one() {
        let net = Arc::new(Faults::new());
        net.set_loss(0, 0, 1000);
        let (out, mut rx) = mpsc::channel(4);
        let tx = net.wrap("a", "b", out).expect("not cut");
        let numbered = |seq| Frame {
            kind: Some(Kind::Delta(super::super::proto::Delta {
                seq,
                ..Default::default()
            })),
        };
        tx.send(numbered(1)).await.expect("open");
        tx.send(numbered(2)).await.expect("open");
        let seqs: Vec<u64> = [rx.recv().await, rx.recv().await]
            .into_iter()
            .map(|f| match f.and_then(|f| f.kind) {
                Some(Kind::Delta(d)) => d.seq,
                other => panic!("not a Delta: {other:?}"),
            })
            .collect();
        assert_eq!(seqs, vec![2, 1]);
    }
}
