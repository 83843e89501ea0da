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
#
# With --tls the server takes TLS connections only and authenticates with SCRAM-SHA-256 (or a client
# certificate, for the role certuser): the script makes a CA, a server certificate for the name localhost
# only (not 127.0.0.1, so that a host-name mismatch can be tested), a client certificate, and a second CA
# that signed nothing; it creates the role alice with a random password, and before the url line prints
# "tls DIR" (ca.crt, other-ca.crt, client.crt, client.key) and "password PASSWORD".
set -uo pipefail
tls=false
[ "${1:-}" = "--tls" ] && tls=true

source "$(dirname "$0")/lib/postgres.sh"
if [ -z "$bindir" ]; then
    echo "error no PostgreSQL server binaries (install the postgresql package)"
    exit 1
fi
dir=$(pg_temp_dir anyruntime-pgc)
cleanup() {
    "${as_owner[@]}" "$bindir/pg_ctl" -D "$dir/data" -m immediate -w stop >/dev/null 2>&1 || true
    rm -rf "$dir"
}
trap cleanup EXIT INT TERM

port=$(free_port)
if ! "${as_owner[@]}" "$bindir/initdb" -D "$dir/data" -U postgres --auth=trust --no-sync -E UTF8 >"$dir/initdb.log" 2>&1; then
    echo "error initdb failed: $(tail -1 "$dir/initdb.log")"
    exit 1
fi
if $tls; then
    certs="$dir/tls"
    mkdir -p "$certs"
    make_certificates() {
        local days=30 subject
        openssl req -x509 -newkey rsa:2048 -nodes -days $days -subj "/CN=AnyRuntime test CA" \
            -keyout "$certs/ca.key" -out "$certs/ca.crt" || return 1
        openssl req -x509 -newkey rsa:2048 -nodes -days $days -subj "/CN=AnyRuntime other CA" \
            -keyout "$certs/other-ca.key" -out "$certs/other-ca.crt" || return 1
        for subject in server certuser; do
            openssl req -newkey rsa:2048 -nodes -subj "/CN=$([ $subject = server ] && echo localhost || echo certuser)" \
                -keyout "$certs/$subject.key" -out "$certs/$subject.csr" || return 1
            printf 'subjectAltName=%s\n' "$([ $subject = server ] && echo DNS:localhost || echo DNS:certuser)" >"$certs/$subject.ext"
            openssl x509 -req -in "$certs/$subject.csr" -CA "$certs/ca.crt" -CAkey "$certs/ca.key" -CAcreateserial \
                -days $days -extfile "$certs/$subject.ext" -out "$certs/$subject.crt" || return 1
        done
        mv "$certs/certuser.crt" "$certs/client.crt" && mv "$certs/certuser.key" "$certs/client.key"
        chmod 600 "$certs"/*.key
        cp "$certs/server.key" "$dir/data/server.key" && cp "$certs/server.crt" "$dir/data/server.crt" && cp "$certs/ca.crt" "$dir/data/ca.crt"
        [ "$(id -u)" -eq 0 ] && chown postgres: "$dir/data/server.key" "$dir/data/server.crt" "$dir/data/ca.crt"
        chmod 600 "$dir/data/server.key"
        return 0
    }
    if ! make_certificates >"$dir/openssl.log" 2>&1; then
        echo "error openssl failed: $(tail -1 "$dir/openssl.log")"
        exit 1
    fi
    cat >>"$dir/data/postgresql.conf" <<CONF
ssl = on
ssl_cert_file = 'server.crt'
ssl_key_file = 'server.key'
ssl_ca_file = 'ca.crt'
password_encryption = 'scram-sha-256'
CONF
    cat >"$dir/data/pg_hba.conf" <<HBA
local all postgres trust
hostssl all certuser 127.0.0.1/32 cert
hostssl all certuser ::1/128 cert
hostssl all all 127.0.0.1/32 scram-sha-256
hostssl all all ::1/128 scram-sha-256
hostnossl all all 0.0.0.0/0 reject
hostnossl all all ::/0 reject
HBA
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
if $tls; then
    password=$(python3 -c 'import secrets; print(secrets.token_urlsafe(18))')
    if ! "${as_owner[@]}" "$bindir/psql" -h "$dir" -p "$port" -U postgres -d postgres -v ON_ERROR_STOP=1 -q \
        -c "CREATE ROLE alice LOGIN PASSWORD '$password'" -c "CREATE ROLE certuser LOGIN" >"$dir/psql.log" 2>&1; then
        echo "error the roles could not be made: $(tail -1 "$dir/psql.log")"
        exit 1
    fi
    echo "tls $certs"
    echo "password $password"
    echo "url postgresql://alice@localhost:$port/postgres"
else
    echo "url postgresql://postgres@127.0.0.1:$port/postgres"
fi

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
