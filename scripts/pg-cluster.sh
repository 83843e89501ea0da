#!/usr/bin/env bash
# A throw-away PostgreSQL cluster that its caller stops and restarts, for the fault suite (a server killed
# mid-query and started again). Controlled through stdin, one command per line, each answered on stdout
# with "ok" or "error <why>":
#
#   stop immediate|fast|smart   pg_ctl stop in that mode (immediate: the postmaster kills every backend)
#   start                       start again, on the same port
#
# On start-up it prints "url postgresql://postgres@127.0.0.1:PORT/postgres". When stdin ends (the caller
# exited, whatever way), the cluster is stopped and deleted.
set -uo pipefail

bindir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1 || true)
if [ -z "$bindir" ] || [ ! -x "$bindir/initdb" ]; then
    echo "error no PostgreSQL server binaries (install the postgresql package)"
    exit 1
fi
as_owner=()
if [ "$(id -u)" -eq 0 ]; then
    as_owner=(runuser -u postgres --)  # PostgreSQL refuses to run as root
fi

dir=$(mktemp -d /tmp/anyruntime-pgc.XXXXXX)
chmod 755 "$dir"
[ "$(id -u)" -eq 0 ] && chown postgres: "$dir"
cleanup() {
    "${as_owner[@]}" "$bindir/pg_ctl" -D "$dir/data" -m immediate -w stop >/dev/null 2>&1 || true
    rm -rf "$dir"
}
trap cleanup EXIT INT TERM

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()')
if ! "${as_owner[@]}" "$bindir/initdb" -D "$dir/data" -U postgres --auth=trust --no-sync -E UTF8 >"$dir/initdb.log" 2>&1; then
    echo "error initdb failed: $(tail -1 "$dir/initdb.log")"
    exit 1
fi
start() {
    "${as_owner[@]}" "$bindir/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
        -o "-p $port -k $dir -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c full_page_writes=off" \
        start >/dev/null 2>&1
}
if ! start; then
    echo "error the server did not start: $(tail -1 "$dir/server.log")"
    exit 1
fi
echo "url postgresql://postgres@127.0.0.1:$port/postgres"

while read -r command mode; do
    case "$command" in
        stop)
            case "${mode:-fast}" in immediate|fast|smart) ;; *) echo "error unknown stop mode '$mode'"; continue ;; esac
            if "${as_owner[@]}" "$bindir/pg_ctl" -D "$dir/data" -m "${mode:-fast}" -w -t 60 stop >/dev/null 2>&1; then
                echo ok
            else
                echo "error pg_ctl stop failed"
            fi
            ;;
        start)
            if start; then echo ok; else echo "error the server did not start again: $(tail -1 "$dir/server.log")"; fi
            ;;
        *) echo "error unknown command '$command'" ;;
    esac
done
