//! `/shoal/task/6`: tasks and their outcomes, many at once, over one long-lived stream from a
//! submitter to each executor it uses.
//!
//! `/shoal/task/5` was request-response: every task paid for a new yamux stream, a protocol
//! negotiation, a request timer on each side (on libp2p's shared timer thread) and some ten
//! hops through the network actor. Here a submitter opens one raw stream to an executor the
//! first time it sends it a task ([`NetworkClient::submit_task`]) and sends every later task
//! on it; each answer carries the id of the task it answers, and answers come back in the
//! order the tasks finish. A stream nobody has used for a minute
//! ([`Config::task_idle_timeout`]) is closed.
//!
//! Wire format (integers big-endian, like [`crate::codec`]):
//!
//! ```text
//! task      u32 length, then postcard((u64 id, TaskSpec))       (spec ≤ TASK_LIMITS.request)
//! answer    u32 length, then postcard((u64 id, TaskOutcome))    (outcome ≤ TASK_LIMITS.response)
//! ```
//!
//! An id is the submitter's, used once on its stream. A frame over its limit, one that does
//! not decode, or an answer to an id never sent ends the stream: every task in flight on it
//! fails, on both sides, and the executor drops their handlers. Each side
//! reads and writes on separate futures, so neither stops reading while it waits to write.
//!
//! The executor takes each task into a permit of the requester's share and one of the
//! node's ([`Config::max_inbound_tasks_per_peer`], [`Config::max_inbound_tasks`]), or
//! answers it `Busy` at once.

use std::{
    collections::HashMap,
    io,
    panic::AssertUnwindSafe,
    sync::{
        Arc, Mutex, PoisonError, Weak,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, FutureExt, future::BoxFuture};
use libp2p::{PeerId, Stream, StreamProtocol};
use tokio::{
    sync::{Notify, OwnedSemaphorePermit, Semaphore, mpsc, oneshot},
    task::JoinSet,
};
use tokio_util::sync::CancellationToken;
use tracing::debug;

#[cfg(doc)]
use crate::{Config, NetworkClient};
use crate::{
    codec::{TASK_LIMITS, encode_frame, read_frame},
    messages::{FailureKind, TaskOutcome, TaskSpec},
    network::{Error, InboundHandler, open_stream},
    streams,
};

/// `/shoal/task/6`: tasks and their outcomes over one long-lived raw stream.
pub const TASK_PROTOCOL: StreamProtocol = StreamProtocol::new(TASK_PROTOCOL_NAME);
/// The name of [`TASK_PROTOCOL`].
pub const TASK_PROTOCOL_NAME: &str = "/shoal/task/6";

/// The most a frame adds to its spec or outcome: the id, a varint of at most 10 bytes.
const ID_BYTES: usize = 10;
/// The largest task frame's payload.
pub(crate) const TASK_FRAME: usize = TASK_LIMITS.request + ID_BYTES;
/// The largest answer frame's payload.
pub(crate) const ANSWER_FRAME: usize = TASK_LIMITS.response + ID_BYTES;
/// How long either side waits for the other to take a frame it writes before it gives the
/// stream up.
const WRITE_STALL: Duration = Duration::from_secs(30);
/// How long a submitter keeps a stream with no task in flight open, by default
/// ([`Config::task_idle_timeout`]).
pub const TASK_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Tasks handed to a stream and not yet written; further submitters wait.
const QUEUE: usize = 64;
/// Answers finished and not yet written; further finished handlers wait.
const ANSWER_QUEUE: usize = 16;

fn stream_error(peer: PeerId, source: io::Error) -> Error {
    Error::Stream {
        peer,
        protocol: TASK_PROTOCOL_NAME,
        source,
    }
}

/// The same error again, for each of the tasks that one failure of `peer`'s stream fails.
fn again(peer: PeerId, e: &Error) -> Error {
    match e {
        Error::Stream { source, .. } => {
            stream_error(peer, io::Error::new(source.kind(), source.to_string()))
        }
        Error::Unsupported { .. } => Error::Unsupported {
            peer,
            protocol: TASK_PROTOCOL_NAME,
        },
        Error::Timeout { op, after } => Error::Timeout { op, after: *after },
        Error::Shutdown => Error::Shutdown,
        other => stream_error(peer, io::Error::other(other.to_string())),
    }
}

/// A task handed to a stream, and where its answer goes.
struct Submission {
    spec: TaskSpec,
    answer: oneshot::Sender<Result<TaskOutcome, Error>>,
}

/// One stream's entry in [`TaskLinks`]: the queue to it, and which stream it is.
struct Link {
    generation: u64,
    submissions: mpsc::Sender<Submission>,
}

type LinkMap = Mutex<HashMap<PeerId, Link>>;

/// A submitter's streams, one per executor; shared by the clones of a [`NetworkClient`].
#[derive(Clone)]
pub(crate) struct TaskLinks {
    links: Arc<LinkMap>,
    generations: Arc<AtomicU64>,
    control: streams::Control,
    /// How long opening a stream may take.
    open_within: Duration,
    /// Tasks in flight on one stream; more fail with [`Error::TooManyInFlight`].
    max_pending: usize,
    /// How long a stream with nothing in flight stays open.
    idle: Duration,
    /// Ends every stream.
    shutdown: CancellationToken,
}

impl std::fmt::Debug for TaskLinks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TaskLinks")
    }
}

