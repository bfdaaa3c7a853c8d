#!/usr/bin/env bash
# Memory check: peak RSS of majordomo holding STREAMS (1000) concurrent open streams.
#
# Starts the repo's Rust mock provider (examples/mock_upstream.rs) with --pause-ms so
# every stream stops before its last event, majordomo (release, PostgreSQL logging on,
# key auth, usage parsing, pricing), and a small asyncio client (lib/httpclient.py hold)
# that opens STREAMS streaming chat completions through majordomo at once and holds them
# until the mock finishes them. Reports majordomo's VmRSS idle, with every stream open,
# VmHWM (peak) and the rows logged; target VmHWM <= 40 MB.
#
#   benches/load/streams_rss.sh
#   STREAMS=1000 THREADS=2 PAUSE_MS=30000 benches/load/streams_rss.sh
#   MAJORDOMO_BIN=... MOCK_BIN=... benches/load/streams_rss.sh      # skip the cargo build
#
# Environment: STREAMS (1000), THREADS (1: MAJORDOMO_SERVER_THREADS), PAUSE_MS (30000: how
# long the mock holds each stream before its last event), TARGET_MB (40), BASE_PORT (18280:
# mock; +10 majordomo, +2 bare proxy), PGHOST/PGPORT/PGUSER, CARGO_TARGET_DIR, BENCH_SCRATCH,
# RESULTS_DIR, GW_ENV (extra environment for majordomo, e.g. "MALLOC_ARENA_MAX=1"),
# BARE (1: also hold the streams through examples/bare_proxy.rs, the framework's floor; 0: skip),
# FAULTS (1: record every page fault of each gateway while the streams open, with `perf record
# -e page-faults --call-graph dwarf`, and add a table of which code first touched the pages that
# make up the RSS per stream (lib/faults.py); needs linux-perf and a high
# kernel.perf_event_max_sample_rate, or the faults are sampled; the table says how many it saw).
# Writes benches/load/results/streams-<UTC timestamp>.md. Exit 0 only when every stream
# completed, every one was logged and the peak is within the target.
set -uo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
# shellcheck source=benches/load/lib/build.sh
source "$HERE/lib/build.sh"
STREAMS="${STREAMS:-1000}"
THREADS="${THREADS:-1}"
PAUSE_MS="${PAUSE_MS:-30000}"
TARGET_MB="${TARGET_MB:-40}"
BASE_PORT="${BASE_PORT:-18280}"
MOCK_PORT=$BASE_PORT
MDM_PORT=$((BASE_PORT + 10))
BARE_PORT=$((BASE_PORT + 2))
BARE="${BARE:-1}"
FAULTS="${FAULTS:-0}"
GW_ENV="${GW_ENV:-}"
PGHOST="${PGHOST:-127.0.0.1}"; PGPORT="${PGPORT:-5432}"; PGUSER="${PGUSER:-postgres}"
TS="$(date -u +%Y%m%dT%H%M%SZ)"
SCRATCH="${BENCH_SCRATCH:-${TMPDIR:-/tmp}/majordomo-load}"
RUN_DIR="$SCRATCH/streams/$TS"
RESULTS_DIR="${RESULTS_DIR:-$HERE/results}"
DB="mdm_streams_$(echo "$TS" | tr 'A-Z' 'a-z')_$$"
mkdir -p "$RUN_DIR" "$RESULTS_DIR"
log() { printf '[streams %s] %s\n' "$(date +%H:%M:%S)" "$*" | tee -a "$RUN_DIR/run.log" >&2; }
die() { log "FATAL: $*"; exit 1; }
for c in curl python3 psql ss; do command -v "$c" >/dev/null || die "missing $c (apt-get install -y curl python3 postgresql-client iproute2)"; done
[[ "$FAULTS" == 1 ]] && { command -v perf >/dev/null || die "FAULTS=1 needs perf (apt-get install -y linux-perf)"; }
ulimit -n 65536 2>/dev/null || true
(( $(ulimit -n) > 2 * STREAMS + 100 )) || die "ulimit -n $(ulimit -n) is too low for $STREAMS streams"

