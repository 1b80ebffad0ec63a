//! Verbs that work on the local data dir without a node: `run`, and `put`/`get` when no node
//! holds the data dir.

use std::{
    io::{self, Write},
    path::Path,
    sync::Arc,
};

use shoal_host::{
    control::{self, Get, Put},
    runtime::{Runtime, RuntimeConfig, TaskReport, limits::fmt_bytes},
    store::{BlockStore, Cid, GcMode, PinClass},
};

use super::{Exit, Failure, GetArgs, PutArgs, QueryArgs, RunArgs, escape, usage};

fn open_store(dir: &Path) -> Result<BlockStore, Failure> {
    Ok(BlockStore::open(dir)?)
}

/// Prints a task report for people (or as JSON) and returns the exit code it implies.
pub(super) fn print_report(report: &TaskReport, json: bool) -> anyhow::Result<Exit> {
    let exit = Exit::of(report);
    let mut out = io::stdout().lock();
    if json {
        serde_json::to_writer_pretty(&mut out, report)?;
        writeln!(out)?;
        return Ok(exit);
    }
    if let Ok(outputs) = &report.result {
        for (name, cid) in outputs {
            writeln!(out, "output {} {cid}", escape::line(name))?;
        }
    }
    if !report.logs.text.is_empty() || report.logs.dropped_bytes > 0 {
        // Indented and escaped: nothing the task prints can pass for the status line below.
        writeln!(out, "--- logs ---")?;
        writeln!(
            out,
            "{}",
            escape::block(report.logs.to_string().trim_end(), "  | ")
        )?;
        writeln!(out, "---")?;
    }
    let s = &report.stats;
    writeln!(
        out,
        "wall {:.1} ms, cpu {:.1} ms, peak memory {}, module {}",
        s.wall.as_secs_f64() * 1e3,
        s.cpu.as_secs_f64() * 1e3,
        fmt_bytes(s.peak_memory),
        if s.cached_module {
            "cached"
        } else {
            "compiled"
        },
    )?;
    match &report.result {
        Ok(_) => writeln!(out, "status: ok")?,
        Err(f) => writeln!(
            out,
            "status: failed ({}): {}",
            f.kind,
            escape::line(&f.message)
        )?,
    }
    Ok(exit)
}

/// `host run`.
pub(super) fn run(args: RunArgs) -> anyhow::Result<Exit> {
    let store = Arc::new(open_store(&args.data_dir.resolve())?);
    let spec = args.task.request().build(&store)?;
    // Asking for a GPU by name accepts a software Vulkan adapter too; `auto` never does.
    let config = RuntimeConfig {
        slots: 1,
        device: args.device.choice(),
        allow_software_gpu: args.device == super::Device::Gpu,
        ..RuntimeConfig::default()
    };
    let runtime = Runtime::new(store.clone(), config).map_err(|e| Exit::Node.fail(e))?;
    let report = runtime.run_blocking(&spec);
    // The user asked for these: kept until unpinned, like what they put.
    for (_, cid) in report.result.iter().flatten() {
        store.pin(cid, PinClass::Submitted).map_err(Failure::from)?;
    }
    print_report(&report, args.json)
}

/// Whether a node serves this data dir (then it owns the store, and we go through it).
fn node_running(data_dir: &Path) -> bool {
    std::os::unix::net::UnixStream::connect(shoal_host::control::socket_path(data_dir)).is_ok()
}

/// `host put`: through the local node if one runs (it announces a public file), else directly.
pub(super) fn put(args: PutArgs) -> anyhow::Result<Exit> {
    let data_dir = args.data_dir.resolve();
    let cid = if node_running(&data_dir) {
        let path = std::path::absolute(&args.file)?;
        if !path.is_file() {
            return Err(usage(format!("cannot read {}", args.file.display())));
        }
        super::mesh::call(
            &data_dir,
            Put {
                path,
                public: args.public,
            },
        )?
    } else {
        let store = open_store(&data_dir)?;
        let cid = control::store_file(&store, &args.file)?;
        if args.public {
            store
                .grant(&cid, shoal_host::store::PUBLIC)
                .map_err(Failure::from)?;
        }
        cid
    };
    if args.json {
        println!("{}", serde_json::json!({ "cid": cid }));
    } else {
        println!("{cid}");
    }
    Ok(Exit::Ok)
}

/// `host gc`: through the node when one runs here, else on the store directly.
pub(super) fn gc(args: QueryArgs) -> anyhow::Result<Exit> {
    let data_dir = args.data_dir.resolve();
    let report = if node_running(&data_dir) {
        super::mesh::call(&data_dir, control::Gc)?
    } else {
        open_store(&data_dir)?
            .gc(GcMode::All)
            .map_err(Failure::from)?
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "freed {} blocks ({}); kept {} blocks ({})",
            report.freed_blocks,
            fmt_bytes(report.freed_bytes),
            report.kept_blocks,
            fmt_bytes(report.kept_bytes)
        );
    }
    Ok(Exit::Ok)
}

/// `host get`.
pub(super) fn get(args: GetArgs) -> anyhow::Result<Exit> {
    let cid: Cid = args.cid.parse().map_err(|e| usage(format!("{e}")))?;
    let data_dir = args.data_dir.resolve();
    let to_stdout = args.output.as_os_str() == "-";
    let bytes = if node_running(&data_dir) {
        if to_stdout {
            return Err(usage(
                "while a node runs on this data dir, `host get` needs -o FILE",
            ));
        }
        let path = std::path::absolute(&args.output)?;
        let credential = super::key::credential(args.key.as_deref(), &data_dir)?;
        let get = Get {
            cid,
            path,
            force: args.force,
            credential,
        };
        super::mesh::call(&data_dir, get)?
    } else if to_stdout {
        let store = open_store(&data_dir)?;
        store.manifest(&cid).map_err(Failure::from)?;
        store
            .write_file(&cid, io::stdout().lock())
            .map_err(Failure::from)?;
        return Ok(Exit::Ok);
    } else {
        control::write_out(&open_store(&data_dir)?, &cid, &args.output, args.force)?
    };
    eprintln!("wrote {bytes} bytes to {}", args.output.display());
    Ok(Exit::Ok)
}
