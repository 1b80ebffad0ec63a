//! `host train`: data-parallel training on the mesh through the local node. It runs a trainer
//! module's three tasks in turn: `split` (the data into a held-out set and shards), `init`
//! (first parameters; skipped with `--resume`), and the `train` driver, placed on any peer,
//! which spawns one gradient (or local-steps) task per shard each round over the mesh. This
//! node then fetches the last checkpoint (pinned here, as an output of a task it submitted),
//! so a run can be resumed with `--resume` even after the driver's node is gone, and prints
//! one line per round, the final parameters' CID, the checkpoint's CID and the held-out
//! accuracy, from the driver's `report`.

use shoal_host::control::{Get, Submit, TaskRequest};

use super::{Exit, TrainArgs, escape, mesh::call, usage};

/// One round as the driver reported it.
#[derive(serde::Serialize)]
struct Round {
    round: u32,
    loss: f64,
    seconds: f64,
}

/// What `--json` prints.
#[derive(serde::Serialize)]
struct Trained {
    rounds: Vec<Round>,
    params: String,
    checkpoint: String,
    test_accuracy: Option<f64>,
    test_loss: Option<f64>,
    /// The peer that ran the driver.
    driver: String,
}

/// A task's outputs by name (CIDs in hex) and the peer it ran on.
type Ran = (Vec<(String, String)>, String);

/// `key=value` from a report line.
fn field(line: &str, key: &str) -> Option<f64> {
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
        .and_then(|v| v.parse().ok())
}

pub(super) fn train(args: TrainArgs) -> anyhow::Result<Exit> {
    let data_dir = args.data_dir.resolve();
    if !args.module.is_file() {
        return Err(usage(format!("cannot read {}", args.module.display())));
    }
    if args.mode != "sync" && args.mode != "local" {
        return Err(usage(format!("--mode {}: not sync or local", args.mode)));
    }
    // Runs task `name`; its outputs and peer, or the exit its failure implies.
    let run = |name: &str, inputs: Vec<(String, String)>, targs: Vec<(&str, String)>| {
        let task = TaskRequest {
            module: args.module.clone(),
            task: Some(name.to_owned()),
            inputs,
            args: targs.into_iter().map(|(k, v)| (k.to_owned(), v)).collect(),
            memory: args.memory,
            timeout: args.timeout,
        }
        .absolute();
        let ran = call(&data_dir, Submit { task, on: None })?;
        let exit = Exit::of(&ran.report);
        anyhow::Ok(match ran.report.result {
            Ok(outputs) => Ok::<Ran, Exit>((
                outputs.into_iter().map(|(n, c)| (n, c.to_hex())).collect(),
                ran.peer,
            )),
            Err(f) => {
                eprintln!("`{name}` failed ({}): {}", f.kind, escape::line(&f.message));
                Err(exit)
            }
        })
    };
    let seed = args.seed.to_string();
    let data = ("csv".to_owned(), args.data.display().to_string());
    let split_args = vec![("shards", args.shards.to_string()), ("seed", seed.clone())];
    let (split, _) = match run("split", vec![data], split_args)? {
        Ok(ran) => ran,
        Err(exit) => return Ok(exit),
    };
    let start = match &args.resume {
        Some(cid) => ("resume".to_owned(), cid.clone()),
        None => {
            let init_args = vec![("hidden", args.hidden.to_string()), ("seed", seed.clone())];
            match run("init", vec![], init_args)? {
                Ok((outputs, _)) => ("params".to_owned(), outputs[0].1.clone()),
                Err(exit) => return Ok(exit),
            }
        }
    };
    let mut inputs = vec![start];
    inputs.extend(split);
    let train_args = vec![
        ("rounds", args.rounds.to_string()),
        ("lr", args.lr.clone()),
        ("mode", args.mode.clone()),
        ("seed", seed),
    ];
    if !args.json {
        println!(
            "training on the mesh: {} shard(s), rounds to {}, {} mode",
            args.shards, args.rounds, args.mode
        );
    }
    let (outputs, driver) = match run("train", inputs, train_args)? {
        Ok(ran) => ran,
        Err(exit) => return Ok(exit),
    };
    let cid = |name: &str| {
        outputs
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, c)| c.clone())
            .unwrap_or_default()
    };
    // Fetching makes this node hold the report and the checkpoint, not only the driver's.
    let fetch = |name: &str| -> anyhow::Result<Vec<u8>> {
        let path = std::env::temp_dir().join(format!("shoal-train-{}-{name}", std::process::id()));
        let cid = cid(name)
            .parse()
            .map_err(|e| usage(format!("output `{name}`: {e}")))?;
        call(
            &data_dir,
            Get {
                cid,
                path: path.clone(),
                force: false,
            },
        )?;
        let bytes = std::fs::read(&path)?;
        let _ = std::fs::remove_file(&path);
        Ok(bytes)
    };
    fetch("checkpoint")?;
    let report = String::from_utf8_lossy(&fetch("report")?).into_owned();
    let rounds: Vec<Round> = report
        .lines()
        .filter_map(|l| {
            Some(Round {
                round: field(l, "round")? as u32,
                loss: field(l, "loss")?,
                seconds: field(l, "seconds")?,
            })
        })
        .collect();
    let test = report.lines().find(|l| l.starts_with("test "));
    let trained = Trained {
        rounds,
        params: cid("params"),
        checkpoint: cid("checkpoint"),
        test_accuracy: test.and_then(|l| field(l, "accuracy")),
        test_loss: test.and_then(|l| field(l, "loss")),
        driver,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&trained)?);
        return Ok(Exit::Ok);
    }
    for r in &trained.rounds {
        println!(
            "round {:>4}  loss {:.4}  {:.3} s",
            r.round, r.loss, r.seconds
        );
    }
    let seconds: f64 = trained.rounds.iter().map(|r| r.seconds).sum();
    println!(
        "{} rounds, {:.3} s per round; the driver ran on {}",
        trained.rounds.len(),
        seconds / trained.rounds.len().max(1) as f64,
        trained.driver
    );
    println!("final parameters: {}", trained.params);
    println!(
        "last checkpoint: {} (continue with --resume)",
        trained.checkpoint
    );
    if let Some(accuracy) = trained.test_accuracy {
        println!("held-out accuracy: {accuracy:.4}");
    }
    Ok(Exit::Ok)
}
