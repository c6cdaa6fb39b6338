#!/usr/bin/env bash
# Origin: flagrelay's own benchmark harness (team reference material, bench/nchan), kept here so
# benches/fanout.sh runs from a plain clone. nchan and nginx themselves come from Debian packages.
# nchan as an SSE fan-out baseline on loopback, for side-by-side benchmarks with flagrelay.
#
#   run.sh start [PORT]   install nginx + libnginx-mod-nchan if missing, start nchan on 127.0.0.1:PORT (default 18080)
#   run.sh stop           stop it (by the pid it wrote)
#   run.sh pids           print the nginx worker pids (for CPU/RSS accounting)
#
# WORKERS=N sets nginx worker processes (default 1: compare it with flagrelay on one worker thread, or give both 2).
# NCHAN_DIR sets the working folder (default: flagrelay-nchan under $TMPDIR or /tmp).
#
# Publish:    curl -s -X POST --data-binary @event.json 'http://127.0.0.1:PORT/pub?id=CHANNEL'
# Subscribe:  curl -sN -H 'Accept: text/event-stream' 'http://127.0.0.1:PORT/sub?id=CHANNEL'
# Each subscriber first gets a ": hi" comment, then "id: ..." and "data: ..." per published message.
# With the memory store the publish request returns only after nchan has written to every local subscriber.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
dir=${NCHAN_DIR:-${TMPDIR:-/tmp}/flagrelay-nchan}
port=${2:-18080}
workers=${WORKERS:-1}

install() {
  if ! command -v nginx >/dev/null || ! dpkg -s libnginx-mod-nchan >/dev/null 2>&1; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx libnginx-mod-nchan >/dev/null
  fi
}

case "${1:-}" in
  start)
    install
    mkdir -p "$dir/tmp"
    ln -sfn "$(dirname "$(dpkg -L libnginx-mod-nchan | grep 'ngx_nchan_module\.so$')")" "$dir/modules"
    sed -e "s|@DIR@|$dir|g" -e "s|@PORT@|$port|g" -e "s|@WORKERS@|$workers|g" "$here/nginx.conf.in" > "$dir/nginx.conf"
    nginx -t -q -p "$dir/" -c "$dir/nginx.conf"
    nginx -p "$dir/" -c "$dir/nginx.conf"
    for _ in $(seq 50); do curl -sf "http://127.0.0.1:$port/ping" >/dev/null && break; sleep 0.1; done
    echo "nchan listening on 127.0.0.1:$port (master pid $(cat "$dir/nginx.pid"), workers: $("$0" pids | tr '\n' ' '))"
    ;;
  stop)
    [ -f "$dir/nginx.pid" ] && kill -TERM "$(cat "$dir/nginx.pid")" && rm -f "$dir/nginx.pid"
    ;;
  pids)
    pgrep -P "$(cat "$dir/nginx.pid")"
    ;;
  *)
    sed -n '4,16p' "$0"; exit 2 ;;
esac
