# Shared by the scripts that start throw-away PostgreSQL servers (with-postgres.sh, pg-cluster.sh,
# pg-replicated.sh): sourced, not run.

# The newest installed server's bin directory, or nothing.
bindir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1 || true)
[ -n "$bindir" ] && [ ! -x "$bindir/initdb" ] && bindir=

# PostgreSQL refuses to run as root: as root, its commands run as the postgres user.
as_owner=()
if [ "$(id -u)" -eq 0 ]; then
    as_owner=(runuser -u postgres --)
fi

# A new temporary folder the server's user may write to: pg_temp_dir PREFIX.
pg_temp_dir() {
    local dir
    dir=$(mktemp -d "/tmp/$1.XXXXXX")
    chmod 755 "$dir"
    [ "$(id -u)" -eq 0 ] && chown postgres: "$dir"
    echo "$dir"
}

# A free port on loopback, as the kernel picks one.
free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}
