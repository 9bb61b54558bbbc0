#!/usr/bin/env bash
# Runs every fuzz target of fuzz/targets.py for SECONDS each (default 30),
# starting from the committed seeds, and prints per target the inputs run,
# crashes and hangs. New interesting inputs go to a scratch folder, never
# into fuzz/corpus; a crash or hang leaves its input in $FUZZ_OUT (default a
# scratch folder, printed) and makes the script exit 1.
#
#   fuzz/run.sh [SECONDS] [TARGET...]        CI: bounded smoke run
#   FUZZ_JOBS=2 fuzz/run.sh 3600             the long campaign: an hour each, 2 processes
#
# FUZZ_SEED fixes libFuzzer's seed (CI sets it, so a run explores the same
# inputs first each time and a finding is the change's, not the draw's);
# unset, every run draws its own.
set -uo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-30}
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    targets=(safetensors model_config d3sr_json lora torch_pickle image arrays)
fi
out=${FUZZ_OUT:-$(mktemp -d "${TMPDIR:-/tmp}/d3sr-fuzz.XXXXXX")}
jobs=${FUZZ_JOBS:-1}
status=0
total=0
printf '%-14s %12s %8s %6s %6s\n' target inputs seconds crash hang
for target in "${targets[@]}"; do
    mkdir -p "$out/$target/corpus" "$out/$target/findings"
    log="$out/$target/log"
    extra=()
    if [ "$jobs" -gt 1 ]; then extra=(-fork="$jobs" -ignore_crashes=0); fi
    if [ -n "${FUZZ_SEED:-}" ]; then extra+=(-seed="$FUZZ_SEED"); fi
    # -timeout: one input over 60 s is a hang (a loaded CI machine needs the margin); -rss_limit_mb: over 4 GB is a finding too.
    python fuzz/targets.py "$target" "$out/$target/corpus" "fuzz/corpus/$target" \
        -max_total_time="$seconds" -timeout=60 -rss_limit_mb=4096 -max_len=65536 \
        -artifact_prefix="$out/$target/findings/" -print_final_stats=1 "${extra[@]}" >"$log" 2>&1
    rc=$?
    runs=$(grep -oE 'stat::number_of_executed_units: *[0-9]+' "$log" | grep -oE '[0-9]+$' | tail -1)
    if [ -z "$runs" ]; then runs=$(grep -oE '^#[0-9]+' "$log" | tail -1 | tr -d '#'); fi
    crashes=$(find "$out/$target/findings" -name 'crash-*' -o -name 'oom-*' | wc -l)
    hangs=$(find "$out/$target/findings" -name 'timeout-*' | wc -l)
    printf '%-14s %12s %8s %6s %6s\n' "$target" "${runs:-0}" "$seconds" "$crashes" "$hangs"
    total=$((total + ${runs:-0}))
    if [ $rc -ne 0 ] || [ "$crashes" -ne 0 ] || [ "$hangs" -ne 0 ]; then
        status=1
        echo "  $target: exit $rc; log and inputs in $out/$target" >&2
        tail -30 "$log" >&2
    fi
done
echo "total inputs: $total"
exit $status
