//! Who the members are, by identity: SWIM (with Lifeguard's suspicion refutation) as
//! implemented by the `foca` crate, its messages carried as `Gossip` frames on the peer streams
//! that already passed the Hello check (cluster id, config, secret or mTLS), so gossip from a
//! node that failed authentication is never merged.
//!
//! A member is a node name plus the process's replica incarnation; every address it is known by
//! is only a way to reach it (links are matched to members by the node name their Hello gives).
//! A restarted node (new incarnation) wins the conflict with its old identity and replaces it.
//! Members are learned transitively: a node announces itself to whatever peer it reached first
//! and gets the member list back; the others learn it from gossip within a few rounds.
//!
//! Unreachable is not gone: a member SWIM cannot probe is *suspected* (still a member, so
//! every node decides on fair shares), and only after `peer_dead_after` without refuting the
//! suspicion is it declared down and forgotten. Its consumption stays in the bucket CRDTs; a
//! member declared down that comes back rejoins under a new identity (a new member).
//!
//! The number of members is bounded (`--max-members`): members beyond it are marked down
//! locally (not gossiped), counted in `tollgate_cluster_limit_hits_total{limit="members"}`.

use std::collections::HashMap;
use std::num::{NonZeroU32, NonZeroU8, NonZeroUsize};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use foca::{AccumulatingRuntime, Config, Foca, Member, OwnedNotification, PeriodicParams, State};
use parking_lot::Mutex;
use rand010::{rngs::SmallRng, SeedableRng};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::Shared;

/// A member's identity in the membership protocol.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct MemberId {
    pub node: String,
    /// The replica incarnation (random, new at every process start).
    pub incarnation: u64,
    /// Wall-clock start of the process, in ns: of two identities of one node name, the later
    /// start is the current one (the incarnation is random, so it cannot order them).
    pub started_ns: u64,
    /// Where peers dial it (its advertised address; may be empty).
    pub addr: String,
    /// Bumped when this process rejoins after the cluster declared it down: it comes back as
    /// a new member rather than resurrecting the old one.
    pub generation: u16,
}

impl foca::Identity for MemberId {
    type Addr = String;

    fn renew(&self) -> Option<Self> {
        let mut next = self.clone();
        next.generation = self.generation.wrapping_add(1);
        Some(next)
    }

    fn addr(&self) -> String {
        self.node.clone()
    }

    fn win_addr_conflict(&self, other: &Self) -> bool {
        (self.started_ns, self.incarnation, self.generation)
            > (other.started_ns, other.incarnation, other.generation)
    }
}

/// Timing and bounds of the membership protocol, derived from the peer flags.
#[derive(Debug, Clone)]
pub struct MembershipSettings {
    /// How often a member is probed; a probe unanswered within half of it raises a suspicion
    /// after the indirect probes fail too.
    pub probe_period: Duration,
    /// A suspected member not refuting within this is declared down and forgotten.
    pub dead_after: Duration,
    /// Members beyond this are not admitted.
    pub max_members: usize,
}

impl MembershipSettings {
    /// `peer_timeout` is the fair-share trigger of the links; SWIM probes at that pace, so it
    /// suspects a member on about the same schedule.
    pub fn new(peer_timeout: Duration, dead_after: Duration, max_members: usize) -> Self {
        MembershipSettings {
            probe_period: peer_timeout.clamp(Duration::from_millis(50), Duration::from_secs(2)),
            dead_after,
            max_members: max_members.max(1),
        }
    }

    fn foca_config(&self) -> Config {
        let n = NonZeroU32::new(self.max_members.min(u32::MAX as usize) as u32)
            .unwrap_or(NonZeroU32::MIN);
        let mut c = Config::new_lan(n);
        c.probe_period = self.probe_period;
        c.probe_rtt = self.probe_period / 2;
        c.suspect_to_down_after = self.dead_after;
        // Down identities are remembered (so stale gossip cannot resurrect them) for a while,
        // then forgotten: the down list is bounded in time.
        c.remove_down_after = Some((self.dead_after * 4).max(Duration::from_secs(60)));
        // The frames ride on TCP: a Feed may list every member in one message.
        c.max_packet_size = NonZeroUsize::new(64 * 1024).unwrap_or(NonZeroUsize::MIN);
        c.max_transmissions = c.max_transmissions.max(NonZeroU8::MIN);
        c.periodic_gossip = Some(PeriodicParams {
            frequency: (self.probe_period / 2).max(Duration::from_millis(20)),
            num_members: NonZeroUsize::new(3).unwrap_or(NonZeroUsize::MIN),
        });
        // Re-announcing now and then heals a cluster that split into groups unaware of each
        // other (a partition longer than dead_after).
        c.periodic_announce = Some(PeriodicParams {
            frequency: Duration::from_secs(5),
            num_members: NonZeroUsize::MIN,
        });
        c
    }
}

