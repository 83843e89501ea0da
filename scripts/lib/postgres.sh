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

# Where the throw-away servers keep their data: in memory (/dev/shm) when it has room, else /tmp. On disk,
# a server's writes can wait seconds behind the kernel's write-back of what the build just wrote, even with
# fsync off, and every test with a real-time bound on that server waits with them.
pg_temp_root() {
    local free_kb
    free_kb=$(df -Pk /dev/shm 2>/dev/null | awk 'NR == 2 { print $4 }')
    if [ -d /dev/shm ] && [ -w /dev/shm ] && [ "${free_kb:-0}" -ge $((4 * 1024 * 1024)) ]; then
        echo /dev/shm
    else
        echo /tmp
    fi
}

# A new temporary folder the server's user may write to: pg_temp_dir PREFIX.
pg_temp_dir() {
    local dir
    dir=$(mktemp -d "$(pg_temp_root)/$1.XXXXXX")
    chmod 755 "$dir"
    [ "$(id -u)" -eq 0 ] && chown postgres: "$dir"
    echo "$dir"
}

# A free port on loopback, as the kernel picks one.
free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}
