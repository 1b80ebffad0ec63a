//! The durable writer a fetch or a put streams verified blocks into: threads of its own behind
//! a bounded queue, so that the network never waits on the disk while there is room in the
//! queue, and the disk never waits on the network while there is something to write.
//!
//! Each of [`WRITERS`] threads takes one block at a time and stores it whole: writes it to a
//! temp file, syncs it and renames it into place, without hashing it again ([`Verified`] is
//! the proof). A block is never visible before its bytes are on disk. What makes this keep up
//! with the disk is that the threads do not wait for each other: with batches (write 64,
//! sync them on 8 threads, rename), each batch waited on its slowest sync while the disk
//! idled, and a put moved 0.59-0.68x of `dd conv=fdatasync`; one block per thread moves
//! 0.83-1.05x (`--bench store`, BENCHMARKS.md). The directories the blocks went into are
//! synced once, when the writer [finishes](Writing::finish): a crash before that may lose
//! blocks of an unfinished fetch (fetched again), never show half of one.

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
/// Writer threads: each mostly waits on its block's sync, so several keep the disk busy.
const WRITERS: usize = 8;

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
        let (dirs, failed) = gather(self.threads.into_iter().map(JoinHandle::join));
        // What was stored before a failure is kept, and made durable.
        let synced = self.store.sync_dirs(&dirs);
        failed.map_or(synced, Err)
    }
}

/// The directories that writer threads stored into, and the first error one met.
fn gather(
    threads: impl Iterator<Item = std::thread::Result<Result<BTreeSet<PathBuf>, StoreError>>>,
) -> (BTreeSet<PathBuf>, Option<StoreError>) {
    let mut dirs = BTreeSet::new();
    let mut failed = None;
    for thread in threads {
        match thread {
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
    (dirs, failed)
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

    /// Runs `produce` on this thread with a sender into writer threads of this call (the
    /// same as [`BlockStore::writer`]'s), then waits until what it sent is stored and the
    /// directories are synced: for a local put, which has its blocks in hand.
    ///
    /// # Errors
    /// A writer's error first (sends fail after it, so `produce` may stop short), else the
    /// error `produce` returned.
    pub(super) fn write_with<T>(
        &self,
        produce: impl FnOnce(&mpsc::Sender<Verified>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let (tx, rx) = mpsc::channel::<Verified>(WRITE_QUEUE);
        let rx = Mutex::new(rx);
        let (produced, (dirs, failed)) = std::thread::scope(|scope| {
            let threads: Vec<_> = (0..WRITERS)
                .map(|_| scope.spawn(|| self.write_from(&rx)))
                .collect();
            let produced = produce(&tx);
            drop(tx);
            (produced, gather(threads.into_iter().map(|t| t.join())))
        });
        let synced = self.sync_dirs(&dirs);
        match failed {
            Some(e) => Err(e),
            None => produced.and_then(|t| synced.map(|()| t)),
        }
    }

    /// One writer thread: a block at a time, until the senders are gone. At the first error
    /// it closes the queue, so that senders learn of it at once.
    fn write_from(
        &self,
        rx: &Mutex<mpsc::Receiver<Verified>>,
    ) -> Result<BTreeSet<PathBuf>, StoreError> {
        let lock = || rx.lock().unwrap_or_else(PoisonError::into_inner);
        let mut dirs = BTreeSet::new();
        loop {
            let Some(block) = lock().blocking_recv() else {
                return Ok(dirs);
            };
            if let Err(e) = self.put_verified_unsynced(&[block], &mut dirs) {
                lock().close();
                // What is stored is kept: its directories are still to be synced.
                let _ = self.sync_dirs(&dirs);
                return Err(e);
            }
        }
    }
}
