//! `host train`: data-parallel training on the mesh through the local node. It runs a trainer
//! module's three tasks in turn: `split` (the data into a held-out set and shards), `init`
//! (first parameters; skipped with `--resume`), and the `train` driver, placed on any peer,
//! which spawns one gradient (or local-steps) task per shard each round over the mesh.
//!
//! The driver reports each round as a progress record (`key=value` pairs, see
//! `tasks/train-kit/src/report.rs`): this command prints it as it comes, and has this node
//! fetch and pin the round's checkpoint, so a run can be resumed with `--resume` even after
//! the driver's node is gone. At the end it prints the final parameters' CID, the last
//! checkpoint and the held-out accuracy, and draws the loss curve.

use std::{io::IsTerminal, path::Path};

use shoal_host::{
    control::{self, Get, Keep, Submit, TaskRequest},
    store::Cid,
};

use super::{Exit, TrainArgs, escape, mesh::call, mesh::call_with, plot, usage};

/// One round as the driver reported it. Only `round`, `loss` and `seconds` are required; a
/// trainer may leave the rest out.
#[derive(Clone, Debug, Default, serde::Serialize)]
struct Round {
    round: u32,
    loss: f64,
    accuracy: Option<f64>,
    samples: Option<u64>,
    peers: Option<u64>,
    seconds: f64,
    transfer: Option<f64>,
    compute: Option<f64>,
    checkpoint: Option<f64>,
    coordination: Option<f64>,
    bytes: Option<u64>,
    checkpoint_cid: Option<String>,
}

impl Round {
    /// Reads a `round=… loss=… seconds=…` line; `None` for any other line.
    fn parse(line: &str) -> Option<Self> {
        let field = |key: &str| {
            line.split_whitespace()
                .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
        };
        let num = |key: &str| field(key).and_then(|v| v.parse::<f64>().ok());
        let int = |key: &str| field(key).and_then(|v| v.parse::<u64>().ok());
        Some(Self {
            round: field("round")?.parse().ok()?,
            loss: num("loss")?,
            accuracy: num("accuracy"),
            samples: int("samples"),
            peers: int("peers"),
            seconds: num("seconds")?,
            transfer: num("transfer"),
            compute: num("compute"),
            checkpoint: num("checkpoint"),
            coordination: num("coordination"),
            bytes: int("bytes"),
            checkpoint_cid: field("checkpoint_cid")
                .filter(|c| c.parse::<Cid>().is_ok())
                .map(str::to_owned),
        })
    }

    /// The line shown for this round.
    fn show(&self) -> String {
        let mut line = format!("round {:>4}  loss {:.4}", self.round, self.loss);
        if let Some(accuracy) = self.accuracy {
            line.push_str(&format!("  accuracy {accuracy:.4}"));
        }
        if let Some(samples) = self.samples {
            let rate = samples as f64 / self.seconds.max(1e-9);
            line.push_str(&format!("  {rate:>9.0} samples/s"));
        }
        if let Some(peers) = self.peers {
            line.push_str(&format!("  {peers} peer(s)"));
        }
        line.push_str(&format!("  {:.3} s", self.seconds));
        if let Some(cid) = &self.checkpoint_cid {
            line.push_str(&format!("  checkpoint {cid}"));
        }
        line
    }
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
    /// The loss curve, if it was drawn.
    plot: Option<String>,
}

/// A task's outputs by name (CIDs in hex) and the peer it ran on.
type Ran = (Vec<(String, String)>, String);

/// Shows each round as it comes (a progress bar under the lines on a terminal, plain lines
/// otherwise, nothing with `--json`) and keeps its checkpoint on this node.
struct Live<'a> {
    data_dir: &'a Path,
    /// The tenant the run acts as (`--key`), `None` for the node's own.
    credential: &'a Option<shoal_p2p::Credential>,
    json: bool,
    bar: Option<indicatif::ProgressBar>,
    /// The peer the driver's records last came from, to say when it changes.
    driver: std::cell::RefCell<Option<String>>,
}

