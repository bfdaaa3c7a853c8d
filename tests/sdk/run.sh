#!/usr/bin/env bash
# The official-SDK tests: openai, anthropic and google-genai as real clients of
# majordomo in front of the mock provider, on SQLite and on PostgreSQL
# (127.0.0.1:5432, trust auth), checking every request-log row.
#
#   tests/sdk/run.sh [pytest args...]
#
# Keeps a venv at ${SDK_VENV:-/var/tmp/majordomo-sdk-venv} (reinstalled only when
# requirements*.txt or the Python version change), builds the gateway and the mock
# with cargo (CARGO_TARGET_DIR respected), then runs pytest. Exits non-zero on any
# failure, and also when pytest collected no test.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
source scripts/_prereqs.sh

PYTHON=${PYTHON:-python3}
VENV=${SDK_VENV:-/var/tmp/majordomo-sdk-venv}
REQ=tests/sdk/requirements.txt
LOCK=tests/sdk/requirements.lock.txt
STAMP="$VENV/.majordomo-sdk-requirements.sha256"

if ! "$VENV/bin/python" -c 'import sys' >/dev/null 2>&1; then
  echo "sdk tests: creating venv $VENV" >&2
  rm -rf "$VENV"
  "$PYTHON" -m venv "$VENV"
fi
want=$({ cat "$REQ" "$LOCK"; "$VENV/bin/python" -VV; } | sha256sum | cut -d' ' -f1)
if [[ ! -f $STAMP || $(cat "$STAMP") != "$want" ]]; then
  echo "sdk tests: installing $REQ into $VENV" >&2
  rm -f "$STAMP"
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check -r "$REQ" -c "$LOCK"
  echo "$want" >"$STAMP"
fi

cargo build --locked --bin majordomo --example mock_upstream
target_dir=$(cargo metadata --format-version 1 --no-deps --locked |
  "$VENV/bin/python" -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
export MAJORDOMO_BIN=${MAJORDOMO_BIN:-$target_dir/debug/majordomo}
export MOCK_UPSTREAM_BIN=${MOCK_UPSTREAM_BIN:-$target_dir/debug/examples/mock_upstream}

rc=0
PYTHONDONTWRITEBYTECODE=1 "$VENV/bin/python" -m pytest -q -p no:cacheprovider tests/sdk "$@" || rc=$?
if [[ $rc -eq 5 ]]; then
  echo "sdk tests: pytest collected no test" >&2
  exit 1
fi
exit "$rc"
