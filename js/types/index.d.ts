// Types of the aci-cache package (src/index.js).
import type { Redis } from 'ioredis';

export type Strategy = 'ttl' | 'batched' | 'eager';
export type Role = 'auto' | 'controller' | 'follower';

export interface AdaptiveCacheOptions {
  /** The ioredis (>= 5) client that runs commands. Left open by stop(). */
  redis: Redis;
  /** The connection to subscribe on; default redis.duplicate() (closed by stop()). */
  pubsubRedis?: Redis;
  /** Fleet writes/s above which the strategy is eager (default 50). */
  highThreshold?: number;
  /** Fleet writes/s below which the strategy is ttl (default 10). */
  lowThreshold?: number;
  /** Redis TTL in seconds given by set() when it gets none (default 10). */
  defaultTtl?: number;
  /** Longest wait of a written key in a batch, seconds (default 2.5). */
  batchInterval?: number;
  /** Controller lease length and follower patience, seconds (default 3). */
  controllerInterval?: number;
  /** Window of the write-rate measurement, seconds (default 5). */
  slidingWindow?: number;
  /** Keys stored as `<prefix>:<namespace>:<key>`; ^[A-Za-z0-9._-]{1,64}$. */
  namespace?: string;
  /** true: controller, false: follower; not given: a Redis lease elects one. */
  isController?: boolean;
  /** Overrides isController. */
  role?: Role;
  /** Channel (and key) prefix, default 'aci'. */
  channelPrefix?: string;
  /** Longest life of an L1 entry, seconds (default 5); never past the key's Redis TTL. */
  localTtl?: number;
  /** L1 bound in entries (default 10,000). */
  localMaxEntries?: number;
  /** L1 bound in bytes (default 64 MiB). */
  localMaxBytes?: number;
  /** Period of the background tick, seconds (default 0.25). */
  tickInterval?: number;
  /** Subscription silence after which it is presumed dead, seconds (default 3). */
  livenessTimeout?: number;
  /** Subscription lag above which L1 stops serving, seconds (default 0.5). */
  maxLag?: number;
  /**
   * After a read of the subscription that brought only this instance's own messages (it is
   * writing eager), leave its socket unread this long, seconds, at most 0.005 (docs/WIRE.md 5;
   * default 0: off). Fewer wake-ups and less CPU per eager write; other instances' messages may
   * wait that long. Only on the subscription connection the cache opened (not `pubsubRedis`).
   */
  ownBatchDelay?: number;
  /**
   * Send eager writes (and deletes) on a connection the cache opens itself, dialled like
   * `redis` (host/port or path, TLS, username/password, the client's current db, its
   * connectionName, commandTimeout), instead of through `redis` (default true). Ignored (the
   * writes stay with `redis`) for a Sentinel client, a custom Connector, a keyPrefix or
   * enableAutoPipelining; closed by stop(). See README "Eager writes".
   */
  ownWriteConnection?: boolean;
  /**
   * Subscribe on that same connection, in RESP3 (the instance's own messages come back in the
   * read that brings the replies), instead of on a subscriber connection of its own. Default:
   * on when the own write connection is in use, no `pubsubRedis` is given and `ownBatchDelay` is
   * 0; true with one of those missing is a CacheConfigError. A server without RESP3 (Redis < 6)
   * gets a subscriber connection of its own. See README "Eager writes".
   */
  ownSubscription?: boolean;
  /** Run the bundled `fixed` policy with this strategy. */
  strategy?: Strategy;
  /** A bundled policy name or a path to a policy component (.wasm). */
  policy?: string;
  /** Hysteresis before moving to a lower strategy, seconds (policy default 3). */
  hold?: number;
  batchMaxKeys?: number;
  batchMaxBytes?: number;
  /** This instance's id in messages (default: 12 random hex characters). */
  instanceId?: string;
  /** How long start() waits for the subscription, seconds (default 2). */
  connectTimeout?: number;
  /** Where warnings go (default console). */
  logger?: { warn(msg: string): void };
  /**
   * Follow policy pushes (`aci policy push`, docs/WIRE.md 9) signed by this ed25519 public key:
   * 64 lowercase hex characters (the 32-byte key of RFC 8032, as `aci policy keygen` prints it).
   */
  policyPublicKey?: string;
  /** Follow pushes of these component hashes (SHA-256, 64 lowercase hex each), unsigned, with no config override. */
  policyAllowHashes?: string[];
  /** Faults of a pushed policy after which this instance reverts and rolls the fleet back (default 3). */
  policyRollbackFaults?: number;
}

