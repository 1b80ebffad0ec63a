//! Where the outputs of this node's tasks are: private blocks are not announced to the DHT,
//! so the submitter remembers which peer ran each task, and asks there first when it (or a
//! subtask it sends elsewhere) needs one of the outputs.

use std::{
    collections::{HashMap, VecDeque},
    sync::{Mutex, PoisonError},
};

use shoal_p2p::PeerId;

use crate::store::Cid;

/// Files remembered; past this the oldest are forgotten (they are then found only if public).
const MAX_REMEMBERED: usize = 1 << 16;

/// Peers remembered per file: a later report adds its peer without pushing out the others,
/// so neither a lying report nor a peer that went away leaves the file found only where it
/// is not.
const PEERS_PER_FILE: usize = 4;

/// Which peers hold which file, for the files this node's tasks made elsewhere.
#[derive(Default)]
pub struct Locations {
    inner: Mutex<Known>,
}

/// The peers of each file, and the files in the order they were first recorded.
type Known = (HashMap<Cid, Vec<PeerId>>, VecDeque<Cid>);

impl Locations {
    /// Remembers that `peer` holds `file`, after the peers known before it (the first
    /// [`PEERS_PER_FILE`]).
    pub fn record(&self, file: Cid, peer: PeerId) {
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let (map, order) = &mut *inner;
        let peers = map.entry(file).or_insert_with(|| {
            order.push_back(file);
            Vec::new()
        });
        if peers.len() < PEERS_PER_FILE && !peers.contains(&peer) {
            peers.push(peer);
        }
        while order.len() > MAX_REMEMBERED {
            if let Some(old) = order.pop_front() {
                map.remove(&old);
            }
        }
    }

    /// The peers known to hold `file`, the first known first.
    pub fn of(&self, file: &Cid) -> Vec<PeerId> {
        let inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        inner.0.get(file).cloned().unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_later_report_adds_a_peer_and_moves_none() {
        let (locations, first, liar) = (Locations::default(), PeerId::random(), PeerId::random());
        let file = Cid([3; 32]);
        locations.record(file, first);
        locations.record(file, liar);
        locations.record(file, first);
        assert_eq!(locations.of(&file), vec![first, liar]);
        for _ in 0..10 {
            locations.record(file, PeerId::random());
        }
        assert_eq!(locations.of(&file).len(), PEERS_PER_FILE);
        assert_eq!(locations.of(&file)[..2], [first, liar]);
    }
}
