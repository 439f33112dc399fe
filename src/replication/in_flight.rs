//! The frames one peer session sent that the peer has not acknowledged yet, and their early
//! copies. Pure bookkeeping: time and the link's dirty set are passed in ([`super::outbox`]
//! owns the session's clock, sequence numbers and round trip).
//!
//! The early copy is what bounds convergence after a loss. The resend timeout is a round trip
//! plus deviations plus a sync interval, so a lost last change would wait for it (65 ms on a
//! link of 25 ms one way); a copy one sync interval after the send (on a link whose round trip
//! is shorter, once the ack is late: [`super::outbox`] says when) arrives within two sync
//! intervals plus the one-way latency, unless it is lost too. So the copy has a copy of its
//! own ([`MAX_COPIES`]): on a fast link one copy delay later (a round trip), on a slow link at
//! once, in frames of their own ([`super::outbox::Outbox::flush`]), so that a change lost
//! with its copy still arrives in time. Each frame is copied once, and only its keys that no
//! later frame carried: a key that keeps changing is in the next frame anyway. So below a
//! sync interval of round trip only lost (or late) frames are copied, and above it the copies
//! cost bytes for the keys that did not change again in the next rounds.
//! A copy's copy is not copied again (a key that stopped changing would otherwise go every
//! sync interval until an acknowledgement comes back).

use std::collections::{HashMap, VecDeque};

use super::link::Encoding;
use crate::clock::Nanos;
use crate::store::KeyId;

/// A frame sent and not acknowledged yet.
#[derive(Debug)]
struct Sent {
    seq: u64,
    keys: Vec<(KeyId, Encoding)>,
    /// The fan-out round its keys stand for.
    round: u64,
    /// On the link's liveness clock.
    at: Nanos,
    copy: Copy,
    /// Every key in it went as an early copy: it carries no change of its own, so it holds
    /// back no acknowledged round (the frames it copies do, until they are acknowledged or
    /// covered), and when it goes unacknowledged too long it is dropped, not resent (the
    /// frames it copies are older, so they are resent in the same pass, or were acknowledged).
    copy_only: bool,
}

/// Where a frame stands with its early copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Copy {
    /// Not copied: a catch-up frame (a snapshot is resent only on timeout, not doubled on
    /// every slow link), a SnapshotEnd, or a frame holding a key that went as a copy.
    Never,
    /// Copied once it has gone unacknowledged for the copy delay.
    Due,
    /// Its keys are back in the dirty set; the next flush sends them.
    Queued,
    /// Every key of it went again in a frame up to `through`: once none of the frames after
    /// it up to there is in flight, the peer holds its keys as of then or later, and the
    /// frame itself no longer needs an acknowledgement.
    Sent { through: u64 },
}

/// The last frame a key went in, and how many copies deep (0: as a change).
#[derive(Debug, Clone, Copy)]
struct LastSent {
    seq: u64,
    copies: u8,
}

/// A change goes at most this many times more as an early copy: its copy, and the copy's
/// copy when that is unacknowledged too. One copy leaves a lost last change waiting for its
/// resend whenever the copy is lost as well (loss squared: at 1 % loss, one frame in 10,000,
/// yet over a 50-member fleet's 2,450 links a quarter of the paused 25 ms runs in BENCHMARKS
/// lost some change with its copy); two leave one in a million.
/// A third would cost a slow link's quiet keys another frame each for a millionth.
const MAX_COPIES: u8 = 2;

/// What a session has in flight.
#[derive(Debug, Default)]
pub(crate) struct InFlight {
    frames: VecDeque<Sent>,
    /// The last frame each key with a frame in flight went in: a copy takes only the keys
    /// whose last frame is the one copied.
    last_sent: HashMap<KeyId, LastSent>,
    /// Keys queued as copies for the next flush (not as changes), and how many copies deep.
    copying: HashMap<KeyId, u8>,
    /// Frames with keys taken out of flight before their acknowledgement came (resent,
    /// dropped as copies, or covered), with when they went: a late ack of one still times the
    /// round trip. Each resend goes under a seq of its own, so the sample is unambiguous (no
    /// need for Karn's rule). Without it, a link whose round trip grows past its resend
    /// timeout (the estimate of a quiet loopback link, then a slow one) resends every frame
    /// before its ack comes, learns nothing from the acks, and resends every sync interval.
    retired: VecDeque<(u64, Nanos)>,
}

