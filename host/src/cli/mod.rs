//! The `host` command line: one verb per job.

mod escape;
mod key;
mod local;
mod mesh;
mod parse;
mod plot;
mod train;

use std::{path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand};
use shoal_host::control::TaskRequest;
pub use shoal_host::control::{Exit, Failure};

/// Exit codes, documented in `--help`.
pub const EXIT_CODES: &str = "\
Exit codes:
  0  success
  1  the task failed (trap, timeout, out of memory, its own error, lost)
  2  bad usage (unknown flag, unreadable file, malformed value)
  3  bad module (not wasm, unknown imports, no such task)
  4  node, store or network error (data dir locked, block not found, disk full)";

/// Shoal: run sandboxed wasm training tasks across a peer-to-peer mesh.
#[derive(Parser, Debug)]
#[command(name = "host", version, after_help = EXIT_CODES)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The verbs.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run one task locally in the sandbox; no node needed.
    #[command(after_help = EXIT_CODES)]
    Run(RunArgs),
    /// Store a file as blocks; prints its CID.
    #[command(after_help = EXIT_CODES)]
    Put(PutArgs),
    /// Write a file out by CID, fetching it from the mesh if a node runs here.
    #[command(after_help = EXIT_CODES)]
    Get(GetArgs),
    /// Run a node in the foreground until Ctrl-C.
    #[command(after_help = EXIT_CODES)]
    Join(JoinArgs),
    /// Send a task (or a map of tasks) to the mesh through the local node.
    #[command(after_help = EXIT_CODES)]
    Submit(SubmitArgs),
    /// List the peers the local node is connected to, with their capacity.
    #[command(after_help = EXIT_CODES)]
    Peers(QueryArgs),
    /// Show the local node's identity, addresses and slots.
    #[command(after_help = EXIT_CODES)]
    Status(QueryArgs),
    /// Train a model on the mesh: split the data, initialise, run the trainer's driver.
    #[command(after_help = EXIT_CODES)]
    Train(TrainArgs),
    /// Delete every stored block that no pin and no running task holds: chunks of interrupted
    /// puts, fetched copies, expired outputs of other peers' tasks.
    #[command(after_help = EXIT_CODES)]
    Gc(QueryArgs),
    /// Make a tenant key in FILE (or read the one there) and print its tenant id, for
    /// `--key` and for other nodes' `--allow`.
    #[command(after_help = EXIT_CODES)]
    Keygen(KeygenArgs),
}

/// `host keygen`.
#[derive(Args, Debug)]
pub struct KeygenArgs {
    /// The key file; made owner-only if it does not exist.
    pub file: PathBuf,
}

/// `--device`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Device {
    /// A hardware GPU if there is one, else native CPU kernels.
    #[default]
    Auto,
    /// A GPU (a software Vulkan adapter too, if that is all there is).
    Gpu,
    /// Native CPU kernels.
    Cpu,
}

impl Device {
    /// The compute module's choice.
    pub fn choice(self) -> shoal_host::compute::DeviceChoice {
        match self {
            Device::Auto => shoal_host::compute::DeviceChoice::Auto,
            Device::Gpu => shoal_host::compute::DeviceChoice::Gpu,
            Device::Cpu => shoal_host::compute::DeviceChoice::Cpu,
        }
    }
}

