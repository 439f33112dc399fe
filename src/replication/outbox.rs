//! The sending side of one peer session: numbers frames, remembers them until the peer
//! acknowledges them ([`super::in_flight`]), sends an early copy of what goes unacknowledged
//! for a sync interval, resends what goes unacknowledged for longer than the link's round
//! trip warrants, and publishes how far the peer has acknowledged (the burst guard and
//! fair-share mode read it from the [`Link`]).

use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::mpsc;

use super::in_flight::InFlight;
use super::link::{frame, Encoding, End, Link};
use super::proto::frame::Kind;
use super::proto::{Frame, SnapshotEnd};
use super::Shared;
use crate::clock::Nanos;
use crate::store::KeyId;

/// Until the first acknowledgement measures the round trip, a frame is resent after this.
const FIRST_RESEND_AFTER: Duration = Duration::from_secs(1);
/// Bounds of the resend timeout: a frame is never resent sooner (a burst of resends on a
/// loopback link would only add load), nor later (a loss on a slow link still heals).
const MIN_RESEND_AFTER: Duration = Duration::from_millis(5);
const MAX_RESEND_AFTER: Duration = Duration::from_secs(1);
/// An early copy never goes sooner than this after its frame: below it, a late ack on a busy
/// node is as likely as a loss, and a copy would only add frames.
const MIN_COPY_AFTER: Duration = Duration::from_millis(2);

/// Smoothed round trip of acknowledgements (RFC 6298's estimator, without its backoff: a
/// resend here is idempotent and cheap, and TCP below already backs off).
#[derive(Debug, Clone, Copy, Default)]
struct Rtt {
    srtt: Option<Duration>,
    rttvar: Duration,
}

impl Rtt {
    fn sample(&mut self, r: Duration) {
        match self.srtt {
            None => {
                self.srtt = Some(r);
                self.rttvar = r / 2;
            }
            Some(s) => {
                let diff = s.abs_diff(r);
                self.rttvar = (self.rttvar * 3 + diff) / 4;
                self.srtt = Some((s * 7 + r) / 8);
            }
        }
    }

    /// How long a frame may go unacknowledged before it is sent again: the round trip plus
    /// four deviations plus the peer's batching (`slack`: its merge and ack happen at once,
    /// but the ack may wait behind a frame of up to a sync interval's keys).
    fn timeout(&self, slack: Duration) -> Duration {
        match self.srtt {
            None => FIRST_RESEND_AFTER,
            Some(s) => (s + self.rttvar * 4 + slack).clamp(MIN_RESEND_AFTER, MAX_RESEND_AFTER),
        }
    }

    /// How long a steady frame may go unacknowledged before its early copy: when the round
    /// trip plus four deviations is shorter than a sync interval (`slack`), that much (the
    /// ack is late, so the frame is most likely lost: copy it now rather than with the next
    /// round); otherwise, and before the first measure, a sync interval, so that the copy
    /// goes in the next round's frames with its keys that did not change again.
    fn copy_after(&self, slack: Duration) -> Duration {
        let round = slack.max(MIN_COPY_AFTER);
        match self.srtt {
            None => round,
            Some(s) => (s + self.rttvar * 4).clamp(MIN_COPY_AFTER, round),
        }
    }
}

fn nanos(d: Duration) -> Nanos {
    d.as_nanos().min(Nanos::MAX as u128) as Nanos
}

/// The sending side of one session: numbers frames, remembers them until acknowledged, and
/// publishes how far the peer has acknowledged.
pub(crate) struct Outbox<'a> {
    link: &'a Link,
    rtt: Rtt,
    slack: Duration,
    seq: u64,
    in_flight: InFlight,
    /// Round of the last drain of the dirty set: everything up to it was sent or is in flight.
    drained_round: u64,
    /// Keys sent back to the dirty set since the last drain hold acks back to before their round.
    requeued_floor: Option<u64>,
    /// Whether frames sent now get an early copy: in the steady phase, not in catch-up.
    copies: bool,
}

impl<'a> Outbox<'a> {
    pub fn new(shared: &'a Shared, link: &'a Link) -> Self {
        Outbox {
            link,
            rtt: Rtt::default(),
            slack: shared.settings.sync_interval,
            seq: 0,
            in_flight: InFlight::default(),
            drained_round: link.acked_round(),
            requeued_floor: None,
            copies: false,
        }
    }

    /// From now on (the steady phase), frames sent get an early copy.
    pub fn copy_from_now(&mut self) {
        self.copies = true;
    }

    /// Publish the latest round every change of which the peer acknowledged.
    fn publish(&self) {
        let mut r = self.drained_round;
        if let Some(f) = self.in_flight.oldest_round() {
            r = r.min(f.saturating_sub(1));
        }
        if let Some(f) = self.requeued_floor {
            r = r.min(f);
        }
        self.link.acked_round.store(r, Ordering::Release);
        self.link
            .unacked
            .store(self.in_flight.len(), Ordering::Release);
        *self.link.oldest_unacked.lock() = self.in_flight.oldest();
        self.link.update_lag();
    }