/// Retired frames kept for their late acknowledgements: a few rounds' worth on a busy link.
const RETIRED_KEPT: usize = 256;

impl InFlight {
    /// Delta `seq` went with `keys`, standing for `round`; `copied`: it gets an early copy.
    pub fn sent(
        &mut self,
        seq: u64,
        keys: Vec<(KeyId, Encoding)>,
        round: u64,
        at: Nanos,
        copied: bool,
    ) {
        let mut copy_only = copied && !keys.is_empty();
        if copied {
            for (k, _) in &keys {
                let copies = self.copying.remove(k).unwrap_or(0);
                copy_only &= copies > 0;
                self.last_sent.insert(*k, LastSent { seq, copies });
            }
        }
        let copy = if copied { Copy::Due } else { Copy::Never };
        self.frames.push_back(Sent {
            seq,
            keys,
            round,
            at,
            copy,
            copy_only,
        });
    }

    /// Frame `seq` is acknowledged. Returns when it was sent, if it carried keys (a
    /// SnapshotEnd is answered at once: no round trip sample). A copy has a seq of its own,
    /// so an acknowledgement always times the frame it names.
    /// A frame retired before its ack still returns when it was sent (it changes nothing
    /// else: its keys went again, or were acknowledged in another frame).
    pub fn ack(&mut self, seq: u64) -> Option<Nanos> {
        let Some(i) = self.frames.iter().position(|f| f.seq == seq) else {
            let i = self.retired.iter().position(|(s, _)| *s == seq)?;
            return self.retired.remove(i).map(|(_, at)| at);
        };
        let f = self.frames.remove(i)?;
        self.forget(&f);
        self.drop_covered();
        (!f.keys.is_empty()).then_some(f.at)
    }

    /// `f` is out of flight: its keys no longer wait on it.
    fn forget(&mut self, f: &Sent) {
        for (k, _) in &f.keys {
            if self.last_sent.get(k).is_some_and(|s| s.seq == f.seq) {
                self.last_sent.remove(k);
            }
        }
    }

    /// `f` is out of flight without its ack: forgotten, and kept to time its late ack.
    fn retire(&mut self, f: &Sent) {
        self.forget(f);
        if f.keys.is_empty() {
            return;
        }
        if self.retired.len() == RETIRED_KEPT {
            self.retired.pop_front();
        }
        self.retired.push_back((f.seq, f.at));
    }