/// `host join`.
#[derive(Args, Debug)]
pub struct JoinArgs {
    /// Address to listen on, e.g. /ip4/0.0.0.0/tcp/4001 or /ip4/0.0.0.0/udp/4001/quic-v1.
    /// Repeatable [default: TCP and QUIC on all interfaces, random ports].
    #[arg(long, value_name = "MULTIADDR")]
    pub listen: Vec<shoal_p2p::Multiaddr>,
    /// A peer to join through: a multiaddr ending in /p2p/<peer id>, as `host join` prints.
    /// Repeatable.
    #[arg(long, value_name = "MULTIADDR")]
    pub bootstrap: Vec<shoal_p2p::Multiaddr>,
    /// Do not discover peers on the LAN with mDNS.
    #[arg(long)]
    pub no_mdns: bool,
    /// Tasks this node runs at once for the mesh; 0 makes it a client that runs none
    /// [default: number of cores].
    #[arg(long, value_parser = parse::slots)]
    pub slots: Option<usize>,
    /// Compute device for the tasks' tensor math.
    #[arg(long, value_enum, default_value_t = Device::Auto)]
    pub device: Device,
    /// The store's size limit, e.g. 20GiB (default: what it holds plus half the disk's free
    /// space, between 1 GiB and 64 GiB).
    #[arg(long, value_name = "SIZE", value_parser = parse::size)]
    pub store_limit: Option<u64>,
    /// Host memory running tasks may cost together, e.g. 8GiB (default: three quarters of
    /// the machine's memory).
    #[arg(long, value_name = "SIZE", value_parser = parse::size)]
    pub memory_budget: Option<u64>,
    /// Whose tasks this node runs: anyone's (`open`: allowed tenants with the node's full
    /// caps, others within the --open-max-* limits) or allowed tenants' only (`allowlist`).
    /// Tasks are signed by their tenant; this node's own identity is always allowed.
    #[arg(long, value_enum, default_value_t = AcceptArg::Open)]
    pub accept: AcceptArg,
    /// A tenant (its key as a peer id, e.g. a node's `peer id:`) to run tasks for with this
    /// node's full caps (4 GiB, 1 h). Repeatable.
    #[arg(long, value_name = "PEER_ID")]
    pub allow: Vec<shoal_p2p::PeerId>,
    /// The most memory an open tenant's task may ask here.
    #[arg(long, value_name = "SIZE", value_parser = parse::size, default_value = "256MiB")]
    pub open_max_memory: u64,
    /// The longest time an open tenant's task may ask here (`host train`'s driver asks 30m).
    #[arg(long, value_name = "DUR", value_parser = parse::duration, default_value = "1h")]
    pub open_max_time: Duration,
    /// An open tenant's tasks running here at once.
    #[arg(long, value_name = "N", default_value_t = shoal_host::node::OPEN_MAX_TASKS)]
    pub open_max_tasks: usize,
    /// The bytes of an open tenant's files (inputs fetched for it, its outputs) this node
    /// keeps; past it, the tenant's next task is refused.
    #[arg(long, value_name = "SIZE", value_parser = parse::size, default_value = "1GiB")]
    pub open_max_stored: u64,
    #[command(flatten)]
    pub data_dir: DataDirArg,
}

/// `join --accept`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AcceptArg {
    /// Anyone's tasks.
    #[default]
    Open,
    /// Allowed tenants' tasks only.
    Allowlist,
}

impl JoinArgs {
    /// The node's admission policy from the flags.
    pub fn policy(&self) -> shoal_host::node::Policy {
        shoal_host::node::Policy {
            accept: match self.accept {
                AcceptArg::Open => shoal_host::node::Accept::Open,
                AcceptArg::Allowlist => shoal_host::node::Accept::Allowlist,
            },
            allow: self.allow.iter().copied().collect(),
            open_max_memory: self.open_max_memory,
            open_max_time: self.open_max_time,
            open_max_tasks: self.open_max_tasks,
            open_max_stored: self.open_max_stored,
        }
    }
}

/// `host submit`.
#[derive(Args, Debug)]
pub struct SubmitArgs {
    #[command(flatten)]
    pub task: TaskArgs,
    /// Run only on this peer.
    #[arg(long, value_name = "PEER_ID")]
    pub on: Option<String>,
    /// Run one task per item, with input NAME set to each: NAME=CID1,CID2,... (CIDs or files)
    /// or NAME=@FILE (one per line).
    #[arg(long, value_name = "NAME=CIDS|@FILE", value_parser = parse::pair)]
    pub map: Option<(String, String)>,
    /// Run the task deterministic on N distinct peers (2 to 16) and take their agreed
    /// outputs; on a mismatch one more peer breaks the tie and the peers in the minority are
    /// marked faulty (see `host peers`). Implies --deterministic.
    #[arg(
        long,
        value_name = "N",
        conflicts_with = "on",
        value_parser = clap::value_parser!(u32).range(2..=i64::from(shoal_host::sched::MAX_VERIFY))
    )]
    pub verify: Option<u32>,
    /// Run the task as it is (on the GPU, where it lands on one; on --on, if given) and check
    /// its outputs against a deterministic CPU run on another peer: they agree when every f32
    /// is within TOL of the deterministic one (|a - b| <= TOL * (1 + |b|)). On a mismatch a
    /// second deterministic run decides, and the peer that was wrong is marked faulty.
    #[arg(long, value_name = "TOL", conflicts_with = "verify", value_parser = parse::tolerance)]
    pub verify_within: Option<f32>,
    /// Act as the tenant whose ed25519 key is in FILE (made by `host keygen`) instead of the
    /// node's own identity: the node gets a 24-hour delegation from it, and tasks, outputs
    /// and grants are that tenant's.
    #[arg(long, value_name = "FILE")]
    pub key: Option<PathBuf>,
    #[command(flatten)]
    pub data_dir: DataDirArg,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

