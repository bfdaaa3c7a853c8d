#!/usr/bin/env bash
# majordomo end-to-end load harness: in ONE run, against one fast mock upstream,
#   (a) direct      wrk -> mock                          the physical limit
#   (b) nginx       wrk -> nginx proxy_pass -> mock      a plain reverse proxy
#   (c) majordomo   wrk -> majordomo -> mock             key auth, usage parsing, pricing,
#                                                         PostgreSQL request log: all ON
#   (d) bare        wrk -> examples/bare_proxy -> mock   Pingora 0.9 that only forwards
# for non-streaming (json) and streaming (sse) chat completions at each CONNS.
# Prints a Markdown table (rps, p50, p99, gateway CPU µs/request, peak RSS, ratios
# c/a c/b c/d) and saves it to benches/load/results/<UTC timestamp>.md (+ .json),
# then checks that majordomo logged exactly one llm_requests row per request.
#
#   benches/load/run.sh                               # ~5 min with the defaults
#   DURATION=5 CONNS=16 MODES=json benches/load/run.sh
#   THREADS="1 2" benches/load/run.sh                 # (c) and (d) at 1 and at 2 threads
#   MAJORDOMO_BIN=... BARE_BIN=... benches/load/run.sh   # skip the cargo build
#
# Knobs (environment): DURATION (10 s per cell), CONNS ("16 64"), MODES ("json sse"; add
# sse-inject for a stream without stream_options: majordomo injects and strips usage),
# THREADS ("1": Pingora threads of (c) and (d); nginx and the mock use 1 worker),
# WARMUP (3 s per contender and mode, at the highest CONNS), COOLDOWN (1),
# ONLY ("direct nginx bare majordomo"), EXACT_N (1000 requests per mode in the exact
# row-count phase), PIN (none | split: gateway on GW_CPUS, wrk+mock on LOAD_CPUS),
# PACED_RPS (1000; 0 = off) and PACED_CONNS (16): after each mode's cells, one more cell
# per contender where PACED_CONNS connections send at PACED_RPS in all, each waiting an
# exponential think time between requests: the latency a request sees when the gateway
# is not saturated (a closed loop at full speed measures queueing behind the CPU too),
# WRK_THREADS (1), QUIET_PCT/WAIT_QUIET/WAIT_QUIET_TOTAL (25 % / 20 s / 90 s: wait
# for other processes to calm down before a cell), BASE_PORT (18180: mock; +1 nginx,
# +2 bare, +10 majordomo), PGHOST/PGPORT/PGUSER (127.0.0.1/5432/postgres),
# KEEP_DB (1 = keep the throwaway database), CARGO_TARGET_DIR (for the build),
# PERF (1 = `perf record -g` the gateway during each measured cell of (c) and (d):
# $RUN_DIR/perf/*.data; it perturbs the numbers; PERF_FREQ 499, PERF_CALLGRAPH dwarf,16384),
# BENCH_SCRATCH (raw files; default $TMPDIR/majordomo-load), RESULTS_DIR, LOG_LEVEL
# (majordomo's logging.level: warn; info writes one access line per request to a file),
# MDM_ENV_EXTRA (more VAR=value settings for majordomo, space-separated, e.g.
# "MAJORDOMO_SINK_BATCH_TIMEOUT_MS=20").
#
# Everything it starts (mock, proxies, gateway) it stops, by PID / own process group,
# also on Ctrl-C. Nothing is skipped silently: a contender or mode that cannot run is
# a FAILED line in the report, and the exit code is non-zero.
set -uo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
# shellcheck source=benches/load/lib/build.sh
source "$HERE/lib/build.sh"
DURATION="${DURATION:-10}"
WARMUP="${WARMUP:-3}"
COOLDOWN="${COOLDOWN:-1}"
CONNS="${CONNS:-16 64}"
MODES="${MODES:-json sse}"
THREADS="${THREADS:-1}"
ONLY="${ONLY:-direct nginx bare majordomo}"
EXACT_N="${EXACT_N:-1000}"
PIN="${PIN:-none}"
GW_CPUS="${GW_CPUS:-0}"
LOAD_CPUS="${LOAD_CPUS:-1}"
WRK_THREADS="${WRK_THREADS:-1}"
PACED_RPS="${PACED_RPS:-1000}"
PACED_CONNS="${PACED_CONNS:-16}"
LOG_LEVEL="${LOG_LEVEL:-warn}"
WRK_TIMEOUT="${WRK_TIMEOUT:-10s}"
QUIET_PCT="${QUIET_PCT:-25}"
WAIT_QUIET="${WAIT_QUIET:-20}"
WAIT_QUIET_TOTAL="${WAIT_QUIET_TOTAL:-90}"
BASE_PORT="${BASE_PORT:-18180}"
MOCK_PORT=$BASE_PORT
NGINX_PORT=$((BASE_PORT + 1))
BARE_PORT=$((BASE_PORT + 2))
MDM_PORT=$((BASE_PORT + 10))
PGHOST="${PGHOST:-127.0.0.1}"
PGPORT="${PGPORT:-5432}"
PGUSER="${PGUSER:-postgres}"
export PGHOST PGPORT PGUSER
TS="$(date -u +%Y%m%dT%H%M%SZ)"
SCRATCH="${BENCH_SCRATCH:-${TMPDIR:-/tmp}/majordomo-load}"
RUN_DIR="$SCRATCH/runs/$TS"
RESULTS_DIR="${RESULTS_DIR:-$HERE/results}"
MOCK_URL="http://127.0.0.1:$MOCK_PORT"
DB="mdm_load_$(echo "$TS" | tr 'A-Z' 'a-z')_$$"