    /// Take out of flight the copied frames whose every key the peer acknowledged since in a
    /// later frame (their copy, or a frame that carried them first).
    fn drop_covered(&mut self) {
        let covered = |f: &Sent, all: &VecDeque<Sent>| match f.copy {
            Copy::Sent { through } => !all.iter().any(|g| g.seq > f.seq && g.seq <= through),
            _ => false,
        };
        // Newest first: a copy dropped as covered may be what an older frame waits on.
        let mut i = self.frames.len();
        while i > 0 {
            i -= 1;
            if covered(&self.frames[i], &self.frames) {
                if let Some(f) = self.frames.remove(i) {
                    self.retire(&f);
                }
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    pub fn len(&self) -> usize {
        self.frames.len()
    }

    /// When the oldest frame in flight was sent.
    pub fn oldest(&self) -> Option<Nanos> {
        self.frames.iter().map(|f| f.at).min()
    }

    /// The oldest round a frame in flight stands for, of the frames that carry changes.
    pub fn oldest_round(&self) -> Option<u64> {
        self.frames
            .iter()
            .filter(|f| !f.copy_only)
            .map(|f| f.round)
            .min()
    }

    /// When the next frame is due to be resent (`resend` after it was sent) or copied (`copy`
    /// after); `None`: nothing in flight.
    pub fn next_due(&self, resend: Nanos, copy: Nanos) -> Option<Nanos> {
        self.frames
            .iter()
            .map(|f| match f.copy {
                Copy::Due => f.at.saturating_add(copy.min(resend)),
                _ => f.at.saturating_add(resend),
            })
            .min()
    }

    /// Put into `dirty`, once per frame, the keys of the frames sent at least `old_enough`
    /// before `now` that no later frame carried; the frames stay in flight. Returns how many
    /// frames had keys to copy.
    pub fn copy(
        &mut self,
        now: Nanos,
        old_enough: Nanos,
        dirty: &mut HashMap<KeyId, Encoding>,
    ) -> u64 {
        let mut copied = 0;
        for f in self.frames.iter_mut() {
            if f.copy != Copy::Due || now.saturating_sub(f.at) < old_enough {
                continue;
            }
            let mut whole = true;
            let mut any = false;
            for (k, how) in &f.keys {
                match self.last_sent.get(k) {
                    Some(s) if s.seq == f.seq && s.copies >= MAX_COPIES => whole = false,
                    Some(s) if s.seq == f.seq => {
                        // Already dirty: a new change goes anyway, and it is no copy.
                        if !dirty.contains_key(k) {
                            self.copying.insert(*k, s.copies + 1);
                        }
                        Encoding::queue(dirty, *k, *how);
                        any = true;
                    }
                    // Sent again since.
                    _ => {}
                }
            }
            copied += u64::from(any);
            // A frame with a key not copied waits for its own ack (or resend).
            f.copy = if whole { Copy::Queued } else { Copy::Never };
        }
        copied
    }

    /// The keys of `keys` (a flush's, before it is sent) that go as copies, and may be
    /// copied again.
    pub fn first_copies(&self, keys: &[(KeyId, Encoding)]) -> Vec<(KeyId, Encoding)> {
        keys.iter()
            .filter(|(k, _)| self.copying.get(k).is_some_and(|&d| d < MAX_COPIES))
            .copied()
            .collect()
    }

    /// `keys`, just sent as copies, go again at once as their own copies (one copy deeper).
    pub fn copy_again(&mut self, keys: &[(KeyId, Encoding)]) {
        for (k, _) in keys {
            let deep = self.last_sent.get(k).map_or(1, |s| s.copies);
            self.copying.insert(*k, deep + 1);
        }
    }

    /// The copies queued before a flush went in it, whose last frame is `through`.
    pub fn copies_sent(&mut self, through: u64) {
        // Keys copied but gone from the store since went in no frame.
        self.copying.clear();
        for f in self.frames.iter_mut().filter(|f| f.copy == Copy::Queued) {
            f.copy = Copy::Sent { through };
        }
    }

    /// Put into `dirty` the keys of the frames sent at least `older_than` before `now` (all
    /// of them when `None`), and take the frames out of flight. Returns how many frames go
    /// again (copies are dropped, not resent), and the lowest round they stood for:
    /// acknowledging their resend must not claim rounds after it.
    pub fn requeue(
        &mut self,
        now: Nanos,
        older_than: Option<Nanos>,
        dirty: &mut HashMap<KeyId, Encoding>,
    ) -> (u64, Option<u64>) {
        let mut resent = 0;
        let mut lowest: Option<u64> = None;
        let mut kept = VecDeque::new();
        for f in std::mem::take(&mut self.frames) {
            if older_than.is_some_and(|d| now.saturating_sub(f.at) < d) {
                kept.push_back(f);
                continue;
            }
            self.retire(&f);
            if f.copy_only {
                continue;
            }
            resent += 1;
            lowest = Some(lowest.map_or(f.round, |r| r.min(f.round)));
            // A copy is sent after the frame it copies, so it is never requeued without that
            // one: a copied frame never looks covered by a copy that was not acknowledged.
            for (k, how) in f.keys {
                Encoding::queue(dirty, k, how);
            }
        }
        self.frames = kept;
        (resent, lowest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Nanos = 1_000_000;
    const COPY: Nanos = 10 * MS;
    const RESEND: Nanos = 60 * MS;

    fn key(n: u64) -> KeyId {
        KeyId(n as u128)
    }

    fn keys(ns: &[u64]) -> Vec<(KeyId, Encoding)> {
        ns.iter().map(|&n| (key(n), Encoding::Own)).collect()
    }

    fn sorted(dirty: &HashMap<KeyId, Encoding>) -> Vec<KeyId> {
        let mut v: Vec<KeyId> = dirty.keys().copied().collect();
        v.sort();
        v
    }

    /// Copy what is due at `now` and send it as frame `seq`; returns the keys it carried.
    fn copy_and_send(f: &mut InFlight, now: Nanos, seq: u64, round: u64) -> Vec<KeyId> {
        let mut dirty = HashMap::new();
        let copied = f.copy(now, COPY, &mut dirty);
        let sent = sorted(&dirty);
        assert_eq!(copied > 0, !sent.is_empty(), "frames copied counted");
        if !sent.is_empty() {
            f.sent(seq, dirty.into_iter().collect(), round, now, true);
        }
        f.copies_sent(seq);
        sent
    }

    #[test]
    fn a_frame_unacknowledged_for_a_sync_interval_is_copied_and_stays_in_flight() {
        let mut f = InFlight::default();
        f.sent(1, keys(&[1, 2]), 5, 0, true);
        assert_eq!(f.next_due(RESEND, COPY), Some(COPY));
        assert_eq!(
            copy_and_send(&mut f, COPY - 1, 2, 5),
            Vec::<KeyId>::new(),
            "too young"
        );
        assert_eq!(copy_and_send(&mut f, COPY, 2, 5), vec![key(1), key(2)]);
        assert_eq!(f.len(), 2, "the original stays in flight beside its copy");
        // The copy, unacknowledged too, is copied once (the original not twice)...
        assert_eq!(copy_and_send(&mut f, 2 * COPY, 3, 5), vec![key(1), key(2)]);
        assert_eq!(f.len(), 3);
        // ...and that copy is not copied again.
        assert_eq!(copy_and_send(&mut f, 5 * COPY, 4, 5), Vec::<KeyId>::new());
        assert_eq!(
            f.next_due(RESEND, COPY),
            Some(RESEND),
            "only the resend is left"
        );
    }

    /// A slow link sends a copy's copy with the copy, in a frame of its own: either one
    /// delivers the lost change, and neither is copied again.
    #[test]
    fn a_copy_sent_twice_at_once_is_copied_no_more() {
        let mut f = InFlight::default();
        f.sent(1, keys(&[1, 2]), 5, 0, true);
        f.sent(2, keys(&[2]), 6, COPY / 2, true);
        let mut dirty = HashMap::from([(key(3), Encoding::Own)]);
        f.copy(COPY, COPY, &mut dirty);
        let round: Vec<_> = dirty.into_iter().collect();
        let twins = f.first_copies(&round);
        assert_eq!(twins, keys(&[1]), "key 1 is a copy; key 3 a change");
        f.sent(3, round, 7, COPY, true);
        f.copy_again(&twins);
        f.sent(4, twins, 7, COPY, true);
        f.copies_sent(3);
        assert_eq!(
            copy_and_send(&mut f, 2 * COPY, 5, 7),
            vec![key(2), key(3)],
            "frame 2's key and frame 3's change; key 1 went twice already"
        );
        f.ack(2);
        f.ack(3);
        assert_eq!(
            f.len(),
            2,
            "frame 1 covered by frames 2 and 3, the twin unacked"
        );
        assert_eq!(f.oldest_round(), None, "the copies left hold back no round");
        f.ack(4);
        f.ack(5);
        assert!(f.is_empty());
    }

    #[test]
    fn a_copy_takes_only_the_keys_no_later_frame_carried() {
        let mut f = InFlight::default();
        f.sent(1, keys(&[1, 2]), 5, 0, true);
        f.sent(2, keys(&[2]), 6, COPY / 2, true);
        assert_eq!(copy_and_send(&mut f, COPY, 3, 6), vec![key(1)]);
    }

    #[test]
    fn a_key_the_round_queued_already_goes_as_a_change_not_a_copy() {
        let mut f = InFlight::default();
        f.sent(1, keys(&[1]), 5, 0, true);
        let mut dirty = HashMap::from([(key(1), Encoding::Own)]);
        f.copy(COPY, COPY, &mut dirty);
        f.sent(2, dirty.into_iter().collect(), 6, COPY, true);
        f.copies_sent(2);
        // A change is copied in its turn.
        assert_eq!(copy_and_send(&mut f, 2 * COPY, 3, 6), vec![key(1)]);
    }

    #[test]
    fn acknowledging_the_copy_takes_the_lost_original_out_of_flight() {
        let mut f = InFlight::default();
        f.sent(1, keys(&[1, 2]), 5, 0, true);
        copy_and_send(&mut f, COPY, 2, 5);
        assert_eq!(f.ack(2), Some(COPY));
        assert!(
            f.is_empty(),
            "the peer holds every key of frame 1 as of frame 2"
        );
    }

    #[test]
    fn the_original_stays_until_every_frame_that_carried_its_keys_is_acknowledged() {
        let mut f = InFlight::default();
        f.sent(1, keys(&[1, 2]), 5, 0, true);
        f.sent(2, keys(&[2]), 6, MS, true);
        copy_and_send(&mut f, COPY, 3, 6);
        f.ack(3);
        assert_eq!(
            f.len(),
            2,
            "key 2 went again only in frame 2, unacknowledged"
        );
        f.ack(2);
        assert!(f.is_empty());
    }

    #[test]
    fn a_copy_holds_back_no_acknowledged_round_of_its_own() {
        let mut f = InFlight::default();
        f.sent(1, keys(&[1]), 5, 0, true);
        copy_and_send(&mut f, COPY, 2, 5);
        f.ack(1);
        assert_eq!(f.len(), 1, "the copy is still in flight");
        assert_eq!(f.oldest_round(), None, "but it carries no change");
        assert_eq!(f.oldest(), Some(COPY), "and still counts for liveness");
    }

    #[test]
    fn a_copy_that_times_out_is_dropped_and_its_original_resent() {
        let mut f = InFlight::default();
        f.sent(1, keys(&[1]), 5, 0, true);
        copy_and_send(&mut f, COPY, 2, 5);
        let mut dirty = HashMap::new();
        assert_eq!(
            f.requeue(RESEND + COPY, Some(RESEND), &mut dirty),
            (1, Some(5)),
            "one frame resent, its copy dropped"
        );
        assert_eq!(sorted(&dirty), vec![key(1)]);
        assert!(f.is_empty());
        // Sent again, the key is a change with a copy of its own.
        f.sent(3, dirty.into_iter().collect(), 5, RESEND + COPY, true);
        assert_eq!(copy_and_send(&mut f, RESEND + 2 * COPY, 4, 5), vec![key(1)]);
    }

    #[test]
    fn catch_up_frames_are_resent_on_timeout_but_never_copied() {
        let mut f = InFlight::default();
        f.sent(1, keys(&[1, 2]), 5, 0, false);
        assert_eq!(f.next_due(RESEND, COPY), Some(RESEND));
        assert_eq!(copy_and_send(&mut f, 2 * COPY, 2, 5), Vec::<KeyId>::new());
        assert_eq!(f.ack(1), Some(0));
        assert!(f.is_empty());
    }

    #[test]
    fn requeuing_everything_returns_the_lowest_round_that_carried_changes() {
        let mut f = InFlight::default();
        f.sent(1, keys(&[1]), 7, 0, true);
        f.sent(2, keys(&[2]), 4, MS, false);
        let mut dirty = HashMap::new();
        assert_eq!(f.requeue(2 * MS, None, &mut dirty), (2, Some(4)));
        assert_eq!(sorted(&dirty), vec![key(1), key(2)]);
        assert!(f.is_empty());
    }

    /// A link whose round trip grew past its resend timeout resends every frame before its
    /// ack comes: the late ack must still time the round trip, or the estimate never grows.
    #[test]
    fn a_late_ack_of_a_resent_frame_still_times_its_round_trip() {
        let mut f = InFlight::default();
        f.sent(1, keys(&[1]), 5, MS, true);
        let mut dirty = HashMap::new();
        assert_eq!(
            f.requeue(RESEND + MS, Some(RESEND), &mut dirty),
            (1, Some(5))
        );
        f.sent(2, dirty.into_iter().collect(), 5, RESEND + MS, true);
        assert_eq!(f.ack(1), Some(MS), "frame 1 went at 1 ms");
        assert_eq!(f.len(), 1, "its resend still waits for its own ack");
        assert_eq!(f.ack(1), None, "timed once");
        assert_eq!(f.ack(2), Some(RESEND + MS));
    }

    #[test]
    fn a_late_ack_of_a_covered_original_times_it_too() {
        let mut f = InFlight::default();
        f.sent(1, keys(&[1, 2]), 5, 0, true);
        copy_and_send(&mut f, COPY, 2, 5);
        f.ack(2);
        assert!(f.is_empty());
        assert_eq!(f.ack(1), Some(0));
    }

    #[test]
    fn only_the_latest_retired_frames_are_kept_for_their_acks() {
        let mut f = InFlight::default();
        let n = RETIRED_KEPT as u64 + 1;
        for seq in 1..=n {
            f.sent(seq, keys(&[seq]), 5, 0, false);
        }
        f.requeue(RESEND, None, &mut HashMap::new());
        assert_eq!(f.ack(1), None, "the oldest was let go");
        assert_eq!(f.ack(2), Some(0));
        assert_eq!(f.ack(n), Some(0));
    }
}
