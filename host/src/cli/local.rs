//! Verbs that work on the local data dir without a node: `run`, and `put`/`get` when no node
//! holds the data dir.

use std::{
    fs::File,
    io::{self, BufWriter, Write},
    path::Path,
    sync::Arc,
};

use anyhow::Context;
use shoal_host::{
    runtime::{
        FailureKind, Limits, MAX_TASK_MEMORY, Runtime, RuntimeConfig, TaskReport, TaskSpec,
        limits::fmt_bytes,
    },
    store::{BlockStore, Cid, StoreError},
};

use super::{CliError, Exit, GetArgs, PutArgs, RunArgs, TaskArgs, usage};

fn open_store(dir: &Path) -> anyhow::Result<BlockStore> {
    BlockStore::open(dir).map_err(|e| {
        CliError {
            exit: Exit::Node,
            message: e.to_string(),
        }
        .into()
    })
}

fn store_err(e: StoreError) -> anyhow::Error {
    CliError {
        exit: Exit::Node,
        message: e.to_string(),
    }
    .into()
}

/// Stores a file named on the command line; a missing file is bad usage.
pub(super) fn put_path(store: &BlockStore, path: &Path) -> anyhow::Result<Cid> {
    let file =
        File::open(path).map_err(|e| usage(format!("cannot read {}: {e}", path.display())))?;
    store
        .put_file(io::BufReader::with_capacity(1 << 20, file))
        .map_err(store_err)
}

/// Resolves `NAME=FILE|CID`: an existing file wins, else the value must be a CID.
pub(super) fn resolve_input(store: &BlockStore, name: &str, value: &str) -> anyhow::Result<Cid> {
    let path = Path::new(value);
    if path.exists() {
        return put_path(store, path);
    }
    value.parse::<Cid>().map_err(|_| {
        usage(format!(
            "input `{name}`: `{value}` is neither a file nor a CID"
        ))
    })
}

/// Builds a task spec from the command line, storing the module and file inputs.
pub(super) fn task_spec(store: &BlockStore, args: &TaskArgs) -> anyhow::Result<TaskSpec> {
    if args.memory > MAX_TASK_MEMORY {
        return Err(usage(format!(
            "--memory {} is over the {} limit",
            fmt_bytes(args.memory),
            fmt_bytes(MAX_TASK_MEMORY)
        )));
    }
    let module = put_path(store, &args.module)?;
    let inputs = args
        .inputs
        .iter()
        .map(|(name, value)| Ok((name.clone(), resolve_input(store, name, value)?)))
        .collect::<anyhow::Result<_>>()?;
    Ok(TaskSpec {
        module,
        task: args.task.clone(),
        inputs,
        args: args.args.clone(),
        limits: Limits {
            memory_bytes: args.memory,
            timeout: args.timeout,
            cpu_budget: args.timeout,
            ..Limits::default()
        },
    })
}

/// Prints a task report for people (or as JSON) and returns the exit code it implies.
pub(super) fn print_report(report: &TaskReport, json: bool) -> anyhow::Result<Exit> {
    let exit = match &report.result {
        Ok(_) => Exit::Ok,
        Err(f) if f.kind == FailureKind::BadModule => Exit::BadModule,
        Err(_) => Exit::TaskFailed,
    };
    let mut out = io::stdout().lock();
    if json {
        serde_json::to_writer_pretty(&mut out, report)?;
        writeln!(out)?;
        return Ok(exit);
    }
    if let Ok(outputs) = &report.result {
        for (name, cid) in outputs {
            writeln!(out, "output {name} {cid}")?;
        }
    }
    if !report.logs.text.is_empty() || report.logs.dropped_bytes > 0 {
        writeln!(out, "--- logs ---")?;
        writeln!(out, "{}", report.logs.to_string().trim_end())?;
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
        Err(f) => writeln!(out, "status: failed ({}): {}", f.kind, f.message)?,
    }
    Ok(exit)
}

/// `host run`.
pub(super) fn run(args: RunArgs) -> anyhow::Result<Exit> {
    let store = Arc::new(open_store(&args.data_dir.resolve())?);
    let spec = task_spec(&store, &args.task)?;
    // Asking for a GPU by name accepts a software Vulkan adapter too; `auto` never does.
    let config = RuntimeConfig {
        slots: 1,
        device: args.device.choice(),
        allow_software_gpu: args.device == super::Device::Gpu,
        ..RuntimeConfig::default()
    };
    let runtime = Runtime::new(store, config).map_err(|e| CliError {
        exit: Exit::Node,
        message: e.to_string(),
    })?;
    let report = runtime.run_blocking(&spec);
    print_report(&report, args.json)
}

/// Whether a node serves this data dir (then it owns the store, and we go through it).
fn node_running(data_dir: &Path) -> bool {
    std::os::unix::net::UnixStream::connect(shoal_host::control::socket_path(data_dir)).is_ok()
}

/// `host put`: through the local node if one runs (it also announces the file), else directly.
pub(super) fn put(args: PutArgs) -> anyhow::Result<Exit> {
    let data_dir = args.data_dir.resolve();
    let cid = if node_running(&data_dir) {
        let path = std::path::absolute(&args.file)?;
        if !path.is_file() {
            return Err(usage(format!("cannot read {}", args.file.display())));
        }
        let result = super::mesh::call(&data_dir, &shoal_host::control::Request::Put { path })?;
        result["cid"]
            .as_str()
            .unwrap_or_default()
            .parse::<Cid>()
            .map_err(|e| anyhow::anyhow!("{e}"))?
    } else {
        put_path(&open_store(&data_dir)?, &args.file)?
    };
    if args.json {
        println!("{}", serde_json::json!({ "cid": cid.to_hex() }));
    } else {
        println!("{cid}");
    }
    Ok(Exit::Ok)
}

/// `host get`.
pub(super) fn get(args: GetArgs) -> anyhow::Result<Exit> {
    let cid: Cid = args.cid.parse().map_err(|e| usage(format!("{e}")))?;
    let data_dir = args.data_dir.resolve();
    if node_running(&data_dir) {
        if args.output.as_os_str() == "-" {
            return Err(usage(
                "while a node runs on this data dir, `host get` needs -o FILE",
            ));
        }
        let path = std::path::absolute(&args.output)?;
        let result = super::mesh::call(
            &data_dir,
            &shoal_host::control::Request::Get {
                cid: cid.to_hex(),
                path,
            },
        )?;
        eprintln!(
            "wrote {} bytes to {}",
            result["bytes"],
            args.output.display()
        );
        return Ok(Exit::Ok);
    }
    let store = open_store(&data_dir)?;
    // Check it is a readable file before creating the output, so a bad CID leaves no file.
    store.manifest(&cid).map_err(store_err)?;
    if args.output.as_os_str() == "-" {
        store
            .write_file(&cid, io::stdout().lock())
            .map_err(store_err)?;
        return Ok(Exit::Ok);
    }
    let tmp = args.output.with_extension("shoal-partial");
    let file = File::create(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
    let written = store.write_file(&cid, BufWriter::new(file));
    match written {
        Ok(len) => {
            std::fs::rename(&tmp, &args.output)
                .with_context(|| format!("cannot write {}", args.output.display()))?;
            eprintln!("wrote {len} bytes to {}", args.output.display());
            Ok(Exit::Ok)
        }
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(store_err(e))
        }
    }
}