impl TaskLinks {
    pub(crate) fn new(
        control: streams::Control,
        open_within: Duration,
        max_pending: usize,
        idle: Duration,
        shutdown: CancellationToken,
    ) -> Self {
        Self {
            links: Arc::default(),
            generations: Arc::default(),
            control,
            open_within,
            max_pending: max_pending.max(1),
            idle,
            shutdown,
        }
    }

    /// Sends `spec` to `peer` on the stream to it, opened first if there is none, and waits
    /// for its outcome (unbounded here: the caller bounds it).
    pub(crate) async fn submit(&self, peer: PeerId, spec: TaskSpec) -> Result<TaskOutcome, Error> {
        let (answer, answered) = oneshot::channel();
        let mut submission = Submission { spec, answer };
        // A stream that ends between the lookup and the send refuses the task: once more, on
        // a fresh one.
        for _ in 0..2 {
            let submissions = self.link(peer);
            match submissions.send(submission).await {
                Ok(()) => {
                    return answered.await.unwrap_or(Err(Error::ConnectionClosed {
                        peer,
                        protocol: TASK_PROTOCOL_NAME,
                    }));
                }
                Err(mpsc::error::SendError(back)) => submission = back,
            }
        }
        Err(Error::ConnectionClosed {
            peer,
            protocol: TASK_PROTOCOL_NAME,
        })
    }

    /// The queue to `peer`'s stream, started if there is none.
    fn link(&self, peer: PeerId) -> mpsc::Sender<Submission> {
        let mut links = lock(&self.links);
        if let Some(link) = links.get(&peer)
            && !link.submissions.is_closed()
        {
            return link.submissions.clone();
        }
        let generation = self.generations.fetch_add(1, Ordering::Relaxed);
        let (submissions, queue) = mpsc::channel(QUEUE);
        links.insert(
            peer,
            Link {
                generation,
                submissions: submissions.clone(),
            },
        );
        let driver = Driver {
            peer,
            generation,
            links: Arc::downgrade(&self.links),
            max_pending: self.max_pending,
            idle: self.idle,
        };
        let control = self.control.clone();
        let open_within = self.open_within;
        let opening =
            async move { open_stream(&control, peer, TASK_PROTOCOL_NAME, 0, open_within).await }
                .boxed();
        tokio::spawn(driver.run(opening, queue, self.shutdown.clone()));
        submissions
    }
}

/// The task that owns one stream of a submitter.
struct Driver {
    peer: PeerId,
    generation: u64,
    links: Weak<LinkMap>,
    max_pending: usize,
    idle: Duration,
}

/// The tasks a stream has sent and not yet had answered, and the next id it will use.
#[derive(Default)]
struct InFlight {
    answers: HashMap<u64, oneshot::Sender<Result<TaskOutcome, Error>>>,
    next_id: u64,
}

type Pending = Mutex<InFlight>;

/// How a stream's work ended.
enum End {
    /// Idle, taken out of the map, and every task answered.
    Done,
    /// Failed: every task still in flight or queued fails with this.
    Failed(Error),
}

impl Driver {
    async fn run(
        self,
        opening: BoxFuture<'static, Result<Stream, Error>>,
        mut queue: mpsc::Receiver<Submission>,
        shutdown: CancellationToken,
    ) {
        let pending: Pending = Mutex::default();
        let end = tokio::select! {
            biased;
            () = shutdown.cancelled() => End::Failed(Error::Shutdown),
            end = self.serve(opening, &mut queue, &pending) => end,
        };
        self.retire();
        if let End::Failed(e) = end {
            debug!(peer = %self.peer, "task stream ended: {e}");
            queue.close();
            while let Some(submission) = queue.recv().await {
                let _ = submission.answer.send(Err(again(self.peer, &e)));
            }
            let failed: Vec<_> = lock(&pending).answers.drain().collect();
            for (_, answer) in failed {
                let _ = answer.send(Err(again(self.peer, &e)));
            }
        }
    }

