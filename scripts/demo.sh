#!/usr/bin/env bash
# Quick start: set up (Debian packages, the wasm32 target), build (host/build.rs builds and embeds
# the policies), and run the demo against a private redis-server.
# Extra arguments go to `aci demo` (e.g. --redis redis://host:6379, --speed 0.5).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
ACI_SETUP_PART=system bash scripts/setup.sh >&2
cargo build --release --quiet -p aci-cli
exec target/release/aci demo "$@"