/// A member as this node sees it right now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberView {
    pub id: MemberId,
    pub suspect: bool,
}

/// What the protocol task is asked to do.
enum Input {
    Data(Bytes),
    Timer(foca::Timer<MemberId>),
    Announce(MemberId),
    Forget(String),
    Leave,
}

/// The handle the rest of replication holds: the current view, and a way to feed the task.
pub(crate) struct Membership {
    me: Mutex<MemberId>,
    tx: mpsc::UnboundedSender<Input>,
    rx: Mutex<Option<mpsc::UnboundedReceiver<Input>>>,
    /// Active members other than this node (alive or suspected), by node name.
    view: Mutex<HashMap<String, MemberView>>,
    settings: MembershipSettings,
}

impl Membership {
    pub fn new(node: &str, incarnation: u64, addr: &str, settings: MembershipSettings) -> Self {
        let started_ns = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos().min(u64::MAX as u128) as u64);
        let (tx, rx) = mpsc::unbounded_channel();
        Membership {
            me: Mutex::new(MemberId {
                node: node.to_string(),
                incarnation,
                started_ns,
                addr: addr.to_string(),
                generation: 0,
            }),
            tx,
            rx: Mutex::new(Some(rx)),
            view: Mutex::new(HashMap::new()),
            settings,
        }
    }

    /// Active members other than this node.
    pub fn members(&self) -> Vec<MemberView> {
        self.view.lock().values().cloned().collect()
    }

    /// A peer stream to `node` (advertising `addr`) passed the Hello check: ask it in.
    pub fn announce(&self, node: &str, addr: &str) {
        let _ = self.tx.send(Input::Announce(MemberId {
            node: node.to_string(),
            incarnation: 0,
            started_ns: 0,
            addr: addr.to_string(),
            generation: 0,
        }));
    }

    /// A Gossip frame from an authenticated peer stream.
    pub fn receive(&self, data: Vec<u8>) {
        let _ = self.tx.send(Input::Data(Bytes::from(data)));
    }

    /// `node` said Leave: it is gone for good, tell everyone now rather than after a suspicion.
    pub fn forget(&self, node: &str) {
        let _ = self.tx.send(Input::Forget(node.to_string()));
    }

    /// This node is shutting down: gossip its departure.
    pub fn leave(&self) {
        let _ = self.tx.send(Input::Leave);
    }
}

/// Run the protocol until `stop`: feed foca its inputs and timers, send what it sends over the
/// links, and publish the view after every step.
pub(crate) async fn run(shared: Arc<Shared>, stop: CancellationToken) {
    let m = &shared.membership;
    let Some(mut rx) = m.rx.lock().take() else {
        return;
    };
    let me = m.me.lock().clone();
    let mut foca = Foca::new(
        me,
        m.settings.foca_config(),
        SmallRng::seed_from_u64(rand::random()),
        foca::PostcardCodec,
    );
    // Foca starts probing and its periodic timers once it knows a first member.
    let mut rt = AccumulatingRuntime::new();
    loop {
        let input = tokio::select! {
            _ = stop.cancelled() => return,
            i = rx.recv() => match i { Some(i) => i, None => return },
        };
        let r = match input {
            Input::Data(d) => foca.handle_data(&d, &mut rt),
            Input::Timer(t) => foca.handle_timer(t, &mut rt),
            Input::Announce(id) => foca.announce(id, &mut rt),
            Input::Forget(node) => {
                let gone: Vec<Member<MemberId>> = foca
                    .iter_members()
                    .filter(|x| x.id().node == node)
                    .map(|x| Member::down(x.id().clone()))
                    .collect();
                foca.apply_many(gone.into_iter(), true, &mut rt)
            }
            Input::Leave => foca.leave_cluster(&mut rt),
        };
        if let Err(e) = r {
            // Mostly stale or duplicate messages (data from a member it declared down,
            // a probe of an old incarnation): the protocol copes, nothing to act on.
            debug!(error = %e, "membership: message ignored");
        }
        drain(&shared, &mut foca, &mut rt, &stop);
    }
}

type Swim = Foca<MemberId, foca::PostcardCodec, SmallRng, foca::NoCustomBroadcast>;

