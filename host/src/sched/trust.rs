//! What a submitter believes of other peers' claims. A peer's advertised capacity cannot be
//! checked, and neither can its word that a task gave some outputs; so the scheduler keeps
//! two records, and placement reads both:
//! - **busy backoff**: a peer that answers Busy is left out of placement for a while (1 s,
//!   doubling to 60 s while it keeps answering Busy, forgotten once it accepts a task), so a
//!   peer that advertises a thousand free slots and refuses every task costs each submission
//!   one round trip at most, not all of its attempts;
//! - **faulty peers**: a peer whose outputs disagreed with the majority of a verified run
//!   (`--verify`) is never chosen again.
//!
//! Both are per submitting node. With tenants, the faulty record becomes per tenant (what a
//! tenant's own verified runs caught, plus what it chooses to import); the backoff stays the
//! node's, since it is about the peer's load, not about whom it cheated.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use shoal_p2p::PeerId;

/// How long a peer is left out after its first Busy answer.
pub(super) const BUSY_BACKOFF_MIN: Duration = Duration::from_secs(1);
/// The longest a peer is left out for answering Busy.
pub(super) const BUSY_BACKOFF_MAX: Duration = Duration::from_secs(60);
/// Faulty peers remembered; past it the oldest record is forgotten (a peer id costs nothing to
/// make, so the record must be bounded; a forgotten liar has to be caught again).
const MAX_FAULTY: usize = 4096;
/// Backed-off peers remembered; the map is pruned of expired entries before it grows past it.
const MAX_BACKOFFS: usize = 4096;

/// A busy peer's place out of placement.
#[derive(Clone, Copy, Debug)]
struct Backoff {
    /// Left out until then.
    until: Instant,
    /// What its next Busy answer earns.
    next: Duration,
}

/// A peer marked faulty, and why.
#[derive(Clone, Debug)]
struct Faulty {
    reason: String,
    /// When it was marked, to forget the oldest first.
    at: Instant,
}

/// The submitter's records of busy and faulty peers.
#[derive(Debug, Default)]
pub(super) struct Trust {
    backoff: HashMap<PeerId, Backoff>,
    faulty: HashMap<PeerId, Faulty>,
}

impl Trust {
    /// `peer` answered Busy: it is left out for its current interval, and the next Busy
    /// answer doubles it. Answers that arrive while it is already left out (a burst of
    /// submissions that all picked it at once) do not double it again. Returns how long it
    /// is left out from now.
    pub(super) fn busy(&mut self, peer: PeerId, now: Instant) -> Duration {
        if self.backoff.len() >= MAX_BACKOFFS {
            self.backoff.retain(|_, b| b.until > now);
        }
        let b = self.backoff.entry(peer).or_insert(Backoff {
            until: now,
            next: BUSY_BACKOFF_MIN,
        });
        if b.until > now {
            return b.until - now;
        }
        let wait = b.next;
        b.until = now + wait;
        b.next = (wait * 2).min(BUSY_BACKOFF_MAX);
        wait
    }

    /// `peer` took a task: its busy record is forgotten.
    pub(super) fn accepted(&mut self, peer: PeerId) {
        self.backoff.remove(&peer);
    }

    /// How much longer `peer` is left out for answering Busy, if it is.
    pub(super) fn backed_off(&self, peer: &PeerId, now: Instant) -> Option<Duration> {
        self.backoff
            .get(peer)
            .filter(|b| b.until > now)
            .map(|b| b.until - now)
    }

    /// Marks `peer` faulty (keeping the first reason it earned).
    pub(super) fn mark_faulty(&mut self, peer: PeerId, reason: String, now: Instant) {
        if self.faulty.len() >= MAX_FAULTY
            && !self.faulty.contains_key(&peer)
            && let Some(oldest) = self
                .faulty
                .iter()
                .min_by_key(|(_, f)| f.at)
                .map(|(p, _)| *p)
        {
            self.faulty.remove(&oldest);
        }
        self.faulty
            .entry(peer)
            .or_insert(Faulty { reason, at: now });
    }

    /// Whether `peer` is marked faulty.
    pub(super) fn is_faulty(&self, peer: &PeerId) -> bool {
        self.faulty.contains_key(peer)
    }

    /// Every faulty peer and why, oldest first.
    pub(super) fn faulty(&self) -> Vec<(PeerId, String)> {
        let mut all: Vec<_> = self.faulty.iter().collect();
        all.sort_by_key(|(_, f)| f.at);
        all.into_iter()
            .map(|(p, f)| (*p, f.reason.clone()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busy_backoff_doubles_to_its_cap_and_resets_on_acceptance() {
        let mut trust = Trust::default();
        let peer = PeerId::random();
        let mut now = Instant::now();
        assert_eq!(trust.backed_off(&peer, now), None);
        let mut waits = Vec::new();
        for _ in 0..9 {
            let wait = trust.busy(peer, now);
            waits.push(wait.as_secs());
            assert_eq!(trust.backed_off(&peer, now), Some(wait));
            now += wait;
            assert_eq!(
                trust.backed_off(&peer, now),
                None,
                "out only for its interval"
            );
        }
        assert_eq!(waits, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
        trust.accepted(peer);
        assert_eq!(
            trust.busy(peer, now),
            BUSY_BACKOFF_MIN,
            "acceptance resets it"
        );
    }

    #[test]
    fn a_burst_of_busy_answers_counts_once() {
        let mut trust = Trust::default();
        let peer = PeerId::random();
        let now = Instant::now();
        assert_eq!(trust.busy(peer, now), BUSY_BACKOFF_MIN);
        for _ in 0..20 {
            assert_eq!(trust.busy(peer, now), BUSY_BACKOFF_MIN);
        }
        let later = now + BUSY_BACKOFF_MIN;
        assert_eq!(trust.busy(peer, later), 2 * BUSY_BACKOFF_MIN);
    }

    #[test]
    fn faulty_peers_keep_their_first_reason_and_the_record_is_bounded() {
        let mut trust = Trust::default();
        let (liar, honest) = (PeerId::random(), PeerId::random());
        let now = Instant::now();
        trust.mark_faulty(liar, "first".into(), now);
        trust.mark_faulty(liar, "second".into(), now);
        assert!(trust.is_faulty(&liar) && !trust.is_faulty(&honest));
        assert_eq!(trust.faulty(), vec![(liar, "first".to_owned())]);
        for i in 0..MAX_FAULTY as u64 {
            trust.mark_faulty(
                PeerId::random(),
                "x".into(),
                now + Duration::from_millis(i + 1),
            );
        }
        assert_eq!(trust.faulty().len(), MAX_FAULTY);
        assert!(!trust.is_faulty(&liar), "the oldest record goes first");
    }
}
