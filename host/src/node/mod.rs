//! The node: ties the block store, the sandbox runtime, the network and the control socket
//! together, and answers other peers' requests.

mod fetch;
mod identity;

use std::{
    path::{Path, PathBuf},
    sync::{Arc, OnceLock},
};

use shoal_p2p::{
    BlockId, Capacity, InboundHandler, Multiaddr, Network, NetworkClient, PeerId, TaskOutcome,
};
use tokio_util::sync::CancellationToken;

pub use self::fetch::FetchError;
use crate::{
    compute::DeviceChoice,
    runtime::{Runtime, RuntimeConfig},
    sched::{self, Scheduler},
    store::{BlockStore, Cid, StoreError},
};

/// How to start a node (`host join`'s flags).
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// Data dir: blocks, identity, control socket.
    pub data_dir: PathBuf,
    /// Listen addresses (TCP and/or QUIC).
    pub listen: Vec<Multiaddr>,
    /// Peers to join through.
    pub bootstrap: Vec<Multiaddr>,
    /// Discover peers on the LAN.
    pub mdns: bool,
    /// Tasks this node runs at once for the mesh; 0 makes it a client that runs none.
    pub slots: usize,
    /// Compute device for tensor calls.
    pub device: DeviceChoice,
}

/// Errors starting a node.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NodeError {
    /// The data dir or its store.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The identity key.
    #[error("identity key {path}: {reason}")]
    Identity {
        /// The key file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// The sandbox runtime.
    #[error(transparent)]
    Runtime(#[from] crate::runtime::RuntimeError),
    /// The network (boxed: it is by far the largest variant).
    #[error(transparent)]
    Network(Box<shoal_p2p::Error>),
    /// The control socket.
    #[error("control socket {path}: {source}")]
    Control {
        /// The socket path.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
}

impl From<shoal_p2p::Error> for NodeError {
    fn from(e: shoal_p2p::Error) -> Self {
        Self::Network(Box::new(e))
    }
}

/// A running node; cheap to clone.
#[derive(Clone)]
pub struct Node {
    pub(crate) inner: Arc<NodeInner>,
}

pub(crate) struct NodeInner {
    pub(crate) runtime: Runtime,
    pub(crate) store: Arc<BlockStore>,
    pub(crate) net: OnceLock<NetworkClient>,
    pub(crate) scheduler: Scheduler,
    pub(crate) config: NodeConfig,
    pub(crate) shutdown: CancellationToken,
}

impl Node {
    /// Opens the data dir, loads or creates the identity, starts the runtime and the network.
    ///
    /// # Errors
    /// [`NodeError`] when any part cannot start (a locked data dir, a bad listen address, ...).
    pub async fn start(config: NodeConfig) -> Result<Self, NodeError> {
        create_private_dir(&config.data_dir)?;
        let store = Arc::new(BlockStore::open(&config.data_dir)?);
        let keypair = identity::load_or_create(&config.data_dir.join("identity.key"))?;
        let runtime = Runtime::new(
            store.clone(),
            RuntimeConfig {
                slots: config.slots.max(1),
                device: config.device,
                allow_software_gpu: config.device == DeviceChoice::Gpu,
                ..RuntimeConfig::default()
            },
        )?;
        let shutdown = CancellationToken::new();
        let inner = Arc::new(NodeInner {
            runtime,
            store,
            net: OnceLock::new(),
            scheduler: Scheduler::default(),
            config: config.clone(),
            shutdown: shutdown.clone(),
        });
        let mut net_config =
            shoal_p2p::Config::new(keypair, inner.clone() as Arc<dyn InboundHandler>);
        net_config.listen = config.listen.clone();
        net_config.bootstrap = config.bootstrap.clone();
        net_config.mdns = config.mdns;
        net_config.shutdown = shutdown.child_token();
        let (client, _actor) = Network::spawn(net_config)?;
        let _ = inner.net.set(client);
        let node = Self { inner };
        crate::control::serve(node.clone()).await?;
        Ok(node)
    }

    /// The network client.
    pub fn net(&self) -> &NetworkClient {
        self.inner.net()
    }

    /// This node's peer id.
    pub fn peer_id(&self) -> PeerId {
        self.net().local_peer_id()
    }

    /// The local block store.
    pub fn store(&self) -> &Arc<BlockStore> {
        &self.inner.store
    }

    /// The local sandbox.
    pub fn runtime(&self) -> &Runtime {
        &self.inner.runtime
    }

    /// The node's configuration.
    pub fn config(&self) -> &NodeConfig {
        &self.inner.config
    }

    /// Cancelled when the node shuts down.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.inner.shutdown.clone()
    }

    /// Stores a file from disk and announces it to the mesh.
    ///
    /// # Errors
    /// Store errors (unreadable file, full disk).
    pub async fn put_path(&self, path: PathBuf) -> Result<Cid, StoreError> {
        let store = self.inner.store.clone();
        let cid = tokio::task::spawn_blocking(move || {
            let file = std::fs::File::open(&path).map_err(|source| StoreError::Io {
                what: format!("reading {}", path.display()),
                source,
            })?;
            store.put_file(std::io::BufReader::with_capacity(1 << 20, file))
        })
        .await
        .map_err(|e| StoreError::Io {
            what: "storing a file".into(),
            source: std::io::Error::other(e),
        })??;
        self.inner.announce(cid).await;
        Ok(cid)
    }

    /// Makes sure a whole file is in the local store, fetching what is missing from the mesh.
    ///
    /// # Errors
    /// [`FetchError`] when a block cannot be found or every copy is corrupt.
    pub async fn fetch_file(&self, cid: Cid, hints: &[PeerId]) -> Result<(), FetchError> {
        self.inner.fetch_file(cid, hints).await
    }

    /// Places and runs one task on the mesh (or on `on`), returning its outcome and where it ran.
    pub async fn submit(
        &self,
        spec: crate::runtime::TaskSpec,
        on: Option<PeerId>,
    ) -> sched::Placed {
        self.inner.scheduler.submit(&self.inner, spec, on).await
    }

    /// Runs `base` once per item, with input `name` set to each, spread over the mesh (or on
    /// `on`); results in item order, and `progress` sees every change.
    pub async fn map(
        &self,
        base: crate::runtime::TaskSpec,
        name: &str,
        items: Vec<Cid>,
        on: Option<PeerId>,
        progress: impl Fn(sched::MapProgress),
    ) -> Vec<sched::Placed> {
        self.inner
            .scheduler
            .map(&self.inner, base, name, items, on, progress)
            .await
    }

    /// Announces the task's module and inputs that this node holds, so the peer that runs
    /// it can find them.
    pub async fn announce_spec(&self, spec: &crate::runtime::TaskSpec) {
        for cid in std::iter::once(spec.module).chain(spec.inputs.iter().map(|(_, c)| *c)) {
            if self.inner.store.has_block(&cid) {
                self.inner.announce(cid).await;
            }
        }
    }

    /// This node's capacity as it advertises it.
    pub fn capacity(&self) -> Capacity {
        self.inner.capacity()
    }

    /// Stops the network and the control socket.
    pub async fn shutdown(&self) {
        self.inner.shutdown.cancel();
        self.net().shutdown().await;
    }
}

impl NodeInner {
    pub(crate) fn net(&self) -> &NetworkClient {
        // Set in `Node::start` before the node is handed out; the handler cannot be called
        // before the network exists.
        self.net.get().expect("network is set at start")
    }

    /// Publishes a provider record so other peers can find the file.
    pub(crate) async fn announce(&self, cid: Cid) {
        if let Err(e) = self.net().start_providing(BlockId(cid.0)).await {
            tracing::warn!(%cid, error = %e, "cannot announce block");
        }
    }

    /// This node's capacity as it advertises it.
    pub(crate) fn capacity(&self) -> Capacity {
        let rt = &self.runtime;
        let total = if self.config.slots == 0 {
            0
        } else {
            rt.slots()
        };
        Capacity {
            free_slots: if total == 0 {
                0
            } else {
                rt.free_slots() as u32
            },
            total_slots: total as u32,
            has_gpu: self.config.device == DeviceChoice::Gpu,
            queue_len: rt.queue_len() as u32,
        }
    }
}

impl InboundHandler for NodeInner {
    fn block(&self, _from: PeerId, cid: BlockId) -> shoal_p2p::BoxFuture<'_, Option<Vec<u8>>> {
        Box::pin(async move {
            let store = self.store.clone();
            tokio::task::spawn_blocking(move || store.get_block(&Cid(cid.0)).ok())
                .await
                .ok()
                .flatten()
        })
    }

    fn task(
        &self,
        from: PeerId,
        spec: shoal_p2p::TaskSpec,
    ) -> shoal_p2p::BoxFuture<'_, TaskOutcome> {
        Box::pin(sched::run_for_peer(self, from, spec))
    }

    fn capacity(&self) -> shoal_p2p::BoxFuture<'_, Capacity> {
        Box::pin(async move { NodeInner::capacity(self) })
    }
}

/// Creates the data dir readable by its owner only: it holds the identity key and the
/// control socket.
fn create_private_dir(dir: &Path) -> Result<(), NodeError> {
    use std::os::unix::fs::PermissionsExt;
    let io = |source| NodeError::Control {
        path: dir.to_path_buf(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(io)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(io)
}
