#!/usr/bin/env bash
# Builds and runs flagrelay's fuzz targets (the flagrelay-fuzz crate beside this script).
#
#   bash fuzz/run.sh list                   the targets, one a line
#   bash fuzz/run.sh TARGET|all [SECONDS]   AFL++ campaigns, one target after another (SECONDS
#                                           each, default 600; 0 = no time limit, then set
#                                           FUZZ_EXECS). Needs cargo-afl (below).
#   bash fuzz/run.sh replay [TARGET...]     plain build (no cargo-afl): every seed, committed
#                                           corpus input and saved AFL queue/crash/hang input
#                                           through its target; fails on a crash or a hang
#   bash fuzz/run.sh smoke                  replay of the seeds and committed corpus plus
#                                           FUZZ_SMOKE_MUTATIONS (default 200) deterministic
#                                           mutations of each: CI's step (.ci/run)
#
# Environment:
#   FUZZ_EXECS   stop each campaign after about this many executions (afl-fuzz -E)
#   FUZZ_JOBS    afl-fuzz instances per target (one main, the rest secondaries), default 1
#   FUZZ_NICE    nice level of the campaigns, default 19
#   FUZZ_TIMEOUT_MS  an execution longer than this is a hang (afl-fuzz -t), default 5000: the
#                campaigns run at nice 19 beside other work, where a 10 ms input can be starved
#                past 1 s (the first campaigns saved three such "hangs"; each replays in 10 ms)
#   FUZZ_OUT     AFL output, default fuzz/out: FUZZ_OUT/TARGET/<instance>/{queue,crashes,hangs,
#                fuzzer_stats}; each campaign's figures are appended to FUZZ_OUT/summary.tsv
#   FUZZ_SHARE_TEST_BUILD=1  replay/smoke: build alongside the test build's targets, reusing what
#                `cargo test` built (CI sets it; see build_plain)
#   CARGO_TARGET_DIR  as for cargo (default target/); the AFL build goes to CARGO_TARGET_DIR/afl
#
# The full campaign of issue 10 (10^7 executions per target, hours on two cores):
#   FUZZ_EXECS=10000000 bash fuzz/run.sh all 0
#
# Installing the fuzzer (AFL++ is built by cargo-afl itself; Debian's afl++ 4.04c does not work
# with cargo-afl): nice -n 10 cargo install cargo-afl --locked && cargo afl config --build
set -euo pipefail
cd "$(dirname "$0")/.."

targets=(flags_file feature redis_message thin_user ofrep_body sse_head last_event_id rule_engine relay_stream)
target_dir=${CARGO_TARGET_DIR:-target}
out=${FUZZ_OUT:-fuzz/out}

die() { echo "fuzz/run.sh: $*" >&2; exit 2; }

is_target() {
  local t
  for t in "${targets[@]}"; do [ "$t" = "$1" ] && return 0; done
  return 1
}

dict_of() {
  case "$1" in
    sse_head|last_event_id) echo fuzz/dict/http.dict ;;
    *) echo fuzz/dict/json.dict ;;
  esac
}

# Plain binaries: each replays the paths it is given (fuzz/src/replay.rs). With
# FUZZ_SHARE_TEST_BUILD=1 (CI, after `cargo test`) the build selects the test build's packages
# and test targets too (already built), so cargo unifies features as that build did and reuses
# its artifacts: only this crate is compiled. Alone, the relay's dev-dependencies (reqwest, ...)
# add features to shared crates, and half the dependency tree would be built a second time.
build_plain() {
  if [ "${FUZZ_SHARE_TEST_BUILD:-}" = 1 ]; then
    cargo build --locked -p flagrelay -p flagrelay-load -p flagrelay-fuzz --bins --tests
  else
    cargo build --locked -p flagrelay-fuzz --bins
  fi
}

