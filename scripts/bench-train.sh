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
source scripts/local-mesh.sh

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
a_addr=$(addr_of a)
join b --bootstrap "$a_addr"
join c --bootstrap "$a_addr"
wait_peers a 2
for mode in sync local; do
  "$host" train "$mlp" --data tasks/data/digits.csv.gz --shards 3 --rounds "$rounds" --mode "$mode" \
    --data-dir "$data/a" --json | report "$mode" 3 "3 nodes"
done
