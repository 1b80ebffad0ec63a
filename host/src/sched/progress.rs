//! Where progress records of tasks this node submitted go: each remote run that wants them
//! gets a token, and only the peer the task was sent to may deliver records under it.

use std::{
    collections::HashMap,
    sync::{
        Mutex, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
};

use shoal_p2p::{PeerId, ProgressRecord};

use crate::runtime::Progress;

/// The submitting side's routes, shared by the scheduler (which opens them) and the node's
/// inbound handler (which delivers on them).
#[derive(Default)]
pub struct ProgressRoutes {
    next: AtomicU64,
    routes: Mutex<HashMap<(PeerId, u64), Progress>>,
}

/// An open route; dropping it closes the route.
pub(super) struct Route<'a> {
    routes: &'a ProgressRoutes,
    key: (PeerId, u64),
}

impl Route<'_> {
    /// The token to send in the spec.
    pub(super) fn token(&self) -> u64 {
        self.key.1
    }
}

impl Drop for Route<'_> {
    fn drop(&mut self) {
        self.routes.lock().remove(&self.key);
    }
}

impl ProgressRoutes {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(PeerId, u64), Progress>> {
        self.routes.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Opens a route for a run on `peer`.
    pub(super) fn open(&self, peer: PeerId, progress: Progress) -> Route<'_> {
        // Tokens start at 1: 0 on the wire means "no progress wanted".
        let key = (peer, self.next.fetch_add(1, Ordering::Relaxed) + 1);
        self.lock().insert(key, progress);
        Route { routes: self, key }
    }

    /// Hands `record` from `from` on, if `from` runs a task of ours under that token;
    /// anything else is dropped.
    pub fn deliver(&self, from: PeerId, record: ProgressRecord) {
        let progress = self.lock().get(&(from, record.token)).cloned();
        if let Some(progress) = progress {
            progress(record.data);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[test]
    fn only_the_peer_a_route_was_opened_for_delivers_on_it() {
        let routes = ProgressRoutes::default();
        let got: Arc<Mutex<Vec<Vec<u8>>>> = Arc::default();
        let sink = got.clone();
        let peer = PeerId::random();
        let route = routes.open(
            peer,
            Arc::new(move |data| sink.lock().expect("lock").push(data)),
        );
        let record = |token, byte| ProgressRecord {
            token,
            data: vec![byte],
        };
        routes.deliver(peer, record(route.token(), 1));
        routes.deliver(PeerId::random(), record(route.token(), 2));
        routes.deliver(peer, record(route.token() + 1, 3));
        let token = route.token();
        drop(route);
        routes.deliver(peer, record(token, 4));
        assert_eq!(*got.lock().expect("lock"), vec![vec![1]]);
    }
}
