#!/usr/bin/env bash
# Added latency per relay hop: a chain Redis -> A -> B -> C of release relays on this machine,
# N SSE clients on one of them at a time, CHANGES upserts through Redis (the relay's writer
# script) per run, measured by flagrelay-load (trigger -> first and -> last delivery). The
# difference between the runs on A, B and C is what each hop adds.
#
#   benches/relay_hops.sh            # N=100 clients, 50 changes per relay
#   N=1000 CHANGES=100 benches/relay_hops.sh
#
# Needs redis-server, curl and jq. Ports: REDIS_PORT (16391), relays 17800/17810/17820 (admin
# +1). Output: OUT (target/relay-hops)/{a,b,c}.json and a table on stdout. NO_BUILD=1 uses the
# release binaries already built.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-100}
CHANGES=${CHANGES:-50}
REDIS_PORT=${REDIS_PORT:-16391}
OUT=${OUT:-target/relay-hops}
for t in redis-server curl jq; do command -v "$t" >/dev/null || { echo "relay_hops.sh needs $t" >&2; exit 1; }; done
[ -n "${NO_BUILD:-}" ] || cargo build --release --locked -p flagrelay -p flagrelay-load >&2
tdir=${CARGO_TARGET_DIR:-target}
relay=$tdir/release/flagrelay
load=$tdir/release/flagrelay-load
mkdir -p "$OUT"
pids=()
# SIGTERM, then wait: a relay drains its streams before it exits and frees its ports.
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
redis-server --port "$REDIS_PORT" --save '' --appendonly no >"$OUT/redis.log" 2>&1 &
pids+=($!)
until redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1; do sleep 0.1; done
url=redis://127.0.0.1:$REDIS_PORT
"$relay" flags import --all config/flags.json --redis-url "$url" >&2
"$relay" --redis-url "$url" --listen 127.0.0.1:17800 --admin-listen 127.0.0.1:17801 --log-level warn >"$OUT/a.log" 2>&1 &
pids+=($!)
"$relay" --relay-url http://127.0.0.1:17800 --listen 127.0.0.1:17810 --admin-listen 127.0.0.1:17811 --log-level warn >"$OUT/b.log" 2>&1 &
pids+=($!)
"$relay" --relay-url http://127.0.0.1:17810 --listen 127.0.0.1:17820 --admin-listen 127.0.0.1:17821 --log-level warn >"$OUT/c.log" 2>&1 &
pids+=($!)
for p in 17801 17811 17821; do until curl -sf "http://127.0.0.1:$p/readyz" >/dev/null; do sleep 0.2; done; done
key=sdk-srv-env-example-production-0001
for r in a:17800 b:17810 c:17820; do
  name=${r%%:*}; port=${r##*:}
  "$load" --url "http://127.0.0.1:$port/api/sdk/v1/features" --key "$key" -n "$N" --changes "$CHANGES" \
    --trigger "$url" --feature production/checkout-button --json >"$OUT/$name.json"
done
echo "| relay | hops from Redis | trigger -> first (median ms) | trigger -> last (median ms) |"
echo "|---|---|---|---|"
h=0
for name in a b c; do
  echo "| $name | $h | $(jq -r '.first_ms_median' "$OUT/$name.json") | $(jq -r '.last_ms_median' "$OUT/$name.json") |"
  h=$((h + 1))
done