/** A refused rollout, as in the status record. */
export interface PolicyRejection {
  rollout: number;
  sha256: string;
  reason: string;
}

/** This instance's policy status record (docs/WIRE.md 9.8), as written to `K policy:status:<id>`. */
export interface PolicyStatus {
  id: string;
  host: 'js';
  name: string;
  version: string;
  /** SHA-256 of the running component (a local one too). */
  sha256: string;
  origin: 'local' | 'pushed';
  /** The last rollout acted on (0: none). */
  rollout: number;
  strategy: Strategy;
  controller: boolean;
  /** Faults of the running policy since it was loaded. */
  faults: number;
  trust: 'key' | 'allow-list' | 'key+allow-list' | 'none';
  rejected: PolicyRejection | null;
  /** Unix seconds. */
  timestamp: number;
}

export interface StrategySwitch {
  /** Unix time, seconds. */
  timestamp: number;
  from: Strategy;
  to: Strategy;
}

export interface StatsSnapshot {
  totalReads: number;
  cacheHits: number;
  cacheMisses: number;
  totalWrites: number;
  currentStrategy: Strategy;
  writeRate: number;
  strategySwitches: StrategySwitch[];
}

export interface Stats {
  instanceId: string;
  role: 'controller' | 'follower';
  isController: boolean;
  strategy: Strategy;
  writeRate: number;
  reads: number;
  hits: number;
  misses: number;
  l1Hits: number;
  l1Misses: number;
  writes: number;
  deletes: number;
  messagesSent: number;
  pubsubReceived: number;
  messagesReceived: number;
  invalidationsApplied: number;
  flushes: number;
  gaps: number;
  malformed: number;
  resubscribes: number;
  subscriptionErrors: number;
  controllerLost: number;
  lagSuspensions: number;
  publishFailures: number;
  /** Times the subscription was left unread after a read of only its own messages (ownBatchDelay). */
  subscriptionPauses: number;
  /** Whether writes go on the cache's own connection (ownWriteConnection, and a client it can stand in for). */
  ownWriteConnection: boolean;
  /** Whether the subscription is on that connection (ownSubscription). */
  ownSubscription: boolean;
  /** Sets and deletes answered on that connection. */
  ownWrites: number;
  policyFaults: number;
  policy: { name: string; version: string } | null;
  /** SHA-256 of the running policy's component. */
  policySha256: string | null;
  policyOrigin: 'local' | 'pushed';
  /** The last rollout acted on (0: none). */
  policyRollout: number;
  /** Policy swaps (pushed, reverted, swapPolicy) since start. */
  policySwaps: number;
  l1Serving: boolean;
  l1Entries: number;
  l1Bytes: number;
  strategySwitches: number;
}

