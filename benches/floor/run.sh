#!/usr/bin/env bash
# Origin: flagrelay's own benchmark harness (team reference material, bench/floor), kept here so
# benches/fanout.sh measures the floor in the same run from a plain clone.
# The physical floor of SSE fan-out on this machine: the CPU cost of one write() of SIZE bytes to each of N
# already-open loopback TCP sockets whose peers read everything (the realistic case), measured by a minimal C
# program. Compare a server's CPU per delivered message with this figure, measured in the same run.
#   run.sh N [ROUNDS=30] [SIZE=200]     e.g. run.sh 10000
# Prints one line; "sender cpu/write" is the figure to compare (it includes the loopback receive path,
# which the kernel runs inline in the sender). Needs gcc; the sender is pinned to CPU 0, the reader to CPU 1.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
n=${1:?usage: run.sh N [ROUNDS] [SIZE]}; rounds=${2:-30}; size=${3:-200}
bin=${TMPDIR:-/tmp}/fanout_write.$$
gcc -O2 -o "$bin" "$here/fanout_write.c"
trap 'rm -f "$bin"' EXIT
ulimit -n 20000 2>/dev/null || true
"$bin" "$n" "$rounds" "$size" drain
