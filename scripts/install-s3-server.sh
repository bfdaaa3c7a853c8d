#!/usr/bin/env bash
# Installs the S3-compatible server the body-storage tests run against
# (moto's standalone server, from PyPI, pinned) into a venv outside the
# repository, and prints the path of its `moto_server` executable.
set -euo pipefail
VENV=${S3_VENV:-/var/tmp/majordomo-s3-venv}
PIN="moto[server]==5.2.5"
if ! "$VENV/bin/python" -c 'import importlib.metadata as m; assert m.version("moto") == "5.2.5"' 2>/dev/null; then
  rm -rf "$VENV"
  python3 -m venv "$VENV" >&2
  "$VENV/bin/pip" install -q "$PIN" >&2
fi
echo "$VENV/bin/moto_server"
