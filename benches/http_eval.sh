#!/usr/bin/env bash
# HTTP throughput of the thin-client evaluation endpoints with wrk (Debian package `wrk`), on
# loopback, against a release build, 64 connections, 20 features:
#
#   benches/http_eval.sh                       # both core counts, every endpoint
#   CORES=1 DURATION=30 benches/http_eval.sh
#
# Endpoints: OFREP bulk (POST /ofrep/v1/evaluate/flags, a 5-attribute context, 200 with the whole
# body), OFREP bulk revalidation (the same with a matching If-None-Match, 304), OFREP single flag,
# and the Featureflow thin-client evaluate (GET /api/js/v1/evaluate/{key}/user/{base64}).
# The 20 features mix what real flag sets hold: role lists, e-mail and tier targeting, numeric
# comparisons, percentage rollouts, a date condition, catalogue values, a disabled flag.
#
# Cores: with CORES=1 the relay is pinned to cpu 0 with one tokio worker and wrk to cpu 1; with
# CORES=2 both share cpus 0-1 (the relay gets two workers, wrk two threads). CPU per request is
# the relay's utime+stime from /proc/<pid>/stat over the run divided by the requests wrk
# completed, so it excludes wrk's own CPU.
#
# Environment: CORES ("1 2"), DURATION (20 s), WARMUP (3 s), CONNECTIONS (64), PORT (17800; admin
# +1), OUT (target/http-eval-bench), RELAY_BIN (a relay binary to measure instead of building this
# checkout's, e.g. an older commit's for an A/B run). Results: OUT/summary.md and wrk's raw output per run.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
cores_list=${CORES:-1 2}
duration=${DURATION:-20}
warmup=${WARMUP:-3}
conns=${CONNECTIONS:-64}
port=${PORT:-17800}
out=${OUT:-$repo/target/http-eval-bench}
key=sdk-js-bench-http-0001
command -v wrk >/dev/null || { echo "wrk is missing: apt-get install -y wrk" >&2; exit 1; }

if [ -n "${RELAY_BIN:-}" ]; then
  relay=$RELAY_BIN
else
  cargo build --release --bin flagrelay >&2
  relay=${CARGO_TARGET_DIR:-$repo/target}/release/flagrelay
