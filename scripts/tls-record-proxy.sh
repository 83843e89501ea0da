#!/usr/bin/env bash
# A TLS proxy in front of a PostgreSQL server that sends its answers in full 16 KiB TLS records (see
# scripts/lib/tls_record_proxy.py), for the tests: tls-record-proxy.sh HOST PORT. Prints "port N" when it
# listens on loopback; stops, and deletes its throw-away certificate, when its stdin ends.
set -euo pipefail
cd "$(dirname "$0")"
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
if ! openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj "/CN=localhost" \
    -keyout "$dir/proxy.key" -out "$dir/proxy.crt" >"$dir/openssl.log" 2>&1; then
    echo "error openssl could not make the proxy's certificate: $(tail -1 "$dir/openssl.log")"
    exit 1
fi
python3 lib/tls_record_proxy.py "$1" "$2" "$dir/proxy.crt" "$dir/proxy.key"