    /// Opens the stream, then writes the queued tasks and reads their answers until the
    /// stream fails, or it has been idle long enough to close.
    async fn serve(
        &self,
        opening: BoxFuture<'static, Result<Stream, Error>>,
        queue: &mut mpsc::Receiver<Submission>,
        pending: &Pending,
    ) -> End {
        let stream = match opening.await {
            Ok(stream) => stream,
            Err(e) => return End::Failed(e),
        };
        let (read, write) = stream.split();
        // Rung by the reader each time the last answer owed comes in.
        let drained = Notify::new();
        let writing = self.write_tasks(write, queue, pending, &drained);
        let reading = self.read_answers(read, pending, &drained);
        tokio::select! {
            end = writing => end,
            e = reading => End::Failed(e),
        }
    }

    /// Writes each queued task, once it is recorded as pending. When nothing is in flight or
    /// queued for its idle time, takes the link out of the map, writes what was queued meanwhile,
    /// waits for the last answers and ends.
    async fn write_tasks(
        &self,
        mut write: impl AsyncWrite + Unpin,
        queue: &mut mpsc::Receiver<Submission>,
        pending: &Pending,
        drained: &Notify,
    ) -> End {
        let mut used = false;
        let idle = tokio::time::sleep(self.idle);
        tokio::pin!(idle);
        loop {
            let submission = tokio::select! {
                submission = queue.recv() => submission,
                () = &mut idle => {
                    if !used && answered(pending) && self.retire_if_idle(queue) {
                        queue.close();
                    }
                    used = false;
                    idle.as_mut().reset(tokio::time::Instant::now() + self.idle);
                    continue;
                }
            };
            let Some(Submission { spec, answer }) = submission else {
                // Retired and every queued task written: end once all are answered, or
                // their callers gave up.
                loop {
                    let notified = drained.notified();
                    if answered(pending) {
                        return End::Done;
                    }
                    let _ = tokio::time::timeout(self.idle, notified).await;
                }
            };
            used = true;
            if answer.is_closed() {
                continue; // Its caller gave up while it was queued.
            }
            let frame = {
                let mut pending = lock(pending);
                if pending.answers.len() >= self.max_pending {
                    // Callers that gave up leave their entries behind: dropped when it matters.
                    pending.answers.retain(|_, a| !a.is_closed());
                }
                if pending.answers.len() >= self.max_pending {
                    let limit = self.max_pending;
                    let _ = answer.send(Err(Error::TooManyInFlight { limit }));
                    continue;
                }
                let id = pending.next_id;
                match encode_frame(TASK_FRAME, &(id, &spec)) {
                    Ok(frame) => {
                        pending.answers.insert(id, answer);
                        pending.next_id += 1;
                        frame
                    }
                    Err(source) => {
                        let _ = answer.send(Err(stream_error(self.peer, source)));
                        continue;
                    }
                }
            };
            let written = async {
                write.write_all(&frame).await?;
                write.flush().await
            };
            match tokio::time::timeout(WRITE_STALL, written).await {
                Ok(Ok(())) => {}
                Ok(Err(source)) => return End::Failed(stream_error(self.peer, source)),
                Err(_) => {
                    return End::Failed(Error::Timeout {
                        op: "writing a task",
                        after: WRITE_STALL,
                    });
                }
            }
        }
    }

    /// Reads answers and hands each to its task's caller, until the stream fails.
    async fn read_answers(
        &self,
        mut read: impl AsyncRead + Unpin + Send,
        pending: &Pending,
        drained: &Notify,
    ) -> Error {
        loop {
            let (id, outcome) =
                match read_frame::<_, (u64, TaskOutcome)>(&mut read, ANSWER_FRAME).await {
                    Ok(answer) => answer,
                    Err(e) => return stream_error(self.peer, e),
                };
            let (answer, sent) = {
                let mut pending = lock(pending);
                let answer = pending.answers.remove(&id);
                if pending.answers.is_empty() {
                    drained.notify_waiters();
                }
                (answer, id < pending.next_id)
            };
            match answer {
                Some(answer) => {
                    let _ = answer.send(Ok(outcome));
                }
                // Its caller gave up, and its entry was dropped.
                None if sent => {}
                None => {
                    return stream_error(
                        self.peer,
                        io::Error::new(
                            io::ErrorKind::InvalidData,
                            format!("an answer to task {id}, which was never sent"),
                        ),
                    );
                }
            }
        }
    }

