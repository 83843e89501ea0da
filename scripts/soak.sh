#!/usr/bin/env bash
# The soak (not a CI test): the ledger's mixed load with random cancellations on SQLite and PostgreSQL at
# once, for MINUTES on each backend, with resident memory, file descriptors and threads printed every
# minute; it fails when they are not flat after warm-up or when any operation was misreported.
#
#   scripts/soak.sh                 # 30 minutes on each backend, one backend after another (90 minutes)
#   scripts/soak.sh 30 --parallel   # the three backends at once, as three processes (30 minutes)
#   scripts/soak.sh 3               # a short one (2 minutes at least)
#
# PostgreSQL: the server named by ANYRUNTIME_PG_URL, or a throw-away one (scripts/with-postgres.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
minutes=30
parallel=
for argument in "$@"; do
    case "$argument" in
        --parallel) parallel=--parallel ;;
        *[!0-9]*|'') echo "usage: scripts/soak.sh [MINUTES] [--parallel]" >&2; exit 2 ;;
        *) minutes=$argument ;;
    esac
done
scripts/bootstrap.sh
swift build -c release --product anyruntime-ledger >/dev/null
binary="$(swift build -c release --show-bin-path)/anyruntime-ledger"
if [ "$parallel" != "--parallel" ]; then
    exec scripts/with-postgres.sh "$binary" --soak "$minutes"
fi
# One process per backend, against one server; each one's table is printed when all are done.
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
scripts/with-postgres.sh bash -c '
    pids=()
    for backend in uv dispatch virtual; do
        ANYRUNTIME_BACKEND=$backend "$1" --soak "$2" >"$3/$backend.txt" 2>&1 &
        pids+=($!)
    done
    status=0
    for pid in "${pids[@]}"; do wait "$pid" || status=1; done
    exit $status
' bash "$binary" "$minutes" "$out" && status=0 || status=$?
for backend in uv dispatch virtual; do cat "$out/$backend.txt"; done
exit $status
