#!/usr/bin/env bash
# Refreshes the profile that release builds of majordomo are optimised with
# (pgo/majordomo.profdata; scripts/release-rustflags.sh hands it to rustc in
# the Dockerfile, scripts/run.sh, validate-deploy and the benchmarks).
#
#   scripts/build-pgo.sh            # -> pgo/majordomo.profdata, rustc-version, source-commit
#
# 1. builds majordomo instrumented (-Cprofile-generate) in its own target dir;
# 2. trains it: the load harness's nginx mock (benches/load/lib/mkmock.py) and
#    N requests of each kind a gateway sees most (OpenAI chat JSON, streams
#    with and without stream_options, the Responses API, Gemini alt=sse,
#    Anthropic JSON and streams) through key auth, usage parsing, pricing and
#    the request log: once on SQLite, once on PostgreSQL if one answers;
# 3. merges the profile (llvm-profdata from rustup's llvm-tools component).
#    Code the training never ran is optimised as cold: train on what your
#    traffic looks like.
#
# Run it again after changing code on the request path, and with a new
# compiler: a function whose code changed since the profile was made is
# optimised as if there were no profile (functions still matching keep it),
# and a profile from another rustc is not used at all.
#
# Environment: PGO_TARGET (/var/tmp/majordomo-pgo-target), N (2000 per kind),
# BASE_PORT (18780: mock; +10 gateway), OUT (pgo/majordomo.profdata),
# PGHOST/PGPORT/PGUSER (127.0.0.1/5432/postgres), PG_DB (majordomo_pgo; empty:
# SQLite only). Needs nginx with the echo module, curl, python3, psql. One
# instrumented release build and the training: ~20 min on 2 cores.
# Measured effect: benches/README.md, sessions 12 and 13.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TARGET="${PGO_TARGET:-/var/tmp/majordomo-pgo-target}"
N="${N:-2000}"
BASE_PORT="${BASE_PORT:-18780}"
OUT="${OUT:-$REPO/pgo/majordomo.profdata}"
PGHOST="${PGHOST:-127.0.0.1}"; PGPORT="${PGPORT:-5432}"; PGUSER="${PGUSER:-postgres}"
PG_DB="${PG_DB-majordomo_pgo}"
MOCK_PORT=$BASE_PORT; GW_PORT=$((BASE_PORT + 10))
WORK="$(mktemp -d "${TMPDIR:-/tmp}/majordomo-pgo.XXXXXX")"
chmod 755 "$WORK"   # the mock's nginx workers read their bodies from here
log() { printf '[pgo %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "FATAL: $*"; exit 1; }
for c in nginx curl python3; do command -v "$c" >/dev/null || die "missing $c"; done

SYSROOT="$(rustc --print sysroot)"
PROFDATA="$(find "$SYSROOT/lib/rustlib" -name llvm-profdata -type f 2>/dev/null | head -1)"
if [[ -z "$PROFDATA" ]]; then
  log "installing rustup's llvm-tools (llvm-profdata)"
  rustup component add llvm-tools >&2 || die "cannot install llvm-tools"
  PROFDATA="$(find "$SYSROOT/lib/rustlib" -name llvm-profdata -type f | head -1)"
fi
[[ -x "$PROFDATA" ]] || die "llvm-profdata not found under $SYSROOT"

MOCK_PID=""; GW_PID=""
stop() {
  [[ -n "$1" ]] && kill -0 "$1" 2>/dev/null || return 0
  kill -INT "$1" 2>/dev/null
  for _ in $(seq 100); do kill -0 "$1" 2>/dev/null || return 0; sleep 0.2; done
  kill -KILL "$1" 2>/dev/null || true
}
cleanup() { stop "$GW_PID"; stop "$MOCK_PID"; }
trap cleanup EXIT

log "1/3 instrumented build ($TARGET)"
# Build scripts run instrumented too: their profiles go to a directory the
# merge does not read (LLVM_PROFILE_FILE, below, sends the gateway's elsewhere).
# The same path every time, so that cargo can reuse an earlier instrumented build.
( cd "$REPO" && RUSTFLAGS="-Cprofile-generate=$TARGET/pgo-build-profiles" CARGO_TARGET_DIR="$TARGET" \
    cargo build --release --locked --bin majordomo ) > "$WORK/build-generate.log" 2>&1 \
  || die "instrumented build failed: $(tail -5 "$WORK/build-generate.log")"
cp "$TARGET/release/majordomo" "$WORK/majordomo-instrumented"

log "2/3 training ($N requests of each kind per store)"
python3 "$REPO/benches/load/lib/mkmock.py" "$WORK/mock" "$MOCK_PORT" > /dev/null
nginx -p "$WORK/mock" -e "$WORK/mock/error.log" -c "$WORK/mock/nginx.conf" -g 'daemon off;' > /dev/null 2>&1 &
MOCK_PID=$!
for _ in $(seq 50); do curl -sf -o /dev/null "http://127.0.0.1:$MOCK_PORT/health" && break; sleep 0.1; done

export MAJORDOMO_SERVER_HOST=127.0.0.1 MAJORDOMO_SERVER_PORT="$GW_PORT" MAJORDOMO_METRICS_PORT=0 \
  MAJORDOMO_SERVER_THREADS=1 MAJORDOMO_SERVER_PID_FILE="$WORK/mdm.pid" \
  MAJORDOMO_SERVER_UPGRADE_SOCK="$WORK/mdm.sock" MAJORDOMO_SERVER_GRACE_PERIOD_SECS=1 \
  MAJORDOMO_SERVER_GRACEFUL_SHUTDOWN_TIMEOUT_SECS=5 MAJORDOMO_PRICING_REMOTE_URL='' \
  MAJORDOMO_LOGGING_LEVEL=info \
  MAJORDOMO_PROVIDERS_OPENAI_BASE_URL="http://127.0.0.1:$MOCK_PORT" \
  MAJORDOMO_PROVIDERS_ANTHROPIC_BASE_URL="http://127.0.0.1:$MOCK_PORT" \
  MAJORDOMO_PROVIDERS_GEMINI_BASE_URL="http://127.0.0.1:$MOCK_PORT"
export LLVM_PROFILE_FILE="$WORK/train-profiles/majordomo-%p-%m.profraw"

chat() { printf '{"model":"gpt-4o","messages":[{"role":"user","content":"What is the capital of France?"}],"max_tokens":128%s}' "$1"; }
chat '' > "$WORK/chat-json.json"
chat ',"stream":true,"stream_options":{"include_usage":true}' > "$WORK/chat-sse.json"
chat ',"stream":true' > "$WORK/chat-inject.json"
printf '{"model":"gpt-4.1","input":"What is the capital of France?","stream":true}' > "$WORK/responses.json"
printf '{"contents":[{"role":"user","parts":[{"text":"What is the capital of France?"}]}]}' > "$WORK/gemini.json"
printf '{"model":"claude-sonnet-4-20250514","max_tokens":128,"messages":[{"role":"user","content":"Hi"}]%s}' '' > "$WORK/anthropic-json.json"
printf '{"model":"claude-sonnet-4-20250514","max_tokens":128,"messages":[{"role":"user","content":"Hi"}]%s}' ',"stream":true' > "$WORK/anthropic-sse.json"

GW="http://127.0.0.1:$GW_PORT"
KEY=""
train() { # PATH BODY MODE HEADER...
  local path=$1 body=$2 mode=$3; shift 3
  local hdrs=(-H "X-Majordomo-Key: $KEY" -H "Content-Type: application/json")
  for h in "$@"; do hdrs+=(-H "$h"); done
  python3 "$REPO/benches/load/lib/httpclient.py" count --url "$GW$path" --body "$WORK/$body" \
    "${hdrs[@]}" -n "$N" -c 8 --mode "$mode" >> "$WORK/train.log" \
    || die "training on $path ($body) failed: $(tail -1 "$WORK/train.log")"
}
# One training run against the store named by the MAJORDOMO_STORAGE_* variables
# it is given: a key, every kind of request, a clean stop (the profile is
# written at exit).
train_on() { # LABEL VAR=VALUE...
  local label=$1; shift
  log "  training with $label"
  KEY=$(env "$@" "$WORK/majordomo-instrumented" keys create --name pgo --json |
        python3 -c 'import json,sys; print(json.load(sys.stdin)["key"])') || die "keys create failed ($label)"
  env "$@" "$WORK/majordomo-instrumented" > "$WORK/gateway-$label.log" 2>&1 &
  GW_PID=$!
  for _ in $(seq 100); do curl -sf -o /dev/null "$GW/health" && break; sleep 0.2; done
  curl -sf -o /dev/null "$GW/health" || die "gateway did not start: $(tail -5 "$WORK/gateway-$label.log")"
  train /v1/chat/completions chat-json.json json "Authorization: Bearer sk-pgo"
  train /v1/chat/completions chat-sse.json sse "Authorization: Bearer sk-pgo"
  train /v1/chat/completions chat-inject.json sse "Authorization: Bearer sk-pgo"
  train /v1/responses responses.json responses "Authorization: Bearer sk-pgo"
  train "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse" gemini.json gemini "x-goog-api-key: pgo"
  # Anthropic: httpclient.py checks OpenAI-shaped bodies only; curl, fewer.
  local body
  for body in anthropic-json.json anthropic-sse.json; do
    for _ in $(seq $((N / 10))); do
      curl -sf -o /dev/null -H "X-Majordomo-Key: $KEY" -H "x-api-key: pgo" -H "anthropic-version: 2023-06-01" \
        -H "Content-Type: application/json" --data-binary "@$WORK/$body" "$GW/v1/messages" \
        || die "training on /v1/messages ($body) failed"
    done
  done
  stop "$GW_PID"; GW_PID=""
}

# The embedded default (SQLite) and, where one answers, PostgreSQL (the
# production store: its sink code would otherwise be optimised as cold).
train_on sqlite MAJORDOMO_STORAGE_DRIVER=sqlite MAJORDOMO_STORAGE_SQLITE_PATH="$WORK/majordomo.db" \
  MAJORDOMO_SINK_SPOOL_DIR="$WORK/spool-sqlite"
if [[ -n "$PG_DB" ]] && psql -X -h "$PGHOST" -p "$PGPORT" -U "$PGUSER" -d postgres -qc \
     "DROP DATABASE IF EXISTS $PG_DB WITH (FORCE)" -c "CREATE DATABASE $PG_DB" > /dev/null 2>&1; then
  train_on postgres MAJORDOMO_STORAGE_DRIVER=postgres MAJORDOMO_STORAGE_POSTGRES_HOST="$PGHOST" \
    MAJORDOMO_STORAGE_POSTGRES_PORT="$PGPORT" MAJORDOMO_STORAGE_POSTGRES_USER="$PGUSER" \
    MAJORDOMO_STORAGE_POSTGRES_DATABASE="$PG_DB" MAJORDOMO_SINK_SPOOL_DIR="$WORK/spool-postgres"
  psql -X -h "$PGHOST" -p "$PGPORT" -U "$PGUSER" -d postgres -qc "DROP DATABASE IF EXISTS $PG_DB WITH (FORCE)" > /dev/null 2>&1 || true
else
  log "  no PostgreSQL at $PGHOST:$PGPORT (or PG_DB empty): trained on SQLite only"
fi
ls "$WORK"/train-profiles/*.profraw > /dev/null 2>&1 || die "no profile written (did the gateway exit cleanly?)"

log "3/3 merging into $OUT"
mkdir -p "$(dirname "$OUT")"
"$PROFDATA" merge -o "$OUT" "$WORK"/train-profiles/*.profraw
# The profile names functions by their symbols, which carry rustc's version:
# scripts/release-rustflags.sh uses it only with the same compiler.
"$REPO/scripts/release-rustflags.sh" --rustc-version > "$(dirname "$OUT")/rustc-version"
# The commit it was trained on, so that release-rustflags.sh can say when the
# code has moved on since (a working tree with changes to src/ is noted too).
{ git -C "$REPO" rev-parse HEAD
  git -C "$REPO" diff --quiet HEAD -- src Cargo.lock || echo "plus uncommitted changes to src/ or Cargo.lock"
} > "$(dirname "$OUT")/source-commit"
log "done: $OUT ($(du -h "$OUT" | cut -f1)), made with $(cat "$(dirname "$OUT")/rustc-version")"
echo "$OUT"