    /// Takes this stream out of the map if nothing is queued on it: true if it did.
    fn retire_if_idle(&self, queue: &mpsc::Receiver<Submission>) -> bool {
        let Some(links) = self.links.upgrade() else {
            return true;
        };
        let mut links = lock(&links);
        // Under the map's lock no new sender is handed out: an empty queue stays empty but
        // for a caller that took its sender earlier, whose task is still written.
        if !queue.is_empty() {
            return false;
        }
        self.remove_from(&mut links);
        true
    }

    /// Takes this stream out of the map, if it is still there.
    fn retire(&self) {
        if let Some(links) = self.links.upgrade() {
            self.remove_from(&mut lock(&links));
        }
    }

    /// Removes this stream's entry, not a newer stream's to the same peer.
    fn remove_from(&self, links: &mut HashMap<PeerId, Link>) {
        if links
            .get(&self.peer)
            .is_some_and(|l| l.generation == self.generation)
        {
            links.remove(&self.peer);
        }
    }
}

/// Whether no task on the stream waits for its answer any more; forgets those whose callers
/// gave up.
fn answered(pending: &Pending) -> bool {
    let mut pending = lock(pending);
    pending.answers.retain(|_, a| !a.is_closed());
    pending.answers.is_empty()
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// An executor's task permits: the node's pool, and a share of it for each requester with
/// a stream open, so that one requester cannot take every slot.
pub(crate) struct TaskSlots {
    node: Arc<Semaphore>,
    per_peer: usize,
    /// A share lives while a stream or a handler of its peer holds it.
    shares: Mutex<HashMap<PeerId, Weak<Semaphore>>>,
}

impl TaskSlots {
    pub(crate) fn new(max: usize, per_peer: usize) -> Self {
        Self {
            node: Arc::new(Semaphore::new(max)),
            per_peer,
            shares: Mutex::default(),
        }
    }

    /// The permits `peer`'s tasks draw from, on every stream it has open.
    pub(crate) fn for_peer(&self, peer: PeerId) -> TaskPermits {
        let mut shares = lock(&self.shares);
        if let Some(share) = shares.get(&peer).and_then(Weak::upgrade) {
            return TaskPermits {
                node: Arc::clone(&self.node),
                peer: share,
            };
        }
        // Bounded by the peers with a stream open: the others' shares are gone.
        shares.retain(|_, s| s.strong_count() > 0);
        let share = Arc::new(Semaphore::new(self.per_peer));
        shares.insert(peer, Arc::downgrade(&share));
        TaskPermits {
            node: Arc::clone(&self.node),
            peer: share,
        }
    }
}

/// The permits one requester's tasks take: one of its share, one of the node's.
pub(crate) struct TaskPermits {
    node: Arc<Semaphore>,
    peer: Arc<Semaphore>,
}

impl TaskPermits {
    fn admit(&self) -> Result<(OwnedSemaphorePermit, OwnedSemaphorePermit), &'static str> {
        let peer = Arc::clone(&self.peer)
            .try_acquire_owned()
            .map_err(|_| "no free task slot on this peer for the requester")?;
        let node = Arc::clone(&self.node)
            .try_acquire_owned()
            .map_err(|_| "no free task slot on this peer")?;
        Ok((peer, node))
    }
}

