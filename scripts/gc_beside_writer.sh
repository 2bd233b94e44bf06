#!/usr/bin/env bash
# Runs `ckpt gc --keep 1` and `ckpt latest` in a loop beside a live train_loop writing the same
# run directory (the reproduction of issue 14), and reports whether `latest` ever named a missing
# checkpoint and whether train_loop finished with its digest. The ctest variant, shorter, is in
# tests/jobs/train_loop_test.cc.
#   scripts/gc_beside_writer.sh [BUILD_DIR=build] [STEPS=30000]
set -uo pipefail
B=${1:-build}
STEPS=${2:-30000}
D=$(mktemp -d)
trap 'rm -rf "$D"' EXIT
"$B/examples/train_loop" --dir "$D" --steps "$STEPS" --save-every 10 --state-mb 4 >"$D.log" 2>&1 &
P=$!
R=$D/general/default/train_loop
passes=0 gc_failed=0 checks=0 dangling=0
while kill -0 "$P" 2>/dev/null; do
  [ -d "$R" ] || continue
  "$B/tools/ckpt" gc "$R" --keep 1 >/dev/null 2>&1 || gc_failed=$((gc_failed + 1))
  passes=$((passes + 1))
  if [ -f "$R/latest" ]; then
    checks=$((checks + 1))
    "$B/tools/ckpt" latest "$R" >/dev/null 2>&1 || dangling=$((dangling + 1))
  fi
done
wait "$P"
rc=$?
echo "train_loop exit $rc: $(tail -n 1 "$D.log")"
echo "gc passes $passes (failed $gc_failed), latest checks $checks, latest naming a missing checkpoint $dangling"
rm -f "$D.log"
[ "$rc" -eq 0 ] && [ "$dangling" -eq 0 ] && [ "$gc_failed" -eq 0 ]