export class AdaptiveCache {
  constructor(options: AdaptiveCacheOptions);
  /** 12 hex characters unless instanceId was given. */
  readonly id: string;
  readonly strategy: Strategy;
  readonly role: 'controller' | 'follower';
  readonly isController: boolean;
  readonly statsSnapshot: StatsSnapshot;
  start(): Promise<void>;
  stop(): Promise<void>;
  get(key: string): Promise<string | null>;
  getBuffer(key: string): Promise<Buffer | null>;
  /** ttl in seconds (default defaultTtl). */
  set(key: string, value: string | Buffer | Uint8Array, ttl?: number): Promise<void>;
  delete(key: string): Promise<boolean>;
  /** Drops this namespace's keys from Redis (without a namespace: FLUSHDB, as the original did) and every instance's L1. */
  flush(): Promise<void>;
  /** Drops this instance's L1 only. */
  flushLocal(): void;
  onSwitch(cb: (from: Strategy, to: Strategy) => void): () => void;
  stats(): Stats;
  redisKey(key: string): string;
  /** This instance's policy status record (docs/WIRE.md 9.8). */
  policyStatus(): PolicyStatus;
  /**
   * Replaces the policy while serving (it becomes this instance's local policy): a component's
   * bytes, a path to one, or a bundled policy name; `strategy` sets its initial-strategy.
   * Rejects (the running policy untouched) with InvalidComponent or CacheConfigError.
   */
  swapPolicy(policy: Uint8Array | string, opts?: { strategy?: Strategy }): Promise<{ name: string; version: string; sha256: string | null }>;
}

/** An invalid option; `field` names it. */
export class CacheConfigError extends Error {
  readonly field: string;
}
export class CacheStateError extends Error {}
export class PolicyFault extends Error {}
export class PolicyTrap extends Error {}
export class ConfigError extends Error {
  readonly field: string;
}

export type DecodedMessage =
  | { action: 'invalidate'; source: string; epoch: string | null; timestamp: number; keys: string[]; strategy: Strategy | null; seq: number | null }
  | { action: 'flush'; source: string; epoch: string | null; timestamp: number; seq: number | null }
  | { action: 'mark'; source: string; epoch: string | null; timestamp: number; inval_seq: number }
  | { action: 'strategy_update'; source: string; epoch: string | null; timestamp: number; strategy: Strategy; write_rate: number; inval_seq: number | null }
  | { action: 'write_report'; source: string; epoch: string | null; timestamp: number; count: number; inval_seq: number | null }
  | { action: 'heartbeat'; source: string; epoch: string | null; timestamp: number };

export type MalformedKind = 'too-large' | 'not-json' | 'not-object' | 'unknown-action' | 'too-many-keys' | 'bad-field';

/** Decodes one fleet message (docs/WIRE.md 2); never throws. */
export function decode(payload: Uint8Array | string): DecodedMessage | { malformed: MalformedKind };

export class LossDetector {
  message(source: string, epoch: string | null, seq: number, nowMs: number): 'ok' | 'lost';
  position(source: string, epoch: string | null, invalSeq: number, nowMs: number): 'ok' | 'lost';
  tick(nowMs: number): 'ok' | 'lost';
  resubscribed(): void;
}

export class Names {
  constructor(channelPrefix: string, namespace: string | null | undefined, instanceId: string);
  readonly invalidation: string;
  readonly strategy: string;
  readonly reports: string;
  readonly liveness: string;
  readonly lease: string;
  checkKey(key: string): void;
  redisKey(key: string): string;
}

export function loadPolicy(spec: string, opts?: { policyDir?: string; transpile?: boolean }): Promise<unknown>;

/** A compiled policy component; instantiate() makes fresh, independent instances. */
export class PolicyModule {
  readonly source: { name: string; component: string | null; sha256: string | null; genDir: string; metered: boolean; generic?: boolean };
  instantiate(): Promise<unknown>;
}
export function policyModule(spec: string, opts?: { policyDir?: string; transpile?: boolean; meter?: boolean }): Promise<PolicyModule>;
/**
 * Compiles a component from its bytes without jco, off the event loop, through the glue of a
 * bundled policy of the same layout (see README "Pushed components without jco").
 */
export function loadComponent(bytes: Uint8Array, opts?: { meter?: boolean; expectSha256?: string; name?: string }): Promise<PolicyModule>;
/** A component this host cannot run (layout, interface, metering or compile error). */
export class InvalidComponent extends Error {}
