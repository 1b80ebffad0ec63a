# Sourced by demo.sh and bench-train.sh: a scratch dir, `host join` nodes on 127.0.0.1 that are
# killed on exit, and helpers to start them and wait for peers. Needs $host set.
data=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$data"; }
trap cleanup EXIT

# Starts `host join` for node $1 (one slot) with extra flags; returns once it listens.
join() {
  local name=$1; shift
  "$host" join --no-mdns --slots 1 --listen /ip4/127.0.0.1/tcp/0 --data-dir "$data/$name" "$@" \
    >"$data/$name.out" 2>"$data/$name.log" &
  pids+=($!)
  for _ in $(seq 100); do grep -q "^listening on" "$data/$name.out" 2>/dev/null && return; sleep 0.2; done
  echo "node $name did not start: $(cat "$data/$name.log")" >&2; exit 1
}

# The address node $1 listens on.
addr_of() { grep -m1 "^listening on" "$data/$1.out" | cut -d' ' -f3; }

# Waits until node $1 sees $2 peers.
wait_peers() {
  for _ in $(seq 100); do
    [ "$("$host" peers --data-dir "$data/$1" 2>/dev/null | grep -c slots)" -ge "$2" ] && return; sleep 0.2
  done
}
