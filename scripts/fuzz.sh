#!/usr/bin/env bash
# Fuzzing: builds every target of fuzz/ (cargo fuzz layout, libFuzzer) once, runs each
# for SECONDS (default 20) from its committed seeds in fuzz/corpus/<target>, prints the
# executions per target, and exits non-zero if any target crashed (a panic, a failed
# property, a timeout or too much memory), naming the input that did it.
#
#   scripts/fuzz.sh [SECONDS-PER-TARGET] [TARGET...]
#
# Works on the stable toolchain (RUSTC_BOOTSTRAP=1 lets it take the flags cargo-fuzz
# passes; no sanitizer, which needs nightly's -Zsanitizer: the library has no unsafe
# code of its own, so the sanitizer would watch only dependencies). Installs cargo-fuzz
# from crates.io if missing.
#
# Kept between runs on a machine, in $LOGAGENT_CACHE like the Kafka jars: the build
# (FUZZ_TARGET_DIR, default $LOGAGENT_CACHE/fuzz-target: a first build compiles every
# dependency with coverage instrumentation, librdkafka and libFuzzer included, 12 min on
# one core; later ones only the agent's crate and the targets) and the inputs found
# (FUZZ_CORPUS_DIR, default $LOGAGENT_CACHE/fuzz-corpus/<target>: each run goes on from
# what the runs before found; fuzz/corpus/<target> holds the committed seeds).
# Crashes go to fuzz/artifacts/<target>/. FUZZ_MINIMIZE=1 first shrinks each target's
# kept inputs to a set with the same coverage (libFuzzer's -merge=1): a run starts by
# running every kept input, which after long local runs can take a short run's time.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

secs=${1:-20}
shift || true
CARGO_FUZZ_VERSION=0.13.2

if ! cargo fuzz --version >/dev/null 2>&1; then
  log "installing cargo-fuzz $CARGO_FUZZ_VERSION from crates.io"
  cargo install --locked cargo-fuzz --version "$CARGO_FUZZ_VERSION"
fi

export RUSTC_BOOTSTRAP=1
FUZZ_TARGET_DIR=${FUZZ_TARGET_DIR:-$LOGAGENT_CACHE/fuzz-target}
FUZZ_CORPUS_DIR=${FUZZ_CORPUS_DIR:-$LOGAGENT_CACHE/fuzz-corpus}
# Always these flags: other ones would rebuild everything.
flags=(--sanitizer none --codegen-units 16 --target-dir "$FUZZ_TARGET_DIR")
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  mapfile -t targets < <(cd fuzz && cargo fuzz list)
fi

log "building ${#targets[@]} fuzz targets ($(rustc --version))"
start=$(date +%s)
if [ ${#targets[@]} -eq 1 ]; then
  (cd fuzz && cargo fuzz build "${flags[@]}" "${targets[0]}")
else
  (cd fuzz && cargo fuzz build "${flags[@]}")
fi
log "fuzz build: $(($(date +%s) - start)) s"

bin=$FUZZ_TARGET_DIR/x86_64-unknown-linux-gnu/release
failed=()
summary=()
for t in "${targets[@]}"; do
  work=$FUZZ_CORPUS_DIR/$t
  artifacts=fuzz/artifacts/$t
  mkdir -p "$work" "$artifacts"
  if [ "${FUZZ_MINIMIZE:-0}" = 1 ] && [ -n "$(ls -A "$work")" ]; then
    before=$(find "$work" -type f | wc -l)
    rm -rf "$work.min" && mkdir "$work.min"
    "$bin/$t" -merge=1 -timeout=30 -rss_limit_mb=2048 "$work.min" "$work" >/dev/null 2>&1
    rm -rf "$work" && mv "$work.min" "$work"
    log "$t: kept inputs minimized, $before -> $(find "$work" -type f | wc -l)"
  fi
  out=$(mktemp)
  log "fuzzing $t for $secs s"
  rc=0
  # -timeout: one input taking 30 s is a hang (a crash with its input kept).
  "$bin/$t" "$work" "fuzz/corpus/$t" -max_total_time="$secs" -timeout=30 \
    -rss_limit_mb=2048 -print_final_stats=1 -artifact_prefix="$artifacts/" \
    >"$out" 2>&1 || rc=$?
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$out" | tail -1)
  rate=$(sed -n 's/.*exec\/s: \([0-9]*\).*/\1/p' "$out" | tail -1)
  rss=$(sed -n 's/^stat::peak_rss_mb: *//p' "$out" | tail -1)
  units=$(find "$work" -type f | wc -l)
  if [ "$rc" -eq 0 ]; then
    result=ok
  else
    # The panic (or libFuzzer's reason) without the backtrace and the input's dump.
    { grep -m1 -A4 'panicked at' "$out" || grep -m1 -B2 -A2 'ERROR: libFuzzer' "$out" || tail -20 "$out"; } | cut -c1-500
    crash=$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$out" | tail -1)
    result="CRASH (exit $rc): ${crash:-no input written}"
    failed+=("$t: $result")
  fi
  summary+=("$(printf '%-14s %12s execs %8s exec/s %6s corpus %6s MB  %s' "$t" "${execs:-?}" \
    "${rate:-?}" "$units" "${rss:-?}" "$result")")
  rm -f "$out"
done

echo
echo "fuzzing, $secs s per target:"
printf '  %s\n' "${summary[@]}"
if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzzing found ${#failed[@]} crash(es); reproduce one with" \
    "$bin/TARGET CRASH-FILE:" >&2
  printf '  %s\n' "${failed[@]}" >&2
  exit 1
fi
