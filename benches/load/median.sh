#!/usr/bin/env bash
# Runs benches/load/run.sh RUNS times (default 3) and reports the median of each
# cell and of each run's ratios (benches/load/lib/median.py), saved to
# benches/load/results/median-<UTC>.md. Every knob of run.sh applies to each run;
# the binaries are built once.
#
#   benches/load/median.sh                 # 3 runs, ~12 min on 2 cores
#   RUNS=5 CONNS=16 benches/load/median.sh
set -uo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
# shellcheck source=benches/load/lib/build.sh
source "$HERE/lib/build.sh"
RUNS="${RUNS:-3}"
RESULTS_DIR="${RESULTS_DIR:-$HERE/results}"
export RESULTS_DIR
if [[ -z "${MAJORDOMO_BIN:-}" || -z "${BARE_BIN:-}" ]]; then
  TARGET="${CARGO_TARGET_DIR:-$REPO/target}"
  echo "[median] building release binaries (target $TARGET)" >&2
  build_release "$TARGET" bare_proxy >&2 \
    || { echo "[median] cargo build failed" >&2; exit 1; }
  export MAJORDOMO_BIN="${MAJORDOMO_BIN:-$TARGET/release/majordomo}" BARE_BIN="${BARE_BIN:-$TARGET/release/examples/bare_proxy}"
fi
results=(); rc=0
for i in $(seq 1 "$RUNS"); do
  echo "[median] run $i of $RUNS" >&2
  before="$(ls "$RESULTS_DIR"/2*.json 2>/dev/null | sort | tail -1)"
  "$HERE/run.sh" > /dev/null || rc=1
  after="$(ls "$RESULTS_DIR"/2*.json 2>/dev/null | sort | tail -1)"
  if [[ -z "$after" || "$after" == "$before" ]]; then echo "[median] run $i wrote no result" >&2; exit 1; fi
  results+=("$after")
done
python3 "$HERE/lib/median.py" "$RESULTS_DIR/median-$(date -u +%Y%m%dT%H%M%SZ).md" "${results[@]}" || rc=1
exit $rc
