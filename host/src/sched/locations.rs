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
    /// Remembers that `peer` holds `file`.
    pub fn record(&self, file: Cid, peer: PeerId) {
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let (map, order) = &mut *inner;
        if map.insert(file, peer).is_none() {
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
