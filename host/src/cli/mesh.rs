//! Verbs that need a running node: `join` runs one; `submit`, `peers` and `status` talk to
//! it over the control socket.

use std::{io::IsTerminal, path::Path, time::Duration};

use anyhow::Context;
use shoal_host::{
    control::{Client, ControlError, Reply, Request, TaskRequest},
    node::{Node, NodeConfig},
    runtime::{Limits, TaskReport},
    sched::MapProgress,
};

use super::{
    CliError, Exit, JoinArgs, PeersArgs, StatusArgs, SubmitArgs, local::print_report, usage,
};

/// Sends a request to the node on `data_dir`, showing map progress on stderr.
pub(super) fn call(data_dir: &Path, request: &Request) -> anyhow::Result<serde_json::Value> {
    let client = Client::connect(data_dir).map_err(|e| CliError {
        exit: Exit::Node,
        message: e.to_string(),
    })?;
    let bar = progress_bar();
    let finished = std::cell::Cell::new(0);
    let reply = client
        .call(request, |p| show_progress(&bar, p, &finished))
        .map_err(|e: ControlError| CliError {
            exit: Exit::Node,
            message: e.to_string(),
        })?;
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    match reply {
        Reply::Done { result } => Ok(result),
        Reply::Error { message, exit } => Err(CliError {
            exit: match exit {
                2 => Exit::Usage,
                3 => Exit::BadModule,
                1 => Exit::TaskFailed,
                _ => Exit::Node,
            },
            message,
        }
        .into()),
        Reply::Progress(_) => Err(anyhow::anyhow!("the node ended on a progress line")),
    }
}

fn progress_bar() -> Option<indicatif::ProgressBar> {
    std::io::stderr().is_terminal().then(|| {
        let bar = indicatif::ProgressBar::new(0);
        bar.set_style(
            indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} done, {msg} [{elapsed}]")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        bar
    })
}

/// Updates the bar on a terminal; otherwise prints a line each time an item finishes.
fn show_progress(
    bar: &Option<indicatif::ProgressBar>,
    p: MapProgress,
    finished: &std::cell::Cell<usize>,
) {
    match bar {
        Some(bar) => {
            bar.set_length(p.total as u64);
            bar.set_position((p.done + p.failed) as u64);
            bar.set_message(format!("{} running, {} failed", p.running, p.failed));
        }
        None if p.done + p.failed != finished.get() => {
            finished.set(p.done + p.failed);
            eprintln!(
                "progress: {} done, {} running, {} failed of {}",
                p.done, p.running, p.failed, p.total
            );
        }
        None => {}
    }
}

/// Absolute paths for files (the node has its own working directory); CIDs pass through.
fn absolute(value: &str) -> String {
    let path = Path::new(value);
    match path.exists().then(|| std::path::absolute(path)) {
        Some(Ok(abs)) => abs.display().to_string(),
        _ => value.to_owned(),
    }
}

/// `host submit`.
pub(super) fn submit(args: SubmitArgs) -> anyhow::Result<Exit> {
    let t = &args.task;
    let module = std::path::absolute(&t.module)
        .with_context(|| format!("bad path {}", t.module.display()))?;
    if !module.is_file() {
        return Err(usage(format!("cannot read {}", t.module.display())));
    }
    let task = TaskRequest {
        module,
        task: t.task.clone(),
        inputs: t
            .inputs
            .iter()
            .map(|(n, v)| (n.clone(), absolute(v)))
            .collect(),
        args: t.args.clone(),
        limits: Limits {
            memory_bytes: t.memory,
            timeout: t.timeout,
            cpu_budget: t.timeout,
            ..Limits::default()
        },
        on: args.on.clone(),
    };
    let data_dir = args.data_dir.resolve();
    let Some(map) = &args.map else {
        let result = call(&data_dir, &Request::Submit(task))?;
        let report: TaskReport = serde_json::from_value(result["report"].clone())?;
        let exit = print_report(&report, args.json)?;
        if !args.json {
            println!("ran on {}", result["peer"].as_str().unwrap_or("?"));
        }
        return Ok(exit);
    };
    let (name, list) = map;
    let items: Vec<String> = match list.strip_prefix('@') {
        Some(file) => std::fs::read_to_string(file)
            .map_err(|e| usage(format!("--map {name}=@{file}: {e}")))?
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(absolute)
            .collect(),
        None => list
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(absolute)
            .collect(),
    };
    if items.is_empty() {
        return Err(usage(format!("--map {name}= names no items")));
    }
    let result = call(
        &data_dir,
        &Request::Map {
            task,
            name: name.clone(),
            items,
        },
    )?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&result)?);
    }
    let mut failed = 0;
    for (i, item) in result["items"].as_array().into_iter().flatten().enumerate() {
        let report: TaskReport = serde_json::from_value(item["report"].clone())?;
        let peer = item["peer"].as_str().unwrap_or("?");
        let what = item["item"].as_str().unwrap_or("?");
        match &report.result {
            Ok(outputs) if !args.json => {
                let outs: Vec<String> = outputs.iter().map(|(n, c)| format!("{n} {c}")).collect();
                println!("item {i} ({what}) ran on {peer}: {}", outs.join(", "));
            }
            Ok(_) => {}
            Err(f) => {
                failed += 1;
                if !args.json {
                    println!(
                        "item {i} ({what}) failed on {peer}: {}: {}",
                        f.kind, f.message
                    );
                }
            }
        }
    }
    Ok(if failed == 0 {
        Exit::Ok
    } else {
        Exit::TaskFailed
    })
}