mkdir -p "$RUN_DIR/cells" "$RUN_DIR/bin" "$RESULTS_DIR"
LOG="$RUN_DIR/run.log"
log() { printf '[load %s] %s\n' "$(date +%H:%M:%S)" "$*" | tee -a "$LOG" >&2; }
die() { log "FATAL: $*"; exit 1; }
note() { echo "$*" >> "$RUN_DIR/notes.txt"; log "$*"; }     # goes into the report
fail_note() { echo "$*" >> "$RUN_DIR/failures.txt"; log "FAILED: $*"; }

if [[ "$PIN" == split ]]; then GW_PIN=(taskset -c "$GW_CPUS"); LOAD_PIN=(taskset -c "$LOAD_CPUS")
else GW_PIN=(); LOAD_PIN=(); fi

# ------------------------------------------------------------------ prerequisites
need_pkgs=()
command -v nginx >/dev/null || need_pkgs+=(nginx-light)
[[ -f /usr/lib/nginx/modules/ngx_http_echo_module.so ]] || need_pkgs+=(libnginx-mod-http-echo)
command -v wrk >/dev/null || need_pkgs+=(wrk)
command -v curl >/dev/null || need_pkgs+=(curl)
command -v python3 >/dev/null || need_pkgs+=(python3)
[[ -x /usr/bin/time ]] || need_pkgs+=(time)
command -v psql >/dev/null || need_pkgs+=(postgresql-client)
if ((${#need_pkgs[@]})); then
  [[ $(id -u) == 0 ]] || die "missing packages ${need_pkgs[*]} (run as root, or: apt-get install -y ${need_pkgs[*]})"
  log "installing ${need_pkgs[*]} with apt"
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}"; } \
    >> "$RUN_DIR/apt.log" 2>&1 || die "apt-get install ${need_pkgs[*]} failed (see $RUN_DIR/apt.log)"
fi
for c in nginx wrk curl python3 ss psql; do command -v "$c" >/dev/null || die "missing $c"; done
ulimit -n 65536 2>/dev/null || true

want() { [[ " $ONLY " == *" $1 "* ]]; }

# ------------------------------------------------------------------ binaries
MAJORDOMO_BIN="${MAJORDOMO_BIN:-}"
BARE_BIN="${BARE_BIN:-}"
if [[ -z "$MAJORDOMO_BIN" || -z "$BARE_BIN" ]] && { want majordomo || want bare; }; then
  TARGET="${CARGO_TARGET_DIR:-$REPO/target}"
  log "building release binaries (majordomo as the Dockerfile builds it, then --example bare_proxy; target $TARGET)"
  build_release "$TARGET" bare_proxy > "$RUN_DIR/build.log" 2>&1 || die "cargo build failed: $(tail -5 "$RUN_DIR/build.log")"
  [[ -z "$MAJORDOMO_BIN" ]] && MAJORDOMO_BIN="$TARGET/release/majordomo"
  [[ -z "$BARE_BIN" ]] && BARE_BIN="$TARGET/release/examples/bare_proxy"
fi
# copies, so a concurrent build cannot swap a binary mid-run
if want majordomo; then
  [[ -x "$MAJORDOMO_BIN" ]] || die "no majordomo binary at $MAJORDOMO_BIN"
  cp "$MAJORDOMO_BIN" "$RUN_DIR/bin/majordomo"; MAJORDOMO_BIN="$RUN_DIR/bin/majordomo"
fi
if want bare; then
  [[ -x "$BARE_BIN" ]] || die "no bare_proxy binary at $BARE_BIN"
  cp "$BARE_BIN" "$RUN_DIR/bin/bare_proxy"; BARE_BIN="$RUN_DIR/bin/bare_proxy"
fi

# ------------------------------------------------------------------ helpers
port_busy() { ss -Htln "sport = :$1" 2>/dev/null | grep -q .; }
wait_http() { # URL TIMEOUT [PID]: an HTTP answer below 500
  local url=$1 timeout=$2 pid=${3:-} t0=$SECONDS code
  while (( SECONDS - t0 < timeout )); do
    if [[ -n "$pid" ]] && ! kill -0 "$pid" 2>/dev/null; then return 2; fi
    code=$(curl -s -o /dev/null -m 2 -w '%{http_code}' "$url" 2>/dev/null)
    [[ "$code" =~ ^[1-4][0-9][0-9]$ ]] && return 0
    sleep 0.25
  done
  return 1
}
tree_pids() { # ROOT and its descendants
  ps -e -o pid=,ppid= | awk -v root="$1" '
    { kids[$2] = kids[$2] " " $1 }
    END { n = 1; q[1] = root; for (i = 1; i <= n; i++) { p = q[i]; print p
            m = split(kids[p], a, " "); for (k = 1; k <= m; k++) q[++n] = a[k] } }'
}
cpu_ticks() { # utime+stime(+children) summed over PIDs, clock ticks
  local p
  for p in "$@"; do cat "/proc/$p/stat" 2>/dev/null; echo; done |
    awk 'NF { sub(/^.*\) /, ""); t += $12 + $13 + $14 + $15 } END { printf "%d\n", t }'
}
mem_kb() { # FIELD PID...: sum of a /proc/PID/status field
  local f=$1 p; shift
  for p in "$@"; do awk -v f="$f:" '$1 == f { print $2 }' "/proc/$p/status" 2>/dev/null; done |
    awk '{ s += $1 } END { printf "%d\n", s }'
}
cpu_busy() { awk '$1 == "cpu" { print $2 + $3 + $4 + $7 + $8 }' /proc/stat; }
cpu_stat() { awk '/^cpu/ { busy = $2 + $3 + $4 + $7 + $8; tot = busy + $5 + $6 + $9
                printf "%s %d %d %d\n", $1, busy, $9, tot }' /proc/stat; }
mock_requests() { # nginx stub_status request counter of the mock (this read included)
  curl -s -m 5 "$MOCK_URL/_mock_status" | awk 'NR == 3 { print $3 }'
}
psql_db() { psql -X -h "$PGHOST" -p "$PGPORT" -U "$PGUSER" -d "$DB" -tAq "$@"; }
rows_now() { psql_db -c 'SELECT count(*) FROM llm_requests' 2>/dev/null || echo -1; }

mk_body() { # MODEL STREAM(0|1|2) FILE -- the shared harness's request (~250 bytes)
  local extra=""
  [[ "$2" == 1 ]] && extra=',"stream":true,"stream_options":{"include_usage":true}'
  # 2: a stream whose client did not ask for usage: majordomo injects
  # include_usage upstream and strips the usage chunk from what wrk gets.
  [[ "$2" == 2 ]] && extra=',"stream":true'
  printf '{"model":"%s","messages":[{"role":"system","content":"You are a concise assistant."},{"role":"user","content":"What is the capital of France? Answer in one sentence and add one fact about it."}],"max_tokens":128,"temperature":0.2%s}' \
    "$1" "$extra" > "$3"
}
mk_body gpt-4o 0 "$RUN_DIR/body-json.json"
mk_body gpt-4o 1 "$RUN_DIR/body-sse.json"
mk_body gpt-4o 2 "$RUN_DIR/body-sse-inject.json"

# ------------------------------------------------------------------ cleanup
MOCK_PID=""; GW_PID=""; GW_STOP=TERM; DB_CREATED=0
stop_pid() { # PID SIGNAL: signal its process group (setsid) then wait, SIGKILL after 15 s
  local pid=$1 sig=$2
  [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null || return 0
  kill -"$sig" -- "-$pid" 2>/dev/null || kill -"$sig" "$pid" 2>/dev/null
  for _ in $(seq 150); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  if kill -0 "$pid" 2>/dev/null; then
    log "pid $pid still running 15 s after SIG$sig: SIGKILL to its process group"
    kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null
  fi
  wait "$pid" 2>/dev/null
  return 0
}
cleanup() {
  stop_pid "$GW_PID" "$GW_STOP"; GW_PID=""
  stop_pid "$MOCK_PID" TERM; MOCK_PID=""
  if (( DB_CREATED )) && [[ -z "${KEEP_DB:-}" ]]; then
    psql -X -h "$PGHOST" -p "$PGPORT" -U "$PGUSER" -d postgres -qc "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null 2>&1
    DB_CREATED=0
  fi
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT TERM

# ------------------------------------------------------------------ mock upstream
python3 "$HERE/lib/mkmock.py" "$RUN_DIR/mock" "$MOCK_PORT" > "$RUN_DIR/mock-bodies.txt" || die "mkmock.py failed"
port_busy "$MOCK_PORT" && die "port $MOCK_PORT is in use (set BASE_PORT)"
setsid "${LOAD_PIN[@]}" nginx -p "$RUN_DIR/mock" -e "$RUN_DIR/mock/error.log" -c "$RUN_DIR/mock/nginx.conf" \
  -g 'daemon off;' > "$RUN_DIR/mock/stdout.log" 2>&1 < /dev/null &
MOCK_PID=$!
wait_http "$MOCK_URL/health" 10 "$MOCK_PID" || die "mock did not start: $(tail -3 "$RUN_DIR/mock/error.log")"
[[ -n "$(mock_requests)" ]] || die "mock stub_status does not answer"
log "mock nginx pid $MOCK_PID on $MOCK_URL ($(tr '\n' ';' < "$RUN_DIR/mock-bodies.txt"))"

# ------------------------------------------------------------------ meta
python3 - "$RUN_DIR/meta.json" <<PY
import json, os, subprocess, sys
def sh(c):
    try: return subprocess.run(c, shell=True, capture_output=True, text=True, timeout=30).stdout.strip()
    except Exception as e: return str(e)
json.dump({
  "timestamp": "$TS", "host": sh("uname -srm"), "nproc": os.cpu_count(),
  "cpu_model": sh("awk -F': ' '/model name/ {print \$2; exit}' /proc/cpuinfo"),
  "mem_total_kb": int(sh("awk '/MemTotal/ {print \$2}' /proc/meminfo") or 0),
  "clk_tck": int(sh("getconf CLK_TCK") or 100), "pin": "$PIN", "gw_cpus": "$GW_CPUS", "load_cpus": "$LOAD_CPUS",
  "duration_s": $DURATION, "warmup_s": $WARMUP, "conns": "$CONNS".split(), "modes": "$MODES".split(),
  "threads": "$THREADS".split(), "wrk_threads": $WRK_THREADS, "paced_rps": $PACED_RPS, "paced_conns": $PACED_CONNS, "exact_n": $EXACT_N,
  "log_level": "$LOG_LEVEL", "mdm_env_extra": "${MDM_ENV_EXTRA:-}",
  "versions": {"nginx": sh("nginx -v 2>&1 | sed 's/.*version: //'"), "wrk": sh("wrk -v 2>&1 | head -1 | cut -d' ' -f1-2"),
               "postgres": sh("psql -X -h $PGHOST -p $PGPORT -U $PGUSER -d postgres -tAc 'SHOW server_version' 2>&1"),
               "majordomo_git": sh("git -C '$REPO' describe --always --dirty 2>/dev/null"), "kernel": sh("uname -r")},
  "loadavg_start": open("/proc/loadavg").read().split()[:3],
}, open(sys.argv[1], "w"), indent=1)
PY

# PostgreSQL's postmaster: its process tree's CPU is recorded per cell (the cost of the
# request log on the database side; other clients of the same server show up in it too).
PG_PID=$(ss -Htlnp "sport = :$PGPORT" 2>/dev/null | grep -o 'pid=[0-9]*' | head -1 | cut -d= -f2)

# ------------------------------------------------------------------ quiet wait
wait_quiet() { # until processes other than ours use < QUIET_PCT % of a core (bounded)
  local t0=$SECONDS tck pids=() b0 b1 o0 o1 other spent limit
  tck=$(getconf CLK_TCK)
  spent=$(cat "$RUN_DIR/quiet_waited_s" 2>/dev/null || echo 0)
  limit=$(( WAIT_QUIET_TOTAL - spent )); (( limit > WAIT_QUIET )) && limit=$WAIT_QUIET; (( limit < 0 )) && limit=0
  while :; do
    pids=()
    [[ -n "$GW_PID" ]] && mapfile -t pids < <(tree_pids "$GW_PID")
    mapfile -t -O "${#pids[@]}" pids < <(tree_pids "$MOCK_PID")
    b0=$(cpu_busy); o0=$(cpu_ticks "${pids[@]}")
    sleep "$COOLDOWN"
    b1=$(cpu_busy); o1=$(cpu_ticks "${pids[@]}")
    other=$(( ((b1 - b0) - (o1 - o0)) * 100 / tck / COOLDOWN ))
    if (( other < QUIET_PCT )); then echo $(( spent + SECONDS - t0 - COOLDOWN )) > "$RUN_DIR/quiet_waited_s"; return 0; fi
    if (( SECONDS - t0 >= limit )); then
      echo $(( spent + SECONDS - t0 )) > "$RUN_DIR/quiet_waited_s"
      (( limit > 0 )) && log "other processes still use ${other}% of a core; measuring anyway"
      return 1
    fi
  done
}

# ------------------------------------------------------------------ one wrk cell
# run_cell CONTENDER TAG MODE CONNS SECONDS URL BODY HEADER...  -> $RUN_DIR/cells/CONTENDER.TAG.json
WRK_DONE=0; WRK_CONNS_SUM=0; WRK_RUNS=0
run_cell() {
  local name=$1 tag=$2 mode=$3 conns=$4 secs=$5 url=$6 body=$7; shift 7
  local out="$RUN_DIR/cells/$name.$tag" hflags=() h gpids=() mpids=() g0 g1 m0 m1 t0 t1 rc
  for h in "$@"; do hflags+=(-H "$h"); done
  local ppids=() p0=0 p1=0
  [[ -n "$GW_PID" ]] && mapfile -t gpids < <(tree_pids "$GW_PID")
  mapfile -t mpids < <(tree_pids "$MOCK_PID")
  [[ -n "$PG_PID" ]] && mapfile -t ppids < <(tree_pids "$PG_PID")
  g0=$( ((${#gpids[@]})) && cpu_ticks "${gpids[@]}" || echo 0); m0=$(cpu_ticks "${mpids[@]}")
  ((${#ppids[@]})) && p0=$(cpu_ticks "${ppids[@]}")
  local perf_pid=""
  if [[ -n "${PERF:-}" && -n "$GW_PID" && $tag == cell-* && $name != nginx ]]; then
    mkdir -p "$RUN_DIR/perf"
    perf record -q -F "${PERF_FREQ:-499}" -g --call-graph "${PERF_CALLGRAPH:-dwarf,16384}" -p "$GW_PID" \
      -o "$RUN_DIR/perf/$name.$tag.data" > "$RUN_DIR/perf/$name.$tag.log" 2>&1 &
    perf_pid=$!
  fi
  cpu_stat > "$out.stat0"; t0=$(date +%s.%N)
  BENCH_BODY_FILE="$body" BENCH_JSON_OUT="$out.wrk.json" BENCH_THINK_MS="${CELL_THINK_MS:-0}" /usr/bin/time -f '%U %S' -o "$out.time" \
    "${LOAD_PIN[@]}" wrk -t"$WRK_THREADS" -c"$conns" -d"${secs}s" --timeout "$WRK_TIMEOUT" \
    -s "$HERE/lib/post.lua" "${hflags[@]}" "$url" > "$out.wrk.txt" 2>&1
  rc=$?
  t1=$(date +%s.%N); cpu_stat > "$out.stat1"
  if [[ -n "$perf_pid" ]]; then kill -INT "$perf_pid" 2>/dev/null; wait "$perf_pid" 2>/dev/null; fi
  [[ -n "$GW_PID" ]] && mapfile -t gpids < <(tree_pids "$GW_PID")
  g1=$( ((${#gpids[@]})) && cpu_ticks "${gpids[@]}" || echo 0); m1=$(cpu_ticks "${mpids[@]}")
  [[ -n "$PG_PID" ]] && mapfile -t ppids < <(tree_pids "$PG_PID")
  ((${#ppids[@]})) && p1=$(cpu_ticks "${ppids[@]}")
  local hwm=0 rss=0
  if [[ -n "$GW_PID" ]]; then hwm=$(mem_kb VmHWM "${gpids[@]}"); rss=$(mem_kb VmRSS "${gpids[@]}"); fi
  local wu=0 ws=0; [[ -s "$out.time" ]] && read -r wu ws < <(tail -1 "$out.time")
  python3 - "$out" "$name" "$tag" "$mode" "$conns" "$t0" "$t1" "$g0" "$g1" "$m0" "$m1" "$wu" "$ws" "$hwm" "$rss" "$rc" "$((p1 - p0))" <<'PY'
import json, sys
out, name, tag, mode, conns, t0, t1, g0, g1, m0, m1, wu, ws, hwm, rss, rc, pg = sys.argv[1:]
def stat(p):
    return {l.split()[0]: tuple(map(int, l.split()[1:])) for l in open(p)}
s0, s1 = stat(out + ".stat0"), stat(out + ".stat1")
try:
    wrk = json.load(open(out + ".wrk.json"))
except Exception as e:
    wrk = {"error": "no wrk summary (rc=%s): %s" % (rc, e)}
cell = {"contender": name, "tag": tag, "mode": mode, "conns": int(conns), "wall_s": float(t1) - float(t0),
        "wrk_rc": int(rc), "wrk": wrk, "gw_cpu_ticks": int(g1) - int(g0), "mock_cpu_ticks": int(m1) - int(m0),
        "wrk_cpu_s": float(wu or 0) + float(ws or 0),
        "sys": {n: {"busy": s1[n][0] - s0[n][0], "steal": s1[n][1] - s0[n][1], "total": s1[n][2] - s0[n][2]}
                for n in s1 if n in s0},
        "gw_vmhwm_kb": int(hwm), "gw_vmrss_kb": int(rss), "pg_cpu_ticks": int(pg)}
json.dump(cell, open(out + ".json", "w"), indent=1)
w = wrk if "requests" in wrk else None
if w:
    rps = w["requests"] / (w["duration_us"] / 1e6)
    errs = sum(w["errors"].values())
    gw = cell["gw_cpu_ticks"] * 1e4 / max(1, w["requests"])
    print("%-14s %-4s c=%-3s %8.0f rps  p50 %6.2f ms  p99 %6.2f ms  cpu %5.0f us/req  errors %d  (%s)" % (
        name, mode, conns, rps, w["latency_us"]["p50"] / 1e3, w["latency_us"]["p99"] / 1e3, gw, errs, tag))
    print("REQUESTS %d" % w["requests"], file=open(out + ".requests", "w"))
else:
    print("%-14s %-4s c=%-3s wrk FAILED (rc=%s)" % (name, mode, conns, rc))
PY
  if [[ -f "$out.requests" ]]; then
    WRK_DONE=$(( WRK_DONE + $(awk '{print $2}' "$out.requests") ))
  fi
  WRK_CONNS_SUM=$(( WRK_CONNS_SUM + conns )); WRK_RUNS=$(( WRK_RUNS + 1 ))
}

# ------------------------------------------------------------------ preflight
PREFLIGHTS=0
preflight() { # NAME MODE URL BODY HEADER... : one request, validated
  local name=$1 mode=$2 url=$3 body=$4; shift 4
  local hflags=() h out="$RUN_DIR/cells/$name.check-$mode" w code ndata
  for h in "$@"; do hflags+=(-H "$h"); done
  w=$(curl -sS -m 30 -D "$out.hdr" -o "$out.body" -w '%{http_code} %{size_download}' -X POST \
      -H 'Content-Type: application/json' "${hflags[@]}" --data-binary @"$body" "$url" 2>"$out.err")
  code=${w%% *}
  ndata=$(grep -c '^data: ' "$out.body" 2>/dev/null); ndata=${ndata:-0}
  [[ "$code" == 200 ]] || { echo "HTTP $code: $(head -c 300 "$out.body" 2>/dev/null) $(head -c 200 "$out.err")"; return 1; }
  if [[ $mode == json ]]; then
    grep -q 'chat.completion' "$out.body" || { echo "no chat.completion: $(head -c 200 "$out.body")"; return 1; }
  else
    grep -q '^data: \[DONE\]' "$out.body" || { echo "no data: [DONE]: $(head -c 200 "$out.body")"; return 1; }
    (( ndata >= 20 )) || { echo "only $ndata data: lines"; return 1; }
  fi
  if [[ $name == majordomo* ]]; then
    grep -qi '^x-majordomo-request-id:' "$out.hdr" || { echo "no X-Majordomo-Request-Id header"; return 1; }
  fi
  echo "ok: HTTP 200, ${w#* } bytes, $ndata data: lines"
}

# ------------------------------------------------------------------ contender runner
# measure NAME URL HEADER... : preflight, warm-up and cells for every mode
measure() {
  local name=$1 url=$2; shift 2
  local mode body c msg maxc
  maxc=$(echo $CONNS | tr ' ' '\n' | sort -n | tail -1)
  for mode in $MODES; do
    body="$RUN_DIR/body-$mode.json"
    PREFLIGHTS=$((PREFLIGHTS + 1))   # (counted here: preflight runs in a subshell)
    if ! msg=$(preflight "$name" "$mode" "$url" "$body" "$@"); then
      fail_note "$name $mode: preflight: $msg"; continue
    fi
    log "$name $mode preflight $msg"
    if (( WARMUP > 0 )); then
      wait_quiet; run_cell "$name" "warmup-$mode" "$mode" "$maxc" "$WARMUP" "$url" "$body" "$@" > /dev/null
    fi
    for c in $CONNS; do
      wait_quiet
      run_cell "$name" "cell-$mode-c$c" "$mode" "$c" "$DURATION" "$url" "$body" "$@" > "$RUN_DIR/line.txt"
      tee -a "$LOG" < "$RUN_DIR/line.txt" >&2
    done
    if (( PACED_RPS > 0 )); then
      wait_quiet
      CELL_THINK_MS=$(python3 -c "print($PACED_CONNS * 1000 / $PACED_RPS)")
      run_cell "$name" "paced-$mode-c$PACED_CONNS" "$mode" "$PACED_CONNS" "$DURATION" "$url" "$body" "$@" > "$RUN_DIR/line.txt"
      CELL_THINK_MS=0
      sed 's/$/ (paced at '"$PACED_RPS"' rps)/' "$RUN_DIR/line.txt" | tee -a "$LOG" >&2
    fi
  done
}

start_gw() { # NAME PORT READY_URL STOP_SIGNAL CMD... : start in its own process group
  local name=$1 port=$2 ready=$3 sig=$4; shift 4
  if port_busy "$port"; then fail_note "$name: port $port already in use"; return 1; fi
  setsid "${GW_PIN[@]}" "$@" > "$RUN_DIR/$name.log" 2>&1 < /dev/null &
  GW_PID=$!; GW_STOP=$sig
  if ! wait_http "$ready" 60 "$GW_PID"; then
    fail_note "$name: not ready in 60 s: $(tail -5 "$RUN_DIR/$name.log" | tr '\n' ' ' | cut -c1-500)"
    stop_pid "$GW_PID" KILL; GW_PID=""; return 1
  fi
  log "$name: pid $GW_PID ready ($(tree_pids "$GW_PID" | wc -l) process(es), $(ls /proc/$GW_PID/task | wc -l) threads)"
}
stop_gw() {
  local name=$1 pids h
  if [[ -n "$GW_PID" ]]; then
    mapfile -t pids < <(tree_pids "$GW_PID")
    h=$(mem_kb VmHWM "${pids[@]}")
    echo "{\"name\": \"$name\", \"peak_vmhwm_kb\": $h, \"threads\": $(ls /proc/$GW_PID/task 2>/dev/null | wc -l)}" > "$RUN_DIR/cells/$name.peak.json"
    stop_pid "$GW_PID" "$GW_STOP"; GW_PID=""
  fi
}

FAILED=0

# (a) direct
if want direct; then
  log "(a) direct: wrk -> mock"
  measure direct "$MOCK_URL/v1/chat/completions" "Authorization: Bearer sk-bench"
fi

# (b) nginx proxy_pass
if want nginx; then
  mkdir -p "$RUN_DIR/nginx/tmp"
  cat > "$RUN_DIR/nginx/nginx.conf" <<CONF
worker_processes 1;
pid $RUN_DIR/nginx/nginx.pid;
error_log $RUN_DIR/nginx/error.log warn;
events { worker_connections 8192; multi_accept on; }
http {
    access_log off;
    client_body_temp_path $RUN_DIR/nginx/tmp;
    proxy_temp_path $RUN_DIR/nginx/tmp;
    fastcgi_temp_path $RUN_DIR/nginx/tmp;
    uwsgi_temp_path $RUN_DIR/nginx/tmp;
    scgi_temp_path $RUN_DIR/nginx/tmp;
    keepalive_requests 10000000;
    upstream mock { server 127.0.0.1:$MOCK_PORT; keepalive 256; keepalive_requests 10000000; }
    server {
        listen 127.0.0.1:$NGINX_PORT backlog=4096;
        location = /nginx-health { return 200 'ok'; }
        location / {
            proxy_pass http://mock;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
        }
    }
}
CONF
  log "(b) nginx: proxy_pass, 1 worker, upstream keepalive, proxy_buffering off"
  if start_gw nginx "$NGINX_PORT" "http://127.0.0.1:$NGINX_PORT/nginx-health" TERM \
       nginx -p "$RUN_DIR/nginx" -e "$RUN_DIR/nginx/error.log" -c "$RUN_DIR/nginx/nginx.conf" -g 'daemon off;'; then
    measure nginx "http://127.0.0.1:$NGINX_PORT/v1/chat/completions" "Authorization: Bearer sk-bench"
    stop_gw nginx
  fi
fi

# (d) bare Pingora proxy, per THREADS
if want bare; then
  for t in $THREADS; do
    name="bare-t$t"
    log "(d) $name: examples/bare_proxy, $t thread(s)"
    if start_gw "$name" "$BARE_PORT" "http://127.0.0.1:$BARE_PORT/health" INT \
         env TMPDIR="$RUN_DIR" "$BARE_BIN" --listen "127.0.0.1:$BARE_PORT" --upstream "127.0.0.1:$MOCK_PORT" --threads "$t"; then
      measure "$name" "http://127.0.0.1:$BARE_PORT/v1/chat/completions" "Authorization: Bearer sk-bench"
      stop_gw "$name"
    fi
  done
fi

# (c) majordomo, everything on, per THREADS
wait_rows() { # EXPECTED: poll until the count reaches EXPECTED or stops moving for 3 s (max 60 s)
  local want=$1 n last=-2 still=0 t0=$SECONDS
  while (( SECONDS - t0 < 60 )); do
    n=$(rows_now)
    (( n >= want )) && { echo "$n"; return; }
    if (( n == last )); then still=$((still + 1)); (( still >= 6 )) && break; else still=0; fi
    last=$n; sleep 0.5
  done
  rows_now
}
check() { # LABEL OK(0|1) DETAIL
  local s=PASS; (( $2 )) || { s=FAIL; FAILED=1; }
  echo "| $1 | $s | $3 |" >> "$RUN_DIR/rowcheck.md"
  log "row check: $1: $s ($3)"
}
if want majordomo; then
  if ! pg_isready -q -h "$PGHOST" -p "$PGPORT" 2>/dev/null && command -v pg_ctlcluster >/dev/null && [[ -d /etc/postgresql ]]; then
    log "starting PostgreSQL"
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -1)" main start >> "$LOG" 2>&1 || true
    for _ in $(seq 30); do pg_isready -q -h "$PGHOST" -p "$PGPORT" && break; sleep 1; done
  fi
  for t in $THREADS; do
    name="majordomo-t$t"
    log "(c) $name: key auth + usage parsing + pricing + PostgreSQL log, $t thread(s)"
    if ! psql -X -h "$PGHOST" -p "$PGPORT" -U "$PGUSER" -d postgres -qc "DROP DATABASE IF EXISTS $DB WITH (FORCE)" -c "CREATE DATABASE $DB" >> "$LOG" 2>&1; then
      fail_note "$name: cannot create database $DB on $PGHOST:$PGPORT (is PostgreSQL running?)"; FAILED=1; continue
    fi
    DB_CREATED=1
    MDM_ENV=(MAJORDOMO_SERVER_HOST=127.0.0.1 MAJORDOMO_SERVER_PORT="$MDM_PORT" MAJORDOMO_METRICS_PORT=0
      MAJORDOMO_SERVER_THREADS="$t" MAJORDOMO_SERVER_PID_FILE="$RUN_DIR/$name.pid"
      MAJORDOMO_SERVER_UPGRADE_SOCK="$RUN_DIR/$name.sock" MAJORDOMO_SERVER_GRACE_PERIOD_SECS=1
      MAJORDOMO_SERVER_GRACEFUL_SHUTDOWN_TIMEOUT_SECS=10
      MAJORDOMO_STORAGE_DRIVER=postgres MAJORDOMO_STORAGE_POSTGRES_HOST="$PGHOST"
      MAJORDOMO_STORAGE_POSTGRES_PORT="$PGPORT" MAJORDOMO_STORAGE_POSTGRES_USER="$PGUSER"
      MAJORDOMO_STORAGE_POSTGRES_DATABASE="$DB"
      MAJORDOMO_PROVIDERS_OPENAI_BASE_URL="$MOCK_URL" MAJORDOMO_PRICING_REMOTE_URL=
      MAJORDOMO_SINK_SPOOL_DIR="$RUN_DIR/$name-spool" MAJORDOMO_LOGGING_LEVEL="$LOG_LEVEL")
    read -r -a env_extra <<< "${MDM_ENV_EXTRA:-}"
    MDM_ENV+=("${env_extra[@]}")
    if ! key=$(env "${MDM_ENV[@]}" "$MAJORDOMO_BIN" keys create --name bench --json 2>>"$RUN_DIR/$name.log" |
               python3 -c 'import json,sys; print(json.load(sys.stdin)["key"])'); then
      fail_note "$name: majordomo keys create --json failed: $(tail -3 "$RUN_DIR/$name.log" | tr '\n' ' ')"; FAILED=1; continue
    fi
    HDRS=("Authorization: Bearer sk-bench" "X-Majordomo-Key: $key" "X-Majordomo-Feature: bench")
    start_gw "$name" "$MDM_PORT" "http://127.0.0.1:$MDM_PORT/health" TERM \
      env "${MDM_ENV[@]}" "$MAJORDOMO_BIN" || { FAILED=1; continue; }
    WRK_DONE=0; WRK_CONNS_SUM=0; WRK_RUNS=0; PREFLIGHTS=0
    mock0=$(mock_requests)
    measure "$name" "http://127.0.0.1:$MDM_PORT/v1/chat/completions" "${HDRS[@]}"
    # --- row accounting: wrk runs (warm-ups and cells) and preflights
    expected=$((WRK_DONE + PREFLIGHTS))
    rows1=$(wait_rows "$expected"); sleep 1; rows1=$(wait_rows "$expected")
    forwarded=$(( $(mock_requests) - mock0 - 1 ))   # requests the mock received from majordomo
    extra=$((rows1 - expected))
    {
      echo "### Row check: $name (database $DB)"
      echo
      echo "wrk runs: $WRK_RUNS (warm-ups + cells), requests wrk completed: $WRK_DONE, preflight requests: $PREFLIGHTS;"
      echo "requests the mock received from majordomo (nginx stub_status): $forwarded; rows in llm_requests: $rows1."
      echo "wrk stops a run with requests still in flight on its connections (at most one per connection, $WRK_CONNS_SUM over all runs);"
      echo "majordomo still proxies and logs those, so rows = completed + preflights + in-flight."
      echo
      echo "| check | result | detail |"
      echo "|---|---|---|"
    } >> "$RUN_DIR/rowcheck.md"
    ok=0; (( rows1 == forwarded )) && ok=1
    check "$name: rows = requests majordomo forwarded to the mock" $ok "$rows1 rows, $forwarded forwarded"
    ok=0; (( extra >= 0 && extra <= WRK_CONNS_SUM )) && ok=1
    check "$name: rows = wrk completed + preflights (+ in flight at wrk's stop)" $ok \
      "$rows1 = $WRK_DONE + $PREFLIGHTS + $extra in flight (bound 0..$WRK_CONNS_SUM)"
    # --- exact phase: N requests per mode, every one completed by the client
    sent=0
    for mode in $MODES; do
      r=$(python3 "$HERE/lib/httpclient.py" count --url "http://127.0.0.1:$MDM_PORT/v1/chat/completions" \
            --body "$RUN_DIR/body-$mode.json" --mode "${mode%%-*}" -n "$EXACT_N" -c 16 \
            -H "Authorization: Bearer sk-bench" -H "X-Majordomo-Key: $key" -H "X-Majordomo-Feature: bench" 2>&1)
      echo "$r" > "$RUN_DIR/cells/$name.exact-$mode.json"
      n_ok=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["sent"])' "$r" 2>/dev/null || echo 0)
      good=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["ok"])' "$r" 2>/dev/null || echo 0)
      sent=$((sent + n_ok))
      ok=0; (( good == EXACT_N )) && ok=1
      check "$name: exact phase $mode: $EXACT_N requests over 16 connections all answered 200 and complete" $ok "$r"
    done
    rows2=$(wait_rows $((rows1 + sent)))
    ok=0; (( rows2 - rows1 == sent )) && ok=1
    check "$name: exact phase: new rows = requests sent" $ok "$((rows2 - rows1)) new rows for $sent requests"
    # --- the rows carry what the features computed (usage, price, metadata)
    q=$(psql_db -F ' ' -c "SELECT count(*) FILTER (WHERE status_code = 200),
          count(*) FILTER (WHERE status_code = 200 AND usage_complete AND price_found AND input_tokens = 26
                           AND output_tokens = 19 AND total_cost > 0 AND raw_metadata->>'feature' = 'bench'),
          count(*) FILTER (WHERE status_code = 499),
          count(*) FILTER (WHERE status_code NOT IN (200, 499)) FROM llm_requests" 2>&1)
    read -r n200 ngood n499 nother <<< "$q"
    ok=0; [[ -n "$n200" && "$n200" == "$ngood" && "$nother" == 0 ]] && (( n499 <= extra )) && ok=1
    check "$name: every 200 row is priced with complete usage (26 in / 19 out) and metadata; only in-flight requests are 499" $ok \
      "200: $n200, of which complete+priced: $ngood; 499 (client gone: wrk's stop): $n499 of $extra in flight; other statuses: $nother"
    stop_gw "$name"
    rows3=$(rows_now)
    ok=0; (( rows3 == rows2 )) && ok=1
    check "$name: no row appears or vanishes after a graceful stop" $ok "$rows2 before, $rows3 after"
    echo >> "$RUN_DIR/rowcheck.md"
    psql -X -h "$PGHOST" -p "$PGPORT" -U "$PGUSER" -d postgres -qc "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null 2>&1
    [[ -n "${KEEP_DB:-}" ]] || DB_CREATED=0
  done
fi

stop_pid "$MOCK_PID" TERM; MOCK_PID=""
cat /proc/loadavg > "$RUN_DIR/loadavg_end"
echo "$SECONDS" > "$RUN_DIR/elapsed_s"
python3 "$HERE/lib/report.py" "$RUN_DIR" "$RESULTS_DIR/$TS.json" "$RESULTS_DIR/$TS.md" || FAILED=1
log "results: $RESULTS_DIR/$TS.md ($RESULTS_DIR/$TS.json); raw files: $RUN_DIR"
[[ -s "$RUN_DIR/failures.txt" ]] && FAILED=1
exit $FAILED
