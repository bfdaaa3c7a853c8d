#!/usr/bin/env bash
# System calls per request: majordomo (SQLite store, access log at LOG_LEVEL) under
# `strace -f -c` in front of the repo's Rust mock, N JSON chat completions over 4
# connections, then a graceful stop. Callgrind (instructions.sh) sees only user space;
# this counts what the kernel is asked for (a write(2) is ~1-2 µs of CPU).
#
#   MAJORDOMO_BIN=... MOCK_BIN=... benches/load/syscalls.sh
#   N=2000 LOG_LEVEL=info benches/load/syscalls.sh
#
# Environment: N (2000), LOG_LEVEL (info: one access line per request), BASE_PORT (18480:
# mock; +10 majordomo), CARGO_TARGET_DIR, BENCH_SCRATCH, RESULTS_DIR.
# Writes benches/load/results/syscalls-<UTC timestamp>.md. Counts include the idle
# background (timers, the sink's ticks) for the seconds the run lasts.
set -uo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
# shellcheck source=benches/load/lib/build.sh
source "$HERE/lib/build.sh"
N="${N:-2000}"
LOG_LEVEL="${LOG_LEVEL:-info}"
BASE_PORT="${BASE_PORT:-18480}"
MOCK_PORT=$BASE_PORT
MDM_PORT=$((BASE_PORT + 10))
TS="$(date -u +%Y%m%dT%H%M%SZ)"
SCRATCH="${BENCH_SCRATCH:-${TMPDIR:-/tmp}/majordomo-load}"
RUN_DIR="$SCRATCH/syscalls/$TS"
RESULTS_DIR="${RESULTS_DIR:-$HERE/results}"
mkdir -p "$RUN_DIR" "$RESULTS_DIR"
log() { printf '[syscalls %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "FATAL: $*"; exit 1; }
for c in curl python3 strace; do command -v "$c" >/dev/null || die "missing $c (apt-get install -y curl python3 strace)"; done

MAJORDOMO_BIN="${MAJORDOMO_BIN:-}"; MOCK_BIN="${MOCK_BIN:-}"
if [[ -z "$MAJORDOMO_BIN" || -z "$MOCK_BIN" ]]; then
  TARGET="${CARGO_TARGET_DIR:-$REPO/target}"
  log "building release binaries (target $TARGET)"
  build_release "$TARGET" mock_upstream > "$RUN_DIR/build.log" 2>&1 || die "cargo build failed: $(tail -5 "$RUN_DIR/build.log")"
  MAJORDOMO_BIN="${MAJORDOMO_BIN:-$TARGET/release/majordomo}"
  MOCK_BIN="${MOCK_BIN:-$TARGET/release/examples/mock_upstream}"
fi

MOCK_PID=""; GW_PID=""
cleanup() {
  [[ -n "$GW_PID" ]] && kill "$GW_PID" 2>/dev/null
  [[ -n "$MOCK_PID" ]] && kill "$MOCK_PID" 2>/dev/null
}
trap cleanup EXIT

"$MOCK_BIN" --port "$MOCK_PORT" > "$RUN_DIR/mock.log" 2>&1 & MOCK_PID=$!
export MAJORDOMO_STORAGE_SQLITE_PATH="$RUN_DIR/majordomo.db" MAJORDOMO_SERVER_HOST=127.0.0.1 \
  MAJORDOMO_SERVER_PORT="$MDM_PORT" MAJORDOMO_METRICS_PORT=0 MAJORDOMO_SERVER_THREADS=1 \
  MAJORDOMO_SERVER_PID_FILE="$RUN_DIR/majordomo.pid" MAJORDOMO_SERVER_UPGRADE_SOCK="$RUN_DIR/upgrade.sock" \
  MAJORDOMO_PROVIDERS_OPENAI_BASE_URL="http://127.0.0.1:$MOCK_PORT" MAJORDOMO_PRICING_REMOTE_URL='' \
  MAJORDOMO_SINK_SPOOL_DIR="$RUN_DIR/spool" MAJORDOMO_LOGGING_LEVEL="$LOG_LEVEL" \
  MAJORDOMO_SERVER_GRACE_PERIOD_SECS=0 MAJORDOMO_SERVER_GRACEFUL_SHUTDOWN_TIMEOUT_SECS=1
KEY=$("$MAJORDOMO_BIN" keys create --name syscalls --json 2>>"$RUN_DIR/keys.log" |
      python3 -c 'import json,sys; print(json.load(sys.stdin)["key"])') || die "keys create failed"
strace -f -c -o "$RUN_DIR/strace.txt" "$MAJORDOMO_BIN" > "$RUN_DIR/majordomo.log" 2>&1 &
STRACE_PID=$!
up=0
for _ in $(seq 150); do
  GW_PID=$(pgrep -P "$STRACE_PID" | head -1)
  if [[ -n "$GW_PID" ]] && curl -s -o /dev/null -m 2 "http://127.0.0.1:$MDM_PORT/health"; then up=1; break; fi
  sleep 0.2
done
(( up )) || die "majordomo did not start: $(tail -5 "$RUN_DIR/majordomo.log")"
echo '{"model":"gpt-4o","messages":[{"role":"user","content":"Say hi."}],"max_tokens":16}' > "$RUN_DIR/body.json"
r=$(python3 "$HERE/lib/httpclient.py" count --url "http://127.0.0.1:$MDM_PORT/v1/chat/completions" \
    --body "$RUN_DIR/body.json" -H "X-Majordomo-Key: $KEY" -H "Authorization: Bearer sk-bench" -n "$N" -c 4)
sleep 1
# strace is the parent: signal majordomo itself, then wait for strace to write its table.
kill -TERM "$GW_PID"
wait "$STRACE_PID"
GW_PID=""
out="$RESULTS_DIR/syscalls-$TS.md"
{
  echo "## System calls, $N JSON requests through majordomo ($TS)"
  echo
  echo "majordomo $MAJORDOMO_BIN (checkout $(git -C "$REPO" describe --always --dirty 2>/dev/null)), SQLite store, logging.level=$LOG_LEVEL, 1 proxy thread; client: $r"
  echo "Reproduce: \`N=$N LOG_LEVEL=$LOG_LEVEL benches/load/syscalls.sh\`"
  echo
  echo '| syscall | calls | per request |'
  echo '|---|---:|---:|'
  awk -v n="$N" '$1 ~ /^[0-9.]+$/ && $NF != "total" { printf "| %s | %d | %.2f |\n", $NF, $4, $4 / n }' \
    "$RUN_DIR/strace.txt" | sort -t'|' -k3,3nr | head -20
} > "$out"
cat "$out"
log "saved $out; strace's table in $RUN_DIR/strace.txt"
