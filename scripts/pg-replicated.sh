#!/usr/bin/env bash
# A throw-away primary with one streaming standby (pg_basebackup -R), on loopback, for the failover tests.
# Controlled through stdin like scripts/pg-cluster.sh, one command per line, each answered "ok" or
# "error <why>":
#
#   stop-primary    pg_ctl stop -m immediate on the primary (its backends killed at once)
#   promote         pg_ctl promote on the standby, waiting until it takes writes
#
# On start-up it prints "primary PORT", "standby PORT" (once the standby streams) and then
# "url postgresql://postgres@127.0.0.1:PRIMARY,127.0.0.1:STANDBY/postgres". When stdin ends, both servers
# are stopped and deleted.
set -uo pipefail

source "$(dirname "$0")/lib/postgres.sh"
if [ -z "$bindir" ]; then
    echo "error no PostgreSQL server binaries (install the postgresql package)"
    exit 1
fi
dir=$(pg_temp_dir anyruntime-pgr)
cleanup() {
    for node in primary standby; do
        "${as_owner[@]}" "$bindir/pg_ctl" -D "$dir/$node" -m immediate -w stop >/dev/null 2>&1 || true
    done
    rm -rf "$dir"
}
trap cleanup EXIT INT TERM

primary=$(free_port)
standby=$(free_port)
options="-k $dir -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c full_page_writes=on -c max_connections=200"
start() {  # node port
    "${as_owner[@]}" "$bindir/pg_ctl" -D "$dir/$1" -l "$dir/$1.log" -w -t 60 -o "-p $2 $options" start >/dev/null 2>&1
}
if ! "${as_owner[@]}" "$bindir/initdb" -D "$dir/primary" -U postgres --auth=trust --no-sync -E UTF8 >"$dir/initdb.log" 2>&1; then
    echo "error initdb failed: $(tail -1 "$dir/initdb.log")"
    exit 1
fi
if ! start primary "$primary"; then
    echo "error the primary did not start: $(tail -1 "$dir/primary.log")"
    exit 1
fi
echo "primary $primary"
# The standby: a base backup with the recovery settings written (-R), streaming from the primary.
if ! "${as_owner[@]}" "$bindir/pg_basebackup" -D "$dir/standby" -R -X stream -h 127.0.0.1 -p "$primary" -U postgres \
    >"$dir/basebackup.log" 2>&1; then
    echo "error pg_basebackup failed: $(tail -1 "$dir/basebackup.log")"
    exit 1
fi
if ! start standby "$standby"; then
    echo "error the standby did not start: $(tail -1 "$dir/standby.log")"
    exit 1
fi
# Streaming once the primary lists it.
for _ in $(seq 1 100); do
    streaming=$("${as_owner[@]}" "$bindir/psql" -h "$dir" -p "$primary" -U postgres -d postgres -Atc \
        "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'" 2>/dev/null || echo 0)
    [ "$streaming" = "1" ] && break
    sleep 0.1
done
if [ "$streaming" != "1" ]; then
    echo "error the standby does not stream: $(tail -1 "$dir/standby.log")"
    exit 1
fi
echo "standby $standby"
echo "url postgresql://postgres@127.0.0.1:$primary,127.0.0.1:$standby/postgres"

while read -r command; do
    case "$command" in
        stop-primary)
            if "${as_owner[@]}" "$bindir/pg_ctl" -D "$dir/primary" -m immediate -w -t 60 stop >/dev/null 2>&1; then
                echo ok
            else
                echo "error pg_ctl stop failed"
            fi
            ;;
        promote)
            if "${as_owner[@]}" "$bindir/pg_ctl" -D "$dir/standby" -w -t 60 promote >/dev/null 2>&1; then
                echo ok
            else
                echo "error pg_ctl promote failed: $(tail -1 "$dir/standby.log")"
            fi
            ;;
        *) echo "error unknown command '$command'" ;;
    esac
done
