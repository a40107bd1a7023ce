// Following policy rollouts (docs/WIRE.md section 9): the rollout record, trust and signatures,
// fetching a pushed component, swapping it in, the automatic rollback and status records.
//
// Everything a record or a component holds is untrusted input: each field is checked before use,
// fetches are bounded, and a refusal is a reason in the status record, never a throw into the
// user's process and never a change of the running policy. Fetching and compiling run off the
// tick and off the event loop (src/policy.js compiles in a worker thread); the swap itself is
// one synchronous step of the cache (src/cache.js #swapRuntime), so every write is recorded by
// exactly one of the two instances.

import { createPublicKey, verify } from 'node:crypto';
import { CacheConfigError } from './config.js';
import { CONFIG_FIELDS, ConfigError, HashMismatch, STRATEGIES, compiledComponent, loadComponent } from './policy.js';

/** A pushed component larger than this is refused (WIRE.md 9.1). */
export const MAX_COMPONENT_BYTES = 4 << 20;
export const MAX_CONFIG_BYTES = 4096;
const MAX_CANARY = 1000;
/** A host reads the record at least this often (WIRE.md 9.3). */
export const RECHECK_MS = 10_000;
/** Status records live this long and are rewritten every heartbeat (WIRE.md 9.8). */
export const STATUS_PX = 3000;
const STATUS_EVERY_MS = 1000;
const MAX_SAFE = Number.MAX_SAFE_INTEGER;
const HASH_RE = /^[0-9a-f]{64}$/;
const SIG_RE = /^[0-9a-f]{128}$/;
const ROLLOUT_RE = /^[1-9][0-9]{0,15}$/;
const ID_RE = /^[A-Za-z0-9_-]{1,64}$/;
const utf8 = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });

/** The compare-and-set every writer of the record uses (WIRE.md 9.2), byte for byte. */
export const CAS_LUA = `local cur = redis.call('HGET', KEYS[1], 'rollout')
if (cur or '0') ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], unpack(ARGV, 4))
redis.call('PUBLISH', ARGV[2], ARGV[3])
return 1
`;

/** The rollout record has an invalid field (the whole record is refused); `field` names it. */
export class RecordError extends Error {
  constructor(field, message) {
    super(`${field}: ${message}`);
    this.name = 'RecordError';
    this.field = field;
  }
}

/** The target "the local policy". */
export const LOCAL = Object.freeze({ sha256: '', config: '', sig: '' });

const clip = (s, n) => {
  const t = String(s);
  if (t.length <= n) return t;
  return [...t].slice(0, n).join('');
};
const chars = (s) => (s.length > 64 ? [...s].length : s.length); // code points, as Python and Rust count

/** A record's `rollout` field: 1 .. 2^53-1 in canonical decimal, else RecordError. */
export function parseRollout(v) {
  const s = typeof v === 'string' ? v : Buffer.isBuffer(v) ? v.toString('latin1') : String(v);
  if (!ROLLOUT_RE.test(s) || Number(s) > MAX_SAFE) {
    throw new RecordError('rollout', `not an integer in 1..2^53-1: ${JSON.stringify(s.slice(0, 40))}`);
  }
  return Number(s);
}

/**
 * The record from the fields of an `HGETALL` (strings, or Buffers), or null when there is none.
 * Throws RecordError naming the first invalid field (WIRE.md 9.2).
 */
