#!/usr/bin/env bash
# Runs every test in the workspace. On a fresh Debian machine it installs what the tests
# need first: lavapipe (a Vulkan driver on the CPU, so the GPU tests exercise the real
# shaders) and cargo-nextest; rust-toolchain.toml brings the wasm32-wasip1 target.
set -euo pipefail
cd "$(dirname "$0")/.."

need_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

if ! ls /usr/share/vulkan/icd.d/lvp_icd*.json >/dev/null 2>&1; then
  echo "== installing lavapipe (mesa-vulkan-drivers) for the GPU tests"
  need_root apt-get update -qq
  need_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mesa-vulkan-drivers >/dev/null
fi
ls /usr/share/vulkan/icd.d/lvp_icd*.json >/dev/null 2>&1 || { echo "lavapipe is not installed: GPU tests cannot run" >&2; exit 1; }

# rust-toolchain.toml names the target, but rustup only adds it when it installs the toolchain.
rustup target add wasm32-wasip1 >/dev/null

if ! cargo nextest --version >/dev/null 2>&1; then
  echo "== installing cargo-nextest"
  cargo install --locked cargo-nextest
fi

# One profile (dev, with optimised dependencies) for tests, benches' compile check and the
# `host` binary that the process-level tests start: every step below reuses one build.
echo "== building (tests, benches, the host binary, the wasm tasks)"
cargo build --workspace --all-targets
echo "== doc tests"
cargo test --doc -p shoal -p shoal-host -p shoal-p2p
echo "== tests"
cargo nextest run --workspace --no-fail-fast
