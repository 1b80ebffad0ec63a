//! The durable writer a fetch streams verified blocks into: threads of its own behind a
//! bounded queue, so that the network never waits on the disk while there is room in the
//! queue, and the disk never waits on the network while there is something to write.
//!
//! Each thread takes what has arrived (up to [`WRITE_BATCH`] blocks), writes it to temp files,
//! syncs them and renames them into place; it does not hash them again ([`Verified`] is the
//! proof). A block is never visible before its bytes are on disk. The directories the blocks
//! went into are synced once, when the writer [finishes](Writing::finish), not after each
//! batch: a crash before that may lose blocks of an unfinished fetch (fetched again), never
//! show half of one.

use std::{
    collections::BTreeSet,
    path::PathBuf,
    sync::{Arc, Mutex, PoisonError},
    thread::JoinHandle,
};

use tokio::sync::mpsc;

use super::{BlockStore, StoreError, Verified};

/// Verified blocks waiting for the writer (64 MiB of chunks); past this, senders wait.
const WRITE_QUEUE: usize = 64;
/// The most blocks stored with one round of syncs.
const WRITE_BATCH: usize = 16;
/// Writer threads: one writes a batch while another waits on its syncs.
const WRITERS: usize = 2;

/// The sending end of a [`BlockStore::writer`]. Dropping every clone ends the writing.
#[derive(Clone, Debug)]
pub struct BlockWriter {
    tx: mpsc::Sender<Verified>,
}

impl BlockWriter {
    /// Queues a block, waiting while the queue is full.
    ///
    /// # Errors
    /// The block back, once the writer has failed ([`Writing::finish`] says why).
    pub async fn send(&self, block: Verified) -> Result<(), Verified> {
        self.tx.send(block).await.map_err(|e| e.0)
    }

    /// [`BlockWriter::send`] from a thread outside the async runtime.
    ///
    /// # Errors
    /// As [`BlockWriter::send`].
    pub fn blocking_send(&self, block: Verified) -> Result<(), Verified> {
        self.tx.blocking_send(block).map_err(|e| e.0)
    }
}

/// The writing end of a [`BlockStore::writer`]: its threads.
#[derive(Debug)]
pub struct Writing {
    store: Arc<BlockStore>,
    threads: Vec<JoinHandle<Result<BTreeSet<PathBuf>, StoreError>>>,
}

impl Writing {
    /// Waits until everything sent is stored (the senders must be dropped first, or this
    /// waits for them), then syncs the directories the blocks went into. Blocks the calling
    /// thread.
    ///
    /// # Errors
    /// The first error a writer thread met (a full store, a disk error); what it was given
    /// after that was not stored.
    pub fn finish(self) -> Result<(), StoreError> {
        let mut dirs = BTreeSet::new();
        let mut failed = None;
        for thread in self.threads {
            match thread.join() {
                Ok(Ok(more)) => dirs.extend(more),
                Ok(Err(e)) => {
                    failed.get_or_insert(e);
                }
                Err(_) => {
                    failed.get_or_insert(StoreError::Io {
                        what: "storing blocks".into(),
                        source: std::io::Error::other("writer thread panicked"),
                    });
                }
            }
        }
        // What was stored before a failure is kept, and made durable.
        let synced = self.store.sync_dirs(&dirs);
        failed.map_or(synced, Err)
    }
}

impl BlockStore {
    /// A writer of verified blocks into this store (see the module's doc). Send blocks to the
    /// [`BlockWriter`], drop it, then [`Writing::finish`].
    ///
    /// # Errors
    /// [`StoreError::Io`] if its threads cannot be started.
    pub fn writer(self: &Arc<Self>) -> Result<(BlockWriter, Writing), StoreError> {
        let (tx, rx) = mpsc::channel::<Verified>(WRITE_QUEUE);
        let rx = Arc::new(Mutex::new(rx));
        let threads = (0..WRITERS)
            .map(|i| {
                let (store, rx) = (self.clone(), rx.clone());
                std::thread::Builder::new()
                    .name(format!("shoal-writer-{i}"))
                    .spawn(move || store.write_from(&rx))
                    .map_err(|source| StoreError::Io {
                        what: "starting a block writer".into(),
                        source,
                    })
            })
            .collect::<Result<_, _>>()?;
        let writing = Writing {
            store: self.clone(),
            threads,
        };
        Ok((BlockWriter { tx }, writing))
    }

    /// One writer thread: batches of what has arrived, until the senders are gone. At the
    /// first error it closes the queue, so that senders learn of it at once.
    fn write_from(
        &self,
        rx: &Mutex<mpsc::Receiver<Verified>>,
    ) -> Result<BTreeSet<PathBuf>, StoreError> {
        let lock = || rx.lock().unwrap_or_else(PoisonError::into_inner);
        let mut dirs = BTreeSet::new();
        loop {
            let batch = {
                let mut rx = lock();
                let Some(first) = rx.blocking_recv() else {
                    return Ok(dirs);
                };
                let mut batch = vec![first];
                while batch.len() < WRITE_BATCH {
                    match rx.try_recv() {
                        Ok(next) => batch.push(next),
                        Err(_) => break,
                    }
                }
                batch
            };
            if let Err(e) = self.put_verified_unsynced(&batch, &mut dirs) {
                lock().close();
                // What is stored is kept: its directories are still to be synced.
                let _ = self.sync_dirs(&dirs);
                return Err(e);
            }
        }
    }
}
