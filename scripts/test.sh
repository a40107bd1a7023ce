#!/usr/bin/env bash
# Runs every test of the project: Rust (unit, contract, end-to-end against real redis-server
# processes, the policy engine's own tests), then the Python, JS and Go hosts, each replaying
# the same trace vectors from the same .wasm files. Runs scripts/setup.sh first (idempotent),
# so it works on a fresh machine.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
if [ "${ACI_SKIP_SETUP:-}" != "1" ]; then
    bash scripts/setup.sh
fi
# The Python mixed-fleet test drives the `aci` binary: build it before any suite runs.
cargo build --quiet -p aci-cli
export ACI_BIN="$root/target/debug/aci"
failed=()
run() {
    local name="$1"; shift
    printf '\n==> %s\n' "$name"
    if ! "$@"; then
        failed+=("$name")
    fi
}
run "rust: policy engine (native)" env CARGO_TARGET_DIR="$root/target/guest-native" cargo test --manifest-path guest/Cargo.toml -p aci-policy-core
run "rust: host, contract, end-to-end" cargo test --workspace
run "python host" bash python/test.sh -q
run "js host" bash js/test.sh
run "go host" bash go/test.sh
if [ ${#failed[@]} -gt 0 ]; then
    printf '\nFAILED suites: %s\n' "${failed[*]}"
    exit 1
fi
printf '\nall suites passed\n'
