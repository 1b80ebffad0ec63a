//! The node side of the control socket.

use std::{os::unix::fs::PermissionsExt, str::FromStr, sync::Arc};

use serde::Serialize;
use shoal_p2p::{Credential, PeerId};
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::{UnixListener, UnixStream, unix::OwnedWriteHalf},
    sync::Semaphore,
};
use tracing::Instrument;

use super::{
    Exit, Failure, Frame, Get, Keep, MAX_REQUEST_LEN, Map, MapItem, NodeStatus, PeerInfo, Put, Ran,
    Request, Submit, TaskRequest, Update, socket_path,
};
use crate::{
    node::{Node, NodeError},
    runtime::TaskSpec,
    sched::{MAX_VERIFY, Placed},
    store::{Cid, GcMode, PinClass},
};

/// Control connections served at once.
const MAX_CONNECTIONS: usize = 64;
/// How long a client may take to send its request line. The CLI sends it as soon as it
/// connects; a connection that stays silent is dropped, so idle ones cannot hold every slot.
const REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);
/// How long a client may leave a line it was sent untaken.
const WRITE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Binds the control socket (mode 0600) and serves it until the node shuts down.
///
/// # Errors
/// [`NodeError::Control`] when the socket cannot be bound.
pub async fn serve(node: Node) -> Result<tokio::task::JoinHandle<()>, NodeError> {
    let path = socket_path(&node.config().data_dir);
    let io = |source| NodeError::Control {
        path: path.clone(),
        source,
    };
    // We hold the data dir's lock, so a socket file here is a stale one from a crash.
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path).map_err(io)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).map_err(io)?;
    let shutdown = node.shutdown_token();
    let limit = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut connections = 0u64;
    Ok(tokio::spawn(async move {
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                accepted = listener.accept() => {
                    let Ok((stream, _)) = accepted else { continue };
                    let Ok(permit) = limit.clone().acquire_owned().await else { break };
                    let node = node.clone();
                    connections += 1;
                    let span = tracing::info_span!("control", connection = connections);
                    tokio::spawn(async move {
                        let _permit = permit;
                        if let Err(e) = handle(node, stream).await {
                            tracing::debug!(error = %e, "control connection ended");
                        }
                    }.instrument(span));
                }
            }
        }
        let _ = std::fs::remove_file(&path);
    }))
}

/// Sends one line; a client that does not take it within [`WRITE_TIMEOUT`] loses its
/// connection, so it cannot hold one of the socket's connections (and a request's work) for
/// good.
async fn send<R: Serialize>(w: &mut OwnedWriteHalf, frame: &Frame<R>) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(frame).map_err(std::io::Error::other)?;
    line.push(b'\n');
    tokio::time::timeout(WRITE_TIMEOUT, w.write_all(&line))
        .await
        .map_err(|_| {
            std::io::Error::new(std::io::ErrorKind::TimedOut, "the client stopped reading")
        })?
}

/// Sends the final line for a request's outcome.
async fn finish<R: Serialize>(
    w: &mut OwnedWriteHalf,
    outcome: Result<R, Failure>,
) -> std::io::Result<()> {
    send(w, &outcome.map_or_else(Frame::Error, Frame::Done)).await
}

async fn handle(node: Node, stream: UnixStream) -> std::io::Result<()> {
    let (r, mut w) = stream.into_split();
    let mut line = Vec::new();
    let mut reader = BufReader::new(r.take(MAX_REQUEST_LEN as u64 + 1));
    let Ok(read) = tokio::time::timeout(REQUEST_TIMEOUT, reader.read_until(b'\n', &mut line)).await
    else {
        tracing::debug!("control client sent no request in time; dropped");
        return Ok(());
    };
    let request = if read? > MAX_REQUEST_LEN {
        Err(Exit::Usage.fail(format_args!(
            "request over the {MAX_REQUEST_LEN}-byte limit"
        )))
    } else {
        serde_json::from_slice(&line)
            .map_err(|e| Exit::Usage.fail(format_args!("malformed request: {e}")))
    };
    let w = &mut w;
    match request {
        Err(failure) => finish::<()>(w, Err(failure)).await,
        Ok(Request::Put(r)) => finish(w, put(&node, r).await).await,
        Ok(Request::Get(r)) => finish(w, get(&node, r).await).await,
        Ok(Request::Keep(r)) => finish(w, keep(&node, r).await).await,
        Ok(Request::Submit(r)) => {
            let outcome = submit(&node, r, w).await?;
            finish(w, outcome).await
        }
        Ok(Request::Map(r)) => {
            let outcome = map(&node, r, w).await?;
            finish(w, outcome).await
        }
        Ok(Request::Peers(_)) => finish(w, Ok(peers(&node).await)).await,
        Ok(Request::Status(_)) => finish(w, Ok(status(&node).await)).await,
        Ok(Request::Gc(_)) => {
            let store = node.store().clone();
            finish(w, blocking(move || store.gc(GcMode::All)).await).await
        }
    }
}

