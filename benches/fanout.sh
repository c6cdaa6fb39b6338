#!/usr/bin/env bash
# SSE fan-out, flagrelay against the write floor and nchan (nginx's C pub/sub module), side by side
# on this machine, in one run.
#
#   benches/fanout.sh                 # N = 1000 5000 10000 18500, 1 and 2 server cores
#   benches/fanout.sh 10000           # one N
#   CORES=2 CHANGES=20 benches/fanout.sh 1000 5000
#
# For every N it first measures the floor: benches/floor/fanout_write.c, one write() of the same
# frame size per already-open loopback socket whose peer reads (sender on cpu 0, reader on cpu 1),
# CHANGES rounds. Then, for every core count, it runs nchan, then flagrelay, each freshly started and pinned with
# taskset to the same cores (1 core: cpu 0; 2 cores: cpus 0,1; nchan gets as many nginx workers,
# flagrelay as many tokio workers via TOKIO_WORKER_THREADS). With 1 server core the load tool runs
# on cpu 1; with 2 it shares both cores with the server (this machine has 2 vCPUs).
# nchan may refuse up to 5 % of the clients (nginx's worker_connections, about 19,000 here, is
# reached near 18,500): its runs pass --allow-failed N/20 to the load tool, which reports them.
# Both servers send the same change frame size (~245 bytes with SSE framing; flagrelay's is a
# one-feature `features.updated`, nchan's a JSON message of FRAME_BYTES - 28 = 220 bytes). nchan's changes are HTTP POSTs
# to its publisher; flagrelay's are upserts through its Redis writer script (UPSTREAM=redis, the
# default when redis-server is installed; a private redis-server is started on REDIS_PORT) or
# rewrites of its flags file (UPSTREAM=file; polled every 10 ms, so "trigger -> first" includes
# up to 10 ms of polling).
#
# LOAD_SPIN=1 makes the load tool busy-poll on 1-server-core runs (--spin): like the floor's reader,
# which is nearly always busy, it then never has to be woken by a server write (its context switches
# per delivery, 0.46 sleeping, against the floor reader's 0.05, are docs/benchmarks.md's explanation
# of most of the gap to the floor); its own CPU figures are then 100 % of its cpu.
# Environment: SERVERS (default "floor nchan flagrelay": which to run), PERF (set: a flat `perf
# record` profile of the relay per run, its top symbols in OUT/flagrelay-N-Cc.perf.txt), RELAY_BIN (a relay binary
# to measure instead of building this checkout's, e.g. an older commit's for an A/B run),
# FRAME_BYTES (248: the floor's write size, flagrelay's change frame), CORES (default "1 2"), CHANGES (20), IDLE_SECS (31: two 15 s heartbeats),
# SOURCES (127.0.0.1,...,127.0.0.4), OUT (target/fanout-bench), NCHAN_PORT (18080),
# RELAY_PORT (17700; admin on +1), REDIS_PORT (16390), NCHAN_RUN (benches/nchan/run.sh).
# EVAL_CONTEXTS=G (opt-in): the flagrelay runs load the per-context evaluation stream instead,
# `GET /api/v1/eval/stream/sdk-js-bench-fanout-0001/user/{ctx}` with the load tool's --contexts G
# (client i's user is bench-user-<i % G>: G distinct contexts, N/G connections each) and
# --marker-in variant-key (each change makes bench-flag serve a new variant key, so every
# context's `features.updated` carries the marker). Its change frame is smaller (EVAL_FRAME_BYTES,
# default 69 bytes with SSE framing, 84 with UPSTREAM=file): the floor writes that size unless
# FRAME_BYTES is given; nchan's message is padded to FRAME_BYTES - 28 only where it can be (its
# unpadded message is about 105 bytes, so it stays larger than the relay's frame).
# Its reports are OUT/flagrelay-eval-N-Cc.json (and .metrics, .pass.txt, .perf.txt). E.g. the
# issue 12 target, 1,000 groups x 10 connections: EVAL_CONTEXTS=1000 benches/fanout.sh 10000
# Results: OUT/floor-N.txt (the floor program's line), OUT/{nchan,flagrelay}-N-Cc.json
# (flagrelay-load --json reports), OUT/flagrelay-N-Cc.metrics (the relay's /metrics after the run)
# with the writer pass's figures in OUT/flagrelay-N-Cc.pass.txt, a ratio table per pair with flagrelay/floor and nchan/flagrelay,
# and a summary table at the end (OUT/summary.md). A floor is only compared with the run it was
# measured in.
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
nchan_run=${NCHAN_RUN:-$repo/benches/nchan/run.sh}
key=sdk-srv-bench-fanout-0001
redis_port=${REDIS_PORT:-16390}
if [ -z "${UPSTREAM:-}" ]; then command -v redis-server >/dev/null && UPSTREAM=redis || UPSTREAM=file; fi

