//! The node side of the control socket.

use std::{os::unix::fs::PermissionsExt, path::PathBuf, str::FromStr, sync::Arc};

use serde_json::json;
use shoal_p2p::PeerId;
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::{UnixListener, UnixStream},
    sync::Semaphore,
};

use super::{MAX_REQUEST_LEN, Reply, Request, TaskRequest, socket_path};
use crate::{
    node::{Node, NodeError},
    runtime::{FailureKind, TaskSpec},
    sched::Placed,
    store::Cid,
};

/// Control connections served at once.
const MAX_CONNECTIONS: usize = 64;

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
    Ok(tokio::spawn(async move {
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                accepted = listener.accept() => {
                    let Ok((stream, _)) = accepted else { continue };
                    let Ok(permit) = limit.clone().acquire_owned().await else { break };
                    let node = node.clone();
                    tokio::spawn(async move {
                        let _permit = permit;
                        if let Err(e) = handle(node, stream).await {
                            tracing::debug!(error = %e, "control connection ended");
                        }
                    });
                }
            }
        }
        let _ = std::fs::remove_file(&path);
    }))
}

async fn send(w: &mut tokio::net::unix::OwnedWriteHalf, reply: &Reply) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(reply).map_err(std::io::Error::other)?;
    line.push(b'\n');
    w.write_all(&line).await
}

fn error(message: impl Into<String>, exit: u8) -> Reply {
    Reply::Error {
        message: message.into(),
        exit,
    }
}

async fn handle(node: Node, stream: UnixStream) -> std::io::Result<()> {
    let (r, mut w) = stream.into_split();
    let mut line = Vec::new();
    let n = BufReader::new(r.take(MAX_REQUEST_LEN as u64 + 1))
        .read_until(b'\n', &mut line)
        .await?;
    if n > MAX_REQUEST_LEN {
        return send(
            &mut w,
            &error(format!("request over the {MAX_REQUEST_LEN}-byte limit"), 2),
        )
        .await;
    }
    let request: Request = match serde_json::from_slice(&line) {
        Ok(r) => r,
        Err(e) => return send(&mut w, &error(format!("malformed request: {e}"), 2)).await,
    };
    let reply = match request {
        Request::Put { path } => match node.put_path(path).await {
            Ok(cid) => Reply::Done {
                result: json!({ "cid": cid.to_hex() }),
            },
            Err(e) => error(e.to_string(), 4),
        },
        Request::Get { cid, path } => get(&node, &cid, path).await,
        Request::Submit(task) => match resolve(&node, &task).await {
            Ok((spec, on)) => {
                let placed = node.submit(spec, on).await;
                Reply::Done {
                    result: placed_json(&placed),
                }
            }
            Err(reply) => reply,
        },
        Request::Map { task, name, items } => {
            let (spec, on) = match resolve(&node, &task).await {
                Ok(r) => r,
                Err(reply) => return send(&mut w, &reply).await,
            };
            let mut cids = Vec::with_capacity(items.len());
            for item in &items {
                match input_cid(&node, item).await {
                    Ok(cid) => cids.push(cid),
                    Err(reply) => return send(&mut w, &reply).await,
                }
            }
            let (tx, mut rx) = tokio::sync::mpsc::channel(64);
            let run = {
                let node = node.clone();
                async move {
                    node.inner
                        .scheduler
                        .map(&node.inner, spec, &name, cids, on, |p| {
                            let _ = tx.try_send(p);
                        })
                        .await
                }
            };
            tokio::pin!(run);
            let results = loop {
                tokio::select! {
                    results = &mut run => break results,
                    Some(p) = rx.recv() => send(&mut w, &Reply::Progress(p)).await?,
                }
            };
            let items: Vec<_> = items
                .iter()
                .zip(&results)
                .map(|(item, placed)| {
                    let mut v = placed_json(placed);
                    v["item"] = json!(item);
                    v
                })
                .collect();
            Reply::Done {
                result: json!({ "items": items }),
            }
        }
        Request::Peers => {
            let peers = node.net().connected_peers().await.unwrap_or_default();
            let mut out = Vec::new();
            for peer in peers {
                let cap = node.net().capacity(peer).await.ok();
                out.push(json!({ "peer": peer.to_string(), "capacity": cap.map(|c| json!({
                    "free_slots": c.free_slots, "total_slots": c.total_slots, "has_gpu": c.has_gpu, "queue_len": c.queue_len,
                })) }));
            }
            Reply::Done {
                result: json!({ "peers": out }),
            }
        }
        Request::Status => {
            let cap = node.inner.capacity();
            let addrs = node.net().listen_addrs().await.unwrap_or_default();
            let peers = node
                .net()
                .connected_peers()
                .await
                .map(|p| p.len())
                .unwrap_or(0);
            Reply::Done {
                result: json!({
                    "peer_id": node.peer_id().to_string(),
                    "listen": addrs.iter().map(ToString::to_string).collect::<Vec<_>>(),
                    "connected_peers": peers,
                    "slots": cap.total_slots, "free_slots": cap.free_slots, "queue_len": cap.queue_len,
                    "data_dir": node.config().data_dir,
                }),
            }
        }
    };
    send(&mut w, &reply).await
}