/// `host peers` and `host status`.
#[derive(Args, Debug)]
pub struct QueryArgs {
    #[command(flatten)]
    pub data_dir: DataDirArg,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// Where the node keeps its blocks, identity and control socket.
#[derive(Args, Debug, Clone)]
pub struct DataDirArg {
    /// Data directory [default: the user's data dir + /shoal; env SHOAL_DATA_DIR].
    #[arg(long, env = "SHOAL_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
}

impl DataDirArg {
    /// The chosen data dir.
    pub fn resolve(&self) -> PathBuf {
        self.data_dir.clone().unwrap_or_else(|| {
            dirs::data_dir()
                .unwrap_or_else(|| PathBuf::from("."))
                .join("shoal")
        })
    }
}

/// What to run and under which limits: shared by `run` and `submit`.
#[derive(Args, Debug, Clone)]
pub struct TaskArgs {
    /// The task module (a .wasm file built with the guest SDK).
    pub module: PathBuf,
    /// The task to call, when the module has several.
    #[arg(long)]
    pub task: Option<String>,
    /// A named input: NAME=FILE (stored first) or NAME=CID (already stored). Repeatable.
    #[arg(long = "input", value_name = "NAME=FILE|CID", value_parser = parse::pair)]
    pub inputs: Vec<(String, String)>,
    /// An argument the task reads with `ctx.arg`: KEY=VALUE. Repeatable.
    #[arg(long = "arg", value_name = "KEY=VALUE", value_parser = parse::pair)]
    pub args: Vec<(String, String)>,
    /// Linear memory limit, e.g. 64MiB (at most 4GiB).
    #[arg(long, value_name = "SIZE", default_value = "256MiB", value_parser = parse::task_memory)]
    pub memory: u64,
    /// Wall-time limit, e.g. 30s or 500ms; also the CPU budget.
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = parse::task_time)]
    pub timeout: std::time::Duration,
    /// Run the tensor math on the deterministic cpu backend, whatever the node's --device:
    /// the same output bytes on every machine, at some cost in speed.
    #[arg(long)]
    pub deterministic: bool,
}

impl TaskArgs {
    /// The task as the node's library describes it.
    pub fn request(&self) -> TaskRequest {
        TaskRequest {
            module: self.module.clone(),
            task: self.task.clone(),
            inputs: self.inputs.clone(),
            args: self.args.clone(),
            memory: self.memory,
            timeout: self.timeout,
            deterministic: self.deterministic,
            credential: None,
        }
    }
}

