#!/usr/bin/env bash
# The Runtime, SQLAsync and integration test suites under ThreadSanitizer and AddressSanitizer (both by
# default, or the ones named: thread, address). Each sanitizer gets a build of its own (.build-tsan,
# .build-asan) with every package trait (so the SwiftNIO backend too) and every lock a pthread mutex
# (-DANYRUNTIME_PTHREAD_LOCKS: ThreadSanitizer cannot see Synchronization.Mutex), and one run of the suites on
# every backend × database against a throw-away PostgreSQL; the SwiftNIO backend in a pass of its own, as in
# scripts/test.sh (four backends at once under a sanitizer are too much for a 2-core machine).
#
# Fails when a test fails or when the sanitizer reports anything not suppressed in scripts/sanitizers/
# (every suppression there says why it is not a bug). The reports are printed, and kept in
# .build-tsan/reports or .build-asan/reports.
#
#   scripts/sanitizers.sh            # both
#   scripts/sanitizers.sh thread     # ThreadSanitizer only
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

sanitizers=("$@")
[ ${#sanitizers[@]} -eq 0 ] && sanitizers=(thread address)

for sanitizer in "${sanitizers[@]}"; do
    case "$sanitizer" in
        thread) scratch=.build-tsan ;;
        address) scratch=.build-asan ;;
        *) echo "sanitizers.sh: unknown sanitizer '$sanitizer' (thread or address)" >&2; exit 2 ;;
    esac
    echo "== $sanitizer sanitizer: build ($scratch)"
    log=$(mktemp)
    if ! swift build --build-tests --scratch-path "$scratch" --sanitize="$sanitizer" -Xswiftc -DANYRUNTIME_PTHREAD_LOCKS --enable-all-traits >"$log" 2>&1; then
        grep -E "error:" "$log" | head -40 >&2 || tail -40 "$log" >&2
        echo "sanitizers.sh: the $sanitizer build failed" >&2
        exit 1
    fi
    reports="$root/$scratch/reports"
    rm -rf "$reports"
    mkdir -p "$reports"
    # The Runtime suites, then the SQLAsync suite: apart, so that the conformance suite's real-time waits do
    # not compete with the database suites for the machine on top of the sanitizer's slowdown.
    # (The suites that start clusters of their own run last, alone, as in scripts/test.sh.)
    # Each pass: the backends, then the suites.
    for pass in "uv,dispatch,virtual:RuntimeTests|RuntimeConformanceTests|IntegrationTests" "uv,dispatch,virtual:SQLAsyncTests" \
        "nio:RuntimeTests|RuntimeConformanceTests|IntegrationTests|SQLAsyncTests" "uv,dispatch,virtual:Cluster"; do
        backends=${pass%%:*}
        suites=${pass#*:}
        skip=()
        [ "$suites" != "Cluster" ] && skip=(--skip Cluster)
        echo "== $sanitizer sanitizer: $suites on $backends"
        set +e
        ANYRUNTIME_BACKEND="$backends" TSAN_OPTIONS="suppressions=$root/scripts/sanitizers/tsan.supp log_path=$reports/report halt_on_error=0 second_deadlock_stack=1" \
        ASAN_OPTIONS="log_path=$reports/report detect_leaks=1" \
        LSAN_OPTIONS="suppressions=$root/scripts/sanitizers/asan.supp" \
            scripts/with-postgres.sh swift test --skip-build --scratch-path "$scratch" --sanitize="$sanitizer" --enable-all-traits \
            --filter "$suites" "${skip[@]}" \
            >"$log" 2>&1
        status=$?
        set -e
        grep -E "^✘|Test run with|skipped" "$log" | tail -30 || true
        found=$(cat "$reports"/report* 2>/dev/null | grep -cE "^(WARNING: ThreadSanitizer|==[0-9]+==ERROR: )" || true)
        if [ "$found" -gt 0 ]; then
            cat "$reports"/report*
            echo "sanitizers.sh: $sanitizer sanitizer: $found report(s) (kept in $reports)" >&2
            exit 1
        fi
        if [ "$status" -ne 0 ]; then
            tail -60 "$log" >&2
            echo "sanitizers.sh: $suites failed under the $sanitizer sanitizer" >&2
            exit 1
        fi
    done
    rm -f "$log"
    echo "$sanitizer sanitizer: no reports"
done
