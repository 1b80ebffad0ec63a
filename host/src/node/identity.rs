//! Ed25519 keys on disk: the node's identity, made in the data dir on first start, and a
//! tenant's key for `--key` (`host keygen`).

use std::{io::Write, os::unix::fs::OpenOptionsExt, path::Path};

use shoal_p2p::Keypair;

use super::NodeError;

/// Loads the ed25519 key at `path`, or creates one there (owner-only, synced) if there is
/// none: a node's identity, or a tenant's `--key`.
///
/// # Errors
/// [`NodeError::Identity`] naming the file and what is wrong with it.
pub fn load_or_create(path: &Path) -> Result<Keypair, NodeError> {
    let err = |reason: String| NodeError::Identity {
        path: path.to_path_buf(),
        reason,
    };
    match std::fs::read(path) {
        Ok(bytes) => Keypair::from_protobuf_encoding(&bytes).map_err(|e| {
            err(format!(
                "not a valid key ({e}); move it away to make a new identity"
            ))
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let keypair = Keypair::generate_ed25519();
            let bytes = keypair
                .to_protobuf_encoding()
                .map_err(|e| err(e.to_string()))?;
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .map_err(|e| err(e.to_string()))?;
            file.write_all(&bytes)
                .and_then(|()| file.sync_all())
                .map_err(|e| err(e.to_string()))?;
            Ok(keypair)
        }
        Err(e) => Err(err(e.to_string())),
    }
}
