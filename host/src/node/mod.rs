//! The node: ties the block store, the sandbox runtime, the network and the scheduler
//! together, and answers other peers' requests (see `executor`). The control socket is a
//! layer above: `host join` starts it once the node runs.

mod check;
mod executor;
mod fetch;
pub mod identity;
mod mesh;
mod policy;

use std::{
    path::{Path, PathBuf},
    sync::Arc,
};

use shoal_p2p::{Capacity, Credential, InboundHandler, Multiaddr, Network, NetworkClient, PeerId};
use tokio_util::sync::CancellationToken;

pub use self::{
    check::MAX_TOLERANCE,
    fetch::FetchError,
    policy::{
        Accept, OPEN_MAX_MEMORY, OPEN_MAX_STORED, OPEN_MAX_TASKS, OPEN_MAX_TIME, Policy,
        REPLAY_WINDOW,
    },
};
use crate::{
    compute::DeviceChoice,
    runtime::{Runtime, RuntimeConfig, default_memory_budget},
    sched::{self, Locations, ProgressRoutes, Scheduler},
    store::{BlockStore, Cid, PUBLIC, PinClass, StoreConfig, StoreError},
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
    /// The store's size limit (`--store-limit`); `None` derives one from the disk.
    pub store_limit: Option<u64>,
    /// Host memory running tasks may cost together (`--memory-budget`); `None` derives one
    /// from the machine.
    pub memory_budget: Option<u64>,
    /// Whose tasks it runs, and within what (`--accept`, `--allow`, `--open-max-*`).
    pub policy: Policy,
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
    inner: Arc<NodeInner>,
    scheduler: Arc<Scheduler>,
    shutdown: CancellationToken,
}

/// The node's own parts, shared with the network as the handler of other peers' requests.
pub(crate) struct NodeInner {
    net: NetworkClient,
    store: Arc<BlockStore>,
    runtime: Runtime,
    config: NodeConfig,
    /// Progress records of tasks this node submitted, on their way back.
    progress: Arc<ProgressRoutes>,
    /// Other tenants' tasks running here, for the policy's per-tenant cap.
    tenants: policy::Tenants,
    /// Signed specs seen within the replay window, and subtasks run under each delegation.
    seen: policy::Seen,
    /// This node acting for itself, as it asks for blocks of its own.
    own: Credential,
    /// Where the outputs of this node's remote tasks are (the scheduler records them).
    locations: Arc<Locations>,
    /// The bulk streams this node's fetches hold to each provider.
    bulk_slots: fetch::BulkSlots,
}

impl Node {
    /// Opens the data dir, loads or creates the identity, starts the runtime and the network.
    ///
    /// # Errors
    /// [`NodeError`] when any part cannot start (a locked data dir, a bad listen address, ...).
    pub async fn start(config: NodeConfig) -> Result<Self, NodeError> {
        Self::start_with(config, |handler| handler).await
    }

