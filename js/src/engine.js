// The policy as the cache uses it: one instance behind the fault rules of docs/WIRE.md section 7.
//
// A policy is untrusted. Every call runs metered (src/meter.js: a trap once the call has spent
// its budget; a 32 MiB memory cap), so a looping policy cannot hang the event loop. A fault (a
// trap, a result outside the contract, a batch over the cap) makes the runtime answer `eager`
// for one window, count the fault, and take a fresh instance (configured and following as
// before) on the next call after that; after 3 faults in a row it waits window x 2^n (n capped
// at 6). Keys the dead instance buffered are lost, so the next drain asks for a flush.
//
// Instances are created asynchronously (jco's glue), so a spare one is always kept ready: taking
// a fresh instance after a fault is synchronous.

import { PolicyModule, policyModule, STRATEGIES } from './policy.js';

const MAX_U32 = 0xffffffff;

export class PolicyFault extends Error {
  constructor(message, options) {
    super(message, options);
    this.name = 'PolicyFault';
  }
}

export class PolicyRuntime {
  #spec;
  #opts;
  #cfg;
  #p = null;
  #spare = null;
  #sparePending = null;
  #following = null; // null: leading; else the strategy followed
  #faultedAt = -Infinity;
  #retryAt = 0;
  #inRow = 0;
  #lostKeys = false;
  #lastRate = 0;
  #onFault;
  faults = 0;
  lastFault = null;
  describe = null;
  /** Where the policy came from: { name, component, sha256, genDir, metered }. */
  source = null;

  /**
   * @param spec policy name or component path (see loadPolicy), or a PolicyModule
   * @param overrides fields of the policy config to change from its defaults
   * @param onFault called with (error) on each fault (for logs)
   */
  static async create(spec, overrides, { onFault, policyDir } = {}) {
    const rt = new PolicyRuntime(spec instanceof PolicyModule ? spec : await policyModule(spec, { policyDir }), {}, onFault);
    const p = await rt.#load();
    rt.source = p.source;
    rt.#cfg = { ...p.defaultConfig(), ...overrides };
    p.configure(rt.#cfg, 0); // a bad override throws ConfigError here, at start
    rt.#p = p;
    rt.describe = p.describe();
    rt.#refill();
    return rt;
  }

  constructor(spec, opts, onFault) {
    this.#spec = spec;
    this.#opts = opts;
    this.#onFault = onFault;
  }

  get config() {
    return this.#cfg;
  }

  get windowMs() {
    return this.#cfg.windowMs;
  }

  get following() {
    return this.#following;
  }

  /** The compiled module instances come from (a swap back to this policy needs no compile). */
  get module() {
    return this.#spec;
  }

  #load() {
    return this.#spec.instantiate();
  }