# Every saved input of a target that exists: seeds, committed corpus, AFL's output.
inputs_of() {
  local t=$1 d
  for d in "fuzz/seeds/$t" "fuzz/corpus/$t" "$out/$t"/*/queue "$out/$t"/*/crashes "$out/$t"/*/hangs; do
    [ -d "$d" ] && echo "$d"
  done
  return 0
}

replay() {
  local mutate=$1; shift
  local chosen=("$@") t failed=0 dirs
  [ ${#chosen[@]} -gt 0 ] || chosen=("${targets[@]}")
  for t in "${chosen[@]}"; do is_target "$t" || die "unknown target $t (bash fuzz/run.sh list)"; done
  build_plain
  for t in "${chosen[@]}"; do
    if [ "$mutate" -gt 0 ]; then
      dirs=("fuzz/seeds/$t")
      [ -d "fuzz/corpus/$t" ] && dirs+=("fuzz/corpus/$t")
      "$target_dir/debug/$t" --mutate "$mutate" "${dirs[@]}" || failed=1
    else
      mapfile -t dirs < <(inputs_of "$t")
      "$target_dir/debug/$t" "${dirs[@]}" || failed=1
    fi
  done
  [ "$failed" = 0 ] || { echo "fuzz/run.sh: a target failed (FAIL lines above)" >&2; exit 1; }
}

stat_of() { sed -n "s/^$2 *: *//p" "$1" 2>/dev/null | head -n 1; }

campaign() {
  local t=$1 secs=$2 jobs=${FUZZ_JOBS:-1} nice_level=${FUZZ_NICE:-19}
  local bin="$target_dir/afl/release/$t" dir="$out/$t" seeds="$out/$t.in" i name
  local args=(-o "$dir" -x "$(dict_of "$t")" -t "${FUZZ_TIMEOUT_MS:-5000}" -m none)
  [ -n "${FUZZ_EXECS:-}" ] && args+=(-E "$FUZZ_EXECS")
  [ "$secs" -gt 0 ] && args+=(-V "$secs")
  [ -n "${FUZZ_EXECS:-}" ] || [ "$secs" -gt 0 ] || die "no limit: give SECONDS > 0 or FUZZ_EXECS"
  # The seeds and the committed corpus, as one input directory (a resumed campaign ignores it).
  rm -rf "$seeds" && mkdir -p "$seeds" "$dir"
  cp "fuzz/seeds/$t"/* "$seeds"/
  if [ -d "fuzz/corpus/$t" ]; then cp "fuzz/corpus/$t"/* "$seeds"/; fi
  echo "== $t: ${secs}s${FUZZ_EXECS:+, at most $FUZZ_EXECS execs}, $jobs job(s), nice $nice_level -> $dir" >&2
  local pids=()
  for ((i = 0; i < jobs; i++)); do
    if [ "$i" = 0 ]; then name=(-M main); else name=(-S "s$i"); fi
    AFL_SKIP_CPUFREQ=1 AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES=1 AFL_NO_AFFINITY=1 AFL_NO_UI=1 \
      AFL_AUTORESUME=1 AFL_SUPPRESS_BUGGY_SIGS=1 \
      nice -n "$nice_level" cargo afl fuzz -i "$seeds" "${args[@]}" "${name[@]}" -- "$bin" \
      >"$dir/afl-${name[1]}.log" 2>&1 &
    pids+=($!)
  done
  local rc=0 p
  for p in "${pids[@]}"; do wait "$p" || rc=$?; done
  [ "$rc" = 0 ] || { tail -n 30 "$dir/afl-main.log" >&2; die "afl-fuzz failed for $t (log: $dir/afl-main.log)"; }
  # Figures of the main instance (execs summed over instances).
  local s="$dir/main/fuzzer_stats" execs=0 e crashes=0 hangs=0 c h
  for e in "$dir"/*/fuzzer_stats; do
    execs=$((execs + $(stat_of "$e" execs_done)))
    c=$(stat_of "$e" saved_crashes); crashes=$((crashes + ${c:-0}))
    h=$(stat_of "$e" saved_hangs); hangs=$((hangs + ${h:-0}))
  done
  local line
  line=$(printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s' "$(date -u +%FT%TZ)" "$t" "$execs" "$(stat_of "$s" execs_per_sec)" \
    "$crashes" "$hangs" "$(stat_of "$s" corpus_count)" "$(stat_of "$s" run_time)")
  [ -f "$out/summary.tsv" ] || printf 'date\ttarget\texecs\texecs_per_sec\tcrashes\thangs\tcorpus\trun_time_s\n' >"$out/summary.tsv"
  echo "$line" >>"$out/summary.tsv"
  echo "$line" >&2
  [ "$crashes" = 0 ] && [ "$hangs" = 0 ]
}

cmd=${1:-}
case "$cmd" in
  list) printf '%s\n' "${targets[@]}" ;;
  replay) shift; replay 0 "$@" ;;
  smoke) replay "${FUZZ_SMOKE_MUTATIONS:-200}" ;;
  all|flags_file|feature|redis_message|thin_user|ofrep_body|sse_head|last_event_id|rule_engine|relay_stream)
    secs=${2:-600}
    [[ "$secs" =~ ^[0-9]+$ ]] || die "SECONDS must be a number"
    cargo afl --version >/dev/null 2>&1 || die "cargo-afl is not installed: nice -n 10 cargo install cargo-afl --locked && cargo afl config --build"
    cargo afl build --release --locked -p flagrelay-fuzz --bins --target-dir "$target_dir/afl"
    if [ "$cmd" = all ]; then chosen=("${targets[@]}"); else chosen=("$cmd"); fi
    bad=0
    for t in "${chosen[@]}"; do campaign "$t" "$secs" || bad=1; done
    [ "$bad" = 0 ] || { echo "fuzz/run.sh: crashes or hangs saved under $out (replay them: bash fuzz/run.sh replay)" >&2; exit 1; }
    ;;
  *) sed -n '2,/^set /p' "$0" | sed -n 's/^# \{0,1\}//p'; [ -z "$cmd" ] || exit 2 ;;
esac
