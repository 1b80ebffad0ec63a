//! `--key FILE`: acting as a tenant other than the node. The key stays with the command: it
//! signs a delegation to the local node (24 hours, any of the tenant's tasks), which the node
//! extends to each peer it sends the tenant's work to.

use std::path::Path;

use shoal::abi::MAX_SUBTASKS;
use shoal_host::{
    control::{self, Exit},
    node::identity,
    sched::now_ms,
    store::Cid,
};
use shoal_p2p::{Credential, PeerId};

use super::usage;

/// How long a `--key` delegation lets the node act for the tenant.
const DELEGATION_HOURS: u64 = 24;

/// `host keygen FILE`.
pub(super) fn keygen(file: &Path) -> anyhow::Result<Exit> {
    let key = identity::load_or_create(file).map_err(usage)?;
    println!("tenant: {}", key.public().to_peer_id());
    Ok(Exit::Ok)
}

/// The tenant of `key`'s delegation to the node serving `data_dir`, if a key is given.
pub(super) fn credential(
    key: Option<&Path>,
    data_dir: &Path,
) -> anyhow::Result<Option<Credential>> {
    let Some(path) = key else {
        return Ok(None);
    };
    if !path.is_file() {
        return Err(usage(format!(
            "--key {}: no such key (make one with `host keygen`)",
            path.display()
        )));
    }
    let key = identity::load_or_create(path).map_err(|e| usage(format!("--key: {e}")))?;
    let status = control::call(data_dir, control::Status, |_| {})?;
    let node: PeerId = status
        .peer_id
        .parse()
        .map_err(|e| anyhow::anyhow!("the node's peer id {}: {e}", status.peer_id))?;
    let expires = now_ms().saturating_add(DELEGATION_HOURS * 3600 * 1000);
    let max = u32::try_from(MAX_SUBTASKS).unwrap_or(u32::MAX);
    // The tenant's link to its own node names no task: it covers all it submits through it.
    let credential = Credential::of(&key)
        .delegate(&key, node, expires, Cid([0; 32]), max)
        .map_err(|e| anyhow::anyhow!("--key: {e}"))?;
    Ok(Some(credential))
}