servers=${SERVERS:-floor nchan flagrelay}
runs() { [[ " $servers " == *" $1 "* ]]; }
need=(jq taskset curl); runs floor && need+=(gcc); runs flagrelay && [ "$UPSTREAM" = redis ] && need+=(redis-server)
for t in "${need[@]}"; do
  command -v "$t" >/dev/null || { echo "fanout.sh needs $t (Debian: apt-get install -y jq util-linux curl gcc redis-server)" >&2; exit 1; }
done
eval_contexts=${EVAL_CONTEXTS:-}
if [ -n "$eval_contexts" ]; then
  # Measured with the load tool (100 clients, 10 contexts): 69 bytes with the Redis upstream, 84
  # with the file upstream (its event ids are longer).
  frame_bytes=${FRAME_BYTES:-${EVAL_FRAME_BYTES:-$([ "$UPSTREAM" = redis ] && echo 69 || echo 84)}}
  fr_name=flagrelay-eval   # report file prefix
  fr_what="flagrelay eval stream, $eval_contexts contexts"
else
  frame_bytes=${FRAME_BYTES:-248}
  fr_name=flagrelay
  fr_what=flagrelay
fi
client_key=sdk-js-bench-fanout-0001
# The relay and the load tool (its own workspace package, benches/load).
tdir=${CARGO_TARGET_DIR:-$repo/target}
if [ -n "${RELAY_BIN:-}" ]; then
  cargo build --release -p flagrelay-load >&2
  relay=$RELAY_BIN
else
  cargo build --release -p flagrelay -p flagrelay-load >&2
  relay=$tdir/release/flagrelay
fi
load=$tdir/release/flagrelay-load
mkdir -p "$out"
work=$(mktemp -d "${TMPDIR:-/tmp}/flagrelay-fanout.XXXXXX")
export NCHAN_DIR=$work/nchan
relay_pid=
cleanup() {
  [ -n "$relay_pid" ] && kill -TERM "$relay_pid" 2>/dev/null && wait "$relay_pid" 2>/dev/null || true
  "$nchan_run" stop 2>/dev/null || true
  [ -f "$work/redis.pid" ] && kill -TERM "$(cat "$work/redis.pid")" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
ulimit -n "$(ulimit -Hn)"

if [ "$UPSTREAM" = redis ]; then
  upstream_toml="kind = \"redis\"
url = \"redis://127.0.0.1:$redis_port\""
  trigger="redis://127.0.0.1:$redis_port"
else
  upstream_toml="kind = \"file\"
path = \"$work/flags.json\"
poll_interval_ms = 10"
  trigger="file:$work/flags.json"
fi
cat > "$work/flagrelay.toml" <<TOML
listen = "127.0.0.1:$rport"
admin_listen = "127.0.0.1:$((rport + 1))"
log_level = "warn"
[upstream]
$upstream_toml
[[environments]]
id = "bench"
server_keys = ["$key"]
client_keys = ["$client_key"]
[sse]
heartbeat_secs = 15
max_connections = 0
TOML

write_flags() {
  cat > "$work/flags.json" <<'JSON'
{"bench":{"bench-flag":{"key":"bench-flag","enabled":true,"variants":[{"key":"on","name":"On"},{"key":"off"}],"rules":[{"defaultRule":true,"variantSplits":[{"variantKey":"on","split":100}]}]}}}
JSON
}

# Other benchmarks on the same 2 vCPUs spoil both sides: before every run wait (up to QUIET_WAIT
# seconds, default 900) until the machine is below QUIET_PCT (15) % of a core busy, and run a
# measurement again (up to RETRIES=2 times) if the tool saw more than that much other load.
tck=$(getconf CLK_TCK)
busy() { awk '/^cpu /{print $2+$3+$4+$7+$8+$9}' /proc/stat; }
wait_quiet() {
  local waited=0 a b pct
  while :; do
    a=$(busy); sleep 2; b=$(busy); pct=$(( (b - a) * 100 / (2 * tck) ))
    [ "$pct" -lt "${QUIET_PCT:-15}" ] && return 0
    if [ "$waited" -ge "${QUIET_WAIT:-900}" ]; then echo "machine still busy ($pct % of a core): running anyway" >&2; return 0; fi
    [ $((waited % 30)) = 0 ] && echo "waiting for a quiet machine ($pct % of a core busy)" >&2
    waited=$((waited + 2))
  done
}
disturbed() { command -v jq >/dev/null && jq -e ".other_load_changes_pct > ${QUIET_PCT:-15} or .other_load_idle_pct > ${QUIET_PCT:-15}" "$1" >/dev/null; }

wait_gone() { for _ in $(seq 100); do kill -0 "$1" 2>/dev/null || return 0; sleep 0.1; done; }

floor_bin=$work/fanout_write
if runs floor; then gcc -O2 -o "$floor_bin" "$repo/benches/floor/fanout_write.c"; fi
# floor_field FILE KEY: a number from the floor program's line ("sender cpu/write=1234 ns", "median 5.67 ms").
floor_cpu_us() { sed -n 's/.*sender cpu\/write=\([0-9.]*\) ns.*/\1/p' "$1" | awk '{printf "%.2f", $1 / 1000}'; }
floor_event_ms() { sed -n 's/.*sockets: median \([0-9.]*\) ms.*/\1/p' "$1"; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "" || b == "" || b + 0 == 0) print "-"; else printf "%.2f", a / b }'; }

