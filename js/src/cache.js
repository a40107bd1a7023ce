// AdaptiveCache: the original aci-cache Node API over a real near cache (L1) and the fleet
// protocol of docs/WIRE.md v2.
//
//   const cache = new AdaptiveCache({ redis: new Redis() });
//   await cache.start();
//   await cache.set('user:42', '{"name":"Alice"}');
//   await cache.get('user:42');
//   await cache.stop();
//
// Everything on the network path (the subscription, the tick) logs and counts its errors and
// goes on: nothing there throws into the user's process. Calls the user makes (get, set, ...)
// reject with Redis's error when Redis fails them.

import { createHash } from 'node:crypto';
import { performance } from 'node:perf_hooks';
import { CacheConfigError, Names, policyOverrides, randomEpoch, randomId, resolveOptions } from './config.js';
import { PolicyRuntime } from './engine.js';
import { NearCache } from './near-cache.js';
import { loadComponent, policyModule } from './policy.js';
import { Follower, Trust } from './rollout.js';
import { KEYS_PER_MESSAGE, LOST, LossDetector, MAX_U32, Sender, decode, decodePolicy } from './wire.js';
import { OwnSubscriber, del, encode, evalSetPublish, join, ownWriterFor, publish, publishHead, scriptParts, setPX } from './wconn.js';

const HEARTBEAT_MS = 1000;
const TIMESTAMP = Buffer.from('"timestamp":');
// Writes buffered before the policy hears of them without waiting for the tick.
const WRITE_BUF_MAX = 1024;
// Keys the host publishes itself (see #drainWrites) before it sends a flush instead.
const MAX_ORPHANS = 100_000;
const SET_PUBLISH_LUA = "redis.call('set', KEYS[1], ARGV[1], 'px', ARGV[2]) return redis.call('publish', ARGV[3], ARGV[4])";
const SET_PUBLISH_SHA = createHash('sha1').update(SET_PUBLISH_LUA).digest('hex');
const MAX_SWITCH_HISTORY = 1000;
const SAFE = Number.MAX_SAFE_INTEGER;
const RENEW_LUA = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) else return 0 end";
// How a set went out: through the client (a SET; the script; a pipeline, #execWrite), or on our
// own write connection (SET + PUBLISH; a SET alone). Ordered: < VIA_OWN is the client's.
const VIA_SET = 0;
const VIA_SCRIPT = 1;
const VIA_PIPE = 2;
const VIA_OWN = 3;
const VIA_OWN_SET = 4;
const RELEASE_LUA = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) else return 0 end";

// Milliseconds on a monotonic clock: L1 deadlines, liveness, the policy's clock.
const mono = () => performance.now();

/** The cache is not started, or was stopped. */
export class CacheStateError extends Error {
  constructor(message) {
    super(message);
    this.name = 'CacheStateError';
  }
}

