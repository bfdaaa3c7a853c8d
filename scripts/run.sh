#!/usr/bin/env bash
# Builds majordomo (release) and runs the gateway on :7680 with the embedded
# SQLite store (./majordomo.db). Extra arguments go to `majordomo`, e.g.
#   ./scripts/run.sh keys create --name "My key"
# The build is the Dockerfile's: profile-guided with the committed profile
# (scripts/release-rustflags.sh).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/_prereqs.sh
RUSTFLAGS="$(scripts/release-rustflags.sh)"
export RUSTFLAGS
exec cargo run --release --locked --quiet --bin majordomo -- "$@"
