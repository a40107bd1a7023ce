#!/usr/bin/env bash
# Runs every test of the project: Rust (unit, contract, end-to-end against real redis-server
# processes, the policy engine's own tests), then the Python, JS and Go hosts, each replaying
# the same trace and wire vectors from the same .wasm files, then one fleet mixing every host, then
# the server-facing suites again on Valkey 8.1. Runs scripts/setup.sh first (idempotent), so it
# works on a fresh machine.
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
# Valkey 8.1 (scripts/valkey.sh, installed by setup.sh): the suites whose outcome depends on the
# server (Rust end-to-end, fault and cluster suites; the Python host's end-to-end and cluster
# tests) run once more against valkey-server. The policy, contract, vector and JS/Go suites
# exercise our own code, not the server's behaviour, and are not repeated (CI time). Measured on a
# loaded 2-core box: Rust e2e ~20 s + faults ~8 s + cluster ~57 s, Python ~105 s: ~3.5 min in all.
valkey_dir="$(bash scripts/valkey.sh | tail -1)"
vk=(env ACI_REDIS_SERVER="$valkey_dir/bin/valkey-server" ACI_REDIS_CLI="$valkey_dir/bin/valkey-cli")
run "valkey: rust end-to-end, faults, cluster" "${vk[@]}" cargo test -p aci-cache --test e2e --test faults --test cluster
run "valkey: python end-to-end and cluster" "${vk[@]}" bash python/test.sh -q tests/test_cache.py \
    tests/test_async.py tests/test_cluster.py tests/test_valkey.py
if [ ${#failed[@]} -gt 0 ]; then
    printf '\nFAILED suites: %s\n' "${failed[*]}"
    exit 1
fi
printf '\nall suites passed\n'
