#!/usr/bin/env bash
# Runs every benchmark workload on every backend beside its reference rows, and writes the tables (Markdown),
# every figure (JSON) and the ratio charts (SVG) to Benchmarks/results/.
#
#   scripts/benchmarks.sh            # the full run (a few minutes)
#   scripts/benchmarks.sh --quick    # a twentieth of the work, to check that everything runs
#
# PostgreSQL: the server named by ANYRUNTIME_PG_URL, or a throw-away one (scripts/with-postgres.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
log=$(mktemp)
trap 'rm -f "$log"' EXIT
if ! swift build -c release --package-path Benchmarks >"$log" 2>&1 || grep -E "error:|warning: .*/Benchmarks/Sources" "$log"; then
    grep -E "error:|warning: " "$log" | head -40 >&2 || true
    echo "benchmarks.sh: the benchmarks do not build cleanly" >&2
    exit 1
fi
out=Benchmarks/results
mkdir -p "$out"
{
    echo "Measured $(date -u +%Y-%m-%d) on $(nproc) cores, $(uname -sr), $(swift --version 2>/dev/null | head -1)."
    echo
    Benchmarks/.build/release/RuntimeBenchmarks "$@" --json "$out/runtime.json" --svg "$out/runtime.svg"
} | tee "$out/runtime.md"
{
    echo "Measured $(date -u +%Y-%m-%d) on $(nproc) cores, $(uname -sr), PostgreSQL on loopback, SQLite in WAL mode."
    echo
    scripts/with-postgres.sh Benchmarks/.build/release/SQLBenchmarks "$@" --json "$out/sql.json" --svg "$out/sql.svg" \
        | grep -v '^with-postgres:'
} | tee "$out/sql.md"
echo "benchmarks: tables, JSON and charts in $out/"
