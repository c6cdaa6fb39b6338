#!/usr/bin/env bash
# Bytes on the wire and relay CPU per request of the server-SDK poll, compressed (gzip, br) and
# not, for flag sets of 20, 500 and 5,000 features (issue 15 item 1), with wrk (Debian `wrk`)
# against a release build on loopback, relay pinned to cpu 0 with one worker, wrk on cpu 1:
#
#   benches/compression.sh                  # N = 20 500 5000
#   NS="5000" DURATION=20 benches/compression.sh
#
# Per N and coding: the body size a client downloads (curl's size_download with that
# Accept-Encoding), the time of the first request for that coding (it compresses the snapshot
# once; later requests share the bytes), and over a wrk run of DURATION s with 16 connections:
# requests/s and the relay's CPU per request (utime+stime from /proc/<pid>/stat / requests).
# Environment: NS, DURATION (10), CONNECTIONS (16), PORT (17820; admin +1), OUT
# (target/compression-bench), RELAY_BIN (a relay binary to measure instead of building this one).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
ns=${NS:-20 500 5000}
duration=${DURATION:-10}
conns=${CONNECTIONS:-16}
port=${PORT:-17820}
out=${OUT:-$repo/target/compression-bench}
key=sdk-srv-bench-compress-0001
command -v wrk >/dev/null || { echo "wrk is missing: apt-get install -y wrk" >&2; exit 1; }
if [ -n "${RELAY_BIN:-}" ]; then
  relay=$RELAY_BIN
else
  cargo build --release --bin flagrelay >&2
  relay=${CARGO_TARGET_DIR:-$repo/target}/release/flagrelay
fi
mkdir -p "$out"
work=$(mktemp -d "${TMPDIR:-/tmp}/flagrelay-compress.XXXXXX")
relay_pid=
cleanup() {
  [ -n "$relay_pid" ] && kill -TERM "$relay_pid" 2>/dev/null && wait "$relay_pid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
hz=$(getconf CLK_TCK)
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
base=http://127.0.0.1:$port/api/sdk/v1/features
summary=$out/summary.md
{
  echo "| features | coding | body bytes | vs identity | first request ms (compresses once) | requests/s | relay CPU µs/request |"
  echo "|---:|---|---:|---:|---:|---:|---:|"
} > "$summary"

for n in $ns; do
  # N features shaped like real ones: rules with role lists and e-mail targeting, rollouts,
  # JSON variant values (keys and values vary, as they do in real flag sets).
  python3 - "$work/flags.json" "$n" <<'PY'
import json, sys, random
random.seed(42)
n = int(sys.argv[2])
onoff = [{"key": "on", "name": "On"}, {"key": "off", "name": "Off"}]
fs = {}
for i in range(n):
    k = f"{random.choice(['checkout', 'search', 'billing', 'onboarding', 'profile'])}-{random.choice(['v2', 'beta', 'redesign', 'limit', 'banner'])}-{i}"
    shape = i % 3
    if shape == 0:
        rules = [{"defaultRule": False, "audience": {"conditions": [{"target": "user_role", "operator": "in", "values": random.sample(["pvt_user", "alpha_role", "admin", "staff", "beta", "gold"], 3)}]},
                  "variantSplits": [{"variantKey": "on", "split": 100}]},
                 {"defaultRule": True, "variantSplits": [{"variantKey": "off", "split": 100}]}]
        variants = onoff
    elif shape == 1:
        p = random.randint(1, 99)
        rules = [{"defaultRule": True, "variantSplits": [{"variantKey": "on", "split": p}, {"variantKey": "off", "split": 100 - p}]}]
        variants = onoff
    else:
        rules = [{"defaultRule": False, "audience": {"conditions": [{"target": "email", "operator": "endsWith", "values": [f"@{random.choice(['example.com', 'corp.test', 'acme.io'])}"]}]},
                  "variantSplits": [{"variantKey": "large", "split": 100}]},
                 {"defaultRule": True, "variantSplits": [{"variantKey": "small", "split": 100}]}]
        variants = [{"key": "small", "value": {"limit": random.randint(1, 50)}}, {"key": "large", "value": {"limit": random.randint(100, 1000), "color": f"#{random.randint(0, 0xffffff):06x}"}}]
    fs[k] = {"key": k, "enabled": random.random() > 0.1, "offVariantKey": variants[-1]["key"], "variants": variants, "rules": rules}
json.dump({"bench": fs}, open(sys.argv[1], "w"))
PY
  cat > "$work/flagrelay.toml" <<TOML
listen = "127.0.0.1:$port"
admin_listen = "127.0.0.1:$((port + 1))"
log_level = "warn"
[upstream]
kind = "file"
path = "$work/flags.json"
[[environments]]
id = "bench"
server_keys = ["$key"]
TOML
  TOKIO_WORKER_THREADS=1 taskset -c 0 "$relay" --config "$work/flagrelay.toml" >"$out/relay-$n.log" 2>&1 &
  relay_pid=$!
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$((port + 1))/readyz" >/dev/null && break; sleep 0.1; done
  kill -0 "$relay_pid" 2>/dev/null || { echo "the relay did not start:" >&2; cat "$out/relay-$n.log" >&2; exit 1; }
  identity_bytes=
  for coding in identity gzip br; do
    first_ms=$(curl -s -o /dev/null -w '%{time_total}' -H "Authorization: Bearer $key" -H "Accept-Encoding: $coding" "$base" | awk '{printf "%.2f", $1 * 1000}')
    bytes=$(curl -s -o /dev/null -w '%{size_download}' -H "Authorization: Bearer $key" -H "Accept-Encoding: $coding" "$base")
    [ "$coding" = identity ] && identity_bytes=$bytes
    before=$(cpu_ticks "$relay_pid")
    taskset -c 1 wrk -t1 -c"$conns" -d"${duration}s" -H "Authorization: Bearer $key" -H "Accept-Encoding: $coding" "$base" > "$out/wrk-$n-$coding.txt"
    after=$(cpu_ticks "$relay_pid")
    reqs=$(awk '/requests in/{print $1}' "$out/wrk-$n-$coding.txt")
    rps=$(awk '/^Requests\/sec/{printf "%.0f", $2}' "$out/wrk-$n-$coding.txt")
    us=$(awk -v t=$((after - before)) -v hz="$hz" -v r="$reqs" 'BEGIN{printf "%.1f", t / hz * 1e6 / r}')
    ratio=$(awk -v b="$bytes" -v i="$identity_bytes" 'BEGIN{printf "%.3f", b / i}')
    echo "| $n | $coding | $bytes | $ratio | $first_ms | $rps | $us |" >> "$summary"
  done
  kill -TERM "$relay_pid"; wait "$relay_pid" 2>/dev/null || true; relay_pid=
done
cat "$summary"