    /// [`Node::start`], with the node's answers to other peers passed through `wrap`: it gets
    /// the node's own [`InboundHandler`] and returns the one the network serves. The node's own
    /// side (its scheduler, its subtasks, its control socket) is unchanged.
    ///
    /// This is the seam for tests and embedders: a test wraps a real node to make it lie about
    /// its outputs or answer Busy to every task while advertising free slots; an embedder
    /// might add its own admission policy in front of the executor.
    ///
    /// # Errors
    /// As [`Node::start`].
    pub async fn start_with(
        config: NodeConfig,
        wrap: impl FnOnce(Arc<dyn InboundHandler>) -> Arc<dyn InboundHandler>,
    ) -> Result<Self, NodeError> {
        create_private_dir(&config.data_dir)?;
        let store = Arc::new(BlockStore::open_with(
            &config.data_dir,
            StoreConfig {
                limit_bytes: config.store_limit,
                ..StoreConfig::default()
            },
        )?);
        let keypair = identity::load_or_create(&config.data_dir.join("identity.key"))?;
        let runtime = Runtime::new(
            store.clone(),
            RuntimeConfig {
                slots: config.slots.max(1),
                device: config.device,
                allow_software_gpu: config.device == DeviceChoice::Gpu,
                memory_budget: config.memory_budget.unwrap_or_else(default_memory_budget),
                ..RuntimeConfig::default()
            },
        )?;
        let shutdown = CancellationToken::new();
        let mut net_config = shoal_p2p::Config::new(keypair.clone());
        net_config.listen = config.listen.clone();
        net_config.bootstrap = config.bootstrap.clone();
        net_config.mdns = config.mdns;
        net_config.shutdown = shutdown.child_token();
        let progress = Arc::new(ProgressRoutes::default());
        let locations = Arc::new(Locations::default());
        let own = Credential::of(&keypair);
        let mut inner = None;
        let (net, _actor) = Network::spawn(net_config, |net| {
            let made = Arc::new(NodeInner {
                net,
                store: store.clone(),
                runtime: runtime.clone(),
                config: config.clone(),
                progress: progress.clone(),
                tenants: policy::Tenants::default(),
                seen: policy::Seen::default(),
                own: own.clone(),
                locations: locations.clone(),
                bulk_slots: fetch::BulkSlots::default(),
            });
            inner = Some(made.clone());
            wrap(made)
        })?;
        let inner = inner.ok_or_else(|| {
            NodeError::Network(Box::new(shoal_p2p::Error::Build(
                "the network made no handler".into(),
            )))
        })?;
        let scheduler = Arc::new(Scheduler::new(
            net,
            keypair,
            runtime.clone(),
            store,
            config.slots,
            progress,
            locations,
        ));
        // Public files are announced again in the background: a store with many of them
        // must not hold up the node's start.
        let announcing = inner.clone();
        tokio::spawn(async move {
            for cid in announcing.store.public_files() {
                announcing.announce(cid).await;
            }
        });
        runtime.attach_mesh(Arc::new(mesh::NodeMesh {
            inner: Arc::downgrade(&inner),
            scheduler: Arc::downgrade(&scheduler),
            tokio: tokio::runtime::Handle::current(),
        }));
        Ok(Self {
            inner,
            scheduler,
            shutdown,
        })
    }

    /// The network client.
    pub fn net(&self) -> &NetworkClient {
        &self.inner.net
    }

    /// This node's peer id.
    pub fn peer_id(&self) -> PeerId {
        self.net().local_peer_id()
    }

    /// This node acting for itself: what it presents when it asks for blocks of its own.
    pub fn credential(&self) -> &Credential {
        &self.inner.own
    }

    /// The local block store.
    pub fn store(&self) -> &Arc<BlockStore> {
        &self.inner.store
    }

    /// The node's configuration.
    pub fn config(&self) -> &NodeConfig {
        &self.inner.config
    }

    /// Cancelled when the node shuts down.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Stores a file from disk. A `public` file may be read by any peer and is announced to
    /// the mesh; any other is this node's, and its tasks' where it is one of their inputs.
    ///
    /// # Errors
    /// Store errors (unreadable file, full disk).
    pub async fn put_path(&self, path: PathBuf, public: bool) -> Result<Cid, StoreError> {
        let store = self.inner.store.clone();
        let cid = blocking("storing a file", move || {
            let file = std::fs::File::open(&path).map_err(|source| StoreError::Io {
                what: format!("reading {}", path.display()),
                source,
            })?;
            store.put_file_pinned(
                std::io::BufReader::with_capacity(1 << 20, file),
                PinClass::User,
            )
        })
        .await?;
        if public {
            let store = self.inner.store.clone();
            blocking("granting a file", move || store.grant(&cid, PUBLIC)).await?;
            self.inner.announce(cid).await;
        }
        Ok(cid)
    }

    /// Makes sure a whole file is in the local store, fetching what is missing from the mesh
    /// as this node's own tenant: from `hints`, from where this node's tasks left it, or
    /// from the peers that announce it (public files).
    ///
    /// # Errors
    /// [`FetchError`] when no peer asked would serve it or every copy is corrupt.
    pub async fn fetch_file(&self, cid: Cid, hints: &[PeerId]) -> Result<(), FetchError> {
        self.inner.fetch_file(cid, hints, &self.inner.own).await
    }