/// `host run`.
#[derive(Args, Debug)]
pub struct RunArgs {
    #[command(flatten)]
    pub task: TaskArgs,
    #[command(flatten)]
    pub data_dir: DataDirArg,
    /// Compute device for the task's tensor math.
    #[arg(long, value_enum, default_value_t = Device::Auto)]
    pub device: Device,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

/// `host train`.
#[derive(Args, Debug)]
pub struct TrainArgs {
    /// The trainer module: tasks `split`, `init` and `train` (e.g. `mlp_digits.wasm`).
    pub module: PathBuf,
    /// The data, given to `split` as input `csv` (e.g. `tasks/data/digits.csv.gz`); a
    /// trainer that makes its own data (linreg) needs none.
    #[arg(long, value_name = "FILE")]
    pub data: Option<PathBuf>,
    /// An argument for the trainer's tasks (all three get it): KEY=VALUE. Repeatable.
    #[arg(long = "arg", value_name = "KEY=VALUE", value_parser = parse::pair)]
    pub args: Vec<(String, String)>,
    /// Training shards: one gradient task per shard per round.
    #[arg(long, default_value_t = 3)]
    pub shards: u32,
    /// Rounds to train to (with `--resume`, counting the checkpoint's).
    #[arg(long, default_value_t = 200)]
    pub rounds: u32,
    /// Learning rate.
    #[arg(long, default_value = "1.0")]
    pub lr: String,
    /// `sync` (one averaged gradient step per round) or `local` (local steps, then the
    /// parameters averaged).
    #[arg(long, default_value = "sync")]
    pub mode: String,
    /// Hidden units of the model.
    #[arg(long, default_value_t = 64)]
    pub hidden: u32,
    /// Measure held-out accuracy every N rounds (0: only at the end).
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub eval_every: u32,
    /// Where to draw the loss curve (PNG).
    #[arg(long, value_name = "FILE", default_value = "loss-curve.png")]
    pub plot: PathBuf,
    /// Seed of the split, the initial parameters and the local steps.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Continue from this checkpoint CID instead of fresh parameters.
    #[arg(long, value_name = "CID")]
    pub resume: Option<String>,
    /// Linear memory limit of each task.
    #[arg(long, value_name = "SIZE", default_value = "256MiB", value_parser = parse::task_memory)]
    pub memory: u64,
    /// Wall-time limit of the driver (and the CPU budget its tasks share).
    #[arg(long, value_name = "DURATION", default_value = "30m", value_parser = parse::task_time)]
    pub timeout: std::time::Duration,
    /// Act as the tenant whose ed25519 key is in FILE (made by `host keygen`) instead of the
    /// node's own identity: the node gets a 24-hour delegation from it, and tasks, outputs
    /// and grants are that tenant's.
    #[arg(long, value_name = "FILE")]
    pub key: Option<PathBuf>,
    #[command(flatten)]
    pub data_dir: DataDirArg,
    /// Print the rounds, CIDs and accuracy as JSON.
    #[arg(long)]
    pub json: bool,
}

/// `host put`.
#[derive(Args, Debug)]
pub struct PutArgs {
    /// The file to store.
    pub file: PathBuf,
    #[command(flatten)]
    pub data_dir: DataDirArg,
    /// Print {"cid": ...} as JSON.
    #[arg(long)]
    pub json: bool,
    /// Let any peer read the file, and announce it to the mesh (a running node announces it
    /// at once, else the node does when it starts). Without it, only this node and the
    /// tasks it gives the file to may read it.
    #[arg(long)]
    pub public: bool,
}

/// `host get`.
#[derive(Args, Debug)]
pub struct GetArgs {
    /// The file's CID.
    pub cid: String,
    /// Where to write it; `-` for stdout.
    #[arg(short, long, value_name = "FILE")]
    pub output: PathBuf,
    /// Write into a FIFO, a device or a symlink's target instead of refusing it.
    #[arg(long)]
    pub force: bool,
    /// Act as the tenant whose ed25519 key is in FILE (made by `host keygen`) instead of the
    /// node's own identity: the node gets a 24-hour delegation from it, and the file is
    /// fetched as that tenant's.
    #[arg(long, value_name = "FILE")]
    pub key: Option<PathBuf>,
    #[command(flatten)]
    pub data_dir: DataDirArg,
}

/// Bad usage: exit 2.
pub fn usage(message: impl std::fmt::Display) -> anyhow::Error {
    Exit::Usage.fail(message).into()
}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<Exit> {
    match cli.command {
        Command::Run(args) => local::run(args),
        Command::Put(args) => local::put(args),
        Command::Get(args) => local::get(args),
        Command::Join(args) => mesh::join(args),
        Command::Submit(args) => mesh::submit(args),
        Command::Peers(args) => mesh::peers(args),
        Command::Status(args) => mesh::status(args),
        Command::Gc(args) => local::gc(args),
        Command::Train(args) => train::train(args),
        Command::Keygen(args) => key::keygen(&args.file),
    }
}
