#!/usr/bin/env bash
# Scrapes /metrics of a relay on the example config and runs `promtool check metrics` on it, then
# `promtool check rules` on every expression of the Grafana dashboard (ci/checks/dashboard_rules.py),
# and runs those expressions against a Prometheus server scraping the relay: each must return series.
# Usage: bash ci/checks/promtool.sh [path/to/flagrelay]   (default: target/debug/flagrelay)
set -euo pipefail
cd "$(dirname "$0")/../.."
bin=${1:-target/debug/flagrelay}
[ -x "$bin" ] || cargo build --locked --bin flagrelay
if ! command -v promtool >/dev/null 2>&1 || ! command -v prometheus >/dev/null 2>&1; then
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
# The dashboard's expressions against a Prometheus server scraping the relay: each must return
# series (the Debian package that brings promtool brings the server too).
pdir=$(mktemp -d)
trap 'kill $pid ${ppid:-} 2>/dev/null || true; rm -rf "$log" "$rules" "$pdir"' EXIT
pport=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
cat >"$pdir/prometheus.yml" <<EOF
global: {scrape_interval: 1s, evaluation_interval: 1s}
scrape_configs:
  - job_name: flagrelay
    static_configs: [{targets: ["$admin"]}]
EOF
prometheus --config.file="$pdir/prometheus.yml" --storage.tsdb.path="$pdir/data" \
  --web.listen-address="127.0.0.1:$pport" >"$pdir/prometheus.log" 2>&1 &
ppid=$!
out=$(python3 ci/checks/dashboard_rules.py --query "http://127.0.0.1:$pport" helm/flagrelay/dashboards/flagrelay.json 2>&1) \
  || { echo "$out"; tail -5 "$pdir/prometheus.log"; echo "2 passed, 1 failed"; exit 1; }
echo "$out"
echo "3 passed, 0 failed"
