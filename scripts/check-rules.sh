#!/usr/bin/env bash
# The product's rules, checked on the sources:
# - library code never leaves the runtime's executor: no bare Task {} / Task.detached / Task.sleep;
# - SQLAsync waits only through the Runtime protocol: it imports no backend and no event loop;
# - every lock is the package's `Locked` (a pthread mutex in sanitizer builds, which ThreadSanitizer can see),
#   never `Synchronization.Mutex` directly. The demo shows user code (users have `Mutex`, not `Locked`).
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

mutexes=$(grep -rnE --include='*.swift' '(^|[^A-Za-z_])Mutex[[:space:]]*[<(]' Sources Tests \
    | grep -vE '^\S+:[0-9]+:\s*(//|///)' | grep -vE '^Sources/(Runtime/Sync/Locked\.swift|RuntimeDemo/)' || true)
if [ -n "$mutexes" ]; then
    echo "check-rules: a lock that sanitizer builds cannot see (use Locked, the package's lock):"
    echo "$mutexes"
    status=1
fi

[ $status -eq 0 ] && echo "check-rules: ok"
exit $status