export class AdaptiveCache {
  #o;
  #names;
  #sender;
  #l1;
  #redis;
  #sub = null;
  #ownSub = false;
  #rt = null;
  #log;
  #state = 'new'; // new | starting | running | stopped
  #strategy = 'eager';
  #isController = false;
  #writeRate = 0;
  #switches = [];
  #switchCbs = [];
  #detector = new LossDetector();
  // subscription
  #subscribed = false;
  #lagging = false;
  #lastHeard = 0;
  #subAttempt = 0;
  #subBackoff = 50;
  #subTimer = null;
  #subInFlight = false;
  #subWaiters = [];
  #reportsSubscribed = false;
  // With ownBatchDelay, the read being handled (the messages ioredis emits for one socket read,
  // before the microtask #afterRead runs): whether all were ours and one an invalidation.
  #readOpen = false;
  #readOwnOnly = true;
  #readOwnInval = false;
  #pausedSock = null;
  #pauseTimer = null;
  #ownBatchDelayMs;
  // sending
  #seq = 0;
  // Publishes on P:invalidation whose seq is taken and whose answer has not come yet, and the
  // last position read with none in flight (#position).
  #inFlight = 0;
  #settled = 0;
  #marked = 0;
  #invalSinceTick = false;
  #mustFlush = false;
  #unreported = 0;
  #remoteWrites = 0;
  #lastControllerNews = 0;
  #lastStrategyUpdate = -Infinity;
  #lastHeartbeat = -Infinity;
  #announced = null;
  #tickTimer = null;
  #ticking = null;
  #malformedSeen = new Set();
  #localTtlMs;
  #starting = null;
  #writeBuf = [];
  #eagerWrites = 0; // writes made under eager since the last drain: a count, not keys
  #batchedBuf = [];
  #drainSoon = false;
  #orphans = [];
  #orphanFlush = false;
  #ownTail;
  #invalChan;
  #invalHead;
  #scriptParts;
  // The own write connection (wconn.js; null: writes go through the client), and the writes
  // in flight through the client (#ownRoute keeps the two paths in order).
  #own = null;
  #clientWrites = 0;
  #defaultTtlMs;
  // policy rollout (docs/WIRE.md 9)
  #trust;
  #follower = null;
  #policyChan;
  #localModule = null;
  #localOverrides = null;
  // counters
  #c = {
    hits: 0, misses: 0, l1Hits: 0, l1Misses: 0, writes: 0, deletes: 0, messagesSent: 0,
    pubsubReceived: 0, messagesReceived: 0, invalidationsApplied: 0, flushes: 0, gaps: 0,
    malformed: 0, resubscribes: 0, subscriptionErrors: 0, controllerLost: 0, lagSuspensions: 0, publishFailures: 0,
    policySwaps: 0, subscriptionPauses: 0, ownWrites: 0,
  };

  /**
   * @param {import('./index.js').AdaptiveCacheOptions} options
   * Throws CacheConfigError naming the option on any invalid value.
   */
  constructor(options) {
    const o = resolveOptions(options);
    this.#o = o;
    this.id = o.instanceId ?? randomId();
    this.#names = new Names(o.channelPrefix, o.namespace, this.id);
    this.#sender = new Sender(this.id, randomEpoch());
    this.#ownTail = Buffer.from(this.#sender.tail);
    this.#l1 = new NearCache(o.localMaxEntries, o.localMaxBytes);
    this.#redis = o.redis;
    this.#log = o.logger ?? console;
    this.#localTtlMs = o.localTtl * 1000;
    this.#ownBatchDelayMs = o.ownBatchDelay * 1000;
    this.#defaultTtlMs = Math.max(1, Math.round(o.defaultTtl * 1000));
    this.#trust = new Trust(o.policyPublicKey, o.policyAllowHashes); // a bad key: CacheConfigError
    this.#policyChan = Buffer.from(this.#names.policy);
    this.#invalChan = Buffer.from(this.#names.invalidation);
    this.#invalHead = publishHead(this.#names.invalidation);
    this.#scriptParts = scriptParts(SET_PUBLISH_SHA, this.#names.invalidation);
  }

  // ---- properties ------------------------------------------------------------------------------

  /** The strategy in force here: 'ttl' | 'batched' | 'eager'. */
  get strategy() {
    return this.#strategy;
  }

  /** 'controller' or 'follower' (the configured role decides, or the lease when auto). */
  get role() {
    return this.#isController ? 'controller' : 'follower';
  }

  get isController() {
    return this.#isController;
  }

  /** The Redis key `key` is stored under. */
  redisKey(key) {
    this.#names.checkKey(key);
    return this.#names.redisKey(key);
  }

  /** The original package's stats. */
  get statsSnapshot() {
    const c = this.#c;
    return {
      totalReads: c.hits + c.misses,
      cacheHits: c.hits,
      cacheMisses: c.misses,
      totalWrites: c.writes,
      currentStrategy: this.#strategy,
      writeRate: this.#writeRate,
      strategySwitches: this.#switches.map((s) => ({ ...s })),
    };
  }

  /** Everything counted, including the L1 and fleet counters. */
  stats() {
    const c = this.#c;
    return {
      instanceId: this.id,
      role: this.role,
      isController: this.#isController,
      strategy: this.#strategy,
      writeRate: this.#writeRate,
      reads: c.hits + c.misses,
      hits: c.hits,
      misses: c.misses,
      l1Hits: c.l1Hits,
      l1Misses: c.l1Misses,
      writes: c.writes,
      deletes: c.deletes,
      messagesSent: c.messagesSent,
      pubsubReceived: c.pubsubReceived,
      messagesReceived: c.messagesReceived,
      invalidationsApplied: c.invalidationsApplied,
      flushes: c.flushes,
      gaps: c.gaps,
      malformed: c.malformed,
      resubscribes: c.resubscribes,
      controllerLost: c.controllerLost,
      lagSuspensions: c.lagSuspensions,
      publishFailures: c.publishFailures,
      subscriptionPauses: c.subscriptionPauses,
      ownWriteConnection: this.#own !== null,
      ownSubscription: this.#sub instanceof OwnSubscriber,
      ownWrites: c.ownWrites,
      policyFaults: this.#rt?.faults ?? 0,
      policy: this.#rt?.describe ?? null,
      policySha256: this.#rt?.source?.sha256 ?? null,
      policyOrigin: this.#follower?.running.target.sha256 ? 'pushed' : 'local',
      policyRollout: this.#follower?.acted ?? 0,
      policySwaps: c.policySwaps,
      l1Serving: this.#l1.serving,
      l1Entries: this.#l1.size,
      l1Bytes: this.#l1.bytes,
      strategySwitches: this.#switches.length,
    };
  }

  /** Calls cb(from, to) on every strategy change; returns a function that unregisters it. */
  onSwitch(cb) {
    if (typeof cb !== 'function') throw new TypeError('onSwitch needs a function');
    this.#switchCbs.push(cb);
    return () => {
      this.#switchCbs = this.#switchCbs.filter((f) => f !== cb);
    };
  }

  // ---- lifecycle -------------------------------------------------------------------------------

  /**
   * Loads the policy, subscribes (waiting up to connectTimeout; reads bypass L1 until the
   * subscription is up), settles the role and starts the tick.
   */
  start() {
    if (this.#state !== 'new') return Promise.reject(new CacheStateError(`start(): the cache is ${this.#state}`));
    this.#state = 'starting';
    this.#starting = this.#start();
    return this.#starting;
  }

  async #start() {
    const o = this.#o;
    try {
      const spec = o.policy ?? (o.strategy !== undefined ? 'fixed' : 'adaptive');
      this.#localOverrides = policyOverrides(o);
      this.#rt = await PolicyRuntime.create(spec, this.#localOverrides, { onFault: this.#onPolicyFault });
      this.#localModule = this.#rt.module;
    } catch (err) {
      this.#state = 'new';
      if (err?.name === 'ConfigError') throw new CacheConfigError(err.field, err.message);
      throw err;
    }
    const now = mono();
    this.#strategy = this.#rt.currentStrategy(Math.floor(now));
    this.#lastControllerNews = now;
    if (o.ownWriteConnection) {
      this.#own = ownWriterFor(this.#redis);
    }

    if (o.pubsubRedis) {
      this.#sub = o.pubsubRedis;
    } else if (this.#own !== null && o.ownSubscription !== false && !(o.ownBatchDelay > 0)) {
      // On the write connection, in RESP3 (wconn.js OwnSubscriber; README "Eager writes").
      this.#sub = this.#own.subscriber(this.#db());
      this.#sub.once('resp2', this.#onSubResp2);
      this.#ownSub = true;
    } else {
      this.#sub = this.#clientSubscriber();
      this.#ownSub = true;
    }
    this.#listen(this.#sub);
    // Dialled now, so the first write finds it ready (the subscriber has dialled it already).
    if (this.#own !== null && !(this.#sub instanceof OwnSubscriber) && this.#redis.status === 'ready') this.#own.warm(this.#db());

    const subscribed = new Promise((resolve) => this.#subWaiters.push(resolve));
    this.#subscribe();
    await Promise.race([subscribed, sleep(o.connectTimeout * 1000)]);
    if (!this.#subscribed) {
      this.#log.warn(`aci-cache ${this.id}: not subscribed yet; reads go to Redis until it is`);
    }
    // Before serving: a late joiner runs the fleet's current policy (docs/WIRE.md 9.3).
    this.#follower = this.#makeFollower();
    try {
      await withTimeout(this.#follower.start(), Math.max(2000, 2 * o.connectTimeout * 1000), 'reading the rollout record');
    } catch (err) {
      this.#log.warn(`aci-cache ${this.id}: ${err.message}; running the local policy for now`);
    }

    const t = Math.floor(mono());
    if (o.role === 'controller') this.#becomeController(t);
    else if (o.role === 'follower') this.#becomeFollower(t, true);
    else {
      let holds = false;
      try {
        holds = await this.#tryLease();
      } catch (err) {
        this.#log.warn(`aci-cache ${this.id}: controller lease: ${err.message}; following`);
      }
      if (holds) this.#becomeController(t);
      else this.#becomeFollower(t, true);
    }
    if (this.#isController) await this.#subscribeReports(true);

    this.#state = 'running';
    this.#starting = null;
    this.#tickTimer = setInterval(() => this.#runTick(), o.tickInterval * 1000);
    this.#tickTimer.unref?.();
    // First heartbeat and strategy_update now rather than a tick later.
    this.#runTick();
  }

  // Our own subscriber through ioredis: reconnects with capped exponential backoff and jitter
  // (WIRE.md 5).
  #clientSubscriber() {
    return this.#redis.duplicate({
      retryStrategy: (times) => jitter(Math.min(5000, 50 * 2 ** Math.min(times - 1, 10))),
      maxRetriesPerRequest: null,
      autoResubscribe: false,
    });
  }

  #listen(sub) {
    sub.on('messageBuffer', this.#onMessage);
    sub.on('close', this.#onSubDown);
    sub.on('ready', this.#onSubReady);
    sub.on('error', this.#onSubError);
  }

  #unlisten(sub) {
    sub.off('messageBuffer', this.#onMessage);
    sub.off('close', this.#onSubDown);
    sub.off('ready', this.#onSubReady);
    sub.off('error', this.#onSubError);
  }

  // The server refused HELLO 3 (Redis < 6): the subscription moves to an ioredis subscriber.
  #onSubResp2 = () => {
    const old = this.#sub;
    this.#unlisten(old);
    old.off('resp2', this.#onSubResp2);
    this.#down('no RESP3 on the server');
    if (this.#state === 'stopped') return;
    this.#log.warn(`aci-cache ${this.id}: the server has no RESP3; subscribing on a connection of its own`);
    this.#sub = this.#clientSubscriber();
    this.#listen(this.#sub);
    this.#subscribe();
  };

  /**
   * Publishes what is batched, gives up the controller lease, closes the subscription it opened.
   * The `redis` client passed in stays open (it is the caller's). Idempotent.
   */
  async stop() {
    // A stop() during start() lets the start finish first, then undoes it.
    if (this.#state === 'starting') await this.#starting?.catch(() => {});
    if (this.#state === 'stopped' || this.#state === 'new') {
      this.#state = 'stopped';
      return;
    }
    this.#state = 'stopped';
    clearInterval(this.#tickTimer);
    clearTimeout(this.#subTimer);
    this.#resumeSub();
    if (this.#ticking) await this.#ticking.catch(() => {});
    // No swap after the last drain below; the status record goes.
    await this.#follower?.stop(this.#o.connectTimeout * 1000);
    this.#l1.suspend();
    this.#subscribed = false;
    try {
      const now = Math.floor(mono());
      this.#drainWrites(now);
      const batch = this.#rt.drainAll(now);
      // Seqs taken here need not be counted in #inFlight: no position is read after stop.
      const pipe = this.#redis.pipeline();
      let n = this.#addBatch(pipe, batch);
      if (this.#orphanFlush || this.#orphans.length) {
        n += this.#addBatch(pipe, { keys: [...new Set(this.#orphans)], flushAll: this.#orphanFlush });
      }
      let release = 0;
      if (this.#isController && this.#o.role === 'auto') {
        pipe.eval(RELEASE_LUA, 1, this.#names.lease, this.id);
        release = 1;
      }
      // Bounded: an unreachable Redis must not hold stop() forever.
      if (n + release > 0) {
        await withTimeout(this.#exec(pipe, n, batch.keys.length > 0 || batch.flushAll), this.#o.connectTimeout * 1000, 'publishing the last batch');
      }
    } catch (err) {
      this.#log.warn(`aci-cache ${this.id}: stop: ${err.message}`);
    }
    this.#isController = false;
    // Writes still on it are answered first (bounded); later ones cannot start (stopped).
    await this.#own?.close(this.#o.connectTimeout * 1000);
    const sub = this.#sub;
    this.#unlisten(sub);
    sub.off('resp2', this.#onSubResp2);
    if (this.#ownSub) {
      sub.disconnect();
    } else {
      try {
        await withTimeout(sub.unsubscribe(...this.#channels(), this.#names.reports), this.#o.connectTimeout * 1000, 'unsubscribing');
      } catch (err) {
        this.#log.warn(`aci-cache ${this.id}: stop: ${err.message}`);
      }
    }
  }

  #checkRunning(what) {
    if (this.#state !== 'running' && this.#state !== 'starting') {
      throw new CacheStateError(`${what}: the cache is ${this.#state === 'new' ? 'not started (await start() first)' : 'stopped'}`);
    }
  }

  // ---- policy rollout (docs/WIRE.md 9) --------------------------------------------------------------

  /** This instance's policy status record (docs/WIRE.md 9.8), as written to Redis. */
  policyStatus() {
    if (!this.#follower) throw new CacheStateError('policyStatus(): the cache is not started');
    return this.#follower.status();
  }

  /**
   * Replaces the policy while serving: `policy` is a component's bytes, a path to a component
   * (.wasm) or a bundled policy name; `strategy` sets its initial-strategy (the one `fixed`
   * keeps). It is compiled, checked and configured first (the running policy is untouched if
   * that fails: InvalidComponent, or CacheConfigError naming the field it refuses), then swapped
   * in at once: it takes over the mode, the strategy in force and the measured rate, and the
   * keys the old instance buffered are published at the next tick. It becomes this instance's
   * local policy (what a rollout back to "local" returns to).
   * @returns {Promise<{name: string, version: string, sha256: string|null}>}
   */
  async swapPolicy(policy, { strategy } = {}) {
    if (this.#state !== 'running') throw new CacheStateError(`swapPolicy(): the cache is ${this.#state === 'new' ? 'not started' : this.#state}`);
    if (strategy !== undefined && !['ttl', 'batched', 'eager'].includes(strategy)) {
      throw new CacheConfigError('strategy', `must be one of ttl, batched, eager, got ${JSON.stringify(strategy)}`);
    }
    let module;
    if (policy instanceof Uint8Array) module = await loadComponent(policy);
    else if (typeof policy === 'string' && policy !== '') module = await policyModule(policy);
    else throw new TypeError('swapPolicy: policy must be a component (Buffer / Uint8Array), a path or a bundled policy name');
    const overrides = { ...policyOverrides(this.#o) };
    if (strategy !== undefined) overrides.initialStrategy = strategy;
    return this.#follower.run(async () => {
      let rt;
      try {
        rt = await PolicyRuntime.create(module, overrides, { onFault: this.#onPolicyFault });
        await rt.ready();
      } catch (err) {
        if (err?.name === 'ConfigError') throw new CacheConfigError(err.field, err.message);
        throw err;
      }
      if (this.#state !== 'running') throw new CacheStateError('swapPolicy(): the cache stopped');
      this.#localModule = module;
      this.#localOverrides = overrides;
      this.#swapRuntime(rt);
      this.#follower.localSwapped();
      return { ...rt.describe, sha256: rt.source?.sha256 ?? null };
    });
  }

  #onPolicyFault = (err) => {
    this.#log.warn(`aci-cache ${this.id}: ${err.message}; answering eager`);
    this.#follower?.faulted();
  };

  #makeFollower() {
    const names = this.#names;
    const host = {
      id: this.id,
      prefix: names.prefix,
      namespace: names.namespace,
      keys: names.protocolKeys,
      channel: names.policy,
      tickMs: this.#o.tickInterval * 1000,
      redis: this.#redis,
      log: this.#log,
      sender: this.#sender,
      now: mono,
      runtime: () => this.#rt,
      strategy: () => this.#strategy,
      isController: () => this.#isController,
      alive: () => this.#state === 'running' || this.#state === 'starting',
      sent: () => {
        this.#c.messagesSent++;
      },
      makeRuntime: async (running) => {
        // A pushed policy runs with the host's config plus the record's overrides (WIRE.md
        // 9.4); the local one with the host's own.
        const rt = running.module === null
          ? await PolicyRuntime.create(this.#localModule, this.#localOverrides, { onFault: this.#onPolicyFault })
          : await PolicyRuntime.create(running.module, { ...policyOverrides(this.#o), ...running.overrides }, { onFault: this.#onPolicyFault });
        await rt.ready();
        return rt;
      },
      swap: (rt) => this.#swapRuntime(rt),
    };
    return new Follower(host, this.#trust, this.#o.policyRollbackFaults);
  }

  // Puts `rt` in place of the running policy, in one synchronous step (docs/WIRE.md 9.6 step 5):
  // every write buffered so far goes to the old instance, every later one to the new; the keys
  // the old one buffered are published at the next tick (or a flush if it lost them); the new one
  // takes over the mode and the strategy in force, primed with the measured rate.
  #swapRuntime(rt) {
    const now = Math.floor(mono());
    this.#drainWrites(now);
    const old = this.#rt;
    const following = old.following;
    const rate = this.#isController ? old.status(now).writeRate : this.#writeRate;
    const b = old.drainAll(now);
    if (b.flushAll) this.#orphanFlush = true;
    else if (b.keys.length) {
      if (this.#orphans.length + b.keys.length > MAX_ORPHANS) this.#orphanFlush = true;
      else for (const k of b.keys) this.#orphans.push(k);
    }
    if (this.#state === 'running') {
      const primed = Math.round((Number.isFinite(rate) ? rate : 0) * (rt.windowMs / 1000));
      if (primed >= 1) rt.recordRemoteWrites(Math.min(primed, MAX_U32), now);
      if (this.#isController) {
        rt.follow(this.#strategy, now); // from the strategy in force, then it decides
        rt.lead(now);
      } else {
        rt.follow(following ?? this.#strategy, now);
      }
    }
    this.#rt = rt;
    this.#c.policySwaps++;
    this.#noteStrategy(rt.currentStrategy(now));
  }

  // ---- reads -----------------------------------------------------------------------------------

  /** The value of `key` as a string (UTF-8), or null. */
  async get(key) {
    const e = this.#l1.serving ? this.#l1.get(key, mono()) : undefined;
    if (e !== undefined) {
      this.#c.l1Hits++;
      this.#c.hits++;
      return e.s !== undefined ? e.s : (e.s = e.b.toString());
    }
    const b = await this.#miss(key);
    return b === null ? null : b.toString();
  }

  /** The value of `key` as bytes (a copy: the caller may modify it), or null. */
  async getBuffer(key) {
    const e = this.#l1.serving ? this.#l1.get(key, mono()) : undefined;
    if (e !== undefined) {
      this.#c.l1Hits++;
      this.#c.hits++;
      if (e.b === undefined) e.b = Buffer.from(e.s);
      return Buffer.from(e.b);
    }
    const b = await this.#miss(key);
    return b === null ? null : Buffer.from(b);
  }

  // GET and PTTL in one round trip. Concurrent misses of one key share it, unless an
  // invalidation or a local write came in between (then a new read starts).
  async #miss(key) {
    this.#checkRunning('get');
    this.#names.checkKey(key);
    const c = this.#c;
    c.l1Misses++;
    const l1 = this.#l1;
    let f = l1.joinFill(key);
    if (f === undefined) {
      f = l1.beginFill(key);
      const rk = this.#names.redisKey(key);
      const sent = mono();
      f.promise = this.#redis
        .pipeline()
        .getBuffer(rk)
        .pttl(rk)
        .exec()
        .then(
          (res) => {
            const [[e1, value], [e2, pttl]] = res;
            if (e1) throw e1;
            if (value === null) {
              l1.completeFill(f, key, null, 0, 0);
              return null;
            }
            if (!e2) {
              // -1: no expiry in Redis, the local bound alone; -2: gone since the GET.
              const ttl = pttl === -1 ? this.#localTtlMs : pttl > 0 ? Math.min(this.#localTtlMs, pttl) : 0;
              l1.completeFill(f, key, value, sent + ttl, mono());
            } else {
              l1.completeFill(f, key, null, 0, 0);
            }
            return value;
          },
          (err) => {
            l1.completeFill(f, key, null, 0, 0);
            throw err;
          },
        );
    }
    const v = await f.promise;
    if (v === null) c.misses++;
    else c.hits++;
    return v;
  }

  // ---- writes ----------------------------------------------------------------------------------

  /**
   * Writes `key` to Redis with `ttl` seconds (default defaultTtl) and tells the fleet per the
   * strategy in force: eager pipelines one invalidation with the SET; batched leaves the key
   * to the policy's next batch; ttl sends nothing.
   */
  async set(key, value, ttl) {
    this.#checkRunning('set');
    this.#names.checkKey(key);
    let str, buf;
    if (typeof value === 'string') str = value;
    else if (Buffer.isBuffer(value)) buf = Buffer.from(value); // our copy: the caller may reuse theirs
    else if (value instanceof Uint8Array) buf = Buffer.from(value);
    else throw new TypeError(`value: must be a string or a Buffer, got ${value === null ? 'null' : typeof value}`);
    let ttlMs = this.#defaultTtlMs;
    if (ttl !== undefined && ttl !== null) {
      if (typeof ttl !== 'number' || !Number.isFinite(ttl) || ttl <= 0) {
        throw new CacheConfigError('ttl', `must be a positive number of seconds, got ${String(ttl)}`);
      }
      ttlMs = Math.max(1, Math.round(ttl * 1000));
    }
    const rk = this.#names.redisKey(key);
    const v = str !== undefined ? str : buf;
    const inForce = this.#strategy;
    const t0 = mono();
    let sent;
    let via; // how the write went out: VIA_* (#settleWrite)
    let msg = null; // the invalidation, when sent by the script or on our own connection
    let flushMsg = null; // a flush owed, sent first on our own connection
    if (inForce === 'eager') {
      this.#inFlight++; // until Redis answers (#execWrite, or below)
      if (this.#own !== null && this.#ownRoute(true)) {
        // On our own connection (wconn.js). Heard by a separate subscriber, the script beats
        // SET + PUBLISH as two commands there (bench/own-floors.js, ~1.03x against ~1.15x a
        // SET): for a script Redis writes the reply before the subscriber's copy, so `set`
        // resolves before the copy wakes the subscription. With the subscription on this same
        // connection (ownSubscription) the copy comes in the reply's read either way, and the
        // two commands are the faster (bench/cache.js: ~1.0-1.05x against ~1.17-1.20x for the
        // script on that connection, interleaved; the script's PUBLISH to its own caller costs
        // Redis more).
        via = VIA_OWN;
        if (this.#mustFlush) flushMsg = this.#sender.flush(++this.#seq);
        msg = this.#sender.invalidateOne(rk, 'eager', ++this.#seq);
        if (this.#sub instanceof OwnSubscriber) {
          const parts = flushMsg === null
            ? [setPX(rk, v, ttlMs), publish(this.#invalHead, msg)]
            : [publish(this.#invalHead, flushMsg), setPX(rk, v, ttlMs), publish(this.#invalHead, msg)];
          sent = this.#own.send(join(parts), parts.length, -1, this.#db());
        } else {
          const call = evalSetPublish(this.#scriptParts, rk, v, ttlMs, msg);
          sent = flushMsg === null
            ? this.#own.send(call, 1, -1, this.#db())
            : this.#own.send(join([publish(this.#invalHead, flushMsg), call]), 2, -1, this.#db());
        }
      } else if (this.#mustFlush) {
        via = VIA_PIPE;
        const pipe = this.#redis.pipeline();
        const flushing = this.#addPendingFlush(pipe);
        pipe.set(rk, v, 'PX', ttlMs);
        pipe.publish(this.#names.invalidation, this.#sender.invalidate([rk], 'eager', ++this.#seq));
        sent = this.#execWrite(pipe, flushing);
      } else {
        // SET and PUBLISH in one script: one command and one reply, which in ioredis costs
        // about half of two commands (each reply is parsed and resolved in JS). Awaited below
        // directly: no promise of ours in between (one microtask hop fewer per write).
        via = VIA_SCRIPT;
        msg = this.#sender.invalidateOne(rk, 'eager', ++this.#seq);
        sent = this.#redis.evalsha(SET_PUBLISH_SHA, 1, rk, v, ttlMs, this.#names.invalidation, msg);
      }
      this.#invalSinceTick = true;
    } else if (this.#own !== null && this.#own.pending > 0 && this.#ownRoute(false)) {
      // Behind eager writes still in flight on our connection: after them, not past them.
      via = VIA_OWN_SET;
      sent = this.#own.send(setPX(rk, v, ttlMs), 1, -1, this.#db());
    } else {
      via = VIA_SET;
      sent = this.#redis.set(rk, v, 'PX', ttlMs);
    }
    if (via < VIA_OWN) this.#clientWrites++;
    // The policy hears of writes once per tick (#drainWrites), not per write: a call into the
    // engine per write cost ~15% of a loopback SET (measured: the key's TextEncoder buffer, the
    // u64 BigInt and the wasm transition), one call per tick costs nothing per write.
    // Under eager nothing is buffered and only time can take the policy down, so those writes
    // reach it as a count (wit/policy.wit, docs/WIRE.md 7): no key lowered into the guest.
    if (inForce === 'eager') this.#eagerWrites++;
    else this.#writeBuf.push(rk);
    if (inForce === 'batched') this.#batchedBuf.push(rk);
    if (this.#writeBuf.length >= WRITE_BUF_MAX && !this.#drainSoon) {
      this.#drainSoon = true;
      setImmediate(() => this.#drainWrites(Math.floor(mono())));
    }
    this.#unreported++;
    try {
      await sent;
      if (via < VIA_OWN) this.#clientWrites--;
    } catch (err) {
      if (via < VIA_OWN) this.#clientWrites--;
      // Returns only when the write went through after all (NOSCRIPT, a failed dial).
      via = await this.#setFailed(err, key, rk, v, ttlMs, via, msg, flushMsg);
    }
    if (via === VIA_SCRIPT || via === VIA_OWN) {
      this.#inFlight--;
      this.#c.messagesSent += flushMsg === null ? 1 : 2;
      if (flushMsg !== null) this.#mustFlush = false;
    }
    if (via >= VIA_OWN) this.#c.ownWrites++;
    this.#c.writes++;
    this.#l1.putOwn(key, str, buf, t0 + Math.min(this.#localTtlMs, ttlMs), t0);
  }

  // A write that failed: throws, with the L1 entry invalidated (the write may or may not have
  // happened: our copy cannot be trusted either way), and a flush owed when an invalidation of
  // ours may be lost. Or sends it again where that is safe and returns how it went out.
  async #setFailed(err, key, rk, v, ttlMs, via, msg, flushMsg) {
    try {
      if ((via === VIA_SCRIPT || via === VIA_OWN) && String(err?.message).startsWith('NOSCRIPT')) {
        // The server does not have the script (restarted, SCRIPT FLUSH): EVAL sends and caches
        // it. (A flush sent before the EVALSHA went through: it preceded the first error.)
        try {
          if (via === VIA_SCRIPT) await this.#redis.eval(SET_PUBLISH_LUA, 1, rk, v, ttlMs, this.#names.invalidation, msg);
          else await this.#own.send(encode(['EVAL', SET_PUBLISH_LUA, '1', rk, v, String(ttlMs), this.#names.invalidation, msg]), 1, -1, this.#db());
          return via;
        } catch (err2) {
          err = err2;
        }
      }
      if (err?.notSent === true && via === VIA_OWN) {
        // Our connection could not be opened: nothing was sent; the client sends it, the
        // messages as made (their seqs are taken). #execWrite settles #inFlight and the flush.
        const pipe = this.#redis.pipeline();
        if (flushMsg !== null) pipe.publish(this.#names.invalidation, flushMsg);
        pipe.set(rk, v, 'PX', ttlMs);
        pipe.publish(this.#names.invalidation, msg);
        await this.#execWrite(pipe, flushMsg !== null);
        return VIA_PIPE;
      }
      if (err?.notSent === true && via === VIA_OWN_SET) {
        await this.#redis.set(rk, v, 'PX', ttlMs);
        return VIA_SET;
      }
    } catch (err2) {
      // #execWrite has settled #inFlight and owes the flush.
      this.#l1.invalidate(key);
      throw err2;
    }
    if (via === VIA_SCRIPT || via === VIA_OWN) {
      // Whether the SET happened or not, the PUBLISH may not have: a flush is owed.
      this.#publishFailed();
      this.#inFlight--;
    }
    this.#l1.invalidate(key);
    throw err;
  }

  // Whether a write goes on our own connection (`prefer`: it would, all else equal). Writes
  // keep the order they were made in, as on one ioredis connection: while writes are in flight
  // on one path, the next goes the same way. The client's current db is followed (a SELECT
  // made on it replaces our connection); a client not ready keeps its own offline behaviour.
  #ownRoute(prefer) {
    const own = this.#own;
    if (this.#redis.status !== 'ready' || !own.usable) return false;
    if (own.pending > 0) return true;
    return prefer && this.#clientWrites === 0;
  }

  #db() {
    const s = this.#redis.condition?.select;
    return s ? Number(s) : 0;
  }

  /** Deletes `key` from Redis and tells the fleet at once, whatever the strategy. */
  async delete(key) {
    this.#checkRunning('delete');
    this.#names.checkKey(key);
    const rk = this.#names.redisKey(key);
    this.#l1.invalidate(key);
    this.#inFlight++;
    this.#invalSinceTick = true;
    let flushMsg = null;
    let msg = null;
    if (this.#own !== null && this.#ownRoute(true)) {
      if (this.#mustFlush) flushMsg = this.#sender.flush(++this.#seq);
      msg = this.#sender.invalidate([rk], 'eager', ++this.#seq);
      const parts = [del(rk), publish(this.#invalHead, msg)];
      if (flushMsg !== null) parts.unshift(publish(this.#invalHead, flushMsg));
      let n;
      try {
        n = await this.#own.send(parts.join(''), parts.length, flushMsg === null ? 0 : 1, this.#db());
      } catch (err) {
        if (err?.notSent !== true) {
          this.#publishFailed();
          this.#inFlight--;
          this.#l1.invalidate(key);
          throw err;
        }
      }
      if (n !== undefined) {
        this.#inFlight--;
        this.#c.messagesSent += parts.length - 1;
        if (flushMsg !== null) this.#mustFlush = false;
        this.#c.ownWrites++;
        this.#l1.invalidate(key);
        this.#c.deletes++;
        return n > 0;
      }
      // Our connection could not be opened (nothing sent): through the client, as made.
    }
    const pipe = this.#redis.pipeline();
    let flushing;
    if (msg !== null) {
      flushing = flushMsg !== null;
      if (flushing) pipe.publish(this.#names.invalidation, flushMsg);
    } else {
      flushing = this.#addPendingFlush(pipe);
      msg = this.#sender.invalidate([rk], 'eager', ++this.#seq);
    }
    pipe.del(rk);
    pipe.publish(this.#names.invalidation, msg);
    this.#clientWrites++;
    let res;
    try {
      res = await this.#execWrite(pipe, flushing);
    } catch (err) {
      this.#l1.invalidate(key);
      throw err;
    } finally {
      this.#clientWrites--;
    }
    // A fill may have read the value just before the DEL.
    this.#l1.invalidate(key);
    this.#c.deletes++;
    return res[flushing ? 1 : 0][1] > 0;
  }

  /**
   * Drops this namespace's data from Redis (SCAN + UNLINK of `<prefix>:<namespace>:*`, never
   * another service's keys) and every instance's L1 (one `flush` message). Needs a namespace:
   * without one, this cache's keys cannot be told apart from anything else in the database.
   * Keys written while the scan runs may survive it.
   */
  async flush() {
    this.#checkRunning('flush');
    this.#l1.flush();
    if (this.#names.namespace === null) {
      // The original package's flush() (FLUSHDB): without a namespace this cache cannot tell
      // its keys from anyone else's, and its users rely on the database being emptied.
      await this.#redis.flushdb();
    } else {
      const match = `${this.#names.keyPrefix}*`;
      let cursor = '0';
      do {
        const [next, keys] = await this.#redis.scan(cursor, 'MATCH', match, 'COUNT', 1000);
        cursor = next;
        if (keys.length) await this.#redis.unlink(...keys);
      } while (cursor !== '0');
    }
    const pipe = this.#redis.pipeline();
    this.#inFlight++;
    const flushing = this.#addPendingFlush(pipe);
    pipe.publish(this.#names.invalidation, this.#sender.flush(++this.#seq));
    this.#invalSinceTick = true;
    await this.#execWrite(pipe, flushing, 0);
    this.#l1.flush();
    this.#c.flushes++;
  }

  /** Drops this instance's L1 only (Redis and other instances untouched). */
  flushLocal() {
    this.#l1.flush();
    this.#c.flushes++;
  }

  // ---- publishing ------------------------------------------------------------------------------

  // After a failed publish, receivers may have missed invalidations: the next message on the
  // invalidation channel is a flush (WIRE.md 4). Returns whether one was added.
  #addPendingFlush(pipe) {
    if (!this.#mustFlush) return false;
    pipe.publish(this.#names.invalidation, this.#sender.flush(++this.#seq));
    return true;
  }

  // Runs a pipeline that publishes invalidations, counted in #inFlight by the caller before it
  // took their seqs; any failure there means a flush is owed.
  async #execWrite(pipe, flushing, commands = 1) {
    let res;
    try {
      res = await pipe.exec();
      for (const [err] of res) {
        if (err) throw err;
      }
    } catch (err) {
      this.#publishFailed();
      throw err;
    } finally {
      this.#inFlight--;
    }
    const n = res.length;
    if (flushing) this.#mustFlush = false;
    this.#c.messagesSent += n - commands; // every other command is a PUBLISH
    return res;
  }

  // Feeds the writes made since the last call to the policy, in one call. Writes made while
  // `batched` was in force rely on the policy's batch: if the policy was not in `batched` for
  // the whole call (within one call at one time the rate only rises, so a switch can only be
  // upward), some of them were not buffered, and the host publishes them itself next tick.
  #drainWrites(now) {
    this.#drainSoon = false;
    const keys = this.#writeBuf;
    if (this.#eagerWrites > 0) {
      const n = Math.min(this.#eagerWrites, MAX_U32);
      this.#eagerWrites = 0;
      this.#noteStrategy(this.#rt.recordRemoteWrites(n, now));
    }
    if (keys.length === 0) return;
    const batched = this.#batchedBuf;
    this.#writeBuf = [];
    this.#batchedBuf = [];
    const rt = this.#rt;
    const before = batched.length ? rt.currentStrategy(now) : null;
    // One write: the single-key call (no list to lower into the guest's memory).
    const after = keys.length === 1 ? rt.recordWrite(keys[0], now) : rt.recordWrites(keys, now);
    if (batched.length && (before !== 'batched' || after !== 'batched')) {
      if (this.#orphans.length + batched.length > MAX_ORPHANS) this.#orphanFlush = true;
      else for (const k of batched) this.#orphans.push(k);
    }
    this.#noteStrategy(after);
  }

  #publishFailed() {
    this.#mustFlush = true;
    this.#c.publishFailures++;
  }

  // The inval_seq a mark, strategy_update or write_report may announce (docs/WIRE.md 4): a seq
  // whose publish, and every earlier one, Redis has answered. A seq still in flight (a write's
  // script call behind a slow node or another connection) could reach receivers after the
  // position naming it, and past the reorder allowance they would flush for a loss that is not
  // one. Every seq is taken while its publish is counted in #inFlight, so with none in flight
  // all of them are settled; otherwise the last position so obtained.
  #position() {
    if (this.#inFlight === 0) this.#settled = this.#seq;
    return this.#settled;
  }

  // Runs a pipeline of `n` messages (tick, stop).
  async #exec(pipe, n, carriesInvalidations) {
    let res;
    try {
      res = await pipe.exec();
    } catch (err) {
      if (carriesInvalidations) this.#publishFailed();
      throw err;
    }
    for (const [err] of res) {
      if (err) {
        if (carriesInvalidations) this.#publishFailed();
        throw err;
      }
    }
    this.#c.messagesSent += n;
  }

  // Adds the messages that publish a drained batch; returns how many.
  #addBatch(pipe, batch) {
    if (batch.flushAll) {
      pipe.publish(this.#names.invalidation, this.#sender.flush(++this.#seq));
      this.#invalSinceTick = true;
      return 1;
    }
    let n = 0;
    for (let i = 0; i < batch.keys.length; i += KEYS_PER_MESSAGE) {
      const chunk = batch.keys.slice(i, i + KEYS_PER_MESSAGE);
      pipe.publish(this.#names.invalidation, this.#sender.invalidate(chunk, 'batched', ++this.#seq));
      this.#invalSinceTick = true;
      n++;
    }
    return n;
  }

  // ---- strategy --------------------------------------------------------------------------------

  #noteStrategy(s) {
    if (s === this.#strategy) return;
    const from = this.#strategy;
    this.#strategy = s;
    if (this.#switches.length >= MAX_SWITCH_HISTORY) this.#switches.shift();
    this.#switches.push({ timestamp: Date.now() / 1000, from, to: s });
    if (this.#isController && this.#state === 'running' && s !== this.#announced) {
      // The fleet hears of a change at once, not at the next tick.
      setImmediate(() => this.#runTick());
    }
    for (const cb of this.#switchCbs) {
      // Outside the caller's stack, so a callback cannot break a write or the tick.
      queueMicrotask(() => {
        try {
          cb(from, s);
        } catch (err) {
          this.#log.warn(`aci-cache ${this.id}: onSwitch callback threw: ${err?.message ?? err}`);
        }
      });
    }
  }

  #becomeController(now) {
    if (this.#isController) return;
    this.#isController = true;
    const rt = this.#rt;
    // A new controller has measured only its own writes: prime it with the fleet rate the last
    // one announced, so a takeover under load does not switch down for lack of history.
    const primed = Math.round(this.#writeRate * (rt.windowMs / 1000));
    if (primed >= 1) rt.recordRemoteWrites(Math.min(primed, MAX_U32), now);
    rt.lead(now);
    this.#lastStrategyUpdate = -Infinity; // announce at once
    this.#noteStrategy(rt.currentStrategy(now));
  }

  #becomeFollower(now, first = false) {
    const was = this.#isController;
    this.#isController = false;
    if (was || first || this.#rt.following === null) {
      // Until a controller is heard: eager, the one strategy that never leaves readers stale.
      this.#rt.follow('eager', now);
      this.#noteStrategy('eager');
      this.#lastControllerNews = mono();
    }
  }

  async #tryLease() {
    const lease = this.#names.lease;
    const ms = Math.max(1, Math.round(this.#o.controllerInterval * 1000));
    if (this.#isController) {
      const renewed = await this.#redis.eval(RENEW_LUA, 1, lease, this.id, ms);
      if (renewed === 1) return true;
    }
    const took = await this.#redis.set(lease, this.id, 'PX', ms, 'NX');
    return took === 'OK';
  }

  // ---- subscription ----------------------------------------------------------------------------

  #channels() {
    return [this.#names.invalidation, this.#names.strategy, this.#names.liveness, this.#names.policy];
  }

  // (Re)subscribes; on success the detector forgets every sender and L1 serves again, empty.
  async #subscribe() {
    const attempt = ++this.#subAttempt;
    this.#subInFlight = true;
    try {
      const chans = this.#channels();
      if (this.#isController) chans.push(this.#names.reports);
      await this.#sub.subscribe(...chans);
      this.#reportsSubscribed = this.#isController;
    } catch (err) {
      this.#subInFlight = false;
      if (attempt !== this.#subAttempt || this.#state === 'stopped') return;
      this.#log.warn(`aci-cache ${this.id}: subscribe failed: ${err.message}; retrying`);
      this.#scheduleResubscribe();
      return;
    }
    this.#subInFlight = false;
    if (attempt !== this.#subAttempt || this.#state === 'stopped') return;
    if (this.#subscribed) return;
    if (this.#c.flushes > 0 || this.#lastHeard > 0) {
      this.#c.resubscribes++;
      this.#follower?.resubscribed(); // an announcement may have been lost meanwhile
    }
    this.#subBackoff = 50;
    this.#detector.resubscribed();
    this.#lagging = false;
    this.#subscribed = true;
    this.#lastHeard = mono();
    this.#l1.resume();
    this.#c.flushes++;
    for (const w of this.#subWaiters.splice(0)) w();
  }

  #scheduleResubscribe() {
    if (this.#state === 'stopped') return;
    clearTimeout(this.#subTimer);
    const wait = jitter(this.#subBackoff);
    this.#subBackoff = Math.min(5000, this.#subBackoff * 2);
    this.#subTimer = setTimeout(() => {
      this.#subTimer = null;
      if (this.#sub.status === 'ready') this.#subscribe();
      // otherwise the client's reconnect ends in 'ready', which subscribes
    }, wait);
    this.#subTimer.unref?.();
  }

  #down(why) {
    if (this.#subscribed) {
      this.#log.warn(`aci-cache ${this.id}: subscription lost (${why}): L1 suspended, resubscribing`);
    }
    this.#subscribed = false;
    this.#reportsSubscribed = false;
    this.#subAttempt++;
    this.#l1.suspend();
  }

  #onSubDown = () => {
    if (this.#state === 'stopped') return;
    this.#down('connection closed');
  };

  #onSubReady = () => {
    if (this.#state === 'stopped' || this.#state === 'new') return;
    this.#subscribe();
  };

  #onSubError = () => {
    // ioredis reconnects by itself and the 'close' handler suspended L1; this listener only
    // keeps the error from being reported as unhandled.
    this.#c.subscriptionErrors++;
  };

  #onMessage = (channel, payload) => {
    try {
      this.#handle(channel, payload);
    } catch (err) {
      // Nothing a message contains may take the process down; this is a bug if it happens.
      this.#log.warn(`aci-cache ${this.id}: error handling a message: ${err?.stack ?? err}`);
    }
  };

  #handle(channel, payload) {
    const c = this.#c;
    c.pubsubReceived++;
    const now = mono();
    this.#lastHeard = now;
    if (!this.#readOpen && this.#ownBatchDelayMs > 0) {
      // The first message of a socket read: ioredis emits the read's messages synchronously, so
      // a microtask runs once they all have been handled.
      this.#readOpen = true;
      this.#readOwnOnly = true;
      this.#readOwnInval = false;
      queueMicrotask(this.#afterRead);
    }
    const pc = this.#policyChan;
    if (channel.length === pc.length && channel.equals(pc)) {
      this.#readOwnOnly = false;
      this.#onAnnouncement(payload);
      return;
    }
    // Our own messages (every eager write comes back to us) end with our constant tail: only
    // their timestamp matters (lag), so they skip the full decode.
    const tail = this.#ownTail;
    if (payload.length > tail.length && payload.compare(tail, 0, tail.length, payload.length - tail.length) === 0) {
      if (!this.#readOwnInval && channel.length === this.#invalChan.length && channel.equals(this.#invalChan)) this.#readOwnInval = true;
      const at = payload.indexOf(TIMESTAMP);
      if (at >= 0) {
        const ts = parseFloat(payload.toString('latin1', at + TIMESTAMP.length, Math.min(payload.length, at + TIMESTAMP.length + 32)));
        if (Number.isFinite(ts)) this.#checkLag(Date.now() / 1000 - ts);
      }
      return;
    }
    this.#readOwnOnly = false;
    const m = decode(payload);
    if (m.malformed !== undefined) {
      this.#malformed(m.malformed, payload.length);
      return;
    }
    if (m.source === this.id) {
      if (m.epoch === this.#sender.epoch) this.#checkLag(Date.now() / 1000 - m.timestamp);
      return;
    }
    c.messagesReceived++;
    const t = Math.floor(now);
    const d = this.#detector;
    switch (m.action) {
      case 'invalidate': {
        const l1 = this.#l1;
        const names = this.#names;
        for (const rk of m.keys) {
          const k = names.userKey(rk);
          if (k !== undefined) l1.invalidate(k);
        }
        c.invalidationsApplied += m.keys.length;
        if (m.seq !== null && d.message(m.source, m.epoch, m.seq, t) === LOST) this.#lost('sequence gap or sender restart');
        break;
      }
      case 'flush':
        this.#l1.flush();
        c.flushes++;
        if (m.seq !== null && d.message(m.source, m.epoch, m.seq, t) === LOST) this.#lost('sender restart');
        break;
      case 'mark':
        if (d.position(m.source, m.epoch, m.inval_seq, t) === LOST) this.#lost('sender restart');
        break;
      case 'strategy_update':
        if (m.inval_seq !== null && d.position(m.source, m.epoch, m.inval_seq, t) === LOST) this.#lost('sender restart');
        // Two controllers can overlap for one lease period after a takeover: ours decides.
        if (this.#isController) break;
        this.#lastControllerNews = now;
        this.#writeRate = m.write_rate;
        this.#rt.follow(m.strategy, t);
        this.#noteStrategy(m.strategy);
        break;
      case 'write_report':
        if (m.inval_seq !== null && d.position(m.source, m.epoch, m.inval_seq, t) === LOST) this.#lost('sender restart');
        if (this.#isController) this.#remoteWrites = Math.min(SAFE, this.#remoteWrites + m.count);
        break;
      default: // heartbeat: another instance's, on our liveness channel? Nothing to do.
    }
  }

  // `ownBatchDelay` (docs/WIRE.md 5): after a read that brought only our own messages, one of
  // them an invalidation (this instance is writing), leave our own subscription socket unread
  // that long, so the kernel gathers the next ones and the event loop wakes once per batch of
  // writes rather than once per write. Another instance's message may wait that long (at most
  // 5 ms, a hundredth of max_lag); our own still measure the lag, the pause included. Off by
  // default: see README "Eager writes" (slower on a quiet machine). The reading stops in the
  // kernel (the handle's readStop, as net.Socket's own pause does for a socket it buffers for),
  // so no wake-up, read or parse happens per write meanwhile; a Readable pause() would still
  // read every message into the stream's buffer. A connection the user passed
  // (`pubsubRedis`) is not ours to pause.
  #afterRead = () => {
    this.#readOpen = false;
    if (!this.#readOwnOnly || !this.#readOwnInval || !this.#ownSub || this.#pauseTimer !== null) return;
    if (this.#state !== 'running') return;
    const s = this.#sub.stream;
    const h = s?._handle;
    if (!h || s.destroyed || h.reading !== true || typeof h.readStop !== 'function' || typeof h.readStart !== 'function') return;
    h.reading = false;
    if (h.readStop() !== 0) {
      h.reading = true;
      return;
    }
    this.#c.subscriptionPauses++;
    this.#pausedSock = s;
    this.#pauseTimer = setTimeout(this.#resumeSub, this.#ownBatchDelayMs);
  };

  #resumeSub = () => {
    clearTimeout(this.#pauseTimer);
    this.#pauseTimer = null;
    const s = this.#pausedSock;
    this.#pausedSock = null;
    const h = s?._handle;
    // A socket closed meanwhile is ioredis's to replace; its successor was never paused.
    if (!h || s.destroyed || h.reading) return;
    h.reading = true;
    if (h.readStart() !== 0) s.destroy(new Error('aci-cache: resuming the subscription socket failed'));
  };

  #malformed(kind, bytes) {
    this.#c.malformed++;
    if (!this.#malformedSeen.has(kind)) {
      this.#malformedSeen.add(kind);
      this.#log.warn(`aci-cache ${this.id}: malformed message ignored (${kind}, ${bytes} bytes; logged once per kind)`);
    }
  }

  // P:policy: only a hint to read the record (docs/WIRE.md 9.3).
  #onAnnouncement(payload) {
    const m = decodePolicy(payload);
    if (m.malformed !== undefined) {
      this.#malformed(m.malformed, payload.length);
      return;
    }
    if (m.source !== this.id) this.#c.messagesReceived++;
    this.#follower?.announcement(m.rollout);
  }

  #lost(why) {
    this.#c.gaps++;
    this.#c.flushes++;
    this.#l1.flush();
    this.#log.warn(`aci-cache ${this.id}: invalidation loss detected (${why}): L1 flushed`);
  }

  // Our own messages, stamped by our own clock, tell how far behind the subscription is.
  #checkLag(lagS) {
    const max = this.#o.maxLag;
    if (lagS > max) {
      if (!this.#lagging) {
        this.#lagging = true;
        this.#c.lagSuspensions++;
        this.#l1.suspend();
        this.#log.warn(`aci-cache ${this.id}: subscription lagging ${Math.round(lagS * 1000)} ms: L1 suspended`);
      }
    } else if (this.#lagging && lagS < max / 2) {
      this.#lagging = false;
      if (this.#subscribed) this.#l1.resume();
    }
  }

  async #subscribeReports(on) {
    if (this.#reportsSubscribed === on || !this.#subscribed) return;
    try {
      if (on) await this.#sub.subscribe(this.#names.reports);
      else await this.#sub.unsubscribe(this.#names.reports);
      this.#reportsSubscribed = on;
    } catch (err) {
      this.#log.warn(`aci-cache ${this.id}: ${on ? '' : 'un'}subscribing ${this.#names.reports}: ${err.message}`);
    }
  }

  // ---- the tick --------------------------------------------------------------------------------

  #runTick() {
    if (this.#state !== 'running') return;
    // The checks that protect readers run on every tick, even while the previous tick's
    // commands are stuck behind an unreachable Redis.
    try {
      this.#checks();
    } catch (err) {
      this.#log.warn(`aci-cache ${this.id}: tick checks failed: ${err?.stack ?? err}`);
    }
    this.#follower?.kick();
    if (this.#ticking) return;
    this.#ticking = this.#tick()
      .catch((err) => {
        this.#log.warn(`aci-cache ${this.id}: tick failed: ${err.message}; retrying next tick`);
      })
      .finally(() => {
        this.#ticking = null;
      });
  }

  #checks() {
    const o = this.#o;
    const now = mono();
    if (this.#subscribed && now - this.#lastHeard > o.livenessTimeout * 1000) {
      this.#down('no message within the liveness timeout');
      // Drop the connection: ioredis reconnects (with backoff) and 'ready' resubscribes.
      this.#sub.disconnect(true);
    } else if (!this.#subscribed && this.#sub.status === 'ready' && this.#subTimer === null && !this.#subInFlight) {
      // Connected but not subscribed (a failed SUBSCRIBE, a missed 'ready'): retry with backoff.
      this.#scheduleResubscribe();
    }
    const t = Math.floor(now);
    if (this.#detector.tick(t) === LOST) this.#lost('sequence gap not filled in time');
    if (!this.#isController && now - this.#lastControllerNews > o.controllerInterval * 1000 && this.#strategy !== 'eager') {
      this.#rt.follow('eager', t);
      this.#c.controllerLost++;
      this.#noteStrategy('eager');
      this.#log.warn(`aci-cache ${this.id}: no controller heard for ${o.controllerInterval} s: following eager`);
    }
  }

  async #tick() {
    const o = this.#o;
    let now;
    if (o.role === 'auto' && this.#state === 'running') {
      let holds = this.#isController;
      try {
        holds = await this.#tryLease();
      } catch (err) {
        // Cannot reach Redis: whoever we were stays (the lease expires by itself).
        this.#log.warn(`aci-cache ${this.id}: controller lease: ${err.message}`);
      }
      if (this.#state !== 'running') return;
      const t = Math.floor(mono());
      if (holds) this.#becomeController(t);
      else this.#becomeFollower(t);
    }
    await this.#subscribeReports(this.#isController);
    if (this.#state !== 'running') return;
    now = mono();
    const t = Math.floor(now);
    const controller = this.#isController;
    const rt = this.#rt;
    this.#drainWrites(t);
    if (controller && this.#remoteWrites > 0) {
      // At most 2^32-1 per tick, in one call: nothing here scales with a number read off the wire.
      const n = Math.min(this.#remoteWrites, MAX_U32);
      this.#remoteWrites = 0;
      rt.recordRemoteWrites(n, t);
    }
    const status = rt.status(t);
    const batch = status.batchDue ? rt.pendingBatch(t) : null;
    if (controller) this.#writeRate = status.writeRate;
    this.#noteStrategy(status.strategy);

    // Read before this tick takes seqs of its own for its batch.
    const position = this.#position();
    const pipe = this.#redis.pipeline();
    let n = 0;
    let inval = false;
    this.#inFlight++; // this tick's invalidations, if it has any, until Redis answers them
    if (this.#mustFlush && this.#addPendingFlush(pipe)) {
      n++;
      inval = true;
    }
    if (this.#orphanFlush || this.#orphans.length) {
      n += this.#addBatch(pipe, { keys: [...new Set(this.#orphans)], flushAll: this.#orphanFlush });
      this.#orphans = [];
      this.#orphanFlush = false;
      inval = true;
    }
    if (batch && (batch.flushAll || batch.keys.length)) {
      n += this.#addBatch(pipe, batch);
      inval = true;
    }
    if (!inval) this.#inFlight--;
    // A sender gone quiet announces its last seq once, so a lost last message is noticed.
    let mark = 0;
    if (!this.#invalSinceTick && !inval && position > this.#marked) {
      pipe.publish(this.#names.invalidation, this.#sender.mark(position));
      mark = position;
      n++;
    }
    this.#invalSinceTick = false;
    if (controller) {
      this.#unreported = 0; // our own writes went to our policy directly
      if (status.strategy !== this.#announced || now - this.#lastStrategyUpdate >= HEARTBEAT_MS) {
        pipe.publish(this.#names.strategy, this.#sender.strategyUpdate(status.strategy, status.writeRate, position));
        this.#announced = status.strategy;
        this.#lastStrategyUpdate = now;
        n++;
      }
    } else if (this.#unreported > 0) {
      const count = Math.min(this.#unreported, MAX_U32);
      this.#unreported = 0;
      pipe.publish(this.#names.reports, this.#sender.writeReport(count, position));
      n++;
    }
    if (now - this.#lastHeartbeat >= HEARTBEAT_MS) {
      pipe.publish(this.#names.liveness, this.#sender.heartbeat());
      this.#lastHeartbeat = now;
      n++;
    }
    if (n === 0) return;
    const flushing = this.#mustFlush;
    try {
      await this.#exec(pipe, n, inval);
    } finally {
      if (inval) this.#inFlight--;
    }
    if (flushing) this.#mustFlush = false;
    // Only once sent: a failed mark is sent again next tick (docs/WIRE.md 4).
    if (mark > this.#marked) this.#marked = mark;
  }
}

function withTimeout(promise, ms, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: no answer from Redis within ${ms} ms`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

function jitter(ms) {
  return Math.round(ms / 2 + Math.random() * (ms / 2 + 1));
}

function sleep(ms) {
  return new Promise((resolve) => {
    const t = setTimeout(resolve, ms);
    t.unref?.();
  });
}
