//! The `host` command line: one verb per job.

mod local;
mod parse;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

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
    /// Write a stored file out by CID.
    #[command(after_help = EXIT_CODES)]
    Get(GetArgs),
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
            dirs::data_dir().unwrap_or_else(|| PathBuf::from(".")).join("shoal")
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
    #[arg(long, value_name = "SIZE", default_value = "256MiB", value_parser = parse::size)]
    pub memory: u64,
    /// Wall-time limit, e.g. 30s or 500ms; also the CPU budget.
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = parse::duration)]
    pub timeout: std::time::Duration,
}

/// `host run`.
#[derive(Args, Debug)]
pub struct RunArgs {
    #[command(flatten)]
    pub task: TaskArgs,
    #[command(flatten)]
    pub data_dir: DataDirArg,
    /// Print the report as JSON.
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
}

/// `host get`.
#[derive(Args, Debug)]
pub struct GetArgs {
    /// The file's CID.
    pub cid: String,
    /// Where to write it; `-` for stdout.
    #[arg(short, long, value_name = "FILE")]
    pub output: PathBuf,
    #[command(flatten)]
    pub data_dir: DataDirArg,
}

/// How a command ended, as a process exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// 0.
    Ok = 0,
    /// 1.
    TaskFailed = 1,
    /// 2.
    Usage = 2,
    /// 3.
    BadModule = 3,
    /// 4.
    Node = 4,
}

/// A failure the CLI reports with a specific exit code.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct CliError {
    /// The exit code.
    pub exit: Exit,
    /// What to tell the user.
    pub message: String,
}

/// Bad usage: exit 2.
pub fn usage(message: impl Into<String>) -> anyhow::Error {
    CliError { exit: Exit::Usage, message: message.into() }.into()
}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<Exit> {
    match cli.command {
        Command::Run(args) => local::run(args),
        Command::Put(args) => local::put(args),
        Command::Get(args) => local::get(args),
    }
}
