//! A controllable network for in-process cluster tests: frames a node's links send can be
//! dropped, duplicated, held back (reordered) or delayed, and pairs of nodes can be cut apart
//! and healed, all while the nodes run their real code over gRPC (on loopback TCP, or with
//! [`Faults::in_memory`] on in-memory connections).
//!
//! It is a sink the link's frames go through, installed once per session when a test
//! configured one ([`Faults::wrap`]): the production send path has no fault branches. A cut
//! refuses the session after the Hellos and closes a session in progress; loss, duplication
//! and reordering act on whole Deltas, after the link numbered them, which is what a lossy
//! network does to frames, and latency delays every frame, so round trips are real ones.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use rand::Rng;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::proto::frame::Kind;
use super::proto::Frame;
use super::InboundTx;

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
    /// Per sending node: how many of its next Deltas are lost, whatever the chances say.
    planned_losses: HashMap<String, u32>,
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

    /// Every frame takes this long to cross a link (one-way latency).
    pub fn set_delay(&self, delay: Duration) {
        self.state.lock().delay = delay;
    }

    /// The next `n` Deltas node `from` sends are lost (on whichever links they go): for a
    /// test that loses a chosen frame and its copies rather than waiting for chance to.
    pub fn lose_next_deltas(&self, from: &str, n: u32) {
        self.state.lock().planned_losses.insert(from.to_string(), n);
    }

    /// How many of the losses planned for `from` have not happened yet.
    pub fn planned_losses_left(&self, from: &str) -> u32 {
        self.state
            .lock()
            .planned_losses
            .get(from)
            .copied()
            .unwrap_or(0)
    }

    /// Whether the next Delta from `from` is a planned loss (and one fewer is left).
    fn planned_loss(&self, from: &str) -> bool {
        let mut s = self.state.lock();
        match s.planned_losses.get_mut(from) {
            Some(n) if *n > 0 => {
                *n -= 1;
                true
            }
            _ => false,
        }
    }

    fn delay(&self) -> Duration {
        self.state.lock().delay
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
            way: Way::new(out),
            held: None,
        };
        tokio::spawn(wire.run(rx));
        Some(tx)
    }

    /// Put the test network's latency on the answers a node's service sends back on a peer's
    /// stream (`out`): Acks, Pongs and membership messages take as long to cross as the
    /// frames they answer, so a round trip over the test network is twice its delay. Nothing
    /// is lost on the way back (loss applies to Deltas), and a cut closes the peer's side of
    /// the stream, which ends this one.
    pub(crate) fn delay_answers(self: &Arc<Self>, out: InboundTx) -> InboundTx {
        let (tx, mut rx) = mpsc::channel(ANSWERS_IN_FLIGHT);
        let net = self.clone();
        tokio::spawn(async move {
            let mut way = Way::new(out);
            while let Some(a) = rx.recv().await {
                if way.send(a, net.delay()).await.is_err() {
                    return;
                }
            }
        });
        tx
    }
}

/// Room for answers on their way back, as the service's own channel has.
const ANSWERS_IN_FLIGHT: usize = 64;

/// One direction of a link: frames go on to `out` at once, or, once any frame was delayed,
/// through a line that keeps them in order (so a frame sent after the delay was lifted does
/// not overtake the ones still on their way).
struct Way<T> {
    out: mpsc::Sender<T>,
    /// Frames in flight on a slow link, each with the instant it arrives; started with the
    /// first delayed frame.
    line: Option<mpsc::UnboundedSender<(Instant, T)>>,
}

impl<T: Send + 'static> Way<T> {
    fn new(out: mpsc::Sender<T>) -> Self {
        Way { out, line: None }
    }

    /// `f` arrives `delay` from now; `Err`: the stream is gone.
    async fn send(&mut self, f: T, delay: Duration) -> Result<(), ()> {
        if delay.is_zero() && self.line.is_none() {
            return self.out.send(f).await.map_err(|_| ());
        }
        let line = self.line.get_or_insert_with(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            tokio::spawn(propagate(rx, self.out.clone()));
            tx
        });
        line.send((Instant::now() + delay, f)).map_err(|_| ())
    }
}

/// One link's frames on their way through the test network.
struct Wire {
    net: Arc<Faults>,
    from: String,
    to: String,
    way: Way<Frame>,
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