    pub fn ack(&mut self, seq: u64) {
        if let Some(sent) = self.in_flight.ack(seq) {
            let took = self.link.now().saturating_sub(sent).max(0);
            self.rtt.sample(Duration::from_nanos(took as u64));
        }
        self.publish();
    }

    /// A Ping sent `took` ago was answered: a round-trip sample like an acknowledgement's
    /// (the peer answers both at once), and the only one a link has before its first frame
    /// with keys is acknowledged.
    pub fn ping_answered(&mut self, took: Nanos) {
        self.rtt.sample(Duration::from_nanos(took.max(0) as u64));
    }

    /// Everything sent has been acknowledged.
    pub fn all_acked(&self) -> bool {
        self.in_flight.is_empty()
    }

    /// How long a frame may go unacknowledged before it is sent again.
    pub fn resend_after(&self) -> Duration {
        self.rtt.timeout(self.slack)
    }

    /// How long a steady frame goes unacknowledged before its early copy: the round trip's
    /// measure when that is shorter than a sync interval, else a sync interval
    /// ([`Rtt::copy_after`]).
    fn copy_after(&self) -> Duration {
        self.rtt.copy_after(self.slack)
    }

    /// Whether frames are copied with the next fan-out round: on a link whose round trip is
    /// a sync interval or more, or not measured yet ([`Rtt::copy_after`]).
    fn copies_with_the_round(&self) -> bool {
        self.copy_after() >= self.slack
    }

    /// When the next unacknowledged frame is due to be resent or copied (`None`: nothing in
    /// flight).
    pub fn next_resend(&self) -> Option<Nanos> {
        let resend = nanos(self.resend_after());
        self.in_flight.next_due(resend, nanos(self.copy_after()))
    }

    /// Put back into the dirty set the keys of the frames due for their early copy. A push a
    /// quarter of the delay early (on a slow link, the next fan-out round's, which comes a sync
    /// interval after the one that sent the frame) takes the copies along, so that they go in
    /// the same frames as the round's keys instead of a frame of their own just before. On a
    /// fast link the copy goes on time: its ack may still be on its way a quarter early.
    pub fn copy_unacked(&mut self) {
        let copy = self.copy_after();
        let old_enough = nanos(if self.copies_with_the_round() {
            copy - copy / 4
        } else {
            copy
        });
        let now = self.link.now();
        let copied = self
            .in_flight
            .copy(now, old_enough, &mut self.link.dirty.lock());
        self.link.frames_copied.increment(copied);
    }

    /// Put frames back into the dirty set: all of them, or those unacknowledged for too long.
    pub fn requeue(&mut self, older_than: Option<Duration>) {
        let now = self.link.now();
        let (resent, lowest) =
            self.in_flight
                .requeue(now, older_than.map(nanos), &mut self.link.dirty.lock());
        self.link.frames_resent.increment(resent);
        if let Some(round) = lowest {
            let floor = round.saturating_sub(1);
            self.requeued_floor = Some(self.requeued_floor.map_or(floor, |r| r.min(floor)));
        }
        self.publish();
    }

    pub fn requeue_all(&mut self) {
        self.requeue(None);
    }

    /// Take the dirty set, as of fan-out round `round`. Also returns the round the frames
    /// of these keys stand for: an acknowledgement of them acknowledges rounds up to just
    /// before it. That is `round`, or earlier when keys sent back for a resend are among
    /// them: their changes are from the rounds they were first sent in, and acknowledging
    /// the resend must not claim the rounds between (the burst guard would let consumption
    /// through that the peer has not seen).
    pub fn drain(&mut self, round: u64) -> (Vec<(KeyId, Encoding)>, u64) {
        let keys: Vec<(KeyId, Encoding)> = self.link.dirty.lock().drain().collect();
        let stands_for = self.requeued_floor.map_or(round, |f| (f + 1).min(round));
        self.drained_round = round;
        self.requeued_floor = None;
        (keys, stands_for)
    }

    pub async fn send(&mut self, tx: &mpsc::Sender<Frame>, f: Frame) -> Result<(), End> {
        tokio::select! {
            _ = self.link.stop.cancelled() => Err(End::Stopped),
            r = tx.send(f) => r.map_err(|_| End::Broken("stream closed".into())),
        }
    }

    /// Number one Delta, remember it until acknowledged, and send it.
    async fn send_delta(
        &mut self,
        tx: &mpsc::Sender<Frame>,
        (mut delta, keys): (super::proto::Delta, Vec<(KeyId, Encoding)>),
        round: u64,
    ) -> Result<(), End> {
        self.seq += 1;
        delta.seq = self.seq;
        let n = keys.len() as u64;
        let f = frame(Kind::Delta(delta));
        let bytes = prost::Message::encoded_len(&f) as u64;
        let now = self.link.now();
        self.in_flight.sent(self.seq, keys, round, now, self.copies);
        self.publish();
        self.link.frames_sent.increment(1);
        self.link.bytes_sent.increment(bytes);
        self.link.keys_sent.increment(n);
        self.send(tx, f).await
    }

