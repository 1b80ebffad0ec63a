//! Builds every task crate under `tasks/` to `wasm32-wasip1` and exports their paths as
//! constants, so tests and benches always run freshly built guests (never checked-in
//! binaries). The guests go to `<target>/wasm-tasks`, the same place `scripts/demo.sh`
//! builds them, so one build serves both.

use std::{
    env, fs,
    path::{Path, PathBuf},
    process::Command,
};

/// The package's name, if it is a task: a `cdylib` (a library such as `train-kit` is not).
fn package_name(manifest: &Path) -> Option<String> {
    let text = fs::read_to_string(manifest).ok()?;
    if !text.contains("\"cdylib\"") {
        return None;
    }
    let line = text.lines().find(|l| l.trim_start().starts_with("name"))?;
    Some(line.split('"').nth(1)?.to_owned())
}

fn main() {
    let manifest_dir =
        PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let tasks_dir = manifest_dir
        .parent()
        .expect("tasks/artifacts lives in tasks/")
        .to_path_buf();
    let workspace = tasks_dir
        .parent()
        .expect("tasks/ lives in the workspace")
        .to_path_buf();
    let out_dir = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    // OUT_DIR is <target>/<profile>/build/<pkg>-<hash>/out.
    let target_dir = out_dir
        .ancestors()
        .nth(4)
        .expect("OUT_DIR is inside the target dir")
        .join("wasm-tasks");

    let mut crates = Vec::new();
    for dir in [tasks_dir.clone(), tasks_dir.join("hostile")] {
        let mut entries: Vec<_> = fs::read_dir(&dir)
            .expect("tasks/ is readable")
            .flatten()
            .map(|e| e.path())
            .collect();
        entries.sort();
        for path in entries {
            let manifest = path.join("Cargo.toml");
            if path == manifest_dir || !manifest.is_file() {
                continue;
            }
            if let Some(name) = package_name(&manifest) {
                crates.push(name);
            }
        }
    }

    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(&workspace)
        .args([
            "build",
            "--release",
            "--target",
            "wasm32-wasip1",
            "--target-dir",
        ])
        .arg(&target_dir)
        // Flags meant for the host build must not leak into the guest build.
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_BUILD_TARGET");
    for name in &crates {
        cmd.args(["-p", name]);
    }
    let status = cmd
        .status()
        .expect("cannot run cargo to build the wasm tasks");
    assert!(
        status.success(),
        "building the tasks for wasm32-wasip1 failed; is the target installed? (`rustup target add wasm32-wasip1`)"
    );

    let wasm_dir = target_dir.join("wasm32-wasip1").join("release");
    let mut code = String::from(
        "/// Every task, as `(package name, path to its .wasm)`.\npub const ALL: &[(&str, &str)] = &[\n",
    );
    let mut consts = String::new();
    for name in &crates {
        let path = wasm_dir.join(format!("{}.wasm", name.replace('-', "_")));
        assert!(path.is_file(), "cargo did not produce {}", path.display());
        code.push_str(&format!(
            "    ({name:?}, {:?}),\n",
            path.display().to_string()
        ));
        consts.push_str(&format!(
            "/// Path to the `{name}` task's wasm module.\npub const {}: &str = {:?};\n",
            name.to_uppercase().replace('-', "_"),
            path.display().to_string()
        ));
    }
    code.push_str("];\n");
    code.push_str(&consts);
    fs::write(out_dir.join("artifacts.rs"), code).expect("OUT_DIR is writable");

    println!("cargo:rerun-if-changed={}", tasks_dir.display());
    println!(
        "cargo:rerun-if-changed={}",
        workspace.join("guest-sdk").display()
    );
}