/// Act on everything foca asked for, then enforce the member bound and publish the view.
fn drain(
    shared: &Arc<Shared>,
    foca: &mut Swim,
    rt: &mut AccumulatingRuntime<MemberId>,
    stop: &CancellationToken,
) {
    let m = &shared.membership;
    loop {
        while let Some((to, data)) = rt.to_send() {
            shared.send_gossip(&to.node, data);
        }
        while let Some((after, timer)) = rt.to_schedule() {
            let tx = m.tx.clone();
            let stop = stop.clone();
            tokio::spawn(async move {
                tokio::select! {
                    _ = stop.cancelled() => {}
                    _ = tokio::time::sleep(after) => { let _ = tx.send(Input::Timer(timer)); }
                }
            });
        }
        while let Some(n) = rt.to_notify() {
            log_notification(&n);
            if let OwnedNotification::Rejoin(id) = &n {
                *m.me.lock() = id.clone();
            }
        }
        if !enforce_bound(shared, foca, rt) {
            break;
        }
    }
    publish(shared, foca);
}

/// Mark members beyond `max_members` down, locally only; returns whether any was.
fn enforce_bound(shared: &Shared, foca: &mut Swim, rt: &mut AccumulatingRuntime<MemberId>) -> bool {
    let max = shared.membership.settings.max_members;
    // This node counts as one of the members.
    let active = foca.num_members() + 1;
    if active <= max {
        return false;
    }
    let excess: Vec<Member<MemberId>> = foca
        .iter_members()
        .skip(max - 1)
        .map(|x| Member::down(x.id().clone()))
        .collect();
    shared
        .metrics
        .limit_hit("members")
        .increment(excess.len() as u64);
    warn!(
        max,
        refused = excess.len(),
        "membership bound reached (--max-members): members beyond it are not admitted"
    );
    let _ = foca.apply_many(excess.into_iter(), false, rt);
    true
}

fn publish(shared: &Arc<Shared>, foca: &Swim) {
    let me = shared.membership.me.lock().node.clone();
    let view: HashMap<String, MemberView> = foca
        .iter_members()
        .filter(|x| x.id().node != me)
        .map(|x| {
            (
                x.id().node.clone(),
                MemberView {
                    id: x.id().clone(),
                    suspect: x.state() == State::Suspect,
                },
            )
        })
        .collect();
    let changed = *shared.membership.view.lock() != view;
    if changed {
        *shared.membership.view.lock() = view;
        shared.reconcile_links();
    }
}

fn log_notification(n: &OwnedNotification<MemberId>) {
    match n {
        OwnedNotification::MemberUp(id) => {
            info!(node = %id.node, addr = %id.addr, "member joined")
        }
        OwnedNotification::MemberDown(id) => {
            warn!(node = %id.node, addr = %id.addr, "member declared down: forgotten (its consumption stays in the buckets)")
        }
        OwnedNotification::Rename(old, new) => {
            info!(node = %new.node, old_incarnation = old.incarnation, new_incarnation = new.incarnation, "member restarted: its new incarnation replaces the old")
        }
        OwnedNotification::Rejoin(id) => {
            warn!(node = %id.node, generation = id.generation, "the cluster had declared this node down: rejoined as a new member")
        }
        OwnedNotification::Defunct => warn!("the cluster declared this node down"),
        OwnedNotification::Idle => debug!("no other active member"),
        OwnedNotification::Active => debug!("known to the cluster"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use foca::Identity;

    fn id(node: &str, started_ns: u64, incarnation: u64) -> MemberId {
        MemberId {
            node: node.into(),
            incarnation,
            started_ns,
            addr: String::new(),
            generation: 0,
        }
    }

    #[test]
    fn a_restarted_node_wins_over_its_old_incarnation() {
        let old = id("a", 10, 99);
        let new = id("a", 20, 1);
        assert!(new.win_addr_conflict(&old));
        assert!(!old.win_addr_conflict(&new));
        assert_eq!(old.addr(), new.addr());
    }

    #[test]
    fn a_node_declared_down_comes_back_as_a_new_member() {
        let a = id("a", 10, 7);
        let back = a.renew().expect("renews");
        assert_ne!(a, back);
        assert_eq!(back.incarnation, a.incarnation);
        assert!(back.win_addr_conflict(&a));
    }

    #[test]
    fn the_protocol_suspects_on_the_peer_timeout_and_forgets_after_dead_after() {
        let s = MembershipSettings::new(Duration::from_millis(500), Duration::from_secs(30), 64);
        let c = s.foca_config();
        assert_eq!(c.probe_period, Duration::from_millis(500));
        assert!(c.probe_rtt < c.probe_period);
        assert_eq!(c.suspect_to_down_after, Duration::from_secs(30));
    }
}
