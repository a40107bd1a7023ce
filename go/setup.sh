#!/usr/bin/env bash
# Prepares the Go host: fetches the Go modules (into the module cache; nothing is vendored)
# and makes sure the policy components the tests and benchmarks load exist. Idempotent: a
# second run does nothing. Assumes Go >= 1.26 is installed. Logs go to stderr so that
# bench.sh's stdout carries only its result lines.
set -euo pipefail
cd "$(dirname "$0")"

if ! command -v go >/dev/null; then
    echo "setup.sh: go is not installed (Go >= 1.26 needed)" >&2
    exit 1
fi
go mod download
go mod verify >&2

# The tests load ../target/policies/*.wasm (adaptive and fixed; hostile and trap-on-load for
# the sandbox tests) unless ACI_POLICY_DIR points elsewhere. They are build outputs, not
# committed, so build them when missing.
if [[ -z "${ACI_POLICY_DIR:-}" ]]; then
    missing=0
    for p in adaptive fixed hostile trap-on-load; do
        [[ -f ../target/policies/$p.wasm ]] || missing=1
    done
    if (( missing )); then
        echo "setup.sh: building the policy components (cargo xtask policies)" >&2
        (cd .. && cargo xtask policies) >&2
    fi
fi
