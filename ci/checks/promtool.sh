#!/usr/bin/env bash
# Scrapes /metrics of a relay on the example config and runs `promtool check metrics` on it, then
# `promtool check rules` on every expression of the Grafana dashboard (ci/checks/dashboard_rules.py).
# Usage: bash ci/checks/promtool.sh [path/to/flagrelay]   (default: target/debug/flagrelay)
set -euo pipefail
cd "$(dirname "$0")/../.."
bin=${1:-target/debug/flagrelay}
[ -x "$bin" ] || cargo build --locked --bin flagrelay
if ! command -v promtool >/dev/null 2>&1; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null
fi
log=$(mktemp)
"$bin" --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 --log-format json 2>"$log" &
pid=$!
trap 'kill $pid 2>/dev/null || true; rm -f "$log"' EXIT
admin=""
for _ in $(seq 1 100); do
  admin=$(python3 -c 'import json,sys
for l in open(sys.argv[1]):
    try: v=json.loads(l)
    except Exception: continue
    if v.get("message")=="flagrelay serving": print(v["admin"]); break' "$log" || true)
  [ -n "$admin" ] && break
  sleep 0.1
done
[ -n "$admin" ] || { echo "relay did not start:"; cat "$log"; exit 1; }
out=$(curl -fsS "http://$admin/metrics" | promtool check metrics 2>&1) || { echo "$out"; echo "0 passed, 1 failed"; exit 1; }
# promtool prints lint warnings without failing; show them.
[ -n "$out" ] && echo "$out"
echo "promtool check metrics: OK"
rules=$(mktemp --suffix .yml)
trap 'kill $pid 2>/dev/null || true; rm -f "$log" "$rules"' EXIT
python3 ci/checks/dashboard_rules.py helm/flagrelay/dashboards/flagrelay.json >"$rules"
out=$(promtool check rules "$rules" 2>&1) || { echo "$out"; echo "1 passed, 1 failed"; exit 1; }
echo "promtool check rules (the dashboard's expressions): OK"
echo "2 passed, 0 failed"
