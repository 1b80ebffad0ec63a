//! Verbs that need a running node: `join` runs one; `submit`, `peers` and `status` talk to
//! it over the control socket.

use std::{io::IsTerminal, path::Path, time::Duration};

use shoal_host::{
    control::{self, Call, Map, MapItem, Peers, Status, Submit, TaskRequest, Update},
    node::{Node, NodeConfig},
    runtime::limits::fmt_bytes,
    sched::MapProgress,
};

use super::{Exit, JoinArgs, QueryArgs, SubmitArgs, escape, local::print_report, usage};

/// Sends a request to the node on `data_dir`, showing map progress and a task's progress
/// records on stderr.
pub(super) fn call<C: Call>(data_dir: &Path, request: C) -> anyhow::Result<C::Reply> {
    call_with(data_dir, request, |_, record| {
        eprintln!(
            "progress: {}",
            escape::line(&String::from_utf8_lossy(&record))
        );
    })
}

/// [`call`], handing a submitted task's progress records, with the peer running it, to
/// `on_record`.
pub(super) fn call_with<C: Call>(
    data_dir: &Path,
    request: C,
    mut on_record: impl FnMut(String, Vec<u8>),
) -> anyhow::Result<C::Reply> {
    let bar = progress_bar();
    let finished = std::cell::Cell::new(0);
    let reply = control::call(data_dir, request, |update| match update {
        Update::Map(p) => show_progress(&bar, p, &finished),
        Update::Task { peer, record } => on_record(peer, record),
    })?;
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    Ok(reply)
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

/// `host submit`.
pub(super) fn submit(args: SubmitArgs) -> anyhow::Result<Exit> {
    let mut task: TaskRequest = args.task.request().absolute();
    if !task.module.is_file() {
        return Err(usage(format!("cannot read {}", args.task.module.display())));
    }
    let data_dir = args.data_dir.resolve();
    task.credential = super::key::credential(args.key.as_deref(), &data_dir)?;
    let on = args.on.clone();
    let verify = args.verify.unwrap_or(0);
    let Some((name, list)) = &args.map else {
        let within = args.verify_within;
        let ran = call(
            &data_dir,
            Submit {
                task,
                on,
                verify,
                within,
            },
        )?;
        let exit = print_report(&ran.report, args.json)?;
        if !args.json {
            println!("ran on {}", ran.peer);
            if !ran.verified_by.is_empty() {
                println!(
                    "verified: {} peers agreed ({})",
                    ran.verified_by.len(),
                    ran.verified_by.join(", ")
                );
            }
        }
        return Ok(exit);
    };
    // One item per line of the file, or per comma of the list.
    let text = match list.strip_prefix('@') {
        Some(file) => std::fs::read_to_string(file)
            .map_err(|e| usage(format!("--map {name}=@{file}: {e}")))?,
        None => list.replace(',', "\n"),
    };
    let items: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(control::absolute)
        .collect();
    if items.is_empty() {
        return Err(usage(format!("--map {name}= names no items")));
    }
    let mapped = call(
        &data_dir,
        Map {
            task,
            on,
            name: name.clone(),
            items,
            verify,
        },
    )?;
    if args.json {
        let json = serde_json::json!({ "items": mapped });
        println!("{}", serde_json::to_string_pretty(&json)?);
    } else {
        for (i, MapItem { item, ran }) in mapped.iter().enumerate() {
            match &ran.report.result {
                Ok(outputs) => {
                    let outs: Vec<_> = outputs
                        .iter()
                        .map(|(n, c)| format!("{} {c}", escape::line(n)))
                        .collect();
                    println!("item {i} ({item}) ran on {}: {}", ran.peer, outs.join(", "));
                }
                Err(f) => println!(
                    "item {i} ({item}) failed on {}: {}: {}",
                    ran.peer,
                    f.kind,
                    escape::line(&f.message)
                ),
            }
        }
    }
    Ok(if mapped.iter().all(|m| m.ran.report.result.is_ok()) {
        Exit::Ok
    } else {
        Exit::TaskFailed
    })
}

/// `host peers`.
pub(super) fn peers(args: QueryArgs) -> anyhow::Result<Exit> {
    let peers = call(&args.data_dir.resolve(), Peers)?;
    if args.json {
        let json = serde_json::json!({ "peers": peers });
        println!("{}", serde_json::to_string_pretty(&json)?);
        return Ok(Exit::Ok);
    }
    if peers.is_empty() {
        println!("no peers connected");
    }
    for p in peers {
        let line = match (p.connected, p.capacity) {
            (true, Some(c)) => format!(
                "{}  slots {}/{} free, queue {}, gpu {}",
                p.peer, c.free_slots, c.total_slots, c.queue_len, c.has_gpu
            ),
            (true, None) => format!("{}  (did not answer)", p.peer),
            (false, _) => format!("{}  (not connected)", p.peer),
        };
        match &p.faulty {
            // The reason quotes what the peer claimed: escaped like anything a peer wrote.
            Some(why) => println!("{line}  FAULTY: {}", escape::line(why)),
            None => println!("{line}"),
        }
    }
    Ok(Exit::Ok)
}

/// `host status`.
pub(super) fn status(args: QueryArgs) -> anyhow::Result<Exit> {
    let s = call(&args.data_dir.resolve(), Status)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&s)?);
        return Ok(Exit::Ok);
    }
    println!("peer id: {}", s.peer_id);
    for addr in &s.listen {
        println!("listening on {addr}");
    }
    println!(
        "slots: {} free of {}, {} queued; {} peer(s) connected",
        s.free_slots, s.slots, s.queue_len, s.connected_peers
    );
    println!(
        "store: {} used of {} ({} pinned), {} blocks",
        fmt_bytes(s.store.used),
        fmt_bytes(s.store.limit),
        fmt_bytes(s.store.pinned),
        s.store.blocks
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
            store_limit: args.store_limit,
            memory_budget: args.memory_budget,
            policy: args.policy(),
        };
        let node_err = |e| Exit::Node.fail(e);
        let node = Node::start(config).await.map_err(node_err)?;
        control::serve(node.clone()).await.map_err(node_err)?;
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
