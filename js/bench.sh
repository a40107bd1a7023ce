#!/usr/bin/env bash
# The JavaScript host's benchmarks (run setup.sh first; needs redis-server for the cache bench):
#   engine-call js <op> <ns>              per-call cost of the policy through jco's glue
#   meter <op> metered <ns> plain <ns> ratio <x>   cost of the sandbox (target <= 2x)
#   l1-store <store> <op> <ns>            the L1 store candidates
#   cache-bench ... / ratio ...           L1 hit vs ioredis GET and node-redis CSC, set per strategy vs SET
# BENCH_SCALE=0.1 for a smoke run.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
if [ ! -d "$here/node_modules/@bytecodealliance/jco" ]; then
    echo "bench.sh: no node_modules; run js/setup.sh first" >&2
    exit 1
fi
cd "$here"
node bench/engine-calls.js "$@"
node bench/meter.js
node bench/l1-store.js
node bench/cache.js
