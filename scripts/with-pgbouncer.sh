#!/usr/bin/env bash
# Runs a command with a pgbouncer in transaction-pooling mode in front of the PostgreSQL server named by
# ANYRUNTIME_PG_URL (a throw-away one, through with-postgres.sh, when unset). The command sees
# ANYRUNTIME_PG_URL pointing at pgbouncer and ANYRUNTIME_PG_DIRECT_URL at the server itself. pgbouncer runs as
# the server's user, on loopback, with a configuration of its own in a temporary folder, and is stopped when
# the command ends, whatever its outcome.
#
#   scripts/with-pgbouncer.sh swift test --filter SQLAsyncTests --skip Cluster
#   scripts/with-pgbouncer.sh --pool-size 2 COMMAND   # 2 server connections per database and user
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
pool_size=60
if [ "${1:-}" = "--pool-size" ]; then
    pool_size=$2
    shift 2
fi

if [ -z "${ANYRUNTIME_PG_URL:-}" ]; then
    exec "$here/with-postgres.sh" "$here/with-pgbouncer.sh" --pool-size "$pool_size" "$@"
fi
if ! command -v pgbouncer >/dev/null 2>&1; then
    "$here/bootstrap.sh"
fi
command -v pgbouncer >/dev/null 2>&1 || { echo "with-pgbouncer: pgbouncer is not installed" >&2; exit 1; }

source "$here/lib/postgres.sh"
# The server's host, port, user and database, as libpq's URL syntax gives them.
read -r host port user database < <(python3 - "$ANYRUNTIME_PG_URL" <<'PY'
import sys, urllib.parse
url = urllib.parse.urlsplit(sys.argv[1])
print(url.hostname or "127.0.0.1", url.port or 5432, url.username or "postgres", (url.path or "/postgres").lstrip("/") or "postgres")
PY
)

dir=$(pg_temp_dir anyruntime-pgbouncer)
listen=$(free_port)
cat >"$dir/pgbouncer.ini" <<INI
[databases]
* = host=$host port=$port

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $listen
unix_socket_dir =
auth_type = trust
auth_file = $dir/users.txt
pool_mode = transaction
max_client_conn = 4000
default_pool_size = $pool_size
max_db_connections = $((pool_size * 2))
server_reset_query =
server_idle_timeout = 10
; the driver sends its session settings (DateStyle, IntervalStyle) as startup options, which pgbouncer
; 1.18 cannot pass on: it ignores them, and the driver checks what the server reports instead
ignore_startup_parameters = options, extra_float_digits
logfile = $dir/pgbouncer.log
pidfile = $dir/pgbouncer.pid
INI
printf '"%s" ""\n' "$user" >"$dir/users.txt"
[ "$(id -u)" -eq 0 ] && chown -R postgres: "$dir"

cleanup() {
    # SIGTERM is pgbouncer's immediate shutdown; whatever still runs with this configuration after 2 s is
    # killed (found by its configuration file, in case the pid file is missing).
    if [ -f "$dir/pgbouncer.pid" ]; then kill "$(cat "$dir/pgbouncer.pid")" 2>/dev/null || true; fi
    pkill -TERM -f "pgbouncer -d $dir/pgbouncer.ini" 2>/dev/null || true
    for _ in $(seq 1 20); do
        pgrep -f "pgbouncer -d $dir/pgbouncer.ini" >/dev/null 2>&1 || break
        sleep 0.1
    done
    pkill -KILL -f "pgbouncer -d $dir/pgbouncer.ini" 2>/dev/null || true
    rm -rf "$dir"
}
trap cleanup EXIT INT TERM

"${as_owner[@]}" pgbouncer -d "$dir/pgbouncer.ini" || {
    cat "$dir/pgbouncer.log" >&2 || true
    echo "with-pgbouncer: pgbouncer did not start" >&2
    exit 1
}
for _ in $(seq 1 100); do
    python3 -c "import socket,sys; s=socket.socket(); sys.exit(s.connect_ex(('127.0.0.1', $listen)))" && break
    sleep 0.05
done

export ANYRUNTIME_PG_DIRECT_URL="$ANYRUNTIME_PG_URL"
export ANYRUNTIME_PG_URL="postgresql://$user@127.0.0.1:$listen/$database"
echo "with-pgbouncer: pgbouncer (transaction mode) at $ANYRUNTIME_PG_URL"
set +e
"$@"
status=$?
set -e
exit $status