impl Live<'_> {
    fn record(&self, peer: String, record: &[u8]) {
        if self.driver.borrow().as_ref() != Some(&peer) {
            // The first record, or the driver was placed again after its peer was lost.
            self.say(format!("the driver runs on {peer}"));
            *self.driver.borrow_mut() = Some(peer.clone());
        }
        let text = String::from_utf8_lossy(record);
        let Some(round) = Round::parse(&text) else {
            self.say(format!("driver: {}", escape::line(&text)));
            return;
        };
        if let Some(cid) = round.checkpoint_cid.as_ref().and_then(|c| c.parse().ok()) {
            // A failure here costs only the resume point, not the run: say so and go on.
            let keep = Keep {
                cid,
                from: Some(peer),
                credential: self.credential.clone(),
            };
            if let Err(e) = control::call(self.data_dir, keep, |_| {}) {
                eprintln!(
                    "warning: cannot keep round {}'s checkpoint: {e}",
                    round.round
                );
            }
        }
        if let Some(bar) = &self.bar {
            bar.set_position(u64::from(round.round));
        }
        self.say(round.show());
    }

    fn say(&self, line: String) {
        match (&self.bar, self.json) {
            (_, true) => {}
            (Some(bar), false) => bar.println(line),
            (None, false) => println!("{line}"),
        }
    }
}