    /// SnapshotEnd: everything up to `round` has been sent.
    pub async fn send_end(&mut self, tx: &mpsc::Sender<Frame>, round: u64) -> Result<(), End> {
        self.seq += 1;
        let seq = self.seq;
        let now = self.link.now();
        self.in_flight.sent(seq, Vec::new(), round, now, false);
        self.publish();
        self.send(tx, frame(Kind::SnapshotEnd(SnapshotEnd { seq })))
            .await
    }

    /// Encode and send `entries` as Deltas of the given round.
    pub async fn send_entries(
        &mut self,
        shared: &Shared,
        tx: &mpsc::Sender<Frame>,
        entries: Vec<(
            KeyId,
            Encoding,
            crate::bucket::Limit,
            crate::bucket::BucketState,
        )>,
        round: u64,
    ) -> Result<(), End> {
        for chunk in super::link::encode(shared, entries) {
            self.send_delta(tx, chunk, round).await?;
        }
        Ok(())
    }

    /// Send the dirty set's current states. On a link that copies with the round, the keys
    /// that go as a first copy go a second time at once, in frames of their own: there no
    /// acknowledgement can come back before the copy's own copy would be due a sync interval
    /// later, so waiting for it tells nothing, and going now a lost last change reaches the
    /// peer within two sync intervals plus the latency even when its copy is lost too (the
    /// bytes are the same: a slow link's copy was always copied again).
    pub async fn flush(
        &mut self,
        shared: &Shared,
        tx: &mpsc::Sender<Frame>,
        round: u64,
    ) -> Result<(), End> {
        let (keys, stands_for) = self.drain(round);
        let twins = if self.copies_with_the_round() {
            self.in_flight.first_copies(&keys)
        } else {
            Vec::new()
        };
        self.send_states(shared, tx, keys, stands_for).await?;
        // The copied frames are covered by the round's frames; the twins are a spare.
        let through = self.seq;
        if !twins.is_empty() {
            self.in_flight.copy_again(&twins);
            self.send_states(shared, tx, twins, stands_for).await?;
        }
        self.in_flight.copies_sent(through);
        self.publish();
        Ok(())
    }

    /// Send the current states of `keys` (those still in the store).
    async fn send_states(
        &mut self,
        shared: &Shared,
        tx: &mpsc::Sender<Frame>,
        keys: Vec<(KeyId, Encoding)>,
        stands_for: u64,
    ) -> Result<(), End> {
        if keys.is_empty() {
            return Ok(());
        }
        let entries = keys
            .into_iter()
            .filter_map(|(k, how)| shared.store.get(k).map(|(l, s)| (k, how, l, s)))
            .collect();
        self.send_entries(shared, tx, entries, stands_for).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn before_any_acknowledgement_a_frame_is_resent_after_a_second() {
        assert_eq!(Rtt::default().timeout(10 * MS), FIRST_RESEND_AFTER);
    }

    #[test]
    fn on_a_steady_link_the_resend_timeout_follows_the_round_trip() {
        let mut r = Rtt::default();
        for _ in 0..50 {
            r.sample(50 * MS);
        }
        let t = r.timeout(10 * MS);
        assert!(t >= 60 * MS && t < 70 * MS, "{t:?}");
    }

    #[test]
    fn on_a_fast_link_a_frame_is_copied_once_its_ack_is_late_not_a_sync_interval_later() {
        let mut r = Rtt::default();
        for _ in 0..50 {
            r.sample(MS);
        }
        let copy = r.copy_after(10 * MS);
        assert!(copy >= 2 * MS && copy < 3 * MS, "{copy:?}");
        assert!(
            copy < r.timeout(10 * MS),
            "the copy comes before the resend"
        );
    }

    #[test]
    fn on_a_slow_link_or_before_any_ack_a_frame_is_copied_with_the_next_round() {
        assert_eq!(Rtt::default().copy_after(10 * MS), 10 * MS);
        let mut slow = Rtt::default();
        for _ in 0..50 {
            slow.sample(50 * MS);
        }
        assert_eq!(slow.copy_after(10 * MS), 10 * MS);
        let mut jittery = Rtt::default();
        jittery.sample(MS);
        assert_eq!(jittery.copy_after(10 * MS), 3 * MS, "1 ms + 4 x 0.5 ms");
        jittery.sample(20 * MS);
        assert_eq!(
            jittery.copy_after(10 * MS),
            10 * MS,
            "a deviation past the round"
        );
    }

    #[test]
    fn an_early_copy_never_goes_sooner_than_its_floor() {
        let mut fast = Rtt::default();
        fast.sample(Duration::from_micros(50));
        assert_eq!(fast.copy_after(10 * MS), MIN_COPY_AFTER);
        assert_eq!(fast.copy_after(Duration::from_micros(100)), MIN_COPY_AFTER);
    }

    #[test]
    fn the_resend_timeout_stays_within_its_bounds() {
        let mut fast = Rtt::default();
        fast.sample(Duration::from_micros(50));
        assert_eq!(fast.timeout(Duration::ZERO), MIN_RESEND_AFTER);
        let mut slow = Rtt::default();
        slow.sample(Duration::from_secs(5));
        assert_eq!(slow.timeout(Duration::ZERO), MAX_RESEND_AFTER);
    }
}