/// Serves one inbound `/shoal/task/6` stream from `peer` until it ends: each task runs on a
/// task of its own under its permits, or is answered `Busy`. Dropping the future (the
/// network shuts down) or the stream ending drops every handler still running.
pub(crate) async fn serve(
    peer: PeerId,
    stream: Stream,
    handler: Arc<dyn InboundHandler>,
    permits: TaskPermits,
    idle: Duration,
) -> io::Result<()> {
    let (mut read, mut write) = stream.split();
    let (answers, mut to_write) = mpsc::channel::<(u64, TaskOutcome)>(ANSWER_QUEUE);
    let writing = async move {
        while let Some((id, outcome)) = to_write.recv().await {
            let frame = encode_frame(ANSWER_FRAME, &(id, fit_outcome(outcome)))?;
            let written = async {
                write.write_all(&frame).await?;
                write.flush().await
            };
            tokio::time::timeout(WRITE_STALL, written)
                .await
                .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "the submitter stalled"))??;
        }
        io::Result::Ok(())
    };
    let reading = async move {
        let mut running = JoinSet::new();
        // Since when no task has run: a stream idle for `idle` past that is closed, so idle
        // streams cannot hold the node's task-stream places for good. Counted from when the
        // last task ended (seen at a tick), not from its frame, so the submitter, which
        // retires a stream a minute or two after its last answer, does so first.
        let mut idle_since = None;
        loop {
            let next = read_frame::<_, (u64, TaskSpec)>(&mut read, TASK_FRAME);
            tokio::pin!(next);
            let (id, spec) = loop {
                tokio::select! {
                    frame = &mut next => break frame?,
                    () = tokio::time::sleep(idle) => {
                        // Finished handlers leave their results behind until joined.
                        while running.try_join_next().is_some() {}
                        match idle_since {
                            _ if !running.is_empty() => idle_since = None,
                            None => idle_since = Some(tokio::time::Instant::now()),
                            Some(since) if since.elapsed() >= idle => {
                                debug!(%peer, "idle task stream closed");
                                // The writer sends what is queued, then ends.
                                drop(answers);
                                return Ok(());
                            }
                            Some(_) => {}
                        }
                    }
                }
            };
            idle_since = None;
            while running.try_join_next().is_some() {}
            let admitted = match permits.admit() {
                Ok(admitted) => admitted,
                Err(why) => {
                    debug!("{why}; answering Busy");
                    let busy = TaskOutcome::failed(FailureKind::Busy, why);
                    if answers.send((id, busy)).await.is_err() {
                        return Ok(());
                    }
                    continue;
                }
            };
            let (handler, answers) = (Arc::clone(&handler), answers.clone());
            running.spawn(async move {
                let outcome = AssertUnwindSafe(handler.task(peer, spec))
                    .catch_unwind()
                    .await
                    .unwrap_or_else(|_| {
                        TaskOutcome::failed(
                            FailureKind::Lost,
                            "the executor failed while it handled the task",
                        )
                    });
                // The permits are held until the answer is queued: a requester that does not
                // read its answers gets no more tasks run than its share.
                let _ = answers.send((id, outcome)).await;
                drop(admitted);
            });
        }
    };
    tokio::pin!(writing);
    // A broken stream ends at once, and `running` drops with the reader; a stream closed for
    // idleness first writes the answers already queued.
    let served: io::Result<()> = tokio::select! {
        r = reading => match r {
            Ok(()) => writing.await,
            Err(e) => Err(e),
        },
        r = &mut writing => r,
    };
    match served {
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(()),
        other => other,
    }
}

/// Shrinks an outcome that would not fit its frame: keep the tail of the logs, or as a last
/// resort report the overflow as a failure.
fn fit_outcome(mut outcome: TaskOutcome) -> TaskOutcome {
    const LOG_TAIL: usize = 64 * 1024;
    let fits = |o: &TaskOutcome| {
        postcard::experimental::serialized_size(o).is_ok_and(|n| n <= TASK_LIMITS.response)
    };
    if fits(&outcome) {
        return outcome;
    }
    match &mut outcome {
        TaskOutcome::Ok { logs, .. } => *logs = log_tail(logs, LOG_TAIL),
        TaskOutcome::Failed { message, logs, .. } => {
            *message = log_tail(message, LOG_TAIL);
            *logs = log_tail(logs, LOG_TAIL);
        }
    }
    if fits(&outcome) {
        outcome
    } else {
        TaskOutcome::failed(
            FailureKind::Other,
            format!(
                "the task's outcome exceeds the {} byte limit of {TASK_PROTOCOL_NAME}",
                TASK_LIMITS.response
            ),
        )
    }
}

/// The last `max` bytes of `s` (on a char boundary), marked as truncated.
fn log_tail(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut start = s.len() - max;
    while !s.is_char_boundary(start) {
        start += 1;
    }
    format!("[… {start} bytes truncated …]\n{}", &s[start..])
}

#[cfg(test)]
mod unit_tests {
    use super::*;
    use crate::messages::{Cid, TaskStats};

    #[test]
    fn oversized_outcome_keeps_the_tail_of_its_logs() {
        let logs = format!("{}é end", "x".repeat(TASK_LIMITS.response));
        let outcome = fit_outcome(TaskOutcome::Ok {
            outputs: vec![("out".into(), Cid::of(b"o"))],
            logs,
            stats: TaskStats {
                backend: "cpu".into(),
                executed_by: "p".into(),
                ..TaskStats::default()
            },
        });
        match outcome {
            TaskOutcome::Ok { logs, outputs, .. } => {
                assert!(logs.len() < 70 * 1024);
                assert!(logs.ends_with("é end") && logs.starts_with("[…"));
                assert_eq!(outputs.len(), 1);
            }
            other => panic!("{other:?}"),
        }
        let small = TaskOutcome::failed(FailureKind::Trap, "boom");
        assert_eq!(fit_outcome(small.clone()), small);
    }
}
