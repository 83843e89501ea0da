#!/usr/bin/env bash
# Builds the example, starts it on a free port against the database given (default: a SQLite file), checks
# its routes — among them that a client going away cancels its slow query — and stops it with SIGTERM,
# checking that it shuts down cleanly.
#
#   Examples/HummingbirdApp/smoke.sh [DATABASE_URL]
set -euo pipefail
cd "$(dirname "$0")"
swift build -q
binary=$(swift build --show-bin-path)/HummingbirdExample
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()')
database=${1:-sqlite:////tmp/anyruntime-hummingbird-smoke-$$.db}
log=$(mktemp)
DATABASE_URL="$database" "$binary" --port "$port" >"$log" 2>&1 &
server=$!
cleanup() { kill "$server" 2>/dev/null || true; rm -f "$log" /tmp/anyruntime-hummingbird-smoke-$$.db*; }
trap cleanup EXIT
for _ in $(seq 100); do curl -fs "http://127.0.0.1:$port/stats" >/dev/null 2>&1 && break; sleep 0.1; done
fail() { echo "smoke: $*" >&2; cat "$log" >&2; exit 1; }
body=$(curl -fs "http://127.0.0.1:$port/accounts/2") || fail "GET /accounts/2 failed"
echo "$body" | grep -q '"owner":"Grace"' || fail "GET /accounts/2 answered $body"
status=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/accounts/9") || true
[ "$status" = 404 ] || fail "GET /accounts/9 answered $status, not 404"
# A client that gives up after 0.5 s: its slow query is cancelled.
curl -s --max-time 0.5 "http://127.0.0.1:$port/slow" >/dev/null 2>&1 || true
for _ in $(seq 100); do
    curl -fs "http://127.0.0.1:$port/stats" | grep -q '"cancelledSlowQueries":1' && break
    sleep 0.1
done
curl -fs "http://127.0.0.1:$port/stats" | grep -q '"cancelledSlowQueries":1' || fail "the slow query was not cancelled: $(curl -s "http://127.0.0.1:$port/stats")"
# The engine still serves after the cancellation.
curl -fs "http://127.0.0.1:$port/accounts/1" | grep -q '"owner":"Ada"' || fail "GET /accounts/1 failed after a cancellation"
kill -TERM "$server"
wait "$server" || fail "the server did not shut down cleanly (exit $?)"
echo "smoke: ok ($database)"
