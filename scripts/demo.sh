#!/usr/bin/env bash
# The demo: trains an MLP on the UCI digits across a mesh of 3 nodes on 127.0.0.1 (a driver
# task spawns one gradient task per shard each round, placed over the peers), prints rounds
# as they end, the held-out accuracy and the loss curve's path. Then the small examples: tasks run locally in
# the sandbox, and `hello` mapped across the mesh.
set -euo pipefail
cd "$(dirname "$0")/.."

rustup target add wasm32-wasip1 >/dev/null
echo "== building host and the example tasks"
cargo build -p shoal-host --bin host
cargo build --release --target wasm32-wasip1 --target-dir target/wasm-tasks \
  -p mlp-digits -p hello -p matmul-wasm -p matmul
host=$PWD/target/debug/host
tasks=$PWD/target/wasm-tasks/wasm32-wasip1/release
source scripts/local-mesh.sh
echo "== a 3-node mesh on 127.0.0.1 (one slot each)"
join b
b_addr=$(addr_of b)
join c --bootstrap "$b_addr"
join a --bootstrap "$b_addr"
wait_peers a 2
"$host" peers --data-dir "$data/a"

mlp="$tasks/mlp_digits.wasm"
echo "== host train mlp_digits.wasm --data tasks/data/digits.csv.gz (UCI digits, CC BY 4.0) --shards 3 --rounds 200"
echo "   25% held out; 200 rounds of synchronous data-parallel SGD, one gradient task per shard per round"
echo "   (every round is reported as it ends and its checkpoint kept on node A; every 25th is shown)"
"$host" train "$mlp" --data tasks/data/digits.csv.gz --shards 3 --rounds 200 --lr 1.0 --seed 7 \
  --plot "$PWD/target/demo-loss-curve.png" --data-dir "$data/a" |
  awk '$1 != "round" || $2 <= 2 || $2 % 25 == 0 { print; fflush() }'
echo

echo "== small examples: host run in the sandbox, no node needed"
echo "Shoal" > "$data/name.txt"
"$host" run "$tasks/hello.wasm" --input name="$data/name.txt" --data-dir "$data/local"
echo
echo "== host run matmul_wasm.wasm --arg n=256   (the product computed inside wasm)"
"$host" run "$tasks/matmul_wasm.wasm" --arg n=256 --data-dir "$data/local"
echo
echo "== host run matmul.wasm --arg n=256 --device cpu   (the same product through host tensors)"
"$host" run "$tasks/matmul.wasm" --arg n=256 --device cpu --data-dir "$data/local"
echo
for i in 1 2 3; do echo "shard$i" > "$data/shard$i.txt"; done
echo "== host submit hello.wasm --map name=shard1.txt,shard2.txt,shard3.txt (from A)"
"$host" submit "$tasks/hello.wasm" --map name="$data/shard1.txt,$data/shard2.txt,$data/shard3.txt" --data-dir "$data/a"
