#!/usr/bin/env bash
# Runs a command with a PostgreSQL server named by ANYRUNTIME_PG_URL.
#
# When ANYRUNTIME_PG_URL is already set, the command runs against that server. Otherwise a throw-away
# cluster is created (initdb in a temporary folder, as the `postgres` user when running as root), started on a
# free loopback port, and stopped and deleted when the command ends, whatever its outcome.
#
#   scripts/with-postgres.sh swift test
set -euo pipefail

if [ -n "${ANYRUNTIME_PG_URL:-}" ]; then
    exec "$@"
fi

source "$(dirname "$0")/lib/postgres.sh"
if [ -z "$bindir" ]; then
    echo "with-postgres: no PostgreSQL server binaries (install the postgresql package, or set ANYRUNTIME_PG_URL)" >&2
    exit 1
fi

dir=$(pg_temp_dir anyruntime-pg)

cleanup() {
    "${as_owner[@]}" "$bindir/pg_ctl" -D "$dir/data" -m immediate -w stop >/dev/null 2>&1 || true
    rm -rf "$dir"
}
trap cleanup EXIT INT TERM

# A free port: ask the kernel for one.
port=$(free_port)

"${as_owner[@]}" "$bindir/initdb" -D "$dir/data" -U postgres --auth=trust --no-sync -E UTF8 >"$dir/initdb.log" 2>&1 || {
    cat "$dir/initdb.log" >&2
    echo "with-postgres: initdb failed" >&2
    exit 1
}
"${as_owner[@]}" "$bindir/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
    -o "-p $port -k $dir -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=300" \
    start >/dev/null || {
    cat "$dir/server.log" >&2
    echo "with-postgres: the server did not start" >&2
    exit 1
}
"${as_owner[@]}" "$bindir/createdb" -h 127.0.0.1 -p "$port" -U postgres anyruntime

export ANYRUNTIME_PG_URL="postgresql://postgres@127.0.0.1:$port/anyruntime"
echo "with-postgres: throw-away server at $ANYRUNTIME_PG_URL"
set +e
"$@"
status=$?
set -e
exit $status