/// Runs file I/O on a blocking thread.
async fn blocking<T, E>(f: impl FnOnce() -> Result<T, E> + Send + 'static) -> Result<T, Failure>
where
    T: Send + 'static,
    E: Into<Failure> + Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Exit::Node.fail(e))?
        .map_err(Into::into)
}

async fn put(node: &Node, r: Put) -> Result<Cid, Failure> {
    Ok(node.put_path(r.path, r.public).await?)
}

/// The credential a request acts with: the tenant's delegation to this node, checked, or
/// this node's own.
fn acting_as(node: &Node, credential: Option<Credential>) -> Result<Credential, Failure> {
    let Some(credential) = credential else {
        return Ok(node.credential().clone());
    };
    credential
        .verify(node.peer_id(), crate::sched::now_ms())
        .map_err(|e| Exit::Usage.fail(format_args!("--key: {e}")))?;
    Ok(credential)
}

async fn get(node: &Node, r: Get) -> Result<u64, Failure> {
    let _lease = node.store().lease(&[r.cid]);
    let credential = acting_as(node, r.credential)?;
    node.fetch_file_as(r.cid, &[], &credential)
        .await
        .map_err(|e| Exit::Node.fail(e))?;
    let store = node.store().clone();
    blocking(move || super::write_out(&store, &r.cid, &r.path, r.force)).await
}

async fn keep(node: &Node, r: Keep) -> Result<u64, Failure> {
    let from = r.from.as_deref().map(peer_id).transpose()?;
    let _lease = node.store().lease(&[r.cid]);
    let credential = acting_as(node, r.credential)?;
    node.fetch_file_as(r.cid, from.as_slice(), &credential)
        .await
        .map_err(|e| Exit::Node.fail(e))?;
    let store = node.store().clone();
    blocking(move || {
        store.pin(&r.cid, PinClass::Checkpoint)?;
        Ok::<_, crate::store::StoreError>(store.manifest(&r.cid)?.len)
    })
    .await
}

fn peer_id(p: &str) -> Result<PeerId, Failure> {
    PeerId::from_str(p).map_err(|e| Exit::Usage.fail(format_args!("{p}: not a peer id ({e})")))
}

/// Builds the task (storing its files) and parses `on`; refuses
/// `--verify` with `--on`, or past [`MAX_VERIFY`].
async fn resolve(
    node: &Node,
    task: TaskRequest,
    on: Option<&str>,
    verify: u32,
) -> Result<(TaskSpec, Option<PeerId>), Failure> {
    if verify >= 2 && on.is_some() {
        return Err(Exit::Usage.fail(format_args!(
            "--verify {verify} runs the task on {verify} distinct peers: it cannot be pinned \
             with --on"
        )));
    }
    if verify > MAX_VERIFY {
        return Err(Exit::Usage.fail(format_args!(
            "--verify {verify}: at most {MAX_VERIFY} peers"
        )));
    }
    let on = on.map(peer_id).transpose()?;
    if let Some(credential) = &task.credential {
        acting_as(node, Some(credential.clone()))?;
    }
    let store = node.store().clone();
    let spec = blocking(move || task.build(&store)).await?;
    Ok((spec, on))
}

/// A placed task as the client sees it. What a user submitted is pinned here for good
/// (fetched later, or already local); a driver's subtasks, placed by the same scheduler, are
/// not: their outputs are the driver's to read, then garbage.
async fn ran(node: &Node, placed: Placed) -> Ran {
    if let Ok(outputs) = &placed.report.result {
        // Each pin syncs the disk: off the async workers.
        let (store, cids) = (node.store().clone(), outputs.clone());
        let _ = tokio::task::spawn_blocking(move || {
            for (_, cid) in cids {
                if let Err(e) = store.pin(&cid, PinClass::Submitted) {
                    tracing::warn!(%cid, "cannot pin a submitted task's output: {e}");
                }
            }
        })
        .await;
    }
    Ran {
        peer: placed.peer.to_string(),
        report: placed.report,
        verified_by: placed.verified_by.iter().map(ToString::to_string).collect(),
    }
}

