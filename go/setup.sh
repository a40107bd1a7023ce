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

# The bundled policies are the names in ../guest/policies.txt (one per line, # comments); the
# tests also load the test-only hostile and trap-on-load policies. All are build outputs in
# ../target/policies (or $ACI_POLICY_DIR), not committed: build them when missing.
policy_dir="${ACI_POLICY_DIR:-../target/policies}"
mapfile -t bundled < <(sed -e 's/#.*//' -e 's/[[:space:]]//g' ../guest/policies.txt | grep -v '^$')
if (( ${#bundled[@]} == 0 )); then
    echo "setup.sh: ../guest/policies.txt lists no policy" >&2
    exit 1
fi
missing=0
for p in "${bundled[@]}" hostile trap-on-load; do
    [[ -f $policy_dir/$p.wasm ]] || missing=1
done
if (( missing )); then
    if [[ -n "${ACI_POLICY_DIR:-}" ]]; then
        echo "setup.sh: ACI_POLICY_DIR=$ACI_POLICY_DIR lacks some of: ${bundled[*]} hostile trap-on-load" >&2
        exit 1
    fi
    echo "setup.sh: building the policy components (cargo xtask policies)" >&2
    (cd .. && cargo xtask policies) >&2
fi

# Package acicache embeds the bundled policies (go:embed) from acicache/policies: copy exactly
# the listed ones there (and nothing stale), only when they changed.
for f in acicache/policies/*.wasm; do
    [[ -e $f ]] || continue
    name=$(basename "$f" .wasm)
    if ! printf '%s\n' "${bundled[@]}" | grep -qx "$name"; then rm -f "$f"; fi
done
for p in "${bundled[@]}"; do
    cmp -s "$policy_dir/$p.wasm" "acicache/policies/$p.wasm" || cp "$policy_dir/$p.wasm" "acicache/policies/$p.wasm"
done
