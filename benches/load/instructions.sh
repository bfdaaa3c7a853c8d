#!/usr/bin/env bash
# Instructions per request: majordomo vs the bare Pingora proxy, counted by callgrind.
#
# Wall-clock and CPU-time ratios on a shared 2-core machine move by 20-50 % from one
# run to the next; instruction counts do not (the same binaries and inputs give the
# same numbers, whatever else the machine is doing). This runs each gateway under
# `valgrind --tool=callgrind` in front of the harness's nginx mock (lib/mkmock.py),
# sends WARM requests, zeroes the counters, sends exactly N requests with a small
# asyncio client (lib/httpclient.py count, 4 connections), dumps the counters, and
# reports instructions per request, the ratio majordomo / bare, where majordomo's
# instructions go (by library, by ProxyHttp phase, top functions). User space only:
# the kernel's share (sockets, wake-ups) is the same for both and is not counted.
#
#   benches/load/instructions.sh
#   MODES="json sse sse-inject" N=2000 benches/load/instructions.sh
#   MODES="responses gemini" benches/load/instructions.sh   # OpenAI Responses / Gemini streams
#   MAJORDOMO_BIN=... BARE_BIN=... benches/load/instructions.sh      # skip the cargo build
#   LOG_LEVEL=info benches/load/instructions.sh   # with the access log (the default config); default warn
#   CALLGRIND_OPTS="--cache-sim=yes" benches/load/instructions.sh   # also simulated cache misses
#
# majordomo runs as in run.sh: key auth, usage parsing, pricing, PostgreSQL logging
# (PGHOST/PGPORT/PGUSER), 1 proxy thread. Needs valgrind, nginx with the echo module,
# python3, psql. Writes benches/load/results/instructions-<UTC timestamp>.md.
set -uo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
# shellcheck source=benches/load/lib/build.sh
source "$HERE/lib/build.sh"
MODES="${MODES:-json sse sse-inject}"
N="${N:-2000}"
LOG_LEVEL="${LOG_LEVEL:-warn}"
WARM="${WARM:-300}"
CALLGRIND_OPTS="${CALLGRIND_OPTS:-}"
BASE_PORT="${BASE_PORT:-18680}"
MOCK_PORT=$BASE_PORT; GW_PORT=$((BASE_PORT + 10))
PGHOST="${PGHOST:-127.0.0.1}"; PGPORT="${PGPORT:-5432}"; PGUSER="${PGUSER:-postgres}"
TS="$(date -u +%Y%m%dT%H%M%SZ)"
RUN_DIR="${BENCH_SCRATCH:-${TMPDIR:-/tmp}/majordomo-load}/instructions/$TS"
RESULTS_DIR="${RESULTS_DIR:-$HERE/results}"
DB="mdm_instr_$(echo "$TS" | tr 'A-Z' 'a-z')_$$"
mkdir -p "$RUN_DIR" "$RESULTS_DIR"
log() { printf '[instructions %s] %s\n' "$(date +%H:%M:%S)" "$*" | tee -a "$RUN_DIR/run.log" >&2; }
die() { log "FATAL: $*"; exit 1; }
for c in valgrind callgrind_control nginx curl python3 psql; do
  command -v "$c" >/dev/null || die "missing $c (apt-get install -y valgrind nginx libnginx-mod-http-echo curl python3 postgresql-client)"
done

MAJORDOMO_BIN="${MAJORDOMO_BIN:-}"; BARE_BIN="${BARE_BIN:-}"
if [[ -z "$MAJORDOMO_BIN" || -z "$BARE_BIN" ]]; then
  TARGET="${CARGO_TARGET_DIR:-$REPO/target}"
  log "building release binaries (target $TARGET)"
  build_release "$TARGET" bare_proxy > "$RUN_DIR/build.log" 2>&1 || die "cargo build failed: $(tail -5 "$RUN_DIR/build.log")"
  [[ -z "$MAJORDOMO_BIN" ]] && MAJORDOMO_BIN="$TARGET/release/majordomo"
  [[ -z "$BARE_BIN" ]] && BARE_BIN="$TARGET/release/examples/bare_proxy"
fi

