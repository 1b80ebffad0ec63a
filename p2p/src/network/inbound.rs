//! Inbound block, task and capacity requests: each takes a permit or is answered `Busy`, then
//! runs the [`InboundHandler`] on a spawned task whose answer comes back to the event loop.
//! Progress records are handed on at once, on the loop.

use std::{future::Future, sync::Arc};

use futures::future::BoxFuture;
use libp2p::{
    PeerId,
    request_response::{InboundRequestId, ResponseChannel},
    swarm::ConnectionId,
};
use tokio::sync::OwnedSemaphorePermit;
use tracing::{Instrument, Span, debug, info_span, warn};

#[cfg(doc)]
use super::Config;
use super::event_loop::EventLoop;
use crate::{
    behaviour::Behaviour,
    codec::{BLOCK_PROTOCOL, CAPACITY_PROTOCOL, TASK_LIMITS, TASK_PROTOCOL},
    messages::{
        BlockRequest, BlockResponse, Capacity, CapacityRequest, Cid, FailureKind, MAX_BLOCK_LEN,
        ProgressRecord, TaskOutcome, TaskSpec,
    },
};

/// Answers to inbound requests, supplied by the node that embeds the network.
///
/// The actor calls these on spawned tasks, at most
/// [`Config::max_inbound_tasks`] task calls and [`Config::max_inbound_requests`] block and
/// capacity calls at a time; beyond that it answers `Busy` without calling them. A method that
/// panics drops its request (the requester sees the stream close), nothing more.
pub trait InboundHandler: Send + Sync + 'static {
    /// The bytes of block `cid` if this peer holds it. Blocks over [`MAX_BLOCK_LEN`] are
    /// never sent: the requester gets `NotFound`.
    fn block(&self, from: PeerId, cid: Cid) -> BoxFuture<'_, Option<Vec<u8>>>;

    /// Run `spec` for `from` and report its outcome. May take as long as the task does.
    fn task(&self, from: PeerId, spec: TaskSpec) -> BoxFuture<'_, TaskOutcome>;

    /// This peer's advertised capacity.
    fn capacity(&self) -> BoxFuture<'_, Capacity>;

    /// A progress record from `from`, of a task it runs for this peer. Called on the event
    /// loop itself, so it must only hand the record on, never wait. By default, dropped.
    fn progress(&self, from: PeerId, record: ProgressRecord) {
        let _ = (from, record);
    }
}

/// An inbound request as the event loop received it.
pub(super) struct Inbound<Req, Resp> {
    pub(super) peer: PeerId,
    pub(super) connection: ConnectionId,
    pub(super) id: InboundRequestId,
    pub(super) request: Req,
    pub(super) channel: ResponseChannel<Resp>,
}

/// An answer to an inbound request, computed on a spawned task: it sends itself on its
/// protocol's behaviour and says whether the requester was still there to get it.
pub(super) type InboundReply = Box<dyn FnOnce(&mut Behaviour) -> bool + Send>;

impl EventLoop {
    pub(super) fn on_block_request(&mut self, r: Inbound<BlockRequest, BlockResponse>) {
        let span = info_span!(parent: self.connection_span(r.connection), "inbound", protocol = %BLOCK_PROTOCOL, peer = %r.peer, request = %r.id, cid = %r.request.cid);
        let Ok(permit) = self.request_permits.clone().try_acquire_owned() else {
            span.in_scope(|| debug!("at capacity; answering Busy"));
            let _ = self
                .swarm
                .behaviour_mut()
                .block
                .send_response(r.channel, BlockResponse::Busy);
            return;
        };
        self.spawn_inbound(permit, span, |handler| async move {
            let response = match handler.block(r.peer, r.request.cid).await {
                Some(bytes) if bytes.len() <= MAX_BLOCK_LEN => BlockResponse::Found(bytes),
                Some(bytes) => {
                    warn!(
                        len = bytes.len(),
                        "block over the size limit; answering NotFound"
                    );
                    BlockResponse::NotFound
                }
                None => BlockResponse::NotFound,
            };
            move |b: &mut Behaviour| b.block.send_response(r.channel, response).is_ok()
        });
    }

    pub(super) fn on_task_request(&mut self, r: Inbound<TaskSpec, TaskOutcome>) {
        let spec = &r.request;
        let span = info_span!(parent: self.connection_span(r.connection), "inbound", protocol = %TASK_PROTOCOL, peer = %r.peer, request = %r.id, module = %spec.module, entry = %spec.entry);
        let Ok(permit) = self.task_permits.clone().try_acquire_owned() else {
            span.in_scope(|| debug!("at capacity; answering Busy"));
            let _ = self.swarm.behaviour_mut().task.send_response(
                r.channel,
                TaskOutcome::failed(FailureKind::Busy, "no free task slot on this peer"),
            );
            return;
        };
        self.spawn_inbound(permit, span, |handler| async move {
            let outcome = fit_outcome(handler.task(r.peer, r.request).await);
            move |b: &mut Behaviour| b.task.send_response(r.channel, outcome).is_ok()
        });
    }

    pub(super) fn on_capacity_request(&mut self, r: Inbound<CapacityRequest, Capacity>) {
        let span = info_span!(parent: self.connection_span(r.connection), "inbound", protocol = %CAPACITY_PROTOCOL, peer = %r.peer, request = %r.id);
        let Ok(permit) = self.request_permits.clone().try_acquire_owned() else {
            // Dropping the channel closes the stream: the asker sees an error and moves on.
            span.in_scope(|| debug!("at capacity; dropping capacity request"));
            return;
        };
        self.spawn_inbound(permit, span, |handler| async move {
            let capacity = handler.capacity().await;
            move |b: &mut Behaviour| b.capacity.send_response(r.channel, capacity).is_ok()
        });
    }

    pub(super) fn on_progress_request(&mut self, r: Inbound<ProgressRecord, ()>) {
        self.handler.progress(r.peer, r.request);
        let _ = self
            .swarm
            .behaviour_mut()
            .progress
            .send_response(r.channel, ());
    }

    /// Runs `call` with the handler on a spawned task under `span`, holding `permit` until
    /// its answer is handed back to the loop.
    fn spawn_inbound<F, S>(
        &mut self,
        permit: OwnedSemaphorePermit,
        span: Span,
        call: impl FnOnce(Arc<dyn InboundHandler>) -> F,
    ) where
        F: Future<Output = S> + Send + 'static,
        S: FnOnce(&mut Behaviour) -> bool + Send + 'static,
    {
        let reply = call(Arc::clone(&self.handler));
        let replies = self.reply_tx.clone();
        self.inbound.spawn(
            async move {
                // The reply channel has room for every permit holder: this never waits long.
                let _ = replies.send(Box::new(reply.await)).await;
                drop(permit);
            }
            .instrument(span),
        );
    }

    pub(super) fn on_inbound_reply(&mut self, reply: InboundReply) {
        if !reply(self.swarm.behaviour_mut()) {
            debug!("requester went away before the response was ready");
        }
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
                "the task's outcome exceeds the {} byte limit of {TASK_PROTOCOL}",
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
    use crate::messages::TaskStats;

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
