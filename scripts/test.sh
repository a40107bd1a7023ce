#!/usr/bin/env bash
# Runs every test of the project: Rust (unit, contract, end-to-end against real redis-server
# processes, the policy engine's own tests), then the Python, JS and Go hosts, each replaying
# the same trace and wire vectors from the same .wasm files, then one fleet mixing every host. Runs scripts/setup.sh first (idempotent),
# so it works on a fresh machine.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
if [ "${ACI_SKIP_SETUP:-}" != "1" ]; then
    bash scripts/setup.sh
fi
# The mixed-fleet suites drive the `aci` binary: build it before any suite runs.
cargo build --quiet --workspace --tests  # target/debug/aci included; one feature set with the test run below
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
# Every host's node driver in one fleet (tests/fleet/README in test_fleet.py's docstring).
run "mixed fleet (all hosts)" python/.venv/bin/python -m pytest tests/fleet -q -s
if [ ${#failed[@]} -gt 0 ]; then
    printf '\nFAILED suites: %s\n' "${failed[*]}"
    exit 1
fi
printf '\nall suites passed\n'
