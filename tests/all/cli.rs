//! The `host` binary as a user runs it: outputs, messages and exit codes.

use std::{
    path::PathBuf,
    process::{Command, Output},
};

use shoal_task_artifacts as wasm;

/// The `host` binary cargo built for this test run.
pub fn host_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_host"))
}

fn host(data_dir: &std::path::Path, args: &[&str]) -> Output {
    Command::new(host_bin())
        .args(args)
        .arg("--data-dir")
        .arg(data_dir)
        .output()
        .expect("host runs")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn put_get_round_trip_and_unknown_cid() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("in.bin");
    let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(&file, &data).unwrap();
    let data_dir = dir.path().join("node");
    let out = host(&data_dir, &["put", file.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    let cid = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    assert_eq!(cid.len(), 64);
    let back = dir.path().join("out.bin");
    let out = host(&data_dir, &["get", &cid, "-o", back.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(std::fs::read(&back).unwrap(), data);

    let out = host(
        &data_dir,
        &["get", &"ab".repeat(32), "-o", back.to_str().unwrap()],
    );
    assert_eq!(out.status.code(), Some(4), "{}", text(&out));
    assert!(
        text(&out).contains("not in the local store"),
        "{}",
        text(&out)
    );
    let out = host(
        &data_dir,
        &["get", "not-a-cid", "-o", back.to_str().unwrap()],
    );
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
}

#[test]
fn run_prints_outputs_logs_and_stats() {
    let dir = tempfile::tempdir().unwrap();
    let name = dir.path().join("name.txt");
    std::fs::write(&name, "CLI").unwrap();
    let input = format!("name={}", name.display());
    let out = host(
        dir.path(),
        &["run", wasm::HELLO, "--input", &input, "--arg", "punct=."],
    );
    let shown = text(&out);
    assert!(out.status.success(), "{shown}");
    assert!(shown.contains("output greeting "), "{shown}");
    assert!(shown.contains("[info] greeted CLI"), "{shown}");
    assert!(shown.contains("peak memory"), "{shown}");
    assert!(shown.contains("status: ok"), "{shown}");
}

#[test]
fn exit_codes_tell_failures_apart() {
    let dir = tempfile::tempdir().unwrap();
    let out = host(
        dir.path(),
        &["run", wasm::HOSTILE_LOOP, "--timeout", "500ms"],
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("failed (Timeout): task exceeded its 500 ms wall-time limit"),
        "{}",
        text(&out)
    );

    let not_wasm = dir.path().join("x.wasm");
    std::fs::write(&not_wasm, "hello").unwrap();
    let out = host(dir.path(), &["run", not_wasm.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));

    let out = host(dir.path(), &["run", wasm::NOOP, "--memory", "lots"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("not a size"), "{}", text(&out));
    // The 4 GiB memory ceiling is refused before anything runs, by `run` and `submit` alike.
    for verb in ["run", "submit"] {
        let out = host(dir.path(), &[verb, wasm::NOOP, "--memory", "5GiB"]);
        assert_eq!(out.status.code(), Some(2), "{}", text(&out));
        assert!(
            text(&out).contains("5120 MiB is over the 4096 MiB task memory limit"),
            "{}",
            text(&out)
        );
    }
    // Limits past what the runtime can honour are refused, never a panic.
    let out = host(
        dir.path(),
        &["run", wasm::NOOP, "--timeout", "99999999999h"],
    );
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("over the 604800 s task time limit"),
        "{}",
        text(&out)
    );
    let out = host(dir.path(), &["join", "--slots", "18446744073709551615"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("not a slot count from 0 to 256"),
        "{}",
        text(&out)
    );
    let out = host(dir.path(), &["run", "/nonexistent.wasm"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let out = host(dir.path(), &["frobnicate"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
}