/// Runs a task, sending a progress line for each progress record it reports.
async fn submit(
    node: &Node,
    r: Submit,
    w: &mut OwnedWriteHalf,
) -> std::io::Result<Result<Ran, Failure>> {
    if r.within.is_some() && r.verify >= 2 {
        return Ok(Err(Exit::Usage.fail(
            "--verify-within checks one run against the deterministic backend; it does not \
             combine with --verify",
        )));
    }
    let (spec, on) = match resolve(node, r.task, r.on.as_deref(), r.verify).await {
        Ok(resolved) => resolved,
        Err(failure) => return Ok(Err(failure)),
    };
    let (tx, mut rx) = tokio::sync::mpsc::channel(64);
    let progress: crate::sched::Reporter = Arc::new(move |peer, record| {
        let _ = tx.try_send(Update::Task {
            peer: peer.to_string(),
            record,
        });
    });
    let run = async {
        match (r.verify, r.within) {
            (_, Some(tolerance)) => {
                node.submit_checked(spec, on, tolerance, Some(progress))
                    .await
            }
            (0 | 1, None) => node.submit_reporting(spec, on, progress).await,
            (copies, None) => node.submit_verified(spec, copies, Some(progress)).await,
        }
    };
    tokio::pin!(run);
    let placed = loop {
        tokio::select! {
            placed = &mut run => break placed,
            Some(update) = rx.recv() => send::<()>(w, &Frame::Progress(update)).await?,
        }
    };
    // Records that arrived with the last moments of the run still go out, in order.
    while let Ok(update) = rx.try_recv() {
        send::<()>(w, &Frame::Progress(update)).await?;
    }
    Ok(Ok(ran(node, placed).await))
}

/// Runs a map, sending a progress line each time an item starts or ends.
async fn map(
    node: &Node,
    r: Map,
    w: &mut OwnedWriteHalf,
) -> std::io::Result<Result<Vec<MapItem>, Failure>> {
    let items = r.items.clone();
    // Each item is a task input: a file to store, or a CID. Building them as inputs of one
    // request stores every file through the same path as any other input.
    let mut task = r.task;
    task.inputs
        .extend(items.iter().map(|item| (r.name.clone(), item.clone())));
    let (mut spec, on) = match resolve(node, task, r.on.as_deref(), r.verify).await {
        Ok(resolved) => resolved,
        Err(failure) => return Ok(Err(failure)),
    };
    let cids = spec.inputs.split_off(spec.inputs.len() - items.len());
    let cids = cids.into_iter().map(|(_, cid)| cid).collect();
    let (tx, mut rx) = tokio::sync::mpsc::channel(64);
    let run = node.map(spec, &r.name, cids, on, r.verify, |p| {
        let _ = tx.try_send(p);
    });
    tokio::pin!(run);
    let results = loop {
        tokio::select! {
            results = &mut run => break results,
            Some(p) = rx.recv() => send::<()>(w, &Frame::Progress(Update::Map(p))).await?,
        }
    };
    let mut ran_items = Vec::with_capacity(items.len());
    for (item, placed) in items.into_iter().zip(results) {
        let ran = ran(node, placed).await;
        ran_items.push(MapItem { item, ran });
    }
    Ok(Ok(ran_items))
}

/// Connected peers, then faulty ones that are not connected.
async fn peers(node: &Node) -> Vec<PeerInfo> {
    let connected = node.net().connected_peers().await.unwrap_or_default();
    let faulty: std::collections::HashMap<PeerId, String> =
        node.faulty_peers().into_iter().collect();
    let mut peers = Vec::with_capacity(connected.len());
    for &peer in &connected {
        peers.push(PeerInfo {
            peer: peer.to_string(),
            capacity: node.net().capacity(peer).await.ok(),
            faulty: faulty.get(&peer).cloned(),
            connected: true,
        });
    }
    for (peer, reason) in node.faulty_peers() {
        if !connected.contains(&peer) {
            peers.push(PeerInfo {
                peer: peer.to_string(),
                capacity: None,
                faulty: Some(reason),
                connected: false,
            });
        }
    }
    peers
}

async fn status(node: &Node) -> NodeStatus {
    let cap = node.capacity();
    let listen = node.net().listen_addrs().await.unwrap_or_default();
    let connected = node.net().connected_peers().await.map_or(0, |p| p.len());
    NodeStatus {
        peer_id: node.peer_id().to_string(),
        listen: listen.iter().map(ToString::to_string).collect(),
        connected_peers: connected,
        slots: cap.total_slots,
        free_slots: cap.free_slots,
        queue_len: cap.queue_len,
        data_dir: node.config().data_dir.clone(),
        store: node.store().usage(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reply_line_is_tagged_and_typed() {
        let done = serde_json::to_string(&Frame::Done(3u64)).unwrap();
        assert_eq!(done, r#"{"done":3}"#);
        let back: Frame<u64> = serde_json::from_str(&done).unwrap();
        assert!(matches!(back, Frame::Done(3)));
        let error = serde_json::to_string(&Frame::<()>::Error(Exit::Usage.fail("no"))).unwrap();
        let back: Frame<u64> = serde_json::from_str(&error).unwrap();
        assert!(matches!(
            back,
            Frame::Error(Failure {
                exit: Exit::Usage,
                ..
            })
        ));
        let request = serde_json::to_string(&Request::from(super::super::Status)).unwrap();
        assert_eq!(request, r#"{"op":"status"}"#);
    }
}