    /// [`Node::fetch_file`] for the tenant `credential` acts for (its chain ends at this
    /// node); the file is then the tenant's to read here too.
    ///
    /// # Errors
    /// As [`Node::fetch_file`].
    pub async fn fetch_file_as(
        &self,
        cid: Cid,
        hints: &[PeerId],
        credential: &Credential,
    ) -> Result<(), FetchError> {
        self.inner.fetch_file(cid, hints, credential).await
    }

    /// Places and runs one task on the mesh (or on `on`), returning its outcome and where it ran.
    pub async fn submit(
        &self,
        spec: crate::runtime::TaskSpec,
        on: Option<PeerId>,
    ) -> sched::Placed {
        self.scheduler.submit(spec, on).await
    }

    /// [`Node::submit`], handing the task's progress records, with the peer running it, to
    /// `progress` as it runs.
    pub async fn submit_reporting(
        &self,
        spec: crate::runtime::TaskSpec,
        on: Option<PeerId>,
        progress: sched::Reporter,
    ) -> sched::Placed {
        self.scheduler
            .submit_reporting(spec, on, Some(progress))
            .await
    }

    /// Runs `spec` deterministic on `copies` distinct peers and returns their agreed answer,
    /// marking the peers that disagreed with the majority faulty; see
    /// [`Scheduler::submit_verified`]. `progress` gets the first run's records.
    pub async fn submit_verified(
        &self,
        spec: crate::runtime::TaskSpec,
        copies: u32,
        progress: Option<sched::Reporter>,
    ) -> sched::Placed {
        self.scheduler.submit_verified(spec, copies, progress).await
    }

    /// Runs `base` once per item, with input `name` set to each, spread over the mesh (or on
    /// `on`), each verified on `verify` peers when that is 2 or more; results in item order,
    /// and `progress` sees every change.
    pub async fn map(
        &self,
        base: crate::runtime::TaskSpec,
        name: &str,
        items: Vec<Cid>,
        on: Option<PeerId>,
        verify: u32,
        progress: impl Fn(sched::MapProgress),
    ) -> Vec<sched::Placed> {
        self.scheduler
            .map(base, name, items, on, verify, progress)
            .await
    }

    /// Peers this node's verified runs caught disagreeing with the majority, with the reason:
    /// it never places work on them again.
    pub fn faulty_peers(&self) -> Vec<(PeerId, String)> {
        self.scheduler.faulty_peers()
    }

    /// How much longer `peer` is left out of placement for answering Busy, if it is.
    pub fn backed_off(&self, peer: &PeerId) -> Option<std::time::Duration> {
        self.scheduler.backed_off(peer)
    }

    /// This node's capacity as it advertises it.
    pub fn capacity(&self) -> Capacity {
        self.inner.capacity()
    }

    /// Stops the network (and so whatever serves on top of the node, like the control socket).
    pub async fn shutdown(&self) {
        self.shutdown.cancel();
        self.net().shutdown().await;
    }
}

impl NodeInner {
    /// Publishes a provider record so other peers can find the file: public files only.
    pub(crate) async fn announce(&self, cid: Cid) {
        if let Err(e) = self.net.start_providing(cid).await {
            tracing::warn!(%cid, error = %e, "cannot announce block");
        }
    }

    /// This node's capacity as it advertises it.
    pub(crate) fn capacity(&self) -> Capacity {
        let has_gpu = self.config.device == DeviceChoice::Gpu;
        sched::capacity(&self.runtime, self.config.slots, has_gpu)
    }
}

/// Runs store work on a blocking thread. The work starts at once; the future reports how it
/// went.
fn blocking<T: Send + 'static>(
    what: &'static str,
    work: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> impl Future<Output = Result<T, StoreError>> {
    let job = tokio::task::spawn_blocking(work);
    async move {
        job.await.map_err(|e| StoreError::Io {
            what: what.into(),
            source: std::io::Error::other(e),
        })?
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
