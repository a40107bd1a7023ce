#!/usr/bin/env bash
# Vets the Go host and runs its tests: the policy conformance replay and sandbox tests
# (policy/), the wire vectors and the cache's integration tests against a redis-server that
# the test binary starts on a free loopback port (acicache/), then the concurrency tests again
# under the race detector (policy rollouts included).
set -euo pipefail
cd "$(dirname "$0")"
./setup.sh
go vet ./...
go test -count=1 -timeout 300s ./...
# The race detector checks our own concurrency, whatever the server: scripts/test.sh's Valkey
# pass sets ACI_GO_SKIP_RACE=1. The race pass skips the rollout tests that mostly wait (the
# 10 s record poll, a cluster's start; ~18 s), which the first pass runs anyway.
[ "${ACI_GO_SKIP_RACE:-}" = 1 ] || go test -count=1 -timeout 300s -race -skip 'TestRolloutReads|TestClusterRollout' -run 'Concurrent|TwoEager|Hostile|Election|Loss|Rollout|SwapPolicy|Reports|ClientKill|LeanSubscriber|OwnMessagesRead|Cluster(Killed|Dropped|ChannelSlot|NewMaster)|OwnWriter|EagerWritesCounted' ./acicache ./policy