MOCK_PID=""; GW_PID=""; DB_CREATED=0
stop() { # PID: SIGINT, then SIGTERM, then SIGKILL
  local pid=$1
  [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null || return 0
  kill -INT "$pid" 2>/dev/null
  for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
  kill -TERM "$pid" 2>/dev/null
  for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
  kill -KILL "$pid" 2>/dev/null; wait "$pid" 2>/dev/null; return 0
}
cleanup() {
  stop "$GW_PID"; stop "$MOCK_PID"
  (( DB_CREATED )) && psql -X -h "$PGHOST" -p "$PGPORT" -U "$PGUSER" -d postgres -qc "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null 2>&1
}
trap cleanup EXIT
trap 'log interrupted; exit 130' INT TERM

python3 "$HERE/lib/mkmock.py" "$RUN_DIR/mock" "$MOCK_PORT" > /dev/null || die "mkmock.py failed"
nginx -p "$RUN_DIR/mock" -e "$RUN_DIR/mock/error.log" -c "$RUN_DIR/mock/nginx.conf" -g 'daemon off;' > /dev/null 2>&1 &
MOCK_PID=$!
for _ in $(seq 50); do curl -sf -o /dev/null "http://127.0.0.1:$MOCK_PORT/health" && break; sleep 0.1; done
curl -sf -o /dev/null "http://127.0.0.1:$MOCK_PORT/health" || die "mock did not start: $(tail -3 "$RUN_DIR/mock/error.log")"

# the harness's requests (run.sh mk_body): JSON, a stream asking for usage, a stream that does not;
# and streams of OpenAI's Responses API and of Gemini (alt=sse)
mk_body() {
  local extra=""
  if [[ "$1" == responses ]]; then
    printf '{"model":"gpt-4.1","instructions":"You are a concise assistant.","input":"What is the capital of France? Answer in one sentence and add one fact about it.","max_output_tokens":128,"stream":true}' > "$RUN_DIR/body-$1.json"
    return
  elif [[ "$1" == gemini ]]; then
    printf '{"systemInstruction":{"parts":[{"text":"You are a concise assistant."}]},"contents":[{"role":"user","parts":[{"text":"What is the capital of France? Answer in one sentence and add one fact about it."}]}],"generationConfig":{"maxOutputTokens":128,"temperature":0.2}}' > "$RUN_DIR/body-$1.json"
    return
  fi
  [[ "$1" == sse ]] && extra=',"stream":true,"stream_options":{"include_usage":true}'
  [[ "$1" == sse-inject ]] && extra=',"stream":true'
  printf '{"model":"gpt-4o","messages":[{"role":"system","content":"You are a concise assistant."},{"role":"user","content":"What is the capital of France? Answer in one sentence and add one fact about it."}],"max_tokens":128,"temperature":0.2%s}' \
    "$extra" > "$RUN_DIR/body-$1.json"
}

psql -X -h "$PGHOST" -p "$PGPORT" -U "$PGUSER" -d postgres -qc "CREATE DATABASE $DB" >/dev/null || die "cannot create database $DB"
DB_CREATED=1
MDM_ENV=(MAJORDOMO_SERVER_HOST=127.0.0.1 MAJORDOMO_SERVER_PORT="$GW_PORT" MAJORDOMO_METRICS_PORT=0
  MAJORDOMO_SERVER_THREADS=1 MAJORDOMO_SERVER_PID_FILE="$RUN_DIR/mdm.pid" MAJORDOMO_SERVER_UPGRADE_SOCK="$RUN_DIR/mdm.sock"
  MAJORDOMO_SERVER_GRACE_PERIOD_SECS=1 MAJORDOMO_SERVER_GRACEFUL_SHUTDOWN_TIMEOUT_SECS=5
  MAJORDOMO_STORAGE_DRIVER=postgres MAJORDOMO_STORAGE_POSTGRES_HOST="$PGHOST" MAJORDOMO_STORAGE_POSTGRES_PORT="$PGPORT"
  MAJORDOMO_STORAGE_POSTGRES_USER="$PGUSER" MAJORDOMO_STORAGE_POSTGRES_DATABASE="$DB"
  MAJORDOMO_PROVIDERS_OPENAI_BASE_URL="http://127.0.0.1:$MOCK_PORT" MAJORDOMO_PROVIDERS_GEMINI_BASE_URL="http://127.0.0.1:$MOCK_PORT"
  MAJORDOMO_PRICING_REMOTE_URL=
  MAJORDOMO_SINK_SPOOL_DIR="$RUN_DIR/spool" MAJORDOMO_LOGGING_LEVEL="$LOG_LEVEL")
KEY=$(env "${MDM_ENV[@]}" "$MAJORDOMO_BIN" keys create --name instructions --json 2>>"$RUN_DIR/keys.log" |
      python3 -c 'import json,sys; print(json.load(sys.stdin)["key"])') || die "keys create failed"

# profile NAME MODE -> $RUN_DIR/NAME-MODE.cg (counters for exactly N requests)
profile() {
  local name=$1 mode=$2 out="$RUN_DIR/$1-$2" hdrs=(-H "Authorization: Bearer sk-bench") path=/v1/chat/completions
  case $mode in
    responses) path=/v1/responses ;;
    gemini) path="/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse"; hdrs=(-H "x-goog-api-key: bench") ;;
  esac
  if [[ $name == majordomo ]]; then
    hdrs+=(-H "X-Majordomo-Key: $KEY")
    env "${MDM_ENV[@]}" valgrind --tool=callgrind $CALLGRIND_OPTS --callgrind-out-file="$out.cg" "$MAJORDOMO_BIN" > "$out.log" 2>&1 &
  else
    BARE_L4_READ_BUFFER=0 valgrind --tool=callgrind $CALLGRIND_OPTS --callgrind-out-file="$out.cg" "$BARE_BIN" \
      --listen "127.0.0.1:$GW_PORT" --upstream "127.0.0.1:$MOCK_PORT" --threads 1 > "$out.log" 2>&1 &
  fi
  GW_PID=$!
  for _ in $(seq 300); do
    kill -0 "$GW_PID" 2>/dev/null || die "$name exited: $(tail -5 "$out.log")"
    curl -s -o /dev/null -m 2 "http://127.0.0.1:$GW_PORT/health" && break; sleep 0.2
  done
  local url="http://127.0.0.1:$GW_PORT$path" cmode=${mode%%-*} r
  r=$(python3 "$HERE/lib/httpclient.py" count --url "$url" --body "$RUN_DIR/body-$mode.json" --mode "$cmode" -n "$WARM" -c 4 "${hdrs[@]}")
  sleep 1
  callgrind_control -z "$GW_PID" > /dev/null || die "callgrind_control -z failed"
  r=$(python3 "$HERE/lib/httpclient.py" count --url "$url" --body "$RUN_DIR/body-$mode.json" --mode "$cmode" -n "$N" -c 4 "${hdrs[@]}")
  python3 -c 'import json,sys; d=json.loads(sys.argv[1]); sys.exit(0 if d["ok"] == int(sys.argv[2]) else 1)' "$r" "$N" ||
    die "$name $mode: not every request succeeded: $r"
  # let the sink write the batch (its instructions belong to these requests)
  [[ $name == majordomo ]] && sleep 1.5
  callgrind_control -d "$GW_PID" > /dev/null || die "callgrind_control -d failed"
  sleep 0.5
  stop "$GW_PID"; GW_PID=""
  local dump; dump=$(ls -t "$out.cg".* 2>/dev/null | head -1)
  [[ -n "$dump" ]] || die "no callgrind dump for $name $mode"
  mv "$dump" "$out.cg.requests"
  log "$name $mode: $r"
}

