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

#[test]
fn get_writes_only_regular_files_unless_forced() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("in.txt");
    std::fs::write(&file, "payload").unwrap();
    let data_dir = dir.path().join("node");
    let out = host(&data_dir, &["put", file.to_str().unwrap()]);
    let cid = String::from_utf8(out.stdout).unwrap().trim().to_owned();

    let fifo = dir.path().join("fifo");
    let made = Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .expect("mkfifo runs");
    assert!(made.success());
    let target = dir.path().join("target.txt");
    std::fs::write(&target, "keep me").unwrap();
    let link = dir.path().join("link");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    for (path, kind) in [(&fifo, "FIFO"), (&link, "symbolic link")] {
        let out = host(&data_dir, &["get", &cid, "-o", path.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(2), "{}", text(&out));
        let shown = text(&out);
        assert!(
            shown.contains(&format!("is a {kind}, not a regular file")),
            "{shown}"
        );
    }
    assert!(
        std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "keep me");
    // Forced, it writes through the link and leaves the link in place.
    let out = host(
        &data_dir,
        &["get", &cid, "-o", link.to_str().unwrap(), "--force"],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "payload");
}

#[test]
fn what_a_task_prints_reaches_the_terminal_escaped() {
    let dir = tempfile::tempdir().unwrap();
    // Logs a forged status line wrapped in ANSI escapes, writes an output whose name is an
    // escape, then fails with an error message that tries the same.
    let module = |status: i32| {
        let wat = format!(
            r#"(module
              (import "shoal_v1" "log" (func $log (param i32 i32 i32) (result i32)))
              (import "shoal_v1" "output_write" (func $out (param i32 i32 i32 i32 i32) (result i32)))
              (import "shoal_v1" "set_error" (func $err (param i32 i32) (result i32)))
              (memory (export "memory") 1)
              (data (i32.const 0) "\1b[2J\1b[Hstatus: ok\0d\n\1b]0;pwned\07")
              (func (export "shoal_task:t") (result i32)
                (drop (call $log (i32.const 1) (i32.const 0) (i32.const 27)))
                (drop (call $out (i32.const 0) (i32.const 4) (i32.const 0) (i32.const 1) (i32.const 64)))
                (drop (call $err (i32.const 0) (i32.const 27)))
                (i32.const {status})))"#
        );
        let path = dir.path().join(format!("forge{status}.wasm"));
        std::fs::write(&path, wat::parse_str(wat).unwrap()).unwrap();
        path
    };
    for status in [0, 1] {
        let path = module(status);
        let out = host(dir.path(), &["run", path.to_str().unwrap()]);
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            !stdout.contains('\x1b') && !stdout.contains('\r'),
            "{stdout:?}"
        );
        assert!(stdout.contains("\\u{1b}[2J"), "{stdout}");
        let status_lines: Vec<_> = stdout
            .lines()
            .filter(|l| l.starts_with("status:"))
            .collect();
        let expected = if status == 0 {
            "status: ok"
        } else {
            "status: failed"
        };
        assert_eq!(status_lines.len(), 1, "{stdout}");
        assert!(status_lines[0].starts_with(expected), "{stdout}");
        assert!(
            stdout.contains("  | [info] \\u{1b}[2J\\u{1b}[Hstatus: ok"),
            "{stdout}"
        );
    }
}

#[test]
fn gc_keeps_what_the_user_put_and_ran() {
    let dir = tempfile::tempdir().unwrap();
    let name = dir.path().join("name.txt");
    std::fs::write(&name, "GC").unwrap();
    let input = format!("name={}", name.display());
    let out = host(
        dir.path(),
        &["run", wasm::HELLO, "--input", &input, "--json"],
    );
    assert!(out.status.success(), "{}", text(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let greeting = report["result"]["Ok"][0][1].as_str().unwrap().to_owned();
    let out = host(dir.path(), &["gc", "--json"]);
    assert!(out.status.success(), "{}", text(&out));
    let gc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(gc["kept_blocks"].as_u64().unwrap() >= 2, "{gc}");
    let back = dir.path().join("greeting.txt");
    let out = host(
        dir.path(),
        &["get", &greeting, "-o", back.to_str().unwrap()],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(std::fs::read_to_string(&back).unwrap(), "Hello, GC!");
}