export function parseRecord(raw) {
  if (raw == null) return null;
  const keys = Object.keys(raw);
  if (keys.length === 0) return null;
  const h = Object.create(null);
  for (const k of keys) {
    const v = raw[k];
    if (typeof v === 'string') h[k] = v;
    else {
      try {
        h[k] = utf8.decode(v);
      } catch {
        throw new RecordError('record', 'not UTF-8');
      }
    }
  }
  if (!('rollout' in h)) throw new RecordError('rollout', 'missing');
  const rollout = parseRollout(h.rollout);
  const get = (name) => h[name] ?? '';
  const hash = (name) => {
    const v = get(name);
    if (v && !HASH_RE.test(v)) throw new RecordError(name, 'not 64 lowercase hex characters');
    return v;
  };
  const sig = (name) => {
    const v = get(name);
    if (v && !SIG_RE.test(v)) throw new RecordError(name, 'not 128 lowercase hex characters');
    return v;
  };
  const config = (name) => {
    const v = get(name);
    if (v) {
      if (Buffer.byteLength(v, 'utf8') > MAX_CONFIG_BYTES) throw new RecordError(name, `over ${MAX_CONFIG_BYTES} bytes`);
      let obj;
      try {
        obj = JSON.parse(v);
      } catch {
        throw new RecordError(name, 'not JSON');
      }
      if (obj === null || typeof obj !== 'object' || Array.isArray(obj)) throw new RecordError(name, 'not a JSON object');
    }
    return v;
  };
  for (const [name, cap] of [['name', 64], ['version', 64], ['by', 200], ['reason', 200]]) {
    if (chars(get(name)) > cap) throw new RecordError(name, `over ${cap} characters`);
  }
  const target = Object.freeze({ sha256: hash('sha256'), config: config('config'), sig: sig('sig') });
  const previous = Object.freeze({ sha256: hash('previous'), config: config('previous_config'), sig: sig('previous_sig') });
  let canary = [];
  const c = get('canary');
  if (c) {
    canary = c.split(',');
    if (canary.length > MAX_CANARY) throw new RecordError('canary', `over ${MAX_CANARY} instance ids`);
    for (const id of canary) {
      if (!ID_RE.test(id)) throw new RecordError('canary', `${JSON.stringify(id.slice(0, 70))} is not an instance id`);
    }
  }
  return { rollout, target, previous, canary, fields: h };
}

/** What instance `id` runs under `rec` (WIRE.md 9.2): the target, unless a canary leaves it out. */
export function targetFor(rec, id) {
  return rec.canary.length === 0 || rec.canary.includes(id) ? rec.target : rec.previous;
}

/** Same component and config (the signature does not change what runs; local is local). */
export function sameTarget(a, b) {
  return a.sha256 === b.sha256 && (a.sha256 === '' || a.config === b.config);
}

/** The bytes an ed25519 signature covers (WIRE.md 9.5). */
export function signedMessage(prefix, namespace, sha256, config) {
  return Buffer.from(`aci-cache policy v1\n${prefix}\n${namespace ?? ''}\n${sha256}\n${config}`, 'utf8');
}

const FIELD_KIND = new Map(CONFIG_FIELDS.map(([wit, js, kind]) => [wit, { js, kind }]));

/**
 * The overrides of a (record-checked) `config` field as camelCase config members, or ConfigError
 * naming the member (WIRE.md 9.4): unknown members and wrong types are refused here, values by
 * the policy's own `configure`.
 */
export function configOverrides(text) {
  if (!text) return {};
  const obj = JSON.parse(text);
  const out = {};
  for (const [k, v] of Object.entries(obj)) {
    const f = FIELD_KIND.get(k);
    if (!f) throw new ConfigError(clip(k, 64), 'not a field of the policy config');
    let ok;
    if (f.kind === 'f64') ok = typeof v === 'number';
    else if (f.kind === 's32') ok = Number.isInteger(v);
    else ok = STRATEGIES.includes(v);
    if (!ok) {
      const want = f.kind === 'f64' ? 'a number' : f.kind === 's32' ? 'a whole number' : 'ttl, batched or eager';
      throw new ConfigError(k, `must be ${want}, got ${clip(JSON.stringify(v), 80)}`);
    }
    out[f.js] = v;
  }
  return out;
}

// ---- ed25519, strict (as ed25519-dalek's verify_strict in Rust and libsodium in Python) ---------

// Encodings of the points of small order (libsodium's blocklist; the sign bit is ignored): a
// public key or an R among them is refused, as the other hosts refuse them.
const SMALL_ORDER = [
  '0000000000000000000000000000000000000000000000000000000000000000',
  '0100000000000000000000000000000000000000000000000000000000000000',
  '26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05',
  'c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a',
  'ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f',
  'edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f',
  'eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f',
].map((h) => Buffer.from(h, 'hex'));

