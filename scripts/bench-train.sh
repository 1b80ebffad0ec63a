#!/usr/bin/env bash
# Training throughput on a local mesh: `host train` of mlp-digits on 1 node and on 3 nodes
# (127.0.0.1, one slot each), sync and local modes, in one run. Prints, per setup, the median
# seconds per round (round 1, which fetches and compiles the module, left out), samples per
# second and the held-out accuracy. Usage: scripts/bench-train.sh [ROUNDS] (default 100).
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-100}

cargo build -q -p shoal-host --bin host
cargo build -q --release --target wasm32-wasip1 --target-dir target/wasm-tasks -p mlp-digits
host=$PWD/target/debug/host
mlp=$PWD/target/wasm-tasks/wasm32-wasip1/release/mlp_digits.wasm
data=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$data"; }
trap cleanup EXIT

join() {
  local name=$1; shift
  "$host" join --no-mdns --slots 1 --listen /ip4/127.0.0.1/tcp/0 --data-dir "$data/$name" "$@" \
    >"$data/$name.out" 2>"$data/$name.log" &
  pids+=($!)
  for _ in $(seq 100); do grep -q "^listening on" "$data/$name.out" 2>/dev/null && return; sleep 0.2; done
  exit 1
}

# 1347 training rows (75% of 1797) per round in sync mode; local mode takes H=10 batches of
# 32 per shard per round.
report() {
  python3 -c '
import json, statistics, sys
r = json.load(sys.stdin); mode, shards = sys.argv[1], int(sys.argv[2])
s = [x["seconds"] for x in r["rounds"][1:]]
med = statistics.median(s)
samples = 1347 if mode == "sync" else shards * 10 * 32
acc = r["test_accuracy"]
print(f"{sys.argv[3]:>8} {mode:>5}: {med*1e3:7.1f} ms/round, {samples/med:8.0f} samples/s, accuracy {acc:.4f}")
' "$@"
}

join a
for mode in sync local; do
  "$host" train "$mlp" --data tasks/data/digits.csv.gz --shards 3 --rounds "$rounds" --mode "$mode" \
    --data-dir "$data/a" --json | report "$mode" 3 "1 node"
done
a_addr=$(grep -m1 "^listening on" "$data/a.out" | cut -d' ' -f3)
join b --bootstrap "$a_addr"
join c --bootstrap "$a_addr"
for _ in $(seq 100); do
  [ "$("$host" peers --data-dir "$data/a" 2>/dev/null | grep -c slots)" -ge 2 ] && break; sleep 0.2
done
for mode in sync local; do
  "$host" train "$mlp" --data tasks/data/digits.csv.gz --shards 3 --rounds "$rounds" --mode "$mode" \
    --data-dir "$data/a" --json | report "$mode" 3 "3 nodes"
done