fi
mkdir -p "$out"
work=$(mktemp -d "${TMPDIR:-/tmp}/flagrelay-http-eval.XXXXXX")
relay_pid=
cleanup() {
  [ -n "$relay_pid" ] && kill -TERM "$relay_pid" 2>/dev/null && wait "$relay_pid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
ulimit -n "$(ulimit -Hn)"

cat > "$work/flagrelay.toml" <<TOML
listen = "127.0.0.1:$port"
admin_listen = "127.0.0.1:$((port + 1))"
log_level = "warn"
[upstream]
kind = "file"
path = "$work/flags.json"
[[environments]]
id = "bench"
client_keys = ["$key"]
TOML

# 20 features: 4 of each of 5 shapes.
python3 - "$work/flags.json" <<'PY'
import json, sys
def default(v): return {"defaultRule": True, "variantSplits": [{"variantKey": v, "split": 100}]}
def rule(conds, v="on"): return {"defaultRule": False, "audience": {"conditions": conds}, "variantSplits": [{"variantKey": v, "split": 100}]}
onoff = [{"key": "on", "name": "On"}, {"key": "off", "name": "Off"}]
fs = {}
for i in range(4):
    fs[f"roles-{i}"] = {"key": f"roles-{i}", "enabled": True, "offVariantKey": "off", "variants": onoff,
        "rules": [rule([{"target": "user_role", "operator": "in", "values": ["pvt_user", "alpha_role", f"team-{i}", "admin"]}]), default("off")]}
    fs[f"email-tier-{i}"] = {"key": f"email-tier-{i}", "enabled": True, "offVariantKey": "off", "variants": onoff,
        "rules": [rule([{"target": "email", "operator": "endsWith", "values": ["@example.com"]},
                        {"target": "tier", "operator": "in", "values": ["gold", "platinum"]},
                        {"target": "age", "operator": "greaterThanOrEqual", "values": [18]}]), default("off")]}
    fs[f"rollout-{i}"] = {"key": f"rollout-{i}", "enabled": True, "offVariantKey": "off", "variants": onoff,
        "rules": [{"defaultRule": True, "variantSplits": [{"variantKey": "on", "split": 25 * (i + 1) - 10}, {"variantKey": "off", "split": 110 - 25 * (i + 1)}]}]}
    fs[f"dated-{i}"] = {"key": f"dated-{i}", "enabled": True, "offVariantKey": "off", "variants": onoff,
        "rules": [rule([{"target": "country", "operator": "equals", "values": ["NZ"]},
                        {"target": "featureflow.date", "operator": "after", "values": ["2026-01-01T00:00:00Z"]}]), default("off")]}
    fs[f"config-{i}"] = {"key": f"config-{i}", "enabled": i != 3, "offVariantKey": "small",
        "variants": [{"key": "small", "value": {"limit": 10, "color": "#cccccc"}}, {"key": "large", "value": {"limit": 100, "color": "#0066cc", "beta": True}}],
        "rules": [rule([{"target": "tier", "operator": "equals", "values": ["gold"]}], "large"), default("small")]}
json.dump({"bench": fs}, open(sys.argv[1], "w"))
PY

context='{"targetingKey":"user-4711","email":"ada@example.com","tier":"gold","age":37,"country":"NZ","user_role":["pvt_user","staff"]}'
user_b64=$(printf '{"id":"user-4711","attributes":{"email":"ada@example.com","tier":"gold","age":37,"country":"NZ","user_role":["pvt_user","staff"]}}' | base64 -w0)
base=http://127.0.0.1:$port

lua() { # lua <file> <method> <body> [extra header lines]
  local f=$1 method=$2 body=$3; shift 3
  {
    echo "wrk.method = \"$method\""
    [ -n "$body" ] && printf 'wrk.body = [[%s]]\n' "$body"
    echo 'wrk.headers["Content-Type"] = "application/json"'
    echo "wrk.headers[\"Authorization\"] = \"Bearer $key\""
    for h in "$@"; do echo "$h"; done
  } > "$f"
}

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
# Busy ticks of the whole machine (user nice system irq softirq steal), to see other load.
machine_ticks() { awk '/^cpu /{print $2 + $3 + $4 + $7 + $8 + $9}' /proc/stat; }
hz=$(getconf CLK_TCK)

summary=$out/summary.md
{
  echo "| endpoint | relay cores | requests/s | p50 latency | p99 latency | relay CPU µs/request | requests/s per relay core | other load (cores) |"
  echo "|---|---|---|---|---|---|---|---|"
} > "$summary"

for c in $cores_list; do
  if [ "$c" = 1 ]; then rcpus=0; wcpus=1; threads=1; else rcpus=0-1; wcpus=0-1; threads=2; fi
  TOKIO_WORKER_THREADS=$c taskset -c "$rcpus" "$relay" --config "$work/flagrelay.toml" >"$out/relay-$c.log" 2>&1 &
  relay_pid=$!
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$((port + 1))/readyz" >/dev/null && break; sleep 0.1; done
  etag=$(curl -s -o /dev/null -D - -X POST "$base/ofrep/v1/evaluate/flags" -H "Authorization: Bearer $key" \
    -H 'Content-Type: application/json' -d "{\"context\":$context}" | awk 'tolower($1)=="etag:"{print $2}' | tr -d '\r')
  lua "$work/bulk.lua" POST "{\"context\":$context}"
  lua "$work/bulk304.lua" POST "{\"context\":$context}" "wrk.headers[\"If-None-Match\"] = '$etag'"
  lua "$work/single.lua" POST "{\"context\":$context}"
  lua "$work/thin.lua" GET ""
  [ -n "$etag" ] || { echo "no ETag from the bulk endpoint" >&2; exit 1; }
  code=$(curl -s -o /dev/null -w '%{http_code}' -X POST "$base/ofrep/v1/evaluate/flags" -H "Authorization: Bearer $key" \
    -H "If-None-Match: $etag" -d "{\"context\":$context}")
  [ "$code" = 304 ] || { echo "revalidation answered $code, not 304" >&2; exit 1; }
  runs=(
    "OFREP bulk (200, 20 flags)|$base/ofrep/v1/evaluate/flags|bulk.lua"
    "OFREP bulk revalidation (304)|$base/ofrep/v1/evaluate/flags|bulk304.lua"
    "OFREP single flag|$base/ofrep/v1/evaluate/flags/email-tier-0|single.lua"
    "thin-client evaluate (20 features)|$base/api/js/v1/evaluate/$key/user/$user_b64|thin.lua"
  )
  for r in "${runs[@]}"; do
    IFS='|' read -r name url script <<<"$r"
    echo "== $c core(s): $name" >&2
    taskset -c "$wcpus" wrk -t"$threads" -c"$conns" -d"${warmup}s" -s "$work/$script" "$url" >/dev/null
    t0=$(cpu_ticks "$relay_pid"); m0=$(machine_ticks)
    TIMEFORMAT='%U %S'
    { time taskset -c "$wcpus" wrk -t"$threads" -c"$conns" -d"${duration}s" --latency -s "$work/$script" "$url" > "$out/wrk-$c-$script.txt"; } 2> "$work/wrk-time"
    t1=$(cpu_ticks "$relay_pid"); m1=$(machine_ticks)
    cat "$out/wrk-$c-$script.txt" >&2
    # CPU used by neither the relay nor wrk during the run: a busy machine skews the figures.
    other=$(awk -v m="$((m1 - m0))" -v r="$((t1 - t0))" -v hz="$hz" -v d="$duration" '{o = ((m - r) / hz - $1 - $2) / d; printf "%.2f", (o < 0 ? 0 : o)}' "$work/wrk-time")
    reqs=$(awk '/requests in/{print $1}' "$out/wrk-$c-$script.txt")
    rps=$(awk '/Requests\/sec/{printf "%.0f", $2}' "$out/wrk-$c-$script.txt")
    p50=$(awk '$1=="50%"{print $2}' "$out/wrk-$c-$script.txt")
    p99=$(awk '$1=="99%"{print $2}' "$out/wrk-$c-$script.txt")
    errors=$(awk '/Non-2xx or 3xx/{print $5}' "$out/wrk-$c-$script.txt")  # wrk counts statuses >= 400
    cpu_us=$(awk -v a="$t0" -v b="$t1" -v hz="$hz" -v n="$reqs" 'BEGIN{printf "%.1f", (b - a) / hz * 1e6 / n}')
    per_core=$(awk -v r="$rps" -v us="$cpu_us" 'BEGIN{printf "%.0f", 1e6 / us}')
    if [ -n "$errors" ]; then echo "error responses in $name: $errors" >&2; exit 1; fi
    echo "| $name | $c | $rps | $p50 | $p99 | $cpu_us | $per_core | $other |" >> "$summary"
  done
  kill -TERM "$relay_pid"; wait "$relay_pid" 2>/dev/null || true; relay_pid=
done
echo >&2
cat "$summary"
