// Settings of AdaptiveCache: the original package's nine options (same names, same defaults) and
// ours, validated once at construction. Every error is a CacheConfigError naming the option, so a
// typo fails at startup rather than at the first write.
//
// Names (docs/WIRE.md section 1) are computed here too: the Redis key of a user key, the channels
// and the lease key.

import { randomBytes } from 'node:crypto';

/** An invalid AdaptiveCache option; `field` is the option's name as passed (camelCase). */
export class CacheConfigError extends Error {
  constructor(field, message) {
    super(`${field}: ${message}`);
    this.name = 'CacheConfigError';
    this.field = field;
  }
}

// docs/WIRE.md 1.1 / 1.4: checked byte for byte, never repaired.
const NAME_RE = /^[A-Za-z0-9._-]{1,64}$/;
const ID_RE = /^[A-Za-z0-9_-]{1,64}$/;
const HEX64_RE = /^[0-9a-f]{64}$/;
export const STRATEGIES = Object.freeze(['ttl', 'batched', 'eager']);
const ROLES = ['auto', 'controller', 'follower'];

export const DEFAULTS = Object.freeze({
  highThreshold: 50,
  lowThreshold: 10,
  defaultTtl: 10,
  batchInterval: 2.5,
  controllerInterval: 3,
  slidingWindow: 5,
  namespace: undefined,
  isController: undefined,
  channelPrefix: 'aci',
  localTtl: 5,
  localMaxEntries: 10_000,
  localMaxBytes: 64 << 20,
  tickInterval: 0.25,
  livenessTimeout: 3,
  maxLag: 0.5,
  ownBatchDelay: 0,
  ownWriteConnection: true,
  ownSubscription: undefined,
  role: undefined,
  strategy: undefined,
  policy: undefined,
  hold: undefined,
  batchMaxKeys: undefined,
  batchMaxBytes: undefined,
  instanceId: undefined,
  connectTimeout: 2,
  policyPublicKey: undefined,
  policyAllowHashes: undefined,
  policyRollbackFaults: 3,
});

const KNOWN = new Set([...Object.keys(DEFAULTS), 'redis', 'pubsubRedis', 'logger']);

function show(v) {
  if (typeof v === 'string') return JSON.stringify(v);
  if (typeof v === 'bigint') return `${v}n`;
  if (typeof v === 'object' && v !== null) return Array.isArray(v) ? 'an array' : 'an object';
  return String(v);
}

function number(o, name, { positive = false, nonneg = false, optional = false } = {}) {
  const v = o[name];
  if (v === undefined && optional) return;
  if (typeof v !== 'number' || !Number.isFinite(v)) {
    throw new CacheConfigError(name, `must be a finite number, got ${show(v)}`);
  }
  if (positive && !(v > 0)) throw new CacheConfigError(name, `must be > 0, got ${v}`);
  if (nonneg && v < 0) throw new CacheConfigError(name, `must be >= 0, got ${v}`);
}

function integer(o, name, { min = 1, max = 2 ** 31 - 1, optional = false } = {}) {
  const v = o[name];
  if (v === undefined && optional) return;
  if (!Number.isInteger(v) || v < min || v > max) {
    throw new CacheConfigError(name, `must be an integer from ${min} to ${max}, got ${show(v)}`);
  }
}

function isRedisLike(c) {
  return c != null && typeof c === 'object' && typeof c.duplicate === 'function' && typeof c.pipeline === 'function';
}

