#!/usr/bin/env bash
# The cost of one engine call in every host, in one run, against the native Rust cost of the
# same logic (aci-policy-core linked directly): the price of the component boundary per host.
# A benchmark, not a test: numbers move with machine load; compare ratios within one run.
# Every host times the same operations with the same untimed setup, on a fresh instance of the
# adaptive policy per row, the policy clock starting at T0 = 1.7e12 ms:
#   record-write       record-write("user:42"), the clock advancing 1 ms every 16 calls (eager)
#   status             status() after one untimed record-remote-writes(100); clock +1 ms per call
#   pending-batch-100  configured batched, batch-max-keys 100, thresholds 0 / 1e12; per call an
#                      untimed record-writes of user:1000..user:1099, then the timed pending-batch
#                      that drains and returns those 100 keys (guest work: draining the buffer and
#                      building the list, plus lifting 100 strings and the post-return call)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
# Every host must be set up already: say so up front, not after the Rust build, as a bare
# "No such file or directory" from the second host.
missing=()
[ -x python/.venv/bin/python ] || missing+=(python/.venv)
[ -d js/node_modules/@bytecodealliance/jco ] || missing+=(js/node_modules)
[ -d js/gen/adaptive ] || missing+=(js/gen)
if [ "${#missing[@]}" -gt 0 ]; then
    echo "bench-engines.sh: ${missing[*]} not set up; run 'bash scripts/setup.sh' first" >&2
    exit 1
fi
cargo build --release --quiet -p aci-cli
out="$(mktemp)"
trap 'rm -f "$out"' EXIT
{
    target/release/aci bench --engine-only
    python/.venv/bin/python python/bench/engine_calls.py
    (cd js && node bench/engine-calls.js)
    (cd go && go run ./cmd/enginebench 2>/dev/null)
} | tee /dev/stderr | grep '^engine-call ' > "$out"
echo
awk '
{ cost[$2" "$3] = $4; hosts[$2] = 1; ops[$3] = 1 }
END {
    split("rust-native rust-wasm go js python", order, " ")
    split("record-write status pending-batch-100", opl, " ")
    printf "%-12s", "host"
    for (j = 1; j <= 3; j++) printf " %24s", opl[j] " ns (x native)"
    printf "\n"
    for (i = 1; i <= 5; i++) {
        h = order[i]; if (!(h in hosts)) continue
        printf "%-12s", h
        for (j = 1; j <= 3; j++) {
            k = h " " opl[j]; n = "rust-native " opl[j]
            if (k in cost) printf " %14.0f (%7.1fx)", cost[k], cost[k] / cost[n]
            else printf " %24s", "-"
        }
        printf "\n"
    }
    print "rows: see the header of scripts/bench-engines.sh (same operations and setup in every host)"
}' "$out"
