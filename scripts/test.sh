#!/usr/bin/env bash
# Runs every test of the project: Rust (unit, contract, end-to-end against real redis-server
# processes, the policy engine's own tests), then the Python, JS and Go hosts, each replaying
# the same trace and wire vectors from the same .wasm files, then one fleet mixing every host, then
# the server-facing suites again on Valkey 8.1. Runs scripts/setup.sh first (idempotent), so it
# works on a fresh machine.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
hosts_setup=""
if [ "${ACI_SKIP_SETUP:-}" != "1" ]; then
    ACI_SETUP_PART=system bash scripts/setup.sh
    # The hosts' setup (pip, npm, Go modules, Valkey: mostly downloads) runs while cargo builds
    # the workspace (~7 min on a fresh 2-core machine). It needs the policy components, which
    # host/build.rs writes early in that build; it waits for the build's stamp.
    mkdir -p target/policies
    stamp="$root/target/policies/.built"
    rm -f "$stamp"
    hosts_log="$root/target/setup-hosts.log"
    ACI_SETUP_PART=hosts ACI_SETUP_WAIT_FOR="$stamp" bash scripts/setup.sh >"$hosts_log" 2>&1 &
    hosts_setup=$!
    trap 'kill "$hosts_setup" 2>/dev/null || true' EXIT  # a failed build leaves no setup waiting
fi
# The mixed-fleet suites drive the `aci` binary: build it before any suite runs.
t0=$SECONDS
cargo build --quiet --workspace --tests  # target/debug/aci included; one feature set with the test run below
printf '\n==> cargo build --workspace --tests: %ss\n' "$((SECONDS - t0))"
if [ -n "$hosts_setup" ]; then
    # host/build.rs did not run when nothing under guest/ or wit/ changed: what target/policies
    # holds is that build's, current.
    touch "$stamp"
    hosts_rc=0
    wait "$hosts_setup" || hosts_rc=$?
    cat "$hosts_log"
    if [ "$hosts_rc" -ne 0 ]; then
        echo "test.sh: setting up the Python, JS and Go hosts failed (exit $hosts_rc)" >&2
        exit "$hosts_rc"
    fi
fi
export ACI_BIN="$root/target/debug/aci"
failed=()
timings=()
run() {
    local name="$1"; shift
    printf '\n==> %s\n' "$name"
    local t0=$SECONDS
    if ! "$@"; then
        failed+=("$name")
    fi
    timings+=("$(printf '%5ss  %s' "$((SECONDS - t0))" "$name")")
}
run "rust: policy engine (native)" env CARGO_TARGET_DIR="$root/target/guest-native" cargo test --manifest-path guest/Cargo.toml -p aci-policy-core
run "rust: host, contract, end-to-end" cargo test --workspace
run "python host" bash python/test.sh -q
run "js host" bash js/test.sh
run "go host" bash go/test.sh
# Every host's node driver in one fleet (tests/fleet/README in test_fleet.py's docstring).
run "mixed fleet (all hosts)" python/.venv/bin/python -m pytest tests/fleet -q -s
# Valkey 8.1 (scripts/valkey.sh, installed by setup.sh): every suite that talks to a server runs
# once more against valkey-server: Rust end-to-end, faults, cluster and rollout; the Python, JS and
# Go hosts; the mixed fleet. The policy engine and the contract/vector suites exercise our own
# code, not the server, and are not repeated. `--workspace` keeps the feature set of the first
# build: `-p aci-cache` alone resolves other features and rebuilds every dependency (~10 min, ~3
# GB of disk: a full disk is how a CI run once died, with ld's "Bus error").
valkey_dir="$(bash scripts/valkey.sh | tail -1)"
vk=(env ACI_REDIS_SERVER="$valkey_dir/bin/valkey-server" ACI_REDIS_CLI="$valkey_dir/bin/valkey-cli")
run "valkey: rust end-to-end, faults, cluster, rollout" "${vk[@]}" cargo test --workspace --test e2e --test faults \
    --test cluster --test rollout
run "valkey: python host" "${vk[@]}" env ACI_SKIP_PACKAGING=1 bash python/test.sh -q
run "valkey: js host" "${vk[@]}" bash js/test.sh
run "valkey: go host" "${vk[@]}" ACI_GO_SKIP_RACE=1 bash go/test.sh
# The idle-cost test counts the hosts' own timer messages, the same whatever the server (28 s).
run "valkey: mixed fleet (all hosts)" "${vk[@]}" python/.venv/bin/python -m pytest tests/fleet -q -s \
    --deselect tests/fleet/test_fleet.py::test_idle_protocol_cost_does_not_grow_with_the_fleet
printf '\ntime per suite:\n'
printf '%s\n' "${timings[@]}"
if [ ${#failed[@]} -gt 0 ]; then
    printf '\nFAILED suites: %s\n' "${failed[*]}"
    exit 1
fi
printf '\nall suites passed\n'
