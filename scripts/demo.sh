#!/usr/bin/env bash
# The demo: builds the `host` binary and the example tasks, then runs `hello` and the
# in-wasm matmul baseline in the sandbox on this machine.
set -euo pipefail
cd "$(dirname "$0")/.."

rustup target add wasm32-wasip1 >/dev/null
echo "== building host and the example tasks"
cargo build -p shoal-host --bin host
cargo build --release --target wasm32-wasip1 --target-dir target/wasm-tasks -p hello -p matmul-wasm
host=target/debug/host
tasks=target/wasm-tasks/wasm32-wasip1/release
data=$(mktemp -d)
trap 'rm -rf "$data"' EXIT

echo "Shoal" > "$data/name.txt"
echo "== host run hello.wasm --input name=name.txt"
$host run "$tasks/hello.wasm" --input name="$data/name.txt" --data-dir "$data/node"
echo
echo "== host run matmul_wasm.wasm --arg n=256"
$host run "$tasks/matmul_wasm.wasm" --arg n=256 --data-dir "$data/node"