async fn get(node: &Node, cid: &str, path: PathBuf) -> Reply {
    let cid = match Cid::from_str(cid) {
        Ok(c) => c,
        Err(e) => return error(e.to_string(), 2),
    };
    if let Err(e) = node.fetch_file(cid, &[]).await {
        return error(format!("{e}"), 4);
    }
    let store = node.store().clone();
    let written = tokio::task::spawn_blocking(move || -> Result<u64, String> {
        let tmp = path.with_extension("shoal-partial");
        let file = std::fs::File::create(&tmp)
            .map_err(|e| format!("cannot create {}: {e}", tmp.display()))?;
        let len = store
            .write_file(&cid, std::io::BufWriter::new(file))
            .map_err(|e| {
                let _ = std::fs::remove_file(&tmp);
                e.to_string()
            })?;
        std::fs::rename(&tmp, &path)
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        Ok(len)
    })
    .await;
    match written {
        Ok(Ok(len)) => Reply::Done {
            result: json!({ "bytes": len }),
        },
        Ok(Err(e)) => error(e, 4),
        Err(e) => error(e.to_string(), 4),
    }
}

/// A file path is stored (and announced); anything else must be a CID.
async fn input_cid(node: &Node, value: &str) -> Result<Cid, Reply> {
    let path = PathBuf::from(value);
    if path.exists() {
        return node
            .put_path(path)
            .await
            .map_err(|e| error(e.to_string(), 4));
    }
    Cid::from_str(value).map_err(|_| error(format!("`{value}` is neither a file nor a CID"), 2))
}

async fn resolve(node: &Node, task: &TaskRequest) -> Result<(TaskSpec, Option<PeerId>), Reply> {
    let on = match &task.on {
        Some(p) => Some(
            PeerId::from_str(p).map_err(|e| error(format!("--on {p}: not a peer id ({e})"), 2))?,
        ),
        None => None,
    };
    if !task.module.is_file() {
        return Err(error(format!("cannot read {}", task.module.display()), 2));
    }
    let module = node
        .put_path(task.module.clone())
        .await
        .map_err(|e| error(e.to_string(), 4))?;
    let mut inputs = Vec::new();
    for (name, value) in &task.inputs {
        inputs.push((name.clone(), input_cid(node, value).await?));
    }
    Ok((
        TaskSpec {
            module,
            task: task.task.clone(),
            inputs,
            args: task.args.clone(),
            limits: task.limits.clone(),
        },
        on,
    ))
}

fn placed_json(placed: &Placed) -> serde_json::Value {
    let exit = match &placed.report.result {
        Ok(_) => 0,
        Err(f) if f.kind == FailureKind::BadModule => 3,
        Err(_) => 1,
    };
    json!({ "peer": placed.peer.to_string(), "report": placed.report, "exit": exit })
}
