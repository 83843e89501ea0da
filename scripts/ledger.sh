#!/usr/bin/env bash
# The ledger: operations cancelled at random points on every backend x database, checked against the database
# afterwards (every operation reported done is there, none reported cancelled or failed is), with the pool,
# the server's sessions, file descriptors and threads checked too. Prints the counts of each outcome.
#
#   scripts/ledger.sh                      # 10,000 operations per backend x database (a few minutes)
#   scripts/ledger.sh --operations 500     # what CI runs (scripts/test.sh)
#
# PostgreSQL: the server named by ANYRUNTIME_PG_URL, or a throw-away one (scripts/with-postgres.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
swift build -c release --product anyruntime-ledger >/dev/null
scripts/with-postgres.sh "$(swift build -c release --show-bin-path)/anyruntime-ledger" "$@" | grep -v '^with-postgres:'