/** Checks the options; returns the settings with defaults filled in (a frozen object). */
export function resolveOptions(opts) {
  if (opts === null || typeof opts !== 'object') {
    throw new CacheConfigError('options', `must be an object, got ${show(opts)}`);
  }
  for (const k of Object.keys(opts)) {
    if (!KNOWN.has(k)) throw new CacheConfigError(k, `is not an AdaptiveCache option (known: ${[...KNOWN].sort().join(', ')})`);
  }
  const o = { ...DEFAULTS };
  for (const [k, v] of Object.entries(opts)) if (v !== undefined) o[k] = v;
  if (!isRedisLike(o.redis)) throw new CacheConfigError('redis', 'must be an ioredis (>= 5) client');
  // On a cluster the fleet's channels carry the {P} hash tag and travel by SPUBLISH/SSUBSCRIBE
  // (docs/WIRE.md 10), which this host does not do yet: running anyway would leave it deaf to the
  // Rust, Python and Go instances of the same namespace, and serving stale values.
  for (const [field, c] of [['redis', o.redis], ['pubsubRedis', o.pubsubRedis]]) {
    if (c?.isCluster === true) {
      throw new CacheConfigError(field, 'an ioredis Cluster is not supported by the Node.js host yet (docs/WIRE.md 10); use the Rust, Python or Go host on a Redis Cluster');
    }
  }
  if (o.pubsubRedis !== undefined && !isRedisLike(o.pubsubRedis)) {
    throw new CacheConfigError('pubsubRedis', 'must be an ioredis (>= 5) client');
  }
  if (o.pubsubRedis !== undefined && o.pubsubRedis === o.redis) {
    throw new CacheConfigError('pubsubRedis', 'must be another connection than `redis` (a subscribed connection cannot run commands)');
  }
  number(o, 'highThreshold', { nonneg: true });
  number(o, 'lowThreshold', { nonneg: true });
  if (o.lowThreshold >= o.highThreshold) {
    throw new CacheConfigError('lowThreshold', `must be less than highThreshold (${o.highThreshold}), got ${o.lowThreshold}`);
  }
  for (const n of ['defaultTtl', 'batchInterval', 'controllerInterval', 'slidingWindow', 'localTtl',
    'tickInterval', 'livenessTimeout', 'maxLag', 'connectTimeout']) {
    number(o, n, { positive: true });
  }
  // The policy takes milliseconds as s32.
  for (const n of ['batchInterval', 'slidingWindow', 'controllerInterval']) {
    if (o[n] * 1000 > 2 ** 31 - 1) throw new CacheConfigError(n, `must be at most ${(2 ** 31 - 1) / 1000} seconds, got ${o[n]}`);
  }
  number(o, 'hold', { nonneg: true, optional: true });
  // docs/WIRE.md 5: at most 5 ms.
  number(o, 'ownBatchDelay', { nonneg: true });
  if (o.ownBatchDelay > 0.005) throw new CacheConfigError('ownBatchDelay', `must be at most 0.005 seconds (docs/WIRE.md 5), got ${o.ownBatchDelay}`);
  if (typeof o.ownWriteConnection !== 'boolean') {
    throw new CacheConfigError('ownWriteConnection', `must be a boolean, got ${show(o.ownWriteConnection)}`);
  }
  // Undefined: on wherever it can be (the own write connection, no pubsubRedis, no ownBatchDelay).
  if (o.ownSubscription !== undefined) {
    if (typeof o.ownSubscription !== 'boolean') {
      throw new CacheConfigError('ownSubscription', `must be a boolean, got ${show(o.ownSubscription)}`);
    }
    if (o.ownSubscription) {
      if (!o.ownWriteConnection) throw new CacheConfigError('ownSubscription', 'needs ownWriteConnection (the subscription rides that connection)');
      if (o.pubsubRedis) throw new CacheConfigError('ownSubscription', 'cannot be true with pubsubRedis (the subscription is on the connection passed in)');
      if (o.ownBatchDelay > 0) throw new CacheConfigError('ownSubscription', 'cannot be true with ownBatchDelay (pausing its reads would hold the writes\' replies)');
    }
  }
  integer(o, 'localMaxEntries', { min: 1, max: 2 ** 30 });
  integer(o, 'localMaxBytes', { min: 1024, max: Number.MAX_SAFE_INTEGER });
  integer(o, 'batchMaxKeys', { optional: true });
  integer(o, 'batchMaxBytes', { optional: true });
  if (typeof o.channelPrefix !== 'string' || !NAME_RE.test(o.channelPrefix)) {
    throw new CacheConfigError('channelPrefix', `must match ^[A-Za-z0-9._-]{1,64}$, got ${show(o.channelPrefix)}`);
  }
  if (o.namespace !== undefined && o.namespace !== null &&
    (typeof o.namespace !== 'string' || !NAME_RE.test(o.namespace))) {
    throw new CacheConfigError('namespace', `must match ^[A-Za-z0-9._-]{1,64}$, got ${show(o.namespace)}`);
  }
  if (o.namespace === null) o.namespace = undefined;
  if (o.isController !== undefined && typeof o.isController !== 'boolean') {
    throw new CacheConfigError('isController', `must be a boolean, got ${show(o.isController)}`);
  }
  if (o.role !== undefined && !ROLES.includes(o.role)) {
    throw new CacheConfigError('role', `must be one of ${ROLES.join(', ')}, got ${show(o.role)}`);
  }
  // role wins over isController; neither given: the lease elects a controller.
  o.role = o.role ?? (o.isController === undefined ? 'auto' : o.isController ? 'controller' : 'follower');
  if (o.strategy !== undefined && !STRATEGIES.includes(o.strategy)) {
    throw new CacheConfigError('strategy', `must be one of ${STRATEGIES.join(', ')}, got ${show(o.strategy)}`);
  }
  if (o.policy !== undefined && !(typeof o.policy === 'string' && o.policy !== '')) {
    throw new CacheConfigError('policy', `must be a bundled policy name or a path to a component (.wasm), got ${show(o.policy)}`);
  }
  if (o.policy !== undefined && o.strategy !== undefined) {
    throw new CacheConfigError('strategy', 'cannot be combined with `policy` (strategy runs the bundled fixed policy)');
  }
  if (o.instanceId !== undefined && (typeof o.instanceId !== 'string' || !ID_RE.test(o.instanceId))) {
    throw new CacheConfigError('instanceId', `must match ^[A-Za-z0-9_-]{1,64}$, got ${show(o.instanceId)}`);
  }
  // docs/WIRE.md 9.5: the trust for pushed policies (all hex lowercase: upper case is refused).
  if (o.policyPublicKey !== undefined && o.policyPublicKey !== null &&
    (typeof o.policyPublicKey !== 'string' || !HEX64_RE.test(o.policyPublicKey))) {
    throw new CacheConfigError('policyPublicKey', `must be 64 lowercase hex characters (an ed25519 public key), got ${show(o.policyPublicKey)}`);
  }
  if (o.policyPublicKey === null) o.policyPublicKey = undefined;
  if (o.policyAllowHashes !== undefined && o.policyAllowHashes !== null) {
    if (!Array.isArray(o.policyAllowHashes)) {
      throw new CacheConfigError('policyAllowHashes', `must be an array of SHA-256 hashes (64 lowercase hex characters each), got ${show(o.policyAllowHashes)}`);
    }
    for (const h of o.policyAllowHashes) {
      if (typeof h !== 'string' || !HEX64_RE.test(h)) {
        throw new CacheConfigError('policyAllowHashes', `must hold SHA-256 hashes (64 lowercase hex characters), got ${show(h)}`);
      }
    }
    o.policyAllowHashes = Object.freeze([...o.policyAllowHashes]);
  }
  if (o.policyAllowHashes === null) o.policyAllowHashes = undefined;
  integer(o, 'policyRollbackFaults', { min: 1 });
  if (o.logger !== undefined && (o.logger === null || typeof o.logger.warn !== 'function')) {
    throw new CacheConfigError('logger', 'must have warn() (console, pino, ...)');
  }
  return Object.freeze(o);
}