  // Keeps one configured instance ready for the next fault.
  #refill() {
    if (this.#spare || this.#sparePending) return;
    this.#sparePending = this.#load()
      .then((p) => {
        p.configure(this.#cfg, 0);
        this.#spare = p;
      })
      .catch((err) => {
        this.#onFault?.(new PolicyFault(`cannot make a spare policy instance: ${err.message}`, { cause: err }));
      })
      .finally(() => {
        this.#sparePending = null;
      });
  }

  /** Resolves once a spare instance is ready (tests). */
  async ready() {
    this.#refill();
    await this.#sparePending;
  }

  // The live instance, or null while faulted (the caller answers eager).
  #live(now) {
    if (this.#p) return this.#p;
    if (now < this.#retryAt || !this.#spare) {
      this.#refill();
      return null;
    }
    const p = this.#spare;
    this.#spare = null;
    try {
      // Instances are configured with now = 0; a clock that starts later is fine (the policy
      // only compares times it was given).
      if (this.#following) p.follow(this.#following, now);
      else p.lead(now);
    } catch (err) {
      this.#fault(err, now);
      return null;
    }
    this.#p = p;
    this.#refill();
    return p;
  }

  #fault(err, now) {
    this.faults++;
    this.lastFault = err;
    this.#p = null;
    this.#lostKeys = true;
    // "In a row": no window went by without a fault since the previous one.
    this.#inRow = now - this.#faultedAt <= 2 * this.#cfg.windowMs * 2 ** Math.min(this.#inRow, 6) ? this.#inRow + 1 : 1;
    this.#faultedAt = now;
    const n = this.#inRow >= 3 ? Math.min(this.#inRow - 2, 6) : 0;
    this.#retryAt = now + this.#cfg.windowMs * 2 ** n;
    this.#refill();
    this.#onFault?.(err instanceof PolicyFault ? err : new PolicyFault(`policy fault: ${err?.message ?? err}`, { cause: err }));
  }

  // Runs fn on the live instance; a throw (trap, glue error) or a bad result is a fault.
  #call(now, fn, check, fallback) {
    const p = this.#live(now);
    if (!p) return fallback();
    let r;
    try {
      r = fn(p);
    } catch (err) {
      this.#fault(err, now);
      return fallback();
    }
    const why = check ? check(r) : null;
    if (why) {
      this.#fault(new PolicyFault(why), now);
      return fallback();
    }
    return r;
  }

  recordWrite(key, now) {
    return this.#call(now, (p) => p.recordWrite(key, now), checkStrategy, eager);
  }

  /** Counts the writes of `keys` (one call for many writes). */
  recordWrites(keys, now) {
    return this.#call(now, (p) => p.recordWrites(keys, now), checkStrategy, eager);
  }

  recordRemoteWrites(count, now) {
    const n = Math.min(Math.max(0, Math.floor(count)), MAX_U32);
    if (n === 0) return this.currentStrategy(now);
    return this.#call(now, (p) => p.recordRemoteWrites(n, now), checkStrategy, eager);
  }

  currentStrategy(now) {
    return this.#call(now, (p) => p.currentStrategy(now), checkStrategy, eager);
  }

  /** { strategy, writeRate, bufferedKeys, batchDue, switches, following } */
  status(now) {
    const s = this.#call(now, (p) => p.status(now), (s) => checkStrategy(s.strategy) ?? checkRate(s.writeRate), () => ({
      strategy: 'eager',
      writeRate: this.#lastRate,
      bufferedKeys: 0,
      batchDue: this.#lostKeys,
      switches: 0,
      following: this.#following !== null,
    }));
    if (this.#lostKeys) s.batchDue = true;
    this.#lastRate = s.writeRate;
    return s;
  }

  /** { keys, flushAll }: flushAll when keys were lost with a faulted instance. */
  pendingBatch(now) {
    const cap = Math.max(1, this.#cfg.batchMaxKeys);
    const b = this.#call(
      now,
      (p) => p.pendingBatch(now),
      (b) => (Array.isArray(b.keys) && b.keys.length > cap ? `the policy returned a batch of ${b.keys.length} keys, over its cap of ${cap}` : null),
      () => ({ keys: [], flushAll: false }),
    );
    if (this.#lostKeys) {
      this.#lostKeys = false;
      return { keys: [], flushAll: true };
    }
    return b;
  }

  follow(strategy, now) {
    this.#following = strategy;
    this.#call(now, (p) => p.follow(strategy, now), null, () => undefined);
  }

  lead(now) {
    this.#following = null;
    this.#call(now, (p) => p.lead(now), null, () => undefined);
  }

  /** Everything buffered, made due now (stop). */
  drainAll(now) {
    this.follow('eager', now);
    return this.pendingBatch(now);
  }
}

const eager = () => 'eager';

function checkStrategy(s) {
  return STRATEGIES.includes(s) ? null : `the policy returned ${JSON.stringify(s)}, not a strategy`;
}

function checkRate(r) {
  return typeof r === 'number' && !Number.isNaN(r) ? null : `the policy returned a write rate of ${r}`;
}