    /// One frame: a Delta meets its fate (loss, duplication, reordering), anything else goes
    /// through whole. Latency applies to every frame, Acks, Pings and Pongs too, so that a
    /// round trip measured over the test network is the one it models; and every fault
    /// applies with or without latency: a lost Delta is lost on a slow link too.
    async fn pass(&mut self, f: Frame) -> Result<(), ()> {
        let fate = if matches!(f.kind, Some(Kind::Delta(_))) {
            let mut fate = self.net.fate();
            fate.drop |= self.net.planned_loss(&self.from);
            fate
        } else {
            Fate {
                delay: self.net.delay(),
                ..Fate::default()
            }
        };
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
        for f in frames {
            self.way.send(f, fate.delay).await?;
        }
        Ok(())
    }
}

/// A slow link: latency, not bandwidth. Each frame arrives when its time comes and the link
/// carries on meanwhile; one queue per link keeps the frames in the order they were sent, as
/// a TCP stream does (the delay is the same for all, so arrival order is sending order).
async fn propagate<T>(mut line: mpsc::UnboundedReceiver<(Instant, T)>, out: mpsc::Sender<T>) {
    while let Some((arrives, f)) = line.recv().await {
        tokio::time::sleep_until(arrives).await;
        if out.send(f).await.is_err() {
            return;
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
    async fn the_next_deltas_of_one_node_are_lost_as_planned() {
        let net = Arc::new(Faults::new());
        net.lose_next_deltas("a", 2);
        let (out_a, mut rx_a) = mpsc::channel(4);
        let (out_b, mut rx_b) = mpsc::channel(4);
        let from_a = net.wrap("a", "b", out_a).expect("not cut");
        let from_b = net.wrap("b", "a", out_b).expect("not cut");
        from_b.send(delta()).await.expect("open");
        assert!(rx_b.recv().await.is_some(), "b's Deltas are not a's losses");
        for _ in 0..3 {
            from_a.send(delta()).await.expect("open");
        }
        from_a.send(ping()).await.expect("open");
        let kinds = [rx_a.recv().await, rx_a.recv().await].map(|f| f.and_then(|f| f.kind));
        assert!(
            matches!(kinds, [Some(Kind::Delta(_)), Some(Kind::Ping(_))]),
            "two Deltas lost, the third and the Ping through: {kinds:?}"
        );
        assert_eq!(net.planned_losses_left("a"), 0);
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

    /// Acks, Pings and Pongs cross a slow link as slowly as Deltas: a round trip measured
    /// over it is twice the one-way delay, as on the network it models, and nothing overtakes.
    #[tokio::test(start_paused = true)]
    async fn a_slow_link_delays_every_frame_and_keeps_their_order() {
        let net = Arc::new(Faults::new());
        net.set_delay(Duration::from_millis(25));
        let (out, mut rx) = mpsc::channel(4);
        let tx = net.wrap("a", "b", out).expect("not cut");
        let sent = Instant::now();
        tx.send(ping()).await.expect("open");
        tx.send(delta()).await.expect("open");
        let first = rx.recv().await.expect("the ping");
        assert_eq!(sent.elapsed(), Duration::from_millis(25), "{first:?}");
        assert!(matches!(first.kind, Some(Kind::Ping(_))), "{first:?}");
        let second = rx.recv().await.expect("the Delta");
        assert!(matches!(second.kind, Some(Kind::Delta(_))), "{second:?}");
        assert_eq!(sent.elapsed(), Duration::from_millis(25));
    }

    /// The service's answers (Acks, Pongs) come back as slowly as the frames they answer.
    #[tokio::test(start_paused = true)]
    async fn answers_cross_a_slow_link_as_slowly_and_in_order() {
        let net = Arc::new(Faults::new());
        net.set_delay(Duration::from_millis(25));
        let (out, mut rx) = mpsc::channel(4);
        let tx = net.delay_answers(out);
        let sent = Instant::now();
        tx.send(Ok(ping())).await.expect("open");
        tx.send(Ok(delta())).await.expect("open");
        let first = rx.recv().await.expect("the first").expect("a frame");
        assert_eq!(sent.elapsed(), Duration::from_millis(25));
        assert!(matches!(first.kind, Some(Kind::Ping(_))), "{first:?}");
        let second = rx.recv().await.expect("the second").expect("a frame");
        assert!(matches!(second.kind, Some(Kind::Delta(_))), "{second:?}");
        net.set_loss(1000, 0, 0);
        tx.send(Ok(delta())).await.expect("open");
        assert!(rx.recv().await.is_some(), "nothing is lost on the way back");
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
