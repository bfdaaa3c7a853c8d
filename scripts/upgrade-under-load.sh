#!/usr/bin/env bash
# Zero-downtime upgrade under load, the standard Pingora way:
#   1. gateway A serves; a load generator sends JSON and long streaming requests
#   2. gateway B starts with `-u` (same upgrade socket): it waits for A's sockets
#   3. SIGQUIT to A: A hands its listening sockets to B and drains its open
#      requests and streams for server.grace_period_secs, then exits
# Prints requests sent / failed / rows written and exits non-zero unless
# failed == 0 and rows == requests (each written once).
#
#   ./scripts/upgrade-under-load.sh                 # 12 s of load, SQLite
#   UPGRADE_DURATION=6 ./scripts/upgrade-under-load.sh
#   UPGRADE_STORE=postgres ./scripts/upgrade-under-load.sh   # a throwaway database on 127.0.0.1:5432
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/_prereqs.sh

DURATION=${UPGRADE_DURATION:-12}
WORKERS=${UPGRADE_WORKERS:-8}
STORE=${UPGRADE_STORE:-sqlite}
cargo build --locked --quiet --bin majordomo --example mock_upstream
TARGET_DIR=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
BIN=${MAJORDOMO_BIN:-$TARGET_DIR/debug/majordomo}
MOCK_BIN=${MOCK_UPSTREAM_BIN:-$TARGET_DIR/debug/examples/mock_upstream}