/// `host peers`.
pub(super) fn peers(args: PeersArgs) -> anyhow::Result<Exit> {
    let result = call(&args.data_dir.resolve(), &Request::Peers)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&result)?);
        return Ok(Exit::Ok);
    }
    let peers = result["peers"].as_array().cloned().unwrap_or_default();
    if peers.is_empty() {
        println!("no peers connected");
    }
    for p in peers {
        let c = &p["capacity"];
        println!(
            "{}  slots {}/{} free, queue {}, gpu {}",
            p["peer"].as_str().unwrap_or("?"),
            c["free_slots"],
            c["total_slots"],
            c["queue_len"],
            c["has_gpu"]
        );
    }
    Ok(Exit::Ok)
}

/// `host status`.
pub(super) fn status(args: StatusArgs) -> anyhow::Result<Exit> {
    let result = call(&args.data_dir.resolve(), &Request::Status)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&result)?);
        return Ok(Exit::Ok);
    }
    println!("peer id: {}", result["peer_id"].as_str().unwrap_or("?"));
    for addr in result["listen"].as_array().into_iter().flatten() {
        println!("listening on {}", addr.as_str().unwrap_or("?"));
    }
    println!(
        "slots: {} free of {}, {} queued; {} peer(s) connected",
        result["free_slots"], result["slots"], result["queue_len"], result["connected_peers"]
    );
    Ok(Exit::Ok)
}

/// `host join`: runs a node until Ctrl-C or SIGTERM.
pub(super) fn join(args: JoinArgs) -> anyhow::Result<Exit> {
    let tokio = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    tokio.block_on(async move {
        let listen = if args.listen.is_empty() {
            vec![
                "/ip4/0.0.0.0/tcp/0".parse()?,
                "/ip4/0.0.0.0/udp/0/quic-v1".parse()?,
            ]
        } else {
            args.listen.clone()
        };
        let config = NodeConfig {
            data_dir: args.data_dir.resolve(),
            listen,
            bootstrap: args.bootstrap.clone(),
            mdns: !args.no_mdns,
            slots: args
                .slots
                .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())),
            device: args.device.choice(),
        };
        let node = Node::start(config).await.map_err(|e| CliError {
            exit: Exit::Node,
            message: e.to_string(),
        })?;
        println!("peer id: {}", node.peer_id());
        let addrs = node.net().listen_addrs().await.unwrap_or_default();
        for addr in &addrs {
            println!("listening on {addr}");
        }
        if let Some(addr) = addrs.first() {
            println!("join this node from another machine with: host join --bootstrap {addr}");
        }
        for addr in args.bootstrap.clone() {
            let net = node.net().clone();
            tokio::spawn(async move {
                match net.dial(addr.clone()).await {
                    Ok(peer) => println!("connected to bootstrap peer {peer}"),
                    Err(e) => eprintln!(
                        "warning: cannot reach bootstrap {addr}: {e}; the node keeps running"
                    ),
                }
            });
        }
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        println!("shutting down");
        tokio::time::timeout(Duration::from_secs(5), node.shutdown())
            .await
            .ok();
        Ok(Exit::Ok)
    })
}