pub(super) fn train(args: TrainArgs) -> anyhow::Result<Exit> {
    let data_dir = args.data_dir.resolve();
    if !args.module.is_file() {
        return Err(usage(format!("cannot read {}", args.module.display())));
    }
    let credential = super::key::credential(args.key.as_deref(), &data_dir)?;
    if args.mode != "sync" && args.mode != "local" {
        return Err(usage(format!("--mode {}: not sync or local", args.mode)));
    }
    // The command's own arguments, then every `--arg`.
    let extra = |own: Vec<(&'static str, String)>| -> Vec<(String, String)> {
        let own = own.into_iter().map(|(k, v)| (k.to_owned(), v));
        own.chain(args.args.iter().cloned()).collect()
    };
    // Runs task `name`, handing its progress records to `on_record`; its outputs and peer,
    // or the exit its failure implies.
    let run = |name: &str,
               inputs: Vec<(String, String)>,
               targs: Vec<(String, String)>,
               on_record: &mut dyn FnMut(String, Vec<u8>)| {
        let task = TaskRequest {
            module: args.module.clone(),
            task: Some(name.to_owned()),
            inputs,
            args: targs,
            memory: args.memory,
            timeout: args.timeout,
            deterministic: false,
            credential: credential.clone(),
        }
        .absolute();
        let ran = call_with(
            &data_dir,
            Submit {
                task,
                on: None,
                verify: 0,
                within: None,
            },
            on_record,
        )?;
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
    let quiet = &mut |_: String, _: Vec<u8>| {};
    let seed = args.seed.to_string();
    let data: Vec<(String, String)> = args
        .data
        .iter()
        .map(|d| ("csv".to_owned(), d.display().to_string()))
        .collect();
    let split_args = vec![("shards", args.shards.to_string()), ("seed", seed.clone())];
    let (split, _) = match run("split", data, extra(split_args), quiet)? {
        Ok(ran) => ran,
        Err(exit) => return Ok(exit),
    };
    let start = match &args.resume {
        Some(cid) => ("resume".to_owned(), cid.clone()),
        None => {
            let init_args = vec![("hidden", args.hidden.to_string()), ("seed", seed.clone())];
            match run("init", vec![], extra(init_args), quiet)? {
                Ok((outputs, _)) => match outputs.into_iter().next() {
                    Some((_, cid)) => ("params".to_owned(), cid),
                    None => return Err(usage("`init` wrote no parameters")),
                },
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
        ("eval_every", args.eval_every.to_string()),
    ];
    if !args.json {
        println!(
            "training on the mesh: {} shard(s), rounds to {}, {} mode",
            args.shards, args.rounds, args.mode
        );
    }
    let live = Live {
        data_dir: &data_dir,
        credential: &credential,
        json: args.json,
        bar: (!args.json && std::io::stdout().is_terminal()).then(|| {
            let bar = indicatif::ProgressBar::new(u64::from(args.rounds));
            bar.set_style(
                indicatif::ProgressStyle::with_template("{bar:40} round {pos}/{len} [{elapsed}]")
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            bar
        }),
        driver: std::cell::RefCell::default(),
    };
    let trained = run("train", inputs, extra(train_args), &mut |peer, r| {
        live.record(peer, &r)
    })?;
    if let Some(bar) = &live.bar {
        bar.finish_and_clear();
    }
    let (outputs, driver) = match trained {
        Ok(ran) => ran,
        Err(exit) => return Ok(exit),
    };
    let cid = |name: &str| -> anyhow::Result<Cid> {
        let hex = outputs.iter().find(|(n, _)| n == name).map(|(_, c)| c);
        hex.and_then(|c| c.parse().ok())
            .ok_or_else(|| usage(format!("the driver wrote no output `{name}`")))
    };
    // The last checkpoint is kept here like every round's; the report is read through a
    // temporary file.
    let keep = Keep {
        cid: cid("checkpoint")?,
        from: Some(driver.clone()),
        credential: credential.clone(),
    };
    call(&data_dir, keep)?;
    let path = std::env::temp_dir().join(format!("shoal-train-{}-report", std::process::id()));
    call(
        &data_dir,
        Get {
            cid: cid("report")?,
            path: path.clone(),
            force: false,
            credential: credential.clone(),
        },
    )?;
    let report = std::fs::read_to_string(&path);
    let _ = std::fs::remove_file(&path);
    let report = report?;
    // The report has every round, even those whose live record was dropped on the way.
    let rounds: Vec<Round> = report.lines().filter_map(Round::parse).collect();
    let test = report.lines().find(|l| l.starts_with("test "));
    let test_field = |key: &str| {
        test.and_then(|l| {
            l.split_whitespace()
                .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('=')?.parse().ok())
        })
    };
    let points: Vec<plot::Point> = rounds
        .iter()
        .map(|r| plot::Point {
            round: r.round,
            loss: r.loss,
            accuracy: r.accuracy,
        })
        .collect();
    let title = format!(
        "{} on {} shard(s), {} mode",
        args.module
            .file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().into_owned()),
        args.shards,
        args.mode
    );
    let plot = match plot::loss_curve(&args.plot, &title, &points) {
        Ok(()) => Some(args.plot.display().to_string()),
        Err(e) => {
            eprintln!("warning: no loss curve: {e:#}");
            None
        }
    };
    let trained = Trained {
        rounds,
        params: cid("params")?.to_hex(),
        checkpoint: cid("checkpoint")?.to_hex(),
        test_accuracy: test_field("accuracy"),
        test_loss: test_field("loss"),
        driver,
        plot,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&trained)?);
        return Ok(Exit::Ok);
    }
    let mut seconds: Vec<f64> = trained.rounds.iter().map(|r| r.seconds).collect();
    seconds.sort_by(f64::total_cmp);
    let median = seconds.get(seconds.len() / 2).copied().unwrap_or(0.0);
    println!(
        "{} rounds, median {median:.3} s per round; the driver ran on {}",
        trained.rounds.len(),
        trained.driver
    );
    println!("final parameters: {}", trained.params);
    println!(
        "last checkpoint: {} (kept on this node; continue with --resume)",
        trained.checkpoint
    );
    if let Some(accuracy) = trained.test_accuracy {
        println!("held-out accuracy: {accuracy:.4}");
    }
    if let Some(plot) = &trained.plot {
        println!("loss curve: {plot}");
    }
    Ok(Exit::Ok)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_lines_parse_with_or_without_the_optional_fields() {
        let cid = Cid::of(b"checkpoint").to_hex();
        let full = format!(
            "round=3 loss=0.25 accuracy=0.5 samples=10 peers=2 seconds=0.0414 transfer=0.0100 \
             compute=0.0200 checkpoint=0.0010 coordination=0.0104 bytes=99 checkpoint_cid={cid}"
        );
        let round = Round::parse(&full).expect("a round");
        assert_eq!(
            (round.round, round.peers, round.bytes),
            (3, Some(2), Some(99))
        );
        assert_eq!(round.checkpoint, Some(0.001));
        assert_eq!(round.checkpoint_cid, Some(cid));
        let bare = Round::parse("round=1 loss=2.3 seconds=0.5").expect("a round");
        assert_eq!((bare.accuracy, bare.samples), (None, None));
        assert!(Round::parse("test count=450 loss=0.2 accuracy=0.9").is_none());
        assert!(Round::parse("round=x loss=1 seconds=1").is_none());
        let forged = Round::parse("round=1 loss=1 seconds=1 checkpoint_cid=../../etc").unwrap();
        assert_eq!(forged.checkpoint_cid, None);
    }
}
