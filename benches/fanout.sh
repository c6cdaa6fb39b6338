#!/usr/bin/env bash
# SSE fan-out, flagrelay against nchan (nginx's C pub/sub module), side by side on this machine.
#
#   benches/fanout.sh                 # N = 1000 5000 10000 18500, 1 and 2 server cores
#   benches/fanout.sh 10000           # one N
#   CORES=2 CHANGES=20 benches/fanout.sh 1000 5000
#
# For every N and core count it runs nchan, then flagrelay, each freshly started and pinned with
# taskset to the same cores (1 core: cpu 0; 2 cores: cpus 0,1; nchan gets as many nginx workers,
# flagrelay as many tokio workers via TOKIO_WORKER_THREADS). With 1 server core the load tool runs
# on cpu 1; with 2 it shares both cores with the server (this machine has 2 vCPUs).
# Both servers send the same change frame size (~235 bytes with SSE framing; flagrelay's is a
# one-feature `features.updated`, nchan's a 210-byte JSON message). flagrelay's changes come from
# its flags file (polled every 10 ms); nchan's from an HTTP POST to its publisher.
#
# Environment: CORES (default "1 2"), CHANGES (20), IDLE_SECS (31: two 15 s heartbeats),
# SOURCES (127.0.0.1,...,127.0.0.4), OUT (target/fanout-bench), NCHAN_PORT (18080),
# RELAY_PORT (17700; admin on +1), NCHAN_RUN (../shared/bench/nchan/run.sh).
# Results: OUT/{nchan,flagrelay}-N-Cc.json (flagrelay-load --json reports), a ratio table per pair,
# and a summary table at the end (OUT/summary.md).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
sizes=("$@"); [ ${#sizes[@]} -gt 0 ] || sizes=(1000 5000 10000 18500)
cores_list=${CORES:-1 2}
changes=${CHANGES:-20}
idle=${IDLE_SECS:-31}
sources=${SOURCES:-127.0.0.1,127.0.0.2,127.0.0.3,127.0.0.4}
out=${OUT:-$repo/target/fanout-bench}
nport=${NCHAN_PORT:-18080}
rport=${RELAY_PORT:-17700}
nchan_run=${NCHAN_RUN:-$repo/../shared/bench/nchan/run.sh}
key=sdk-srv-bench-fanout-0001

cargo build --release --bin flagrelay --bin flagrelay-load >&2
load=$repo/target/release/flagrelay-load
relay=$repo/target/release/flagrelay
mkdir -p "$out"
work=$(mktemp -d "${TMPDIR:-/tmp}/flagrelay-fanout.XXXXXX")
export NCHAN_DIR=$work/nchan
relay_pid=
cleanup() {
  [ -n "$relay_pid" ] && kill -TERM "$relay_pid" 2>/dev/null && wait "$relay_pid" 2>/dev/null || true
  "$nchan_run" stop 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
ulimit -n "$(ulimit -Hn)"

cat > "$work/flagrelay.toml" <<TOML
listen = "127.0.0.1:$rport"
admin_listen = "127.0.0.1:$((rport + 1))"
log_level = "warn"
[upstream]
kind = "file"
path = "$work/flags.json"
poll_interval_ms = 10
[[environments]]
id = "bench"
server_keys = ["$key"]
[sse]
heartbeat_secs = 15
max_connections = 0
TOML

write_flags() {
  cat > "$work/flags.json" <<'JSON'
{"bench":{"bench-flag":{"key":"bench-flag","enabled":true,"variants":[{"key":"on","name":"On"},{"key":"off"}],"rules":[{"defaultRule":true,"variantSplits":[{"variantKey":"on","split":100}]}]}}}
JSON
}

wait_gone() { for _ in $(seq 100); do kill -0 "$1" 2>/dev/null || return 0; sleep 0.1; done; }

for n in "${sizes[@]}"; do
  for c in $cores_list; do
    if [ "$c" = 1 ]; then cpus=0; gen=(--client-cpus 1); else cpus=0-$((c - 1)); gen=(); fi
    common=(-n "$n" -m "$changes" --idle-secs "$idle" --sources "$sources" "${gen[@]}")

    echo "== N=$n, $c server core(s): nchan" >&2
    WORKERS=$c taskset -c "$cpus" "$nchan_run" start "$nport" >&2
    chan=bench$RANDOM$RANDOM
    "$load" "${common[@]}" --label "nchan, $c core(s), N=$n" \
      --url "http://127.0.0.1:$nport/sub?id=$chan" --trigger "nchan:http://127.0.0.1:$nport/pub?id=$chan" \
      --payload-bytes 210 --pid "$("$nchan_run" pids | paste -sd,)" --json-out "$out/nchan-$n-${c}c.json"
    master=$(cat "$NCHAN_DIR/nginx.pid"); "$nchan_run" stop; wait_gone "$master"

    echo "== N=$n, $c server core(s): flagrelay" >&2
    write_flags
    TOKIO_WORKER_THREADS=$c taskset -c "$cpus" "$relay" --config "$work/flagrelay.toml" 2>"$work/relay.log" &
    relay_pid=$!
    for _ in $(seq 100); do curl -sf "http://127.0.0.1:$((rport + 1))/readyz" >/dev/null && break; sleep 0.1; done
    "$load" "${common[@]}" --label "flagrelay, $c core(s), N=$n" \
      --url "http://127.0.0.1:$rport/api/sdk/v1/features" --key "$key" --trigger "file:$work/flags.json" \
      --pid "$relay_pid" --json-out "$out/flagrelay-$n-${c}c.json"
    kill -TERM "$relay_pid"; wait "$relay_pid" 2>/dev/null || true; relay_pid=

    echo "== N=$n, $c server core(s): flagrelay / nchan" >&2
    "$load" compare "$out/nchan-$n-${c}c.json" "$out/flagrelay-$n-${c}c.json"
    echo
  done
done

files=()
for n in "${sizes[@]}"; do for c in $cores_list; do files+=("$out/nchan-$n-${c}c.json" "$out/flagrelay-$n-${c}c.json"); done; done
"$load" summary "${files[@]}" | tee "$out/summary.md"