# ---------------------------------------------------------------- binaries
MAJORDOMO_BIN="${MAJORDOMO_BIN:-}"; MOCK_BIN="${MOCK_BIN:-}"; BARE_BIN="${BARE_BIN:-}"
if [[ -z "$MAJORDOMO_BIN" || -z "$MOCK_BIN" || ( "$BARE" == 1 && -z "$BARE_BIN" ) ]]; then
  TARGET="${CARGO_TARGET_DIR:-$REPO/target}"
  log "building release binaries (majordomo, examples mock_upstream and bare_proxy; target $TARGET)"
  build_release "$TARGET" mock_upstream bare_proxy > "$RUN_DIR/build.log" 2>&1 || die "cargo build failed: $(tail -5 "$RUN_DIR/build.log")"
  [[ -z "$MAJORDOMO_BIN" ]] && MAJORDOMO_BIN="$TARGET/release/majordomo"
  [[ -z "$MOCK_BIN" ]] && MOCK_BIN="$TARGET/release/examples/mock_upstream"
  [[ -z "$BARE_BIN" ]] && BARE_BIN="$TARGET/release/examples/bare_proxy"
fi
cp "$MAJORDOMO_BIN" "$RUN_DIR/majordomo" && cp "$MOCK_BIN" "$RUN_DIR/mock_upstream" || die "binaries missing"
if [[ "$BARE" == 1 ]]; then cp "$BARE_BIN" "$RUN_DIR/bare_proxy" || die "no bare_proxy binary at $BARE_BIN"; fi

