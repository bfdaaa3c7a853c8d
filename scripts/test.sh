#!/usr/bin/env bash
# Runs the whole test suite: unit and property tests, and the end-to-end tests
# through the real binary on SQLite AND on PostgreSQL (127.0.0.1:5432, started
# here if it is installed but not running). PostgreSQL tests never skip: without
# a server they fail.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/_prereqs.sh

PGHOST_ADDR=${MAJORDOMO_TEST_PG_HOST:-127.0.0.1}
pg_up() { pg_isready -q -h "$PGHOST_ADDR" -p 5432 2>/dev/null; }
if ! pg_up; then
  if command -v pg_ctlcluster >/dev/null 2>&1 && [[ -d /etc/postgresql ]]; then
    echo "test.sh: starting PostgreSQL" >&2
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -1)" main start || true
    for _ in $(seq 1 30); do pg_up && break; sleep 1; done
  fi
fi
if ! pg_up; then
  echo "test.sh: PostgreSQL does not answer on $PGHOST_ADDR:5432; the PostgreSQL tests need it" >&2
  exit 1
fi

# nss_wrapper gives the gateway under test a host name with several
# addresses (the connection failover tests), without /etc/hosts or DNS.
if ! compgen -G "/usr/lib*/libnss_wrapper.so" >/dev/null && ! compgen -G "/usr/lib/*/libnss_wrapper.so" >/dev/null; then
  if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
    echo "test.sh: installing libnss-wrapper" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libnss-wrapper >/dev/null
  else
    echo "test.sh: the failover tests need nss_wrapper (e.g. sudo apt-get install libnss-wrapper)" >&2
    exit 1
  fi
fi

# The S3-compatible server the body-storage tests use (moto, pinned, from PyPI).
MAJORDOMO_TEST_MOTO_SERVER=$(./scripts/install-s3-server.sh)
export MAJORDOMO_TEST_MOTO_SERVER

cargo test --locked --all-targets "$@"
./tests/sdk/run.sh
# A short zero-downtime upgrade (-u + SIGQUIT) under load, on both stores;
# the SQLite run on one proxy thread (its own runtime, a one-CPU container's
# default), the PostgreSQL run on one per CPU (Pingora's shared runtime).
MAJORDOMO_SERVER_THREADS=1 UPGRADE_DURATION=6 ./scripts/upgrade-under-load.sh
UPGRADE_DURATION=6 UPGRADE_STORE=postgres ./scripts/upgrade-under-load.sh
