//! A node's slots are shared fairly between tenants: one tenant's backlog does not delay
//! another tenant's task.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use shoal_host::runtime::{Limits, MIB, Runtime, RuntimeConfig};

use crate::util::{spec, with_args};

/// A's backlog: under a FIFO, B's task would wait for all of these.
const FLOOD: usize = 200;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_flooding_tenant_does_not_delay_another_tenants_task() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = Arc::new(shoal_host::store::BlockStore::open(dir.path()).expect("store"));
    // One slot, and a budget no number of these small tasks can fill, so the slot is what
    // they queue for.
    let config = RuntimeConfig {
        slots: 1,
        memory_budget: 1 << 40,
        ..RuntimeConfig::default()
    };
    let rt = Runtime::new(store, config).expect("runtime");
    let mut wait = with_args(spec(&rt, shoal_task_artifacts::WAIT, &[]), &[("ms", "5")]);
    wait.limits = Limits {
        memory_bytes: 16 * MIB,
        tensor_bytes: 0,
        ..Limits::default()
    };
    // Compiled once before timing.
    rt.run(wait.clone()).await.result.expect("wait runs");

    let a_done = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let flood: Vec<_> = (0..FLOOD)
        .map(|_| {
            let (rt, wait, a_done) = (rt.clone(), wait.clone(), a_done.clone());
            tokio::spawn(async move {
                let report = rt.run_for(Some("a".into()), wait, None).await;
                a_done.fetch_add(1, Ordering::SeqCst);
                report.result.expect("a's task runs");
            })
        })
        .collect();
    // Let A's whole backlog reach the queue before B comes.
    while rt.queue_len() + a_done.load(Ordering::SeqCst) < FLOOD - 1 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }

    let b_sent = Instant::now();
    let a_before = a_done.load(Ordering::SeqCst);
    let report = rt.run_for(Some("b".into()), wait.clone(), None).await;
    let b_latency = b_sent.elapsed();
    let a_between = a_done.load(Ordering::SeqCst) - a_before;
    report.result.expect("b's task runs");

    for task in flood {
        task.await.expect("a's task joins");
    }
    let a_total = started.elapsed();
    let a_each = a_total / u32::try_from(FLOOD).expect("small");
    eprintln!(
        "b waited {b_latency:?} ({a_between} of a's tasks ended meanwhile); a's {FLOOD} tasks \
         took {a_total:?}, {a_each:?} each"
    );
    // Round robin: B waits for the task of A's already running and at most one more A takes
    // its turn first; one more allows for B arriving as a task ends. A FIFO would run all
    // of A's ~200 first.
    assert!(
        a_between <= 3,
        "{a_between} of a's tasks ran while b's waited"
    );
    // The bound in time, which does not grow with A's backlog: the time of 3 of A's tasks
    // and B's own, plus 50 ms for a loaded machine.
    assert!(
        b_latency <= a_each * 4 + Duration::from_millis(50),
        "b waited {b_latency:?}, a's tasks took {a_each:?} each"
    );
}
