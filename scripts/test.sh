#!/usr/bin/env bash
# The whole test suite, from a fresh machine: installs what is missing, builds with every trait (the SwiftNIO
# backend and the metrics, tracing and service-lifecycle integrations) and a warning check, checks the
# architecture rules and the docs, starts a throw-away PostgreSQL, runs every test on every backend (the
# fault suite and the fuzzers included; SwiftNIO in a phase of its own), runs the SQL suite again through
# pgbouncer, and stops the servers; then the suites that start clusters of their own, the ledger, the suites
# under ThreadSanitizer and AddressSanitizer (every trait, SwiftNIO in a pass of its own), the quick benchmarks, and the
# Hummingbird example.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/bootstrap.sh

echo "== build"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
swift build --build-tests --enable-all-traits 2>&1 | tee "$log" | grep -vE '^\[[0-9]+/[0-9]+\]' || true
if grep -q "error:" "$log"; then
    echo "test.sh: the build failed" >&2
    exit 1
fi
# No warnings in the project's own code (dependencies are not ours to fix).
if grep -E "^$(pwd)/(Sources|Tests)/.*warning:" "$log" | sort -u | grep .; then
    echo "test.sh: the build has warnings in the project's code" >&2
    exit 1
fi

echo "== architecture rules"
scripts/check-rules.sh

echo "== documentation"
scripts/check-docs.sh

# Two runs: the suites that start servers of their own (Cluster…: initdb, pg_basebackup, certificates, a
# failover under 32 writers) load the machine enough to slow the server of the real-time tests beside them.
quiet='^◇ Test case passing|^◇ Test .* started|Executed 0 tests|^Test Suite .* (started|passed)'
echo "== tests on libuv, Dispatch and virtual time (with a throw-away PostgreSQL unless ANYRUNTIME_PG_URL names one)"
ANYRUNTIME_BACKEND=uv,dispatch,virtual scripts/with-postgres.sh swift test --skip-build --enable-all-traits --skip Cluster 2>&1 | tee "$log" | grep -vE "$quiet"
status=${PIPESTATUS[0]}
[ "$status" -eq 0 ] || exit "$status"
# The SwiftNIO backend's turn, apart: all four backends' suites at once overload a 2-core machine enough to
# miss the suites' own real-time clean-up deadlines.
echo "== the Runtime, SQLAsync and integration suites on SwiftNIO"
ANYRUNTIME_BACKEND=nio scripts/with-postgres.sh swift test --skip-build --enable-all-traits --skip Cluster 2>&1 | tee "$log" | grep -vE "$quiet"
status=${PIPESTATUS[0]}
[ "$status" -eq 0 ] || exit "$status"
echo "== the SQL suite again, through pgbouncer in transaction-pooling mode (scripts/with-pgbouncer.sh)"
ANYRUNTIME_BACKEND=uv,dispatch,virtual scripts/with-pgbouncer.sh swift test --skip-build --enable-all-traits --filter SQLAsyncTests --skip Cluster 2>&1 | tee "$log" | grep -vE "$quiet"
status=${PIPESTATUS[0]}
[ "$status" -eq 0 ] || exit "$status"
echo "== tests on clusters of their own (primary and standby, TLS, restarts, pgbouncer)"
scripts/with-postgres.sh swift test --skip-build --enable-all-traits --filter Cluster 2>&1 | tee "$log" | grep -vE "$quiet"
status=${PIPESTATUS[0]}
[ "$status" -eq 0 ] || exit "$status"

# The ledger, shortened: random cancellations on every backend x database, checked against the database.
echo "== ledger (scripts/ledger.sh runs the full 10,000 operations)"
scripts/with-postgres.sh "$(swift build --show-bin-path)/anyruntime-ledger" --operations 500 | grep -v '^with-postgres:'

# The Runtime, SQLAsync and integration suites again under ThreadSanitizer and AddressSanitizer (builds of
# their own).
echo "== sanitizers"
scripts/sanitizers.sh

# The benchmarks must build and run (a twentieth of the work, one repetition); their figures are not checked.
echo "== benchmarks (quick)"
# (The build's own status counts: with pipefail a failed build piped into grep is not an `&&` condition.)
if ! swift build -c release --package-path Benchmarks >"$log" 2>&1 || grep -E "error:|warning: .*/Benchmarks/Sources" "$log"; then
    grep -E "error:|warning: " "$log" | head -40 >&2 || true
    echo "test.sh: the benchmarks do not build cleanly" >&2
    exit 1
fi
Benchmarks/.build/release/RuntimeBenchmarks --quick --repetitions 1 >/dev/null
scripts/with-postgres.sh Benchmarks/.build/release/SQLBenchmarks --quick --repetitions 1 >/dev/null
echo "benchmarks: ok"

# The Hummingbird example: built, started, its routes checked (a client going away cancels its slow query),
# stopped with SIGTERM — on SQLite, and on a throw-away PostgreSQL.
echo "== the Hummingbird example (Examples/HummingbirdApp/smoke.sh)"
Examples/HummingbirdApp/smoke.sh
scripts/with-postgres.sh bash -c 'Examples/HummingbirdApp/smoke.sh "$ANYRUNTIME_PG_URL"' | grep -v '^with-postgres:'
