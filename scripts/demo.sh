#!/usr/bin/env bash
# The demo: builds the `host` binary and the example tasks, runs them in the sandbox on this
# machine, then starts a 2-node mesh on 127.0.0.1 and maps `hello` across it.
set -euo pipefail
cd "$(dirname "$0")/.."

rustup target add wasm32-wasip1 >/dev/null
echo "== building host and the example tasks"
cargo build -p shoal-host --bin host
cargo build --release --target wasm32-wasip1 --target-dir target/wasm-tasks -p hello -p matmul-wasm -p matmul
host=$PWD/target/debug/host
tasks=$PWD/target/wasm-tasks/wasm32-wasip1/release
data=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$data"; }
trap cleanup EXIT

echo "Shoal" > "$data/name.txt"
echo "== host run hello.wasm --input name=name.txt"
"$host" run "$tasks/hello.wasm" --input name="$data/name.txt" --data-dir "$data/local"
echo
echo "== host run matmul_wasm.wasm --arg n=256   (the product computed inside wasm)"
"$host" run "$tasks/matmul_wasm.wasm" --arg n=256 --data-dir "$data/local"
echo
echo "== host run matmul.wasm --arg n=256 --device cpu   (the same product through host tensors)"
"$host" run "$tasks/matmul.wasm" --arg n=256 --device cpu --data-dir "$data/local"
echo

echo "== a 2-node mesh on 127.0.0.1: B runs tasks, A submits"
"$host" join --no-mdns --listen /ip4/127.0.0.1/tcp/0 --data-dir "$data/b" >"$data/b.out" 2>"$data/b.log" &
pids+=($!)
for _ in $(seq 50); do grep -q "^listening on" "$data/b.out" 2>/dev/null && break; sleep 0.2; done
b_addr=$(grep -m1 "^listening on" "$data/b.out" | cut -d' ' -f3)
"$host" join --no-mdns --slots 0 --listen /ip4/127.0.0.1/tcp/0 --bootstrap "$b_addr" --data-dir "$data/a" >"$data/a.out" 2>"$data/a.log" &
pids+=($!)
for _ in $(seq 50); do "$host" peers --data-dir "$data/a" 2>/dev/null | grep -q slots && break; sleep 0.2; done
"$host" peers --data-dir "$data/a"
for i in 1 2 3; do echo "shard$i" > "$data/shard$i.txt"; done
echo "== host submit hello.wasm --map name=shard1.txt,shard2.txt,shard3.txt (from A)"
"$host" submit "$tasks/hello.wasm" --map name="$data/shard1.txt,$data/shard2.txt,$data/shard3.txt" --data-dir "$data/a"