for n in "${sizes[@]}"; do
  if runs floor; then
    wait_quiet
    echo "== N=$n: the floor (one write() of $frame_bytes bytes per socket, $changes rounds)" >&2
    "$floor_bin" "$n" "$changes" "$frame_bytes" drain | tee "$out/floor-$n.txt" >&2
  fi
  for c in $cores_list; do
    if [ "$c" = 1 ]; then cpus=0; gen=(--client-cpus 1); else cpus=0-$((c - 1)); gen=(); fi
    # LOAD_SPIN=1: the load tool busy-polls (never sleeps, so no server write has to wake it),
    # on 1-server-core runs only, where it has cpu 1 to itself.
    if [ -n "${LOAD_SPIN:-}" ] && [ "$c" = 1 ]; then gen+=(--spin); fi
    common=(-n "$n" -m "$changes" --idle-secs "$idle" --sources "$sources" "${gen[@]}")

    for attempt in $(seq 0 "${RETRIES:-2}"); do
    runs nchan || break
    wait_quiet
    echo "== N=$n, $c server core(s): nchan" >&2
    WORKERS=$c taskset -c "$cpus" "$nchan_run" start "$nport" >&2
    chan=bench$RANDOM$RANDOM
    "$load" "${common[@]}" --label "nchan, $c core(s), N=$n" \
      --url "http://127.0.0.1:$nport/sub?id=$chan" --trigger "nchan:http://127.0.0.1:$nport/pub?id=$chan" \
      --payload-bytes $((frame_bytes - 28)) --allow-failed $((n / 20)) --pid "$("$nchan_run" pids | paste -sd,)" --json-out "$out/nchan-$n-${c}c.json"
    master=$(cat "$NCHAN_DIR/nginx.pid"); "$nchan_run" stop; wait_gone "$master"
    disturbed "$out/nchan-$n-${c}c.json" || break
    echo "(other load during the run: measuring again)" >&2
    done

    for attempt in $(seq 0 "${RETRIES:-2}"); do
    runs flagrelay || break
    wait_quiet
    echo "== N=$n, $c server core(s): $fr_what ($UPSTREAM upstream)" >&2
    write_flags
    if [ "$UPSTREAM" = redis ]; then
      # A fresh, empty Redis per run, on the load tool's cpu when the server has one core.
      taskset -c "$([ "$c" = 1 ] && echo 1 || echo "0-$((c - 1))")" redis-server --port "$redis_port" --bind 127.0.0.1 \
        --save '' --appendonly no --daemonize yes --pidfile "$work/redis.pid" --dir "$work" >/dev/null
      for _ in $(seq 50); do [ -s "$work/redis.pid" ] && break; sleep 0.1; done
    fi
    TOKIO_WORKER_THREADS=$c taskset -c "$cpus" "$relay" --config "$work/flagrelay.toml" 2>"$work/relay.log" &
    relay_pid=$!
    # Ready once it serves (a fresh Redis environment becomes ready with the tool's first write).
    for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$((rport + 1))/healthz" && break; sleep 0.1; done
    perf_pid=
    if [ -n "${PERF:-}" ]; then
      # A flat profile of the relay over the whole run (this VM has no hardware counters).
      perf record -q -F 1999 -e cpu-clock -p "$relay_pid" -o "$out/$fr_name-$n-${c}c.perf.data" 2>/dev/null &
      perf_pid=$!
    fi
    if [ -n "$eval_contexts" ]; then
      stream=(--url "http://127.0.0.1:$rport/api/v1/eval/stream/$client_key/user/{ctx}" --contexts "$eval_contexts" --marker-in variant-key)
    else
      stream=(--url "http://127.0.0.1:$rport/api/sdk/v1/features" --key "$key")
    fi
    "$load" "${common[@]}" --label "$fr_what, $c core(s), N=$n" \
      "${stream[@]}" --trigger "$trigger" --feature bench/bench-flag \
      --pid "$relay_pid" --json-out "$out/$fr_name-$n-${c}c.json"
    if [ -n "$perf_pid" ]; then
      kill -INT "$perf_pid"; wait "$perf_pid" 2>/dev/null || true
      perf report -i "$out/$fr_name-$n-${c}c.perf.data" --no-children --sort sym --stdio 2>/dev/null | grep -v '^#' | grep -v '^$' | head -40 > "$out/$fr_name-$n-${c}c.perf.txt" || true
    fi
    # The relay's own view of its passes: each shard's pass, and first start -> last end per change.
    curl -s "http://127.0.0.1:$((rport + 1))/metrics" > "$out/$fr_name-$n-${c}c.metrics" || true
    awk '/^flagrelay_fanout_pass(_span)?_seconds_(sum|count)\{/ { split($1, k, "{"); v[k[1]] = $2 }
      END { if (v["flagrelay_fanout_pass_seconds_count"] > 0 && v["flagrelay_fanout_pass_span_seconds_count"] > 0)
        printf "writer pass: %d shard passes, mean %.2f ms each; %d changes, mean span %.2f ms from the first shard start to the last shard end\n",
          v["flagrelay_fanout_pass_seconds_count"], 1000 * v["flagrelay_fanout_pass_seconds_sum"] / v["flagrelay_fanout_pass_seconds_count"],
          v["flagrelay_fanout_pass_span_seconds_count"], 1000 * v["flagrelay_fanout_pass_span_seconds_sum"] / v["flagrelay_fanout_pass_span_seconds_count"] }' \
      "$out/$fr_name-$n-${c}c.metrics" | tee "$out/$fr_name-$n-${c}c.pass.txt" >&2
    kill -TERM "$relay_pid"; wait "$relay_pid" 2>/dev/null || true; relay_pid=
    if [ -f "$work/redis.pid" ]; then kill -TERM "$(cat "$work/redis.pid")"; wait_gone "$(cat "$work/redis.pid")"; rm -f "$work/redis.pid"; fi
    disturbed "$out/$fr_name-$n-${c}c.json" || break
    echo "(other load during the run: measuring again)" >&2
    done

    fr=$out/$fr_name-$n-${c}c.json nc=$out/nchan-$n-${c}c.json
    if runs nchan && runs flagrelay; then
      echo "== N=$n, $c server core(s): flagrelay / nchan" >&2
      "$load" compare "$nc" "$fr"
    fi
    if runs floor; then
      fl_cpu=$(floor_cpu_us "$out/floor-$n.txt") fl_ms=$(floor_event_ms "$out/floor-$n.txt")
      cpu() { jq -r '.server.cpu_per_delivery_us' "$1"; }
      echo "floor (this run): $fl_cpu µs CPU per write, $fl_ms ms for one event to $n sockets"
      if runs flagrelay; then
        echo "flagrelay/floor, CPU per delivered message: $(ratio "$(cpu "$fr")" "$fl_cpu")"
        echo "flagrelay/floor, trigger -> last client vs one event to all sockets: $(ratio "$(jq -r .last_ms_median "$fr")" "$fl_ms")"
      fi
      if runs nchan; then echo "nchan/floor, CPU per delivered message: $(ratio "$(cpu "$nc")" "$fl_cpu")"; fi
    fi
    if runs nchan && runs flagrelay; then
      echo "nchan/flagrelay, CPU per delivered message: $(ratio "$(jq -r .server.cpu_per_delivery_us "$nc")" "$(jq -r .server.cpu_per_delivery_us "$fr")")"
    fi
    echo
  done
done

files=()
for n in "${sizes[@]}"; do for c in $cores_list; do
  runs nchan && files+=("$out/nchan-$n-${c}c.json")
  runs flagrelay && files+=("$out/$fr_name-$n-${c}c.json")
done; done
{
  [ ${#files[@]} -eq 0 ] || "$load" summary "${files[@]}"
  if runs floor; then
    echo
    echo "| floor (one write per socket, $frame_bytes B) | clients | CPU µs/write | one event to all sockets, median ms |"
    echo "|---|---:|---:|---:|"
    for n in "${sizes[@]}"; do
      echo "| floor | $n | $(floor_cpu_us "$out/floor-$n.txt") | $(floor_event_ms "$out/floor-$n.txt") |"
    done
  fi
} | tee "$out/summary.md"