function smallOrder(p) {
  for (const b of SMALL_ORDER) {
    let diff = (p[31] & 0x7f) ^ b[31];
    for (let i = 0; i < 31 && diff === 0; i++) diff |= p[i] ^ b[i];
    if (diff === 0) return true;
  }
  return false;
}

// The group order L, little endian: S must be below it (a canonical scalar).
const L = Buffer.from('edd3f55c1a631258d69cf7a2def9de1400000000000000000000000000000010', 'hex');

function canonicalScalar(s) {
  for (let i = 31; i >= 0; i--) {
    if (s[i] < L[i]) return true;
    if (s[i] > L[i]) return false;
  }
  return false; // S == L
}

/** A 64-hex ed25519 public key as a KeyObject; throws CacheConfigError('policyPublicKey'). */
export function publicKeyObject(hex) {
  if (typeof hex !== 'string' || !HASH_RE.test(hex)) {
    throw new CacheConfigError('policyPublicKey', 'must be 64 lowercase hex characters (an ed25519 public key, as `aci policy keygen` prints it)');
  }
  const raw = Buffer.from(hex, 'hex');
  try {
    const key = createPublicKey({ key: { kty: 'OKP', crv: 'Ed25519', x: raw.toString('base64url') }, format: 'jwk' });
    return { key, raw };
  } catch (err) {
    throw new CacheConfigError('policyPublicKey', `is not a valid ed25519 public key (${err.message})`);
  }
}

/** ed25519 verification, strict: canonical S, no small-order key or R. */
export function verifyStrict(pub, message, sigHex) {
  if (!SIG_RE.test(sigHex)) return false;
  const sig = Buffer.from(sigHex, 'hex');
  if (!canonicalScalar(sig.subarray(32)) || smallOrder(sig.subarray(0, 32)) || smallOrder(pub.raw)) return false;
  try {
    return verify(null, message, pub.key, sig);
  } catch {
    return false;
  }
}

/** An ed25519 public key and/or an allow-list of hashes (WIRE.md 9.5). */
export class Trust {
  constructor(publicKey, allowHashes) {
    this.key = publicKey === undefined || publicKey === null ? null : publicKeyObject(publicKey);
    this.allow = new Set(allowHashes ?? []);
  }

  get kind() {
    if (this.key && this.allow.size) return 'key+allow-list';
    if (this.key) return 'key';
    if (this.allow.size) return 'allow-list';
    return 'none';
  }

  /** null when `target` may run, else the refusal reason of WIRE.md 9.6 step 1. */
  check(target, prefix, namespace) {
    if (target.sha256 === '') return null;
    if (!this.key && this.allow.size === 0) return 'no policy trust configured (policyPublicKey or policyAllowHashes)';
    const listed = this.allow.has(target.sha256);
    if (listed && !target.config) return null;
    // Listed with a config override: only the signature (the third way of 9.5) can approve it.
    if (!this.key || (listed && !target.sig)) {
      return listed ? 'allow-listed hash pushed with a config override (only a signed push may override the config)' : 'not in the allow-list';
    }
    if (!target.sig) return 'unsigned: this instance requires a signature by its policyPublicKey';
    if (!verifyStrict(this.key, signedMessage(prefix, namespace, target.sha256, target.config), target.sig)) {
      return "bad signature: not made by this instance's policyPublicKey for this namespace";
    }
    return null;
  }
}

// ---- the host side -------------------------------------------------------------------------------

const LOCAL_RUNNING = Object.freeze({ target: LOCAL, module: null, overrides: null });

/**
 * The rollout duties of one cache (WIRE.md 9). `host` is the cache's side:
 *   id, prefix, namespace, keys (K), channel (P:policy), tickMs, redis, log, sender,
 *   runtime() -> the PolicyRuntime in force, makeRuntime(running) -> Promise<PolicyRuntime>
 *   (running.module null: the local policy), swap(rt) (synchronous), strategy(), isController(),
 *   alive() (false once stopping), sent() (one message published).
 */
