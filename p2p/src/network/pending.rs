//! Outbound operations awaiting their answers: each caller's reply sender, parked under the
//! operation's id until the matching swarm event settles it.

use std::{
    collections::{HashMap, HashSet},
    hash::Hash,
};

use libp2p::{Multiaddr, PeerId, kad, request_response::OutboundRequestId, swarm::ConnectionId};

use super::{Error, Reply};
use crate::messages::{BlockResponse, Capacity, TaskOutcome};

/// One kind of outbound operation: the caller awaiting a `T` for each operation `Id`, beside
/// the state `S` the operation keeps until it settles.
pub(super) struct Pending<Id, T, S = ()>(HashMap<Id, (S, Reply<T>)>);

impl<Id, T, S> Default for Pending<Id, T, S> {
    fn default() -> Self {
        Self(HashMap::new())
    }
}

impl<Id: Eq + Hash, T, S> Pending<Id, T, S> {
    /// Parks `tx` until operation `id` settles, starting from `state`.
    pub(super) fn insert(&mut self, id: Id, state: S, tx: Reply<T>) {
        self.0.insert(id, (state, tx));
    }

    /// The state of operation `id`, while it is pending.
    pub(super) fn state_mut(&mut self, id: &Id) -> Option<&mut S> {
        self.0.get_mut(id).map(|(state, _)| state)
    }

    /// Answers the caller of `id`, if it is pending, with `reply`.
    pub(super) fn settle(&mut self, id: &Id, reply: T) {
        self.finish(id, |_| Ok(reply));
    }

    /// Answers the caller of `id`, if it is pending, with `error`.
    pub(super) fn fail(&mut self, id: &Id, error: Error) {
        self.finish(id, |_| Err(error));
    }

    /// Answers the caller of `id`, if it is pending, with what `answer` makes of its state.
    pub(super) fn finish(&mut self, id: &Id, answer: impl FnOnce(S) -> Result<T, Error>) {
        if let Some((state, tx)) = self.0.remove(id) {
            let _ = tx.send(answer(state));
        }
    }

    /// How many operations are pending; with `prune`, after dropping those whose callers
    /// gave up.
    fn len(&mut self, prune: bool) -> usize {
        if prune {
            self.0.retain(|_, (_, tx)| !tx.is_closed());
        }
        self.0.len()
    }
}

/// Every outbound operation awaiting an answer, one [`Pending`] map per kind, bounded together
/// by `max` ([`Config::max_pending_outbound`](super::Config::max_pending_outbound)).
#[derive(Default)]
pub(super) struct Outbound {
    pub(super) dial: Pending<ConnectionId, PeerId, Multiaddr>,
    pub(super) block: Pending<OutboundRequestId, BlockResponse>,
    pub(super) task: Pending<OutboundRequestId, TaskOutcome>,
    pub(super) capacity: Pending<OutboundRequestId, Capacity>,
    pub(super) provide: Pending<kad::QueryId, ()>,
    pub(super) providers: Pending<kad::QueryId, HashSet<PeerId>, HashSet<PeerId>>,
    pub(super) max: usize,
}

impl Outbound {
    /// `tx` back if another outbound operation may start (ask before starting it); otherwise
    /// answers it [`Error::TooManyInFlight`].
    pub(super) fn admit<T>(&mut self, tx: Reply<T>) -> Option<Reply<T>> {
        if self.has_room() {
            return Some(tx);
        }
        let _ = tx.send(Err(Error::TooManyInFlight { limit: self.max }));
        None
    }

    /// Whether another outbound operation may start; drops entries whose callers gave up.
    fn has_room(&mut self) -> bool {
        self.len(false) < self.max || self.len(true) < self.max
    }

    fn len(&mut self, prune: bool) -> usize {
        self.dial.len(prune)
            + self.block.len(prune)
            + self.task.len(prune)
            + self.capacity.len(prune)
            + self.provide.len(prune)
            + self.providers.len(prune)
    }
}
