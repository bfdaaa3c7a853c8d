#!/bin/bash
# Container health check for majordomo, with no HTTP client installed:
# bash's /dev/tcp sends one HTTP/1.0 request and the status line is checked.
#
#   majordomo-healthcheck [PATH]      PATH defaults to /health (liveness);
#                                     /readyz also checks the database.
#
# Port: MAJORDOMO_SERVER_PORT (the gateway's own override), default 7680.
# Host: MAJORDOMO_HEALTHCHECK_HOST, default 127.0.0.1.
# Exit 0 when the answer is 200, 1 otherwise (what HEALTHCHECK expects).
set -uo pipefail

path="${1:-/health}"
host="${MAJORDOMO_HEALTHCHECK_HOST:-127.0.0.1}"
port="${MAJORDOMO_SERVER_PORT:-7680}"

# A server that answers and closes early must not kill the check with SIGPIPE.
trap '' PIPE
if ! { exec 3<>"/dev/tcp/${host}/${port}"; } 2>/dev/null; then
  echo "majordomo-healthcheck: cannot connect to ${host}:${port}" >&2
  exit 1
fi
printf -v request 'GET %s HTTP/1.0\r\nHost: %s\r\nUser-Agent: majordomo-healthcheck\r\n\r\n' "$path" "$host"
printf '%s' "$request" >&3 2>/dev/null || true
status=""
IFS= read -r -t 4 status <&3 || true
exec 3<&- 3>&-
status="${status%$'\r'}"
case "$status" in
  "HTTP/1."[01]" 200"*) exit 0 ;;
  *)
    echo "majordomo-healthcheck: GET ${path} on ${host}:${port}: ${status:-no answer}" >&2
    exit 1
    ;;
esac
