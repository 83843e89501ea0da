#!/usr/bin/env bash
# Builds the DocC catalogue of `Runtime` and fails on any warning (broken links, undocumented parameters).
set -euo pipefail
cd "$(dirname "$0")/.."
graphs=$(mktemp -d)
trap 'rm -rf "$graphs"' EXIT
swift build --scratch-path .build-docs --target Runtime \
    -Xswiftc -emit-symbol-graph -Xswiftc -emit-symbol-graph-dir -Xswiftc "$graphs/all" -q
mkdir "$graphs/runtime"
cp "$graphs"/all/Runtime*.symbols.json "$graphs/runtime/"
output=$(docc convert Sources/Runtime/Docs.docc --additional-symbol-graph-dir "$graphs/runtime" \
    --output-path "$graphs/out" --fallback-display-name Runtime --fallback-bundle-identifier anyruntime.Runtime 2>&1)
if echo "$output" | grep -qE "warning|error"; then
    echo "$output" | grep -E -A4 "warning|error"
    echo "check-docs: the DocC catalogue has problems" >&2
    exit 1
fi
echo "check-docs: ok"
