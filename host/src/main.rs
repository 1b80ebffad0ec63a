//! The `host` binary: parses the command line and maps outcomes to exit codes.

mod cli;

use std::process::ExitCode;

use clap::Parser;
use cli::{Cli, Exit, Failure};

fn main() -> ExitCode {
    let cli = Cli::parse();
    if !matches!(cli.command, cli::Command::Join(_)) {
        // A one-shot verb piped into `head` ends quietly when the reader goes, as Unix tools
        // do, instead of panicking on a failed print. A node keeps Rust's default (SIGPIPE
        // ignored), so a peer that hangs up is an error on that socket, not the node's end.
        // SAFETY: restoring a signal's default disposition before any thread exists.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    // A node logs what it runs and for whom; one-shot verbs only warn.
    let default_filter = match cli.command {
        cli::Command::Join(_) => "warn,shoal_host=info,shoal_p2p=info",
        _ => "warn",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SHOAL_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter)),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let exit = match cli::run(cli) {
        Ok(exit) => exit,
        Err(e) => {
            let exit = e.downcast_ref::<Failure>().map_or(Exit::Node, |c| c.exit);
            eprintln!("error: {e:#}");
            exit
        }
    };
    ExitCode::from(exit as u8)
}