# ---------------------------------------------------------------- cleanup
MOCK_PID=""; GW_PID=""; CLIENT_PID=""; PERF_PID=""; DB_CREATED=0
stop_pid() {
  local pid=$1 sig=$2
  [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null || return 0
  kill -"$sig" -- "-$pid" 2>/dev/null || kill -"$sig" "$pid" 2>/dev/null
  for _ in $(seq 150); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -0 "$pid" 2>/dev/null && { kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null; }
  wait "$pid" 2>/dev/null; return 0
}
BARE_PID=""
cleanup() {
  [[ -n "$CLIENT_PID" ]] && { kill "$CLIENT_PID" 2>/dev/null; wait "$CLIENT_PID" 2>/dev/null; }
  [[ -n "$PERF_PID" ]] && { kill -INT "$PERF_PID" 2>/dev/null; wait "$PERF_PID" 2>/dev/null; }
  stop_pid "$GW_PID" TERM; stop_pid "$BARE_PID" INT; stop_pid "$MOCK_PID" INT
  (( DB_CREATED )) && psql -X -h "$PGHOST" -p "$PGPORT" -U "$PGUSER" -d postgres -qc "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null 2>&1
}
trap cleanup EXIT
trap 'log interrupted; exit 130' INT TERM
status_kb() { awk -v f="$2:" '$1 == f { print $2 }' "/proc/$1/status" 2>/dev/null || echo 0; }
# FAULTS=1: page faults of one gateway from before its streams open until they are all open.
faults_start() {  # PID NAME
  perf record -q -e page-faults -c 1 --call-graph dwarf,4096 -m 4096 -p "$1" -o "$RUN_DIR/faults-$2.data" \
    > "$RUN_DIR/faults-$2.log" 2>&1 &
  PERF_PID=$!
  sleep 2  # perf attaches to every thread and maps its buffers before the first stream
}
faults_stop() {  # PID NAME RSS_BEFORE_KB RSS_HELD_KB
  kill -INT "$PERF_PID" 2>/dev/null; wait "$PERF_PID" 2>/dev/null; PERF_PID=""
  {
    echo
    echo "Page faults recorded while $2's streams opened; RSS grew $(( ($4 - $3) / 1024 )) MB"
    echo "($(awk -v k="$(( $4 - $3 ))" -v n="$STREAMS" 'BEGIN { printf "%.1f", k * 1.024 / n }') kB per stream); compare the faults seen below: fewer mean perf throttled or lost some."
    echo
    perf script -i "$RUN_DIR/faults-$2.data" -F comm,tid,event,ip,sym,dso 2>"$RUN_DIR/faults-$2.script.err" |
      python3 "$HERE/lib/faults.py" --streams "$STREAMS" --title "$2"
    grep -ho 'lost [0-9.]*%\|[0-9]* lost\|THROTTLE[^ ]*' "$RUN_DIR/faults-$2.script.err" "$RUN_DIR/faults-$2.log" 2>/dev/null |
      sort | uniq -c | sed 's/^ */perf: /'
  } >> "$RUN_DIR/faults.md"
}
rows_now() { psql -X -h "$PGHOST" -p "$PGPORT" -U "$PGUSER" -d "$DB" -tAc 'SELECT count(*) FROM llm_requests' 2>/dev/null || echo -1; }

# ---------------------------------------------------------------- mock + majordomo
for p in $MOCK_PORT $MDM_PORT $BARE_PORT; do ss -Htln "sport = :$p" | grep -q . && die "port $p in use (set BASE_PORT)"; done
setsid "$RUN_DIR/mock_upstream" --port "$MOCK_PORT" --pause-ms "$PAUSE_MS" > "$RUN_DIR/mock.log" 2>&1 < /dev/null &
MOCK_PID=$!
for _ in $(seq 100); do grep -q listening "$RUN_DIR/mock.log" && break; sleep 0.1; done
grep -q listening "$RUN_DIR/mock.log" || die "mock did not start: $(tail -3 "$RUN_DIR/mock.log")"

psql -X -h "$PGHOST" -p "$PGPORT" -U "$PGUSER" -d postgres -qc "CREATE DATABASE $DB" >/dev/null ||
  die "cannot create database $DB on $PGHOST:$PGPORT"
DB_CREATED=1
MDM_ENV=(MAJORDOMO_SERVER_HOST=127.0.0.1 MAJORDOMO_SERVER_PORT="$MDM_PORT" MAJORDOMO_METRICS_PORT=0
  MAJORDOMO_SERVER_THREADS="$THREADS" MAJORDOMO_SERVER_PID_FILE="$RUN_DIR/mdm.pid"
  MAJORDOMO_SERVER_UPGRADE_SOCK="$RUN_DIR/mdm.sock" MAJORDOMO_SERVER_GRACE_PERIOD_SECS=1
  MAJORDOMO_STORAGE_DRIVER=postgres MAJORDOMO_STORAGE_POSTGRES_HOST="$PGHOST" MAJORDOMO_STORAGE_POSTGRES_PORT="$PGPORT"
  MAJORDOMO_STORAGE_POSTGRES_USER="$PGUSER" MAJORDOMO_STORAGE_POSTGRES_DATABASE="$DB"
  MAJORDOMO_PROVIDERS_OPENAI_BASE_URL="http://127.0.0.1:$MOCK_PORT" MAJORDOMO_PRICING_REMOTE_URL=
  MAJORDOMO_SINK_SPOOL_DIR="$RUN_DIR/spool" MAJORDOMO_LOGGING_LEVEL=warn
  MAJORDOMO_UPSTREAM_READ_TIMEOUT_SECS=$(( PAUSE_MS / 1000 + 60 )))
read -r -a gw_env <<< "$GW_ENV"
MDM_ENV+=("${gw_env[@]}")
KEY=$(env "${MDM_ENV[@]}" "$RUN_DIR/majordomo" keys create --name streams --json 2>>"$RUN_DIR/majordomo.log" |
      python3 -c 'import json,sys; print(json.load(sys.stdin)["key"])') || die "keys create failed"
setsid env "${MDM_ENV[@]}" "$RUN_DIR/majordomo" > "$RUN_DIR/majordomo.log" 2>&1 < /dev/null &
GW_PID=$!
for _ in $(seq 240); do
  kill -0 "$GW_PID" 2>/dev/null || die "majordomo exited: $(tail -5 "$RUN_DIR/majordomo.log")"
  [[ "$(curl -s -m 1 -o /dev/null -w '%{http_code}' "http://127.0.0.1:$MDM_PORT/health")" == 200 ]] && break
  sleep 0.25
done
URL="http://127.0.0.1:$MDM_PORT/v1/chat/completions"
HDRS=(-H "Authorization: Bearer sk-test" -H "X-Majordomo-Key: $KEY" -H "X-Majordomo-Feature: streams")
printf '{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}],"stream":true,"stream_options":{"include_usage":true}}' > "$RUN_DIR/body-sse.json"
printf '{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}]}' > "$RUN_DIR/body-json.json"

# warm-up: connection pools, caches, allocator arenas (JSON requests are not paused)
WARM=200
r=$(python3 "$HERE/lib/httpclient.py" count --url "$URL" --body "$RUN_DIR/body-json.json" --mode json -n $WARM -c 16 "${HDRS[@]}")
log "warm-up: $r"
sleep 1
idle_rss=$(status_kb "$GW_PID" VmRSS); idle_hwm=$(status_kb "$GW_PID" VmHWM)
log "majordomo pid $GW_PID, $(ls /proc/$GW_PID/task | wc -l) threads; idle after warm-up: VmRSS ${idle_rss} kB, VmHWM ${idle_hwm} kB"

# ---------------------------------------------------------------- the streams
[[ "$FAULTS" == 1 ]] && faults_start "$GW_PID" majordomo
python3 "$HERE/lib/httpclient.py" hold --url "$URL" --body "$RUN_DIR/body-sse.json" -n "$STREAMS" \
  --ready-file "$RUN_DIR/ready" --timeout $(( PAUSE_MS / 1000 + 60 )) "${HDRS[@]}" > "$RUN_DIR/client.json" 2>"$RUN_DIR/client.err" &
CLIENT_PID=$!
t0=$SECONDS
while [[ ! -s "$RUN_DIR/ready" ]] && kill -0 "$CLIENT_PID" 2>/dev/null; do sleep 0.2; done
open_streams=$(cat "$RUN_DIR/ready" 2>/dev/null || echo 0)
est=$(ss -Htn state established "( sport = :$MDM_PORT )" | wc -l)
up_est=$(ss -Htn state established "( dport = :$MOCK_PORT )" | wc -l)
log "$open_streams streams streaming after $((SECONDS - t0)) s; established: $est client->majordomo, $up_est majordomo->mock"
max_rss=0
for _ in $(seq 10); do   # sample while every stream is held (the mock pauses PAUSE_MS)
  r=$(status_kb "$GW_PID" VmRSS); (( r > max_rss )) && max_rss=$r; sleep 0.2
done
held_hwm=$(status_kb "$GW_PID" VmHWM)
[[ "$FAULTS" == 1 ]] && faults_stop "$GW_PID" majordomo "$idle_rss" "$max_rss"
threads=$(ls /proc/$GW_PID/task | wc -l)
log "held: VmRSS max ${max_rss} kB, VmHWM ${held_hwm} kB, $threads threads; waiting for the mock to finish the streams"
wait "$CLIENT_PID"; crc=$?; CLIENT_PID=""
client=$(cat "$RUN_DIR/client.json")
log "client: $client"
final_hwm=$(status_kb "$GW_PID" VmHWM)
sleep 2
after_rss=$(status_kb "$GW_PID" VmRSS)
expected=$((WARM + STREAMS))
for _ in $(seq 60); do n=$(rows_now); (( n >= expected )) && break; sleep 0.5; done
rows=$(rows_now)
complete_rows=$(psql -X -h "$PGHOST" -p "$PGPORT" -U "$PGUSER" -d "$DB" -tAc \
  "SELECT count(*) FROM llm_requests WHERE raw_metadata->>'feature' = 'streams' AND status_code = 200 AND usage_complete AND price_found" 2>/dev/null)

mb() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }

# ---------------------------------------------------------------- the floor: bare Pingora proxy
bare_line=""
if [[ "$BARE" == 1 ]]; then
  setsid env TMPDIR="$RUN_DIR" "$RUN_DIR/bare_proxy" --listen "127.0.0.1:$BARE_PORT" --upstream "127.0.0.1:$MOCK_PORT" \
    --threads "$THREADS" > "$RUN_DIR/bare.log" 2>&1 < /dev/null &
  BARE_PID=$!
  for _ in $(seq 100); do ss -Htln "sport = :$BARE_PORT" | grep -q . && break; sleep 0.1; done
  BURL="http://127.0.0.1:$BARE_PORT/v1/chat/completions"
  python3 "$HERE/lib/httpclient.py" count --url "$BURL" --body "$RUN_DIR/body-json.json" --mode json -n $WARM -c 16 \
    -H "Authorization: Bearer sk-test" > /dev/null
  b_idle=$(status_kb "$BARE_PID" VmRSS)
  rm -f "$RUN_DIR/ready-bare"
  [[ "$FAULTS" == 1 ]] && faults_start "$BARE_PID" bare
  python3 "$HERE/lib/httpclient.py" hold --url "$BURL" --body "$RUN_DIR/body-sse.json" -n "$STREAMS" \
    --ready-file "$RUN_DIR/ready-bare" --timeout $(( PAUSE_MS / 1000 + 60 )) -H "Authorization: Bearer sk-test" \
    > "$RUN_DIR/client-bare.json" 2>&1 &
  CLIENT_PID=$!
  while [[ ! -s "$RUN_DIR/ready-bare" ]] && kill -0 "$CLIENT_PID" 2>/dev/null; do sleep 0.2; done
  b_open=$(cat "$RUN_DIR/ready-bare" 2>/dev/null || echo 0)
  b_max=0
  for _ in $(seq 10); do r=$(status_kb "$BARE_PID" VmRSS); (( r > b_max )) && b_max=$r; sleep 0.2; done
  [[ "$FAULTS" == 1 ]] && faults_stop "$BARE_PID" bare "$b_idle" "$b_max"
  wait "$CLIENT_PID"; CLIENT_PID=""
  b_hwm=$(status_kb "$BARE_PID" VmHWM)
  log "bare proxy: $b_open streams open; idle ${b_idle} kB, held max ${b_max} kB, VmHWM ${b_hwm} kB; $(cat "$RUN_DIR/client-bare.json")"
  bare_line="| floor: examples/bare_proxy.rs ($THREADS thread(s)) with the same $STREAMS streams ($b_open open): VmRSS idle / held / **VmHWM** | $(mb "$b_idle") / $(mb "$b_max") / **$(mb "$b_hwm") MB** |"
  stop_pid "$BARE_PID" INT; BARE_PID=""
fi
per_stream=$(awk -v a="$max_rss" -v b="$idle_rss" -v n="$STREAMS" 'BEGIN { printf "%.1f", (a - b) / n }')
ok_mem=0; (( final_hwm <= TARGET_MB * 1024 )) && ok_mem=1
ok_streams=0; (( crc == 0 && open_streams == STREAMS )) && ok_streams=1
ok_rows=0; (( rows == expected && complete_rows == expected )) && ok_rows=1
pf() { (( $1 )) && echo PASS || echo FAIL; }
out="$RESULTS_DIR/streams-$TS.md"
{
  echo "## majordomo with $STREAMS open streams ($TS)"
  echo
  echo "Host: $(uname -srm), $(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo), $(nproc) CPUs."
  echo "majordomo $(git -C "$REPO" describe --always --dirty 2>/dev/null) release, MAJORDOMO_SERVER_THREADS=$THREADS, PostgreSQL logging, key auth, usage parsing, pricing on;"
  echo "mock: examples/mock_upstream.rs --pause-ms $PAUSE_MS (each stream stops before its last event). Client: lib/httpclient.py hold."
  echo
  echo "| measure | value |"
  echo "|---|---:|"
  echo "| streams open at once (headers + first chunk received) | $open_streams of $STREAMS |"
  echo "| connections established client→majordomo / majordomo→mock | $est / $up_est |"
  echo "| majordomo threads | $threads |"
  echo "| VmRSS idle after warm-up ($WARM requests) | $(mb "$idle_rss") MB |"
  echo "| VmRSS with all streams open (max of 10 samples) | $(mb "$max_rss") MB |"
  echo "| RSS per open stream | ${per_stream} kB |"
  echo "| **VmHWM (peak RSS) at the end** | **$(mb "$final_hwm") MB** |"
  echo "| VmRSS 2 s after the streams ended | $(mb "$after_rss") MB |"
  echo "| rows logged (warm-up + streams) | $rows of $expected; $complete_rows priced 200s with complete usage |"
  [[ -n "$bare_line" ]] && echo "$bare_line"
  echo
  echo "| check | result |"
  echo "|---|---|"
  echo "| every stream open at once and completed ($client) | $(pf $ok_streams) |"
  echo "| one complete, priced row per request | $(pf $ok_rows) |"
  echo "| peak RSS ≤ $TARGET_MB MB | $(pf $ok_mem) |"
  if [[ -s "$RUN_DIR/faults.md" ]]; then
    echo
    echo "### Where the RSS per stream comes from (FAULTS=1)"
    cat "$RUN_DIR/faults.md"
  fi
} > "$out"
cat "$out"
log "saved $out; raw files in $RUN_DIR"
(( ok_mem && ok_streams && ok_rows ))