WORK=$(mktemp -d "${TMPDIR:-/tmp}/majordomo-upgrade.XXXXXX")
PIDS=()
DB=""
cleanup() {
  for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  if [[ -n "$DB" ]]; then psql -h 127.0.0.1 -U postgres -qc "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null 2>&1 || true; fi
  rm -rf "$WORK"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
MOCK_PORT=$(free_port); PORT=$(free_port)

"$MOCK_BIN" --port "$MOCK_PORT" --event-delay-ms 150 > "$WORK/mock.log" 2>&1 &
PIDS+=($!)

export MAJORDOMO_SERVER_HOST=127.0.0.1 MAJORDOMO_SERVER_PORT=$PORT MAJORDOMO_METRICS_PORT=0 \
  MAJORDOMO_SERVER_UPGRADE_SOCK=$WORK/upgrade.sock MAJORDOMO_SERVER_PID_FILE=$WORK/majordomo.pid \
  MAJORDOMO_SERVER_GRACE_PERIOD_SECS=6 MAJORDOMO_SERVER_GRACEFUL_SHUTDOWN_TIMEOUT_SECS=3 \
  MAJORDOMO_SINK_SPOOL_DIR=$WORK/spool MAJORDOMO_PRICING_REMOTE_URL='' MAJORDOMO_LOGGING_LEVEL=warn \
  MAJORDOMO_PROVIDERS_OPENAI_BASE_URL=http://127.0.0.1:$MOCK_PORT
if [[ $STORE == postgres ]]; then
  DB=mdm_upgrade_$$
  psql -h 127.0.0.1 -U postgres -qc "CREATE DATABASE $DB" >/dev/null
  export MAJORDOMO_STORAGE_DRIVER=postgres MAJORDOMO_STORAGE_POSTGRES_HOST=127.0.0.1 \
    MAJORDOMO_STORAGE_POSTGRES_USER=postgres MAJORDOMO_STORAGE_POSTGRES_DATABASE=$DB
else
  export MAJORDOMO_STORAGE_DRIVER=sqlite MAJORDOMO_STORAGE_SQLITE_PATH=$WORK/majordomo.db
fi

wait_health() {
  for _ in $(seq 1 300); do
    curl -fsS -o /dev/null "http://127.0.0.1:$PORT/health" 2>/dev/null && return 0
    sleep 0.1
  done
  echo "gateway not healthy" >&2; return 1
}

KEY=$("$BIN" keys create --name upgrade --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["key"])')
"$BIN" > "$WORK/a.log" 2>&1 &
A=$!; PIDS+=("$A")
wait_health

python3 - "$PORT" "$KEY" "$DURATION" "$WORKERS" "$WORK/results.json" > "$WORK/load.log" 2>&1 <<'PY' &
import http.client, json, sys, threading, time
port, key, duration, workers, out = int(sys.argv[1]), sys.argv[2], float(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
lock = threading.Lock()
res = {"sent": 0, "ok": 0, "failed": 0, "streams_ok": 0, "ids": [], "errors": []}
def worker(n):
    end = time.time() + duration
    conn = None
    i = 0
    while time.time() < end:
        stream = (n + i) % 3 == 0
        i += 1
        body = json.dumps({"model": "gpt-4o", "stream": stream, "messages": [{"role": "user", "content": "hi"}]})
        with lock:
            res["sent"] += 1
        try:
            # One connection per request: the old process closes its idle
            # keep-alive connections when it hands over, which clients see as
            # a reset on their next request; SDKs retry those, this load does
            # not need to.
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            conn.request("POST", "/v1/chat/completions", body, {
                "X-Majordomo-Key": key, "Content-Type": "application/json", "Connection": "close"})
            r = conn.getresponse()
            data = r.read()
            rid = r.getheader("x-majordomo-request-id")
            ok = r.status == 200 and (not stream or data.endswith(b"data: [DONE]\n\n"))
            with lock:
                if ok:
                    res["ok"] += 1
                    res["ids"].append(rid)
                    if stream:
                        res["streams_ok"] += 1
                else:
                    res["failed"] += 1
                    res["errors"].append(f"status {r.status}, {len(data)} bytes")
        except Exception as e:
            with lock:
                res["failed"] += 1
                res["errors"].append(repr(e))
        finally:
            if conn:
                conn.close()
ts = [threading.Thread(target=worker, args=(n,)) for n in range(workers)]
for t in ts: t.start()
for t in ts: t.join()
json.dump(res, open(out, "w"))
PY
LOAD=$!

sleep $(( DURATION / 3 ))
"$BIN" -u > "$WORK/b.log" 2>&1 &
B=$!; PIDS+=("$B")
sleep 1
kill -QUIT "$A"
echo "upgrade: started B (pid $B) with -u, sent SIGQUIT to A (pid $A)"
wait "$LOAD"
# A drains its open streams, then exits.
for _ in $(seq 1 200); do kill -0 "$A" 2>/dev/null || break; sleep 0.1; done
if kill -0 "$A" 2>/dev/null; then echo "FAIL: old process still running" >&2; exit 1; fi
curl -fsS -o /dev/null "http://127.0.0.1:$PORT/health" || { echo "FAIL: new process not serving" >&2; exit 1; }

ids_file=$WORK/ids.txt
python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); print("\n".join(r["ids"]))' "$WORK/results.json" > "$ids_file"
count_rows() {
  if [[ $STORE == postgres ]]; then
    psql -h 127.0.0.1 -U postgres -d "$DB" -tAc "SELECT count(*), count(DISTINCT id) FROM llm_requests"
  else
    python3 -c 'import sqlite3,sys; c=sqlite3.connect(sys.argv[1]); print("|".join(map(str, c.execute("SELECT count(*), count(DISTINCT id) FROM llm_requests").fetchone())))' "$MAJORDOMO_STORAGE_SQLITE_PATH"
  fi
}
ok=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["ok"])' "$WORK/results.json")
rows="0|0"
for _ in $(seq 1 100); do
  rows=$(count_rows)
  [[ ${rows%%|*} -ge $ok ]] && break
  sleep 0.2
done
python3 - "$WORK/results.json" "$rows" <<'PY'
import json, sys
r = json.load(open(sys.argv[1])); total, distinct = map(int, sys.argv[2].split("|"))
print(f"requests sent: {r['sent']}  ok: {r['ok']} (streams: {r['streams_ok']})  failed: {r['failed']}")
print(f"rows written: {total}  distinct ids: {distinct}")
if r["errors"]:
    print("first errors:", r["errors"][:5])
good = r["failed"] == 0 and total == r["ok"] == distinct and r["sent"] == r["ok"]
print("PASS" if good else "FAIL")
sys.exit(0 if good else 1)
PY
