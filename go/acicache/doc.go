// Package acicache is a near cache for go-redis users with adaptive, fleet-wide
// invalidation: the aci-cache product's Go host.
//
// A Cache wraps a redis.UniversalClient. Get serves from an in-process L1 when it can (a hit
// is a map lookup, no I/O) and from Redis otherwise; Set writes Redis and tells the other
// instances of the fleet by the strategy in force: ttl (nothing is sent; their copies expire
// by the local TTL), batched (the written keys go out together every batch interval) or
// eager (one invalidation per write, pipelined with the SET). Which strategy is in force is
// decided by a policy, a sandboxed WebAssembly component shared with the project's other
// hosts (the bundled "adaptive" policy switches by the fleet's measured write rate), and
// agreed on by the fleet through Redis Pub/Sub: one controller (holder of a lease key)
// decides, followers follow. The protocol is docs/WIRE.md (version 2) of the repository;
// instances of every host (Rust, Python, JavaScript, Go) interoperate.
//
// L1 guarantees: an instance reads its own writes; no entry outlives the key's Redis TTL (nor
// the local TTL, 5 s by default); a value read from Redis is not cached if an invalidation of
// its key arrived while it was being read; L1 is flushed in O(1), and not served at all while
// the subscription is down, lagging behind, or a lost invalidation may have gone unnoticed.
// Writes made by clients that do not use aci-cache are not seen: they are bounded by the local
// TTL only.
//
// Policy rollouts (docs/WIRE.md section 9): a Cache follows `aci policy push` rollouts of its
// namespace. It runs a pushed policy only if it trusts it (WithPolicyPublicKey: an ed25519
// signature over the hash and config; WithPolicyAllowHashes: listed hashes, with the cache's
// own config); without either it keeps its local policy and reports each push as refused in its
// status record. A trusted policy is fetched, verified and compiled off the write path and
// swapped in atomically (every write recorded by exactly one policy, the old one's buffered keys
// published at once); one that faults WithPolicyRollbackFaults times (default 3) is reverted by
// the instance and rolled back fleet-wide. SwapPolicy swaps the policy of one instance by hand.
// WithoutPolicyRollouts opts out.
//
// Redis Cluster (docs/WIRE.md section 10): with a *redis.ClusterClient every channel of the
// namespace carries the hash tag {P} and fleet messages travel on sharded Pub/Sub (SPUBLISH,
// SSUBSCRIBE; WithClusterPubSub(ClusterClassic) for PUBLISH/SUBSCRIBE), an eager write's
// invalidation leaves only once its SET is answered, and the slot map and the connections to
// every master are watched each tick: a new master or a dropped node connection flushes L1 and
// resubscribes.
//
// Errors: invalid options and unusable keys are *ConfigError (errors.Is(err, ErrInvalid)),
// naming the field; a missing key is Nil (redis.Nil); Redis errors are go-redis's.
package acicache
