//! The cpu backend's worker threads: started once and kept, so an op pays neither for
//! starting threads nor for warming each new thread's allocator arena and gemm's buffers
//! (at n = 256 that doubled the time of a matmul).

use std::{
    panic::{self, AssertUnwindSafe},
    sync::{
        Arc, Condvar, Mutex, PoisonError,
        mpsc::{Receiver, SyncSender, sync_channel},
    },
    thread,
};

type Job = Box<dyn FnOnce() + Send + 'static>;

/// Long-lived worker threads fed through a bounded queue. They exit when the pool is dropped.
#[derive(Debug)]
pub(super) struct Pool {
    jobs: SyncSender<Job>,
}

/// Counts a broadcast's unfinished jobs down to zero.
#[derive(Default)]
struct Latch {
    /// Jobs not yet finished, and whether one panicked.
    state: Mutex<(usize, bool)>,
    done: Condvar,
}

impl Latch {
    fn finish(&self, panicked: bool) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.0 -= 1;
        state.1 |= panicked;
        if state.0 == 0 {
            self.done.notify_all();
        }
    }
}

impl Pool {
    /// A pool of `threads` workers (fewer if the OS refuses some; with none, every job runs
    /// on the caller).
    pub(super) fn new(threads: usize) -> Self {
        let (jobs, queue) = sync_channel::<Job>(threads);
        let queue = Arc::new(Mutex::new(queue));
        for i in 0..threads {
            let queue = queue.clone();
            let spawned = thread::Builder::new()
                .name(format!("shoal-cpu-{i}"))
                .spawn(move || work(&queue));
            if let Err(err) = spawned {
                tracing::warn!(%err, "cannot start a cpu compute thread");
            }
        }
        Self { jobs }
    }

    /// Runs `task` once on each of `copies` workers, and returns when every copy has ended.
    ///
    /// # Panics
    ///
    /// If a copy of `task` panicked.
    pub(super) fn broadcast(&self, copies: usize, task: &(dyn Fn() + Sync)) {
        let latch = Arc::new(Latch::default());
        latch.state.lock().unwrap_or_else(PoisonError::into_inner).0 = copies;
        for _ in 0..copies {
            let job_latch = latch.clone();
            let job: Box<dyn FnOnce() + Send + '_> = Box::new(move || {
                let result = panic::catch_unwind(AssertUnwindSafe(task));
                job_latch.finish(result.is_err());
            });
            // SAFETY: the job borrows `task` for less than `'static`, but this function does
            // not return before every job it made has finished or been dropped unrun: the
            // latch below waits for each one to count itself down, and a job that cannot be
            // queued is run here instead. Nothing between here and the wait can unwind (lock
            // poisoning is ignored), so no early return cuts the wait short.
            let job = unsafe { std::mem::transmute::<Box<dyn FnOnce() + Send + '_>, Job>(job) };
            if let Err(unsent) = self.jobs.send(job) {
                // Every worker is gone: do the work on this thread.
                (unsent.0)();
            }
        }
        let mut state = latch.state.lock().unwrap_or_else(PoisonError::into_inner);
        while state.0 > 0 {
            state = latch
                .done
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
        }
        assert!(!state.1, "a cpu compute thread panicked");
    }
}

/// A worker's life: run jobs until the pool is dropped.
fn work(queue: &Mutex<Receiver<Job>>) {
    loop {
        let job = queue.lock().unwrap_or_else(PoisonError::into_inner).recv();
        match job {
            Ok(job) => job(),
            Err(_) => return,
        }
    }
}