out="$RESULTS_DIR/instructions-$TS.md"
{
  echo "## Instructions per request, majordomo vs bare Pingora ($TS)"
  echo
  echo "Host: $(uname -srm), $(nproc) CPUs; valgrind $(valgrind --version | sed 's/valgrind-//'); majordomo binary $MAJORDOMO_BIN (checkout at $(git -C "$REPO" describe --always --dirty 2>/dev/null))."
  echo "Each gateway under callgrind, 1 proxy thread, in front of the nginx mock; counters zeroed after $WARM requests, read after N = $N more (4 connections)."
  echo "majordomo: key auth, usage parsing, pricing, PostgreSQL logging (its sink's instructions for these rows included), log level $LOG_LEVEL. User space only."
  echo "Reproduce: \`LOG_LEVEL=$LOG_LEVEL MODES=\"$MODES\" N=$N benches/load/instructions.sh\`"
} > "$out"
for mode in $MODES; do
  mk_body "$mode"
  log "mode $mode"
  profile bare "$mode"
  profile majordomo "$mode"
  { echo; echo "### $mode"; echo; } >> "$out"
  python3 "$HERE/lib/callgrind.py" report "$out" "bare" "$N" "$RUN_DIR/bare-$mode.cg.requests" \
    "majordomo" "$N" "$RUN_DIR/majordomo-$mode.cg.requests" || die "report failed"
done
log "saved $out; raw profiles in $RUN_DIR (callgrind_annotate can read them)"
