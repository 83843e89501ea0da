#!/usr/bin/env bash
# The product's rules, checked on the sources:
# - library code never leaves the runtime's executor: no bare Task {} / Task.detached / Task.sleep;
# - SQLAsync waits only through the Runtime protocol: it imports no backend and no event loop.
set -euo pipefail
cd "$(dirname "$0")/.."
status=0

escapes=$(grep -rnE --include='*.swift' '(^|[^A-Za-z_.])Task(\.detached)?[[:space:]]*(\{|\()|Task\.sleep' Sources \
    | grep -vE '^\S+:[0-9]+:\s*(//|///)' | grep -v 'executorPreference' || true)
if [ -n "$escapes" ]; then
    echo "check-rules: library code leaves the runtime's executor (use Task(executorPreference:) or the runtime's sleep):"
    echo "$escapes"
    status=1
fi

if [ -d Sources/SQLAsync ]; then
    imports=$(grep -rnE --include='*.swift' '^\s*(@preconcurrency\s+|public\s+|internal\s+|package\s+)?import\s+(RuntimeUV|RuntimeDispatch|AnyRuntime|Dispatch|Foundation|NIO[A-Za-z]*|CLibUV)\b' Sources/SQLAsync || true)
    if [ -n "$imports" ]; then
        echo "check-rules: Sources/SQLAsync imports a backend or an event loop (it may only use Runtime):"
        echo "$imports"
        status=1
    fi
fi

[ $status -eq 0 ] && echo "check-rules: ok"
exit $status
