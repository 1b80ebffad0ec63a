#!/usr/bin/env bash
# The demo: trains an MLP on the UCI digits across a mesh of 3 nodes on 127.0.0.1 (a driver
# task spawns one gradient task per shard each round, placed over the peers), prints the
# per-round report and the held-out accuracy. Then the small examples: tasks run locally in
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
data=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$data"; }
trap cleanup EXIT

# Starts `host join` for node $1 with extra flags; prints nothing until it listens.
join() {
  local name=$1; shift
  "$host" join --no-mdns --slots 1 --listen /ip4/127.0.0.1/tcp/0 --data-dir "$data/$name" "$@" \
    >"$data/$name.out" 2>"$data/$name.log" &
  pids+=($!)
  for _ in $(seq 100); do grep -q "^listening on" "$data/$name.out" 2>/dev/null && return; sleep 0.2; done
  echo "node $name did not start: $(cat "$data/$name.log")" >&2; exit 1
}
# The CID of output $1 in a `host submit` printout on stdin.
output() { awk -v name="$1" '$1 == "output" && $2 == name { print $3 }'; }

echo "== a 3-node mesh on 127.0.0.1 (one slot each)"
join b
b_addr=$(grep -m1 "^listening on" "$data/b.out" | cut -d' ' -f3)
join c --bootstrap "$b_addr"
join a --bootstrap "$b_addr"
for _ in $(seq 100); do
  [ "$("$host" peers --data-dir "$data/a" 2>/dev/null | grep -c slots)" -ge 2 ] && break; sleep 0.2
done
"$host" peers --data-dir "$data/a"

mlp="$tasks/mlp_digits.wasm"
echo "== split the digits (tasks/data, CC BY 4.0): 25% held out, 3 training shards"
split=$("$host" submit "$mlp" --task split --input csv=tasks/data/digits.csv.gz \
  --arg shards=3 --arg seed=7 --data-dir "$data/a")
test_cid=$(output test <<<"$split")
shards=()
for i in 0 1 2; do shards+=(--input "shard$i=$(output "shard$i" <<<"$split")"); done
params=$("$host" submit "$mlp" --task init --arg hidden=64 --arg seed=7 --data-dir "$data/a" | output params)

echo "== train: 200 rounds of synchronous data-parallel SGD, one gradient task per shard per round"
started=$(date +%s.%N)
run=$("$host" submit "$mlp" --task train --input params="$params" --input test="$test_cid" "${shards[@]}" \
  --arg rounds=200 --arg lr=1.0 --arg mode=sync --timeout 10m --data-dir "$data/a")
report=$(output report <<<"$run")
"$host" get "$report" -o "$data/report.txt" --data-dir "$data/a" 2>/dev/null
sed -n '1,3p' "$data/report.txt"; echo "  ..."; tail -n 3 "$data/report.txt"
echo "trained in $(echo "$(date +%s.%N) - $started" | bc) s; final parameters: $(output params <<<"$run")"
echo "held-out accuracy: $(grep -o 'accuracy=[0-9.]*' "$data/report.txt" | tail -1 | cut -d= -f2)"
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
