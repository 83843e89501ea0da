#!/usr/bin/env bash
# Builds the DocC catalogues of `Runtime` and `SQLAsync` and fails on any warning (broken links, undocumented
# parameters).
set -euo pipefail
cd "$(dirname "$0")/.."
graphs=$(mktemp -d)
trap 'rm -rf "$graphs"' EXIT
swift build --scratch-path .build-docs --target SQLAsync \
    -Xswiftc -emit-symbol-graph -Xswiftc -emit-symbol-graph-dir -Xswiftc "$graphs/all" -q
status=0
for module in Runtime SQLAsync; do
    mkdir "$graphs/$module"
    cp "$graphs"/all/"$module".symbols.json "$graphs"/all/"$module"@*.symbols.json "$graphs/$module/" 2>/dev/null || true
    output=$(docc convert "Sources/$module/Docs.docc" --additional-symbol-graph-dir "$graphs/$module" \
        --output-path "$graphs/out-$module" --fallback-display-name "$module" \
        --fallback-bundle-identifier "anyruntime.$module" 2>&1)
    if echo "$output" | grep -qE "warning|error"; then
        echo "$output" | grep -E -A4 "warning|error"
        echo "check-docs: the DocC catalogue of $module has problems" >&2
        status=1
    fi
done
[ $status -eq 0 ] && echo "check-docs: ok"
exit $status