export class Follower {
  #h;
  #trust;
  #rollbackFaults;
  #chain = Promise.resolve();
  #queued = false;
  #stopped = false;
  #lastWarn = new Map();
  running = LOCAL_RUNNING;
  previous = null;
  acted = 0; // the last rollout acted on
  read = 0; // the highest rollout read in a record
  announced = 0; // the highest rollout announced
  rejected = null;
  #reread = true;
  #lastAnnRead = -Infinity;
  #lastCheck = 0;
  #lastStatus = -Infinity;
  #statusDue = true;
  #statusStrategy = '';
  #statusController = null;

  constructor(host, trust, rollbackFaults) {
    this.#h = host;
    this.#trust = trust;
    this.#rollbackFaults = rollbackFaults;
  }

  get trust() {
    return this.#trust;
  }

  // ---- inputs --------------------------------------------------------------------------------

  /** A valid announcement of `rollout` (a hint only: the record is read, at most once a tick). */
  announcement(rollout) {
    if (rollout > this.announced) this.announced = rollout;
    if (this.announced > this.read && this.#h.now() - this.#lastAnnRead >= this.#h.tickMs) this.kick();
  }

  /** Resubscribed: an announcement may have been lost while not listening. */
  resubscribed() {
    this.#reread = true;
    this.kick();
  }

  /** The running policy faulted: a pushed one may have to be rolled back now. */
  faulted() {
    if (this.running.target.sha256 !== '') this.kick();
  }

  /** Runs one step soon (from the cache's tick, an announcement, a fault); never piles up. */
  kick() {
    if (this.#queued || this.#stopped) return;
    this.#queued = true;
    this.run(() => {
      this.#queued = false;
      return this.#step();
    }).catch((err) => {
      this.#reread = true; // whatever was being read or adopted is read again
      this.#warn('step', `policy rollout: ${err?.message ?? err}`);
    });
  }

  /** Runs `fn` after every step and swap queued before it (one at a time); its result. */
  run(fn) {
    const p = this.#chain.then(fn);
    this.#chain = p.catch(() => {});
    return p;
  }

  /** At start, before serving: a late joiner runs the fleet's current policy. */
  start() {
    return this.run(async () => {
      try {
        const rec = await this.#readRecord();
        if (rec) await this.#consider(rec);
      } catch (err) {
        this.#h.log.warn(`aci-cache ${this.#h.id}: reading the rollout record at start: ${err?.message ?? err}; running the local policy`);
        this.#reread = true;
        return;
      }
      this.#reread = false;
      this.#lastCheck = this.#h.now();
    });
  }

  /** Stops following; removes this instance's status record (bounded by `ms`). */
  async stop(ms) {
    this.#stopped = true;
    await withTimeout(this.#chain, ms).catch(() => {});
    await withTimeout(this.#h.redis.del(this.#statusKey()), ms).catch(() => {});
  }

  /** A local swap through the API: the new policy is this instance's local one from now on. */
  localSwapped() {
    this.previous = this.running;
    this.running = LOCAL_RUNNING;
    this.#statusDue = true;
  }

  // ---- the step ------------------------------------------------------------------------------

  async #step() {
    if (this.#stopped || !this.#h.alive()) return;
    const h = this.#h;
    await this.#checkFaults();
    const now = h.now();
    let full = false;
    if (this.#reread) {
      full = true;
      this.#reread = false;
    }
    if (this.announced > this.read && now - this.#lastAnnRead >= h.tickMs) {
      full = true; // at most one read per tick because of announcements
      this.#lastAnnRead = now;
    }
    if (!full && now - this.#lastCheck >= RECHECK_MS) {
      this.#lastCheck = now;
      const cur = await h.redis.hget(this.#key('policy:current'), 'rollout');
      if (cur !== null) {
        try {
          full = parseRollout(cur) !== this.read;
        } catch {
          full = true; // read it whole: refused with its reason
        }
      }
    }
    if (full) {
      this.#lastCheck = now;
      const before = this.announced;
      const rec = await this.#readRecord();
      // An announcement of a rollout the record does not have (forged, or of a record since
      // deleted) must not make us read at every tick; one heard during the read is kept.
      if (this.announced === before && this.announced > this.read) this.announced = this.read;
      if (rec && !this.#stopped) await this.#consider(rec);
    }
    const st = h.strategy();
    const ctl = h.isController();
    if (this.#statusDue || now - this.#lastStatus >= STATUS_EVERY_MS || st !== this.#statusStrategy || ctl !== this.#statusController) {
      await this.#writeStatus();
    }
  }

  #key(name) {
    return `${this.#h.keys}${name}`;
  }

  #statusKey() {
    return this.#key(`policy:status:${this.#h.id}`);
  }

  async #readRecord() {
    const raw = await this.#h.redis.hgetallBuffer(this.#key('policy:current'));
    let rec;
    try {
      rec = parseRecord(raw);
    } catch (err) {
      if (!(err instanceof RecordError)) throw err;
      let rollout = 0;
      try {
        rollout = parseRollout(raw.rollout ?? '');
      } catch {
        // no valid rollout either
      }
      if (rollout > this.acted || rollout === 0) this.#reject(rollout, '', `malformed record: ${err.field}`);
      if (rollout) {
        this.read = Math.max(this.read, rollout);
        this.acted = Math.max(this.acted, rollout);
      }
      return null;
    }
    if (rec) this.read = Math.max(this.read, rec.rollout);
    return rec;
  }

  #reject(rollout, sha256, reason) {
    this.rejected = { rollout, sha256, reason };
    this.#statusDue = true;
    this.#h.log.warn(`aci-cache ${this.#h.id}: policy rollout ${rollout} refused: ${reason}`);
  }

  async #consider(rec) {
    if (rec.rollout <= this.acted) return;
    const target = targetFor(rec, this.#h.id);
    if (sameTarget(target, this.running.target)) {
      this.acted = rec.rollout;
      this.#statusDue = true;
      return;
    }
    let [reason, next] = await this.#prepare(target);
    if (reason === null) reason = await this.#install(next);
    this.acted = Math.max(this.acted, rec.rollout);
    if (reason !== null) this.#reject(rec.rollout, target.sha256, reason);
  }

  // WIRE.md 9.6 steps 1-3 (and the override checks of 4): [null, running] or [reason].
  async #prepare(target) {
    if (target.sha256 === '') return [null, LOCAL_RUNNING];
    const h = this.#h;
    const reason = this.#trust.check(target, h.prefix, h.namespace);
    if (reason !== null) return [reason];
    const bad = await h.redis.hget(this.#key('policy:bad'), target.sha256);
    if (bad !== null) return [`marked bad: ${clip(bad, 160)}`];
    let module = compiledComponent(target.sha256);
    if (!module) {
      const data = await h.redis.getrangeBuffer(this.#key(`policy:blob:${target.sha256}`), 0, MAX_COMPONENT_BYTES);
      if (!data || data.length === 0) return ['missing: no component stored under this hash'];
      if (data.length > MAX_COMPONENT_BYTES) return [`too large: over ${MAX_COMPONENT_BYTES} bytes`];
      try {
        module = await loadComponent(data, { expectSha256: target.sha256, name: `pushed-${target.sha256.slice(0, 12)}` });
      } catch (err) {
        if (err instanceof HashMismatch) return ['hash mismatch: the stored bytes do not have this SHA-256'];
        return [clip(`invalid component: ${err?.message ?? err}`, 300)];
      }
    }
    let overrides;
    try {
      overrides = configOverrides(target.config);
    } catch (err) {
      return [clip(`config: ${err.field}: ${err.message}`, 300)];
    }
    return [null, { target, module, overrides }];
  }

  // WIRE.md 9.6 steps 4-5: instantiate and configure, then swap; null or the refusal reason.
  async #install(next) {
    const h = this.#h;
    let rt;
    try {
      rt = await h.makeRuntime(next);
    } catch (err) {
      if (err instanceof ConfigError || err?.name === 'ConfigError') return clip(`config: ${err.field}: ${err.message}`, 300);
      return clip(`invalid component: ${err?.message ?? err}`, 300);
    }
    if (this.#stopped || !h.alive()) return 'the cache is stopping';
    h.swap(rt);
    this.previous = this.running;
    this.running = next;
    this.#statusDue = true;
    return null;
  }

  // ---- the automatic rollback (WIRE.md 9.7) ----------------------------------------------------

  async #checkFaults() {
    if (this.running.target.sha256 === '') return;
    const h = this.#h;
    const rt = h.runtime();
    const faults = rt.faults;
    if (faults < this.#rollbackFaults) return;
    const bad = this.running.target;
    const why = `${faults} faults: ${rt.lastFault?.message ?? 'fault'}`;
    const reason = clip(`auto-rollback: ${h.id}: ${why}`, 200);
    h.log.warn(`aci-cache ${h.id}: pushed policy ${bad.sha256.slice(0, 12)} rolled back after ${why}`);
    // Locally first: nothing here waits for Redis.
    const back = this.previous ?? LOCAL_RUNNING;
    let failed = await this.#install(back);
    if (failed !== null && back !== LOCAL_RUNNING) failed = await this.#install(LOCAL_RUNNING);
    if (failed !== null) {
      h.log.warn(`aci-cache ${h.id}: cannot revert from ${bad.sha256.slice(0, 12)}: ${failed}`);
      return;
    }
    this.previous = null; // never revert into the policy that just faulted
    const from = this.acted;
    this.#reject(from, bad.sha256, reason);
    await this.#writeStatus();
    await h.redis.hset(this.#key('policy:bad'), bad.sha256, reason);
    let rec = null;
    try {
      rec = parseRecord(await h.redis.hgetallBuffer(this.#key('policy:current')));
    } catch {
      rec = null;
    }
    this.#reread = true;
    if (!rec || rec.rollout !== from || !sameTarget(targetFor(rec, h.id), bad)) return;
    const next = rec.rollout + 1;
    const fields = {
      rollout: String(next),
      sha256: rec.previous.sha256, config: rec.previous.config, sig: rec.previous.sig,
      previous: bad.sha256, previous_config: bad.config, previous_sig: bad.sig,
      canary: '',
      name: '', version: '',
      by: h.id,
      reason,
      at: (Date.now() / 1000).toFixed(3),
    };
    const args = [String(rec.rollout), h.channel, h.sender.policy(next)];
    for (const [k, v] of Object.entries(fields)) args.push(k, v);
    const done = await h.redis.eval(CAS_LUA, 1, this.#key('policy:current'), ...args);
    if (Number(done) === 1) {
      h.sent();
      h.log.warn(`aci-cache ${h.id}: rollout ${next} written: the fleet returns to ${rec.previous.sha256.slice(0, 12) || 'its local policies'}`);
    }
  }

  // ---- status (WIRE.md 9.8) ------------------------------------------------------------------

  /** This instance's status record. */
  status() {
    const h = this.#h;
    const rt = h.runtime();
    return {
      id: h.id,
      host: 'js',
      name: rt?.describe?.name ?? '',
      version: rt?.describe?.version ?? '',
      sha256: rt?.source?.sha256 ?? '',
      origin: this.running.target.sha256 === '' ? 'local' : 'pushed',
      rollout: this.acted,
      strategy: h.strategy(),
      controller: h.isController(),
      faults: rt?.faults ?? 0,
      trust: this.#trust.kind,
      rejected: this.rejected,
      timestamp: Math.round(Date.now()) / 1000,
    };
  }

  async #writeStatus() {
    if (this.#stopped) return; // stop() deletes it
    this.#statusDue = false;
    this.#lastStatus = this.#h.now();
    const st = this.status();
    this.#statusStrategy = st.strategy;
    this.#statusController = st.controller;
    try {
      await this.#h.redis.set(this.#statusKey(), JSON.stringify(st), 'PX', STATUS_PX);
    } catch (err) {
      this.#statusDue = true;
      this.#warn('status', `status record: ${err?.message ?? err}`);
    }
  }

  // At most one warning per kind per 10 s: Redis down must not flood the log.
  #warn(kind, msg) {
    const now = this.#h.now();
    if (now - (this.#lastWarn.get(kind) ?? -Infinity) < 10_000) return;
    this.#lastWarn.set(kind, now);
    this.#h.log.warn(`aci-cache ${this.#h.id}: ${msg}`);
  }
}

function withTimeout(promise, ms) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`no answer within ${ms} ms`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}
