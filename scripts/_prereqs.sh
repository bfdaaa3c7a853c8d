# shellcheck shell=bash
# Sourced by the scripts: makes sure the build prerequisites are present.
# Pingora builds zlib-ng through flate2 and needs cmake; Rust must be installed (rustup).
set -euo pipefail
if ! command -v cargo >/dev/null 2>&1; then
  echo "majordomo: cargo not found; install Rust first: https://rustup.rs" >&2
  exit 1
fi
if ! command -v cmake >/dev/null 2>&1; then
  if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
    echo "majordomo: installing cmake (needed to build Pingora)" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq cmake >/dev/null
  else
    echo "majordomo: cmake is required to build Pingora (e.g. sudo apt-get install cmake)" >&2
    exit 1
  fi
fi
