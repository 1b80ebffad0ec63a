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

/// Which peer holds which file, for the files this node's tasks made elsewhere.
#[derive(Default)]
pub struct Locations {
    inner: Mutex<(HashMap<Cid, PeerId>, VecDeque<Cid>)>,
}

impl Locations {
    /// Remembers that `peer` holds `file`, unless another peer is known to hold it already:
    /// a report cannot take a file's place from the peer that made it first.
    pub fn record(&self, file: Cid, peer: PeerId) {
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let (map, order) = &mut *inner;
        if let std::collections::hash_map::Entry::Vacant(v) = map.entry(file) {
            v.insert(peer);
            order.push_back(file);
        }
        while order.len() > MAX_REMEMBERED {
            if let Some(old) = order.pop_front() {
                map.remove(&old);
            }
        }
    }

    /// The peer known to hold `file`.
    pub fn of(&self, file: &Cid) -> Option<PeerId> {
        let inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        inner.0.get(file).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_later_report_does_not_move_a_known_file() {
        let (locations, first, liar) = (Locations::default(), PeerId::random(), PeerId::random());
        let file = Cid([3; 32]);
        locations.record(file, first);
        locations.record(file, liar);
        assert_eq!(locations.of(&file), Some(first));
    }
}
