#!/usr/bin/env bash
# Runs the demo on every backend (or the ones in ANYRUNTIME_BACKEND=uv|dispatch|uv,dispatch).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
swift build --enable-all-traits --product anyruntime-demo -q
exec .build/debug/anyruntime-demo "$@"