/** Overrides of the policy's default config, as jco's camelCase record fields. */
export function policyOverrides(o) {
  const ms = (s) => Math.max(1, Math.round(s * 1000));
  const out = {
    lowThreshold: o.lowThreshold,
    highThreshold: o.highThreshold,
    windowMs: ms(o.slidingWindow),
    batchIntervalMs: ms(o.batchInterval),
  };
  if (o.hold !== undefined) out.holdMs = Math.round(o.hold * 1000);
  if (o.batchMaxKeys !== undefined) out.batchMaxKeys = o.batchMaxKeys;
  if (o.batchMaxBytes !== undefined) out.batchMaxBytes = o.batchMaxBytes;
  if (o.strategy !== undefined) out.initialStrategy = o.strategy;
  return out;
}

/** 12 lowercase hex characters (docs/WIRE.md 1.4), like the original's ids. */
export function randomId() {
  return randomBytes(6).toString('hex');
}

/** 16 lowercase hex characters, new per cache object. */
export function randomEpoch() {
  return randomBytes(8).toString('hex');
}

/**
 * The names of docs/WIRE.md section 1 for one (prefix, namespace, id). Throws CacheConfigError
 * (field `channelPrefix`, `namespace` or `instanceId`) on a name the spec refuses.
 */
export class Names {
  constructor(prefix, namespace, id) {
    if (typeof prefix !== 'string' || !NAME_RE.test(prefix)) {
      throw new CacheConfigError('channelPrefix', `must match ^[A-Za-z0-9._-]{1,64}$, got ${show(prefix)}`);
    }
    if (namespace != null && (typeof namespace !== 'string' || !NAME_RE.test(namespace))) {
      throw new CacheConfigError('namespace', `must match ^[A-Za-z0-9._-]{1,64}$, got ${show(namespace)}`);
    }
    if (typeof id !== 'string' || !ID_RE.test(id)) {
      throw new CacheConfigError('instanceId', `must match ^[A-Za-z0-9_-]{1,64}$, got ${show(id)}`);
    }
    const P = namespace != null ? `${prefix}:${namespace}` : prefix;
    this.namespace = namespace ?? null;
    /** What every Redis key of this namespace starts with ('' without a namespace). */
    this.keyPrefix = namespace != null ? `${P}:` : '';
    /** User keys refused without a namespace: the protocol key space. */
    this.reserved = `${prefix}::`;
    this.invalidation = `${P}:invalidation`;
    this.strategy = `${P}:strategy`;
    this.reports = `${P}:reports`;
    this.liveness = `${P}:liveness:${id}`;
    this.lease = namespace != null ? `${prefix}::${namespace}:controller` : `${prefix}::controller`;
    /** The rollout channel (docs/WIRE.md 9.1). */
    this.policy = `${P}:policy`;
    /** `K` of docs/WIRE.md 9: what the rollout keys start with. */
    this.protocolKeys = namespace != null ? `${prefix}::${namespace}:` : `${prefix}::`;
    this.prefix = prefix;
  }

  /** Throws CacheConfigError('key') for a key that is not a string or is reserved. */
  checkKey(key) {
    if (typeof key !== 'string') throw new CacheConfigError('key', `must be a string, got ${show(key)}`);
    if (this.keyPrefix === '' && key.startsWith(this.reserved)) {
      throw new CacheConfigError('key', `is reserved: keys starting with ${JSON.stringify(this.reserved)} are protocol keys`);
    }
  }

  redisKey(key) {
    return this.keyPrefix === '' ? key : this.keyPrefix + key;
  }

  /** The user key of a Redis key named in a message, or undefined when it is not ours. */
  userKey(redisKey) {
    if (this.keyPrefix === '') return redisKey;
    return redisKey.startsWith(this.keyPrefix) ? redisKey.slice(this.keyPrefix.length) : undefined;
  }
}
