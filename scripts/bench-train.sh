#!/usr/bin/env bash
# Training on a local mesh, in one run: `host train` on 1 node, then on 3 nodes (127.0.0.1,
# one slot each), of
#   - mlp-digits, sync and local mode: median seconds per round (round 1, which fetches and
#     compiles the module, left out), samples/s, bytes moved per round, the per-round split
#     (transfer, compute, checkpoint, coordination), held-out accuracy, and the wall time to
#     0.95 held-out accuracy;
#   - linreg at a size where compute dominates (ROWS x FEATURES synthetic rows);
# then scikit-learn's MLPClassifier on the same data and machine, for its time to 0.95
# (installed into target/bench-venv from PyPI on first use).
# Usage: scripts/bench-train.sh [ROUNDS] [ROWS] [FEATURES]   (defaults 100, 60000, 256)
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-100}
rows=${2:-60000}
features=${3:-256}

cargo build -q -p shoal-host --bin host
cargo build -q --release --target wasm32-wasip1 --target-dir target/wasm-tasks -p mlp-digits -p linreg
host=$PWD/target/debug/host
tasks=$PWD/target/wasm-tasks/wasm32-wasip1/release
source scripts/local-mesh.sh
echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores; $(date -u +%F)"

# One line per run, from `host train --json`: medians over rounds 2.. .
read -r -d '' report_py <<'EOF' || true
import json, statistics as st, sys
r = json.load(sys.stdin)
rounds = r["rounds"]
later = rounds[1:] or rounds
def med(k):
    return st.median([x[k] for x in later if x.get(k) is not None] or [0])
secs = med("seconds")
to95, elapsed = None, 0.0
for x in rounds:
    # Accuracy is measured at the parameters a round starts from: reaching it took the
    # rounds before.
    if (x.get("accuracy") or 0) >= 0.95:
        to95 = elapsed
        break
    elapsed += x["seconds"]
line = (f"{sys.argv[1]:<28} {secs*1e3:7.1f} ms/round {med('samples')/secs:9.0f} samples/s "
        f"{med('bytes')/1e3:8.1f} kB/round | ms: transfer {med('transfer')*1e3:6.1f} "
        f"compute {med('compute')*1e3:6.1f} checkpoint {med('checkpoint')*1e3:5.1f} "
        f"coordination {med('coordination')*1e3:6.1f} | peers {med('peers'):.0f}")
if r.get("test_accuracy") is not None:
    line += f" | accuracy {r['test_accuracy']:.4f}"
if to95 is not None:
    line += f" | 0.95 after {to95:.2f} s"
print(line)
EOF
report() { python3 -c "$report_py" "$1"; }

run_all() {
  local where=$1
  for mode in sync local; do
    "$host" train "$tasks/mlp_digits.wasm" --data tasks/data/digits.csv.gz --shards 3 \
      --rounds "$rounds" --mode "$mode" --plot "$data/mlp-$mode.png" --data-dir "$data/a" \
      --json | report "mlp-digits $mode, $where"
  done
  "$host" train "$tasks/linreg.wasm" --arg rows="$rows" --arg features="$features" --shards 3 \
    --rounds 10 --lr 0.5 --eval-every 0 --memory 1GiB --plot "$data/linreg.png" \
    --data-dir "$data/a" --json | report "linreg ${rows}x$features, $where"
}

join a
run_all "1 node"
a_addr=$(addr_of a)
join b --bootstrap "$a_addr"
join c --bootstrap "$a_addr"
wait_peers a 2
run_all "3 nodes"

venv=target/bench-venv
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q numpy scikit-learn
fi
read -r -d '' sklearn_py <<'EOF' || true
import json, sys
s = json.load(sys.stdin)
print(f"scikit-learn {s['sklearn']} MLPClassifier(64), {s['solver']} lr {s['lr']} batch {s['batch']}: "
      f"0.95 after {s['seconds_to_095']:.2f} s ({s['epochs_to_095']} epochs); "
      f"adam: 0.95 after {s['adam']['seconds_to_095']:.2f} s; "
      f"fit to convergence: accuracy {s['fit_accuracy']:.4f} in {s['fit_seconds']:.2f} s")
EOF
"$venv/bin/python" scripts/sklearn_digits.py | python3 -c "$sklearn_py"
