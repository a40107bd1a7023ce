#!/usr/bin/env bash
# Per-call cost of the engine from JavaScript (run setup.sh first). Prints lines
# `engine-call js <op> <nanoseconds per call>` for record-write, status and pending-batch-100.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
if [ ! -d "$here/node_modules/@bytecodealliance/jco" ]; then
    echo "bench.sh: no node_modules; run js/setup.sh first" >&2
    exit 1
fi
cd "$here"
exec node bench/engine-calls.js "$@"
