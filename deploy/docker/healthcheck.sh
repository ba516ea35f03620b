#!/usr/bin/env bash
# healthcheck.sh - the worker image's HEALTHCHECK: GET PATH (default /healthz)
# from the worker's own endpoint (port from KINFER_HTTP, default 9464) and
# succeed only on HTTP 200.  Plain bash (/dev/tcp): the image needs no curl.
set -u
path=${1:-/healthz}
port=${KINFER_HTTP##*:}
case $port in '' | *[!0-9]*) port=9464 ;; esac
exec 3<>"/dev/tcp/127.0.0.1/$port" || exit 1
printf 'GET %s HTTP/1.0\r\nHost: localhost\r\n\r\n' "$path" >&3
IFS= read -r -t 3 status <&3 || exit 1
case $status in
  "HTTP/1."?" 200 "*) exit 0 ;;
  *) echo "kinfer-healthcheck: $path: ${status%$'\r'}" >&2; exit 1 ;;
esac
