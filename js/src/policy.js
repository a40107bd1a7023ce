// The aci-cache strategy engine (WIT aci:cache/policy@0.1.0, world `engine`) for JavaScript.
//
//   import { loadPolicy, ConfigError } from 'aci-cache';
//   const policy = await loadPolicy('adaptive');      // a fresh instance on every call
//   policy.configure({ ...policy.defaultConfig(), highThreshold: 100 }, Date.now());
//   const strategy = policy.recordWrite('user:42', Date.now());   // 'ttl' | 'batched' | 'eager'
//
// A policy component is transpiled by jco (`--instantiation async`) into js/gen/; the glue's
// compiled core module is cached per process, and every loadPolicy() instantiates it anew, so
// instances share nothing.
//
// Conversions made here, once, for every method:
// - now-ms (u64): pass a non-negative safe-integer Number (Date.now(), performance.now(): a
//   fractional value is floored) or a BigInt in [0, 2^64); anything else is a RangeError or
//   TypeError before the engine is entered (jco's glue would wrap -1 to 2^64 - 1 silently).
// - configure's `result<_, config-error>`: jco throws a ComponentError whose payload is the
//   config-error; it is rethrown as ConfigError(field, message), field by its WIT name.
//   A value the WIT type cannot carry (a non-integer or out-of-range s32, a non-number float, an
//   unknown strategy, a missing field) is also a ConfigError naming the field, as the contract
//   asks, instead of being wrapped or coerced by the glue. Such a field is reported even when an
//   earlier field holds a value the engine would refuse (the engine never sees that config).
// - status().switches (u64): a Number (exact below 2^53, i.e. for 285,000 years at one switch
//   per millisecond), so a snapshot is plain JSON-serialisable data.
// - Records use jco's camelCase names (lowThreshold, flushAll, ...); configFromWire() and
//   configToWire() convert a config from / to the kebab-case WIT names used in JSON files.
//
// A trap inside the engine (a WebAssembly.RuntimeError, or a stack overflow) leaves the instance
// in an unknown state: it is rethrown as PolicyTrap and every later call on that instance
// throws PolicyTrap too. Load a fresh instance to go on.

import { existsSync, readFileSync, readdirSync, statSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { Worker } from 'node:worker_threads';
import { componentShape, coreInterface } from './component.js';
import { meterModule } from './meter.js';
import { readStamp, sha256 } from './transpile.js';

const JS_DIR = path.dirname(path.dirname(fileURLToPath(import.meta.url)));
const REPO_DIR = path.dirname(JS_DIR);

/** Where transpiled policies live: js/gen/<policy>/ (build output), js/gen/.cache/<sha>-<name>/. */
export const GEN_DIR = path.join(JS_DIR, 'gen');

/** The directory holding the policy components: $ACI_POLICY_DIR, else <repo>/target/policies. */
export function policyDir() {
  const dir = process.env.ACI_POLICY_DIR;
  return dir ? path.resolve(dir) : path.join(REPO_DIR, 'target', 'policies');
}

export const STRATEGIES = Object.freeze(['ttl', 'batched', 'eager']);

/**
 * Names of the bundled policies: <repo>/guest/policies.txt (one per line, # comments) in a
 * checkout; in an installed package, the policies shipped in js/gen/.
 */
export function bundledPolicies() {
  const list = path.join(REPO_DIR, 'guest', 'policies.txt');
  if (existsSync(list)) {
    return readFileSync(list, 'utf8')
      .split('\n')
      .map((l) => l.replace(/#.*/, '').trim())
      .filter(Boolean);
  }
  try {
    return readdirSync(GEN_DIR).filter((d) => !d.startsWith('.') && readStamp(path.join(GEN_DIR, d))).sort();
  } catch {
    return [];
  }
}

/** `configure` refused a config: `field` is the WIT name of the first invalid field. */
export class ConfigError extends Error {
  constructor(field, message) {
    super(message);
    this.name = 'ConfigError';
    this.field = field;
  }
}

/** The engine trapped; the instance it happened in is unusable from then on. */
export class PolicyTrap extends Error {
  constructor(message, options) {
    super(message, options);
    this.name = 'PolicyTrap';
  }
}

// ---- config: WIT (kebab-case) <-> jco (camelCase) -------------------------------------------

const FLOAT = 'f64';
const S32 = 's32';
const STRATEGY = 'strategy';
// Declaration order of `record config`, which is also the order the engine validates in.
export const CONFIG_FIELDS = [
  ['low-threshold', 'lowThreshold', FLOAT],
  ['high-threshold', 'highThreshold', FLOAT],
  ['window-ms', 'windowMs', S32],
  ['hold-ms', 'holdMs', S32],
  ['batch-interval-ms', 'batchIntervalMs', S32],
  ['batch-max-keys', 'batchMaxKeys', S32],
  ['batch-max-bytes', 'batchMaxBytes', S32],
  ['initial-strategy', 'initialStrategy', STRATEGY],
];
const WIRE_FLOATS = { NaN: NaN, Infinity: Infinity, '-Infinity': -Infinity };

/**
 * A config from kebab-case WIT names (as in JSON files and trace vectors) to the camelCase
 * object `configure` takes. Float fields may be the strings "NaN", "Infinity", "-Infinity",
 * since JSON has no such numbers. Unknown keys are ignored.
 */
export function configFromWire(wire) {
  const cfg = {};
  for (const [wit, js, kind] of CONFIG_FIELDS) {
    if (!(wit in wire)) continue;
    const v = wire[wit];
    cfg[js] = kind === FLOAT && typeof v === 'string' && v in WIRE_FLOATS ? WIRE_FLOATS[v] : v;
  }
  return cfg;
}

/** The inverse of configFromWire: non-finite floats become the strings "NaN", "Infinity", ... */
export function configToWire(cfg) {
  const wire = {};
  for (const [wit, js, kind] of CONFIG_FIELDS) {
    const v = cfg[js];
    wire[wit] = kind === FLOAT && typeof v === 'number' && !Number.isFinite(v) ? String(v) : v;
  }
  return wire;
}

function checkConfig(cfg) {
  if (cfg === null || typeof cfg !== 'object') throw new TypeError('config must be an object');
  const out = {};
  for (const [wit, js, kind] of CONFIG_FIELDS) {
    const v = cfg[js];
    if (v === undefined) throw new ConfigError(wit, `is missing (expected \`${js}\`)`);
    if (kind === FLOAT) {
      if (typeof v !== 'number') throw new ConfigError(wit, `must be a number, got ${show(v)}`);
    } else if (kind === S32) {
      if (!Number.isInteger(v) || v < -0x80000000 || v > 0x7fffffff) {
        throw new ConfigError(wit, `must be an integer from -2147483648 to 2147483647, got ${show(v)}`);
      }
    } else if (!STRATEGIES.includes(v)) {
      throw new ConfigError(wit, `must be one of ${STRATEGIES.join(', ')}, got ${show(v)}`);
    }
    out[js] = v;
  }
  return out;
}

function show(v) {
  if (typeof v === 'string') return JSON.stringify(v);
  if (typeof v === 'bigint') return `${v}n`;
  return String(v);
}

// ---- scalar conversions ----------------------------------------------------------------------

const U64_MAX = (1n << 64n) - 1n;

/** now-ms as the u64 BigInt jco expects; the one place where time values are converted. */
function nowMs(v) {
  if (typeof v === 'number') {
    if (v >= 0 && v <= Number.MAX_SAFE_INTEGER) return BigInt(Math.floor(v));
    throw new RangeError(`now-ms must be a finite number from 0 to 2^53 - 1, got ${v}`);
  }
  if (typeof v === 'bigint') {
    if (v >= 0n && v <= U64_MAX) return v;
    throw new RangeError(`now-ms must be from 0 to 2^64 - 1, got ${v}n`);
  }
  throw new TypeError(`now-ms must be a Number or a BigInt, got ${show(v)}`);
}

function u32(v, what) {
  if (Number.isInteger(v) && v >= 0 && v <= 0xffffffff) return v;
  throw new RangeError(`${what} must be an integer from 0 to 4294967295, got ${show(v)}`);
}

function key(v) {
  if (typeof v === 'string') return v;
  throw new TypeError(`a key must be a string, got ${show(v)}`);
}

function strategy(v) {
  if (STRATEGIES.includes(v)) return v;
  throw new TypeError(`strategy must be one of ${STRATEGIES.join(', ')}, got ${show(v)}`);
}

function isConfigErrorPayload(err) {
  const p = err?.payload;
  return p != null && typeof p.field === 'string' && typeof p.message === 'string';
}

// ---- the instance -----------------------------------------------------------------------------

/** One instance of a policy. Methods mirror the WIT interface `policy` (see wit/policy.wit). */
export class Policy {
  #e;
  #trap = null;

  /** @internal use loadPolicy(). */
  constructor(exports, source) {
    this.#e = exports;
    /** Where this instance came from: { component, sha256, genDir }. */
    this.source = source;
  }

  // Called in every method's catch: a trap (or an error thrown while the glue read garbage the
  // engine returned) poisons the instance; anything else passes through.
  #fail(err) {
    if (err instanceof WebAssembly.RuntimeError || err instanceof RangeError) {
      this.#trap = new PolicyTrap(`policy ${this.source.name} trapped: ${err.message}`, { cause: err });
      return this.#trap;
    }
    return err;
  }

  #live() {
    if (this.#trap) {
      throw new PolicyTrap(`policy ${this.source.name} is unusable after an earlier trap`, {
        cause: this.#trap,
      });
    }
    return this.#e;
  }

  /** @returns {{name: string, version: string}} */
  describe() {
    const e = this.#live();
    try {
      return e.describe();
    } catch (err) {
      throw this.#fail(err);
    }
  }

  /** The config in force when an instance starts (camelCase fields). */
  defaultConfig() {
    const e = this.#live();
    try {
      return e.defaultConfig();
    } catch (err) {
      throw this.#fail(err);
    }
  }

  /** Validates and puts `cfg` in force; throws ConfigError naming the first invalid field. */
  configure(cfg, now) {
    const e = this.#live();
    const c = checkConfig(cfg);
    const t = nowMs(now);
    try {
      e.configure(c, t);
    } catch (err) {
      if (isConfigErrorPayload(err)) throw new ConfigError(err.payload.field, err.payload.message);
      throw this.#fail(err);
    }
  }

  /** Counts one local write; returns the strategy in force after it. */
  recordWrite(k, now) {
    const e = this.#live();
    const s = key(k);
    const t = nowMs(now);
    try {
      return e.recordWrite(s, t);
    } catch (err) {
      throw this.#fail(err);
    }
  }

  /** recordWrite for each key in order, all at `now`; returns the strategy after the last. */
  recordWrites(keys, now) {
    const e = this.#live();
    if (!Array.isArray(keys)) throw new TypeError('keys must be an array of strings');
    for (let i = 0; i < keys.length; i++) key(keys[i]);
    const t = nowMs(now);
    try {
      return e.recordWrites(keys, t);
    } catch (err) {
      throw this.#fail(err);
    }
  }

  /** Counts `count` writes made by other instances (not buffered). */
  recordRemoteWrites(count, now) {
    const e = this.#live();
    const n = u32(count, 'count');
    const t = nowMs(now);
    try {
      return e.recordRemoteWrites(n, t);
    } catch (err) {
      throw this.#fail(err);
    }
  }

  /** The strategy in force at `now`. */
  currentStrategy(now) {
    const e = this.#live();
    const t = nowMs(now);
    try {
      return e.currentStrategy(t);
    } catch (err) {
      throw this.#fail(err);
    }
  }

  /** Fleet writes per second over the window ending at `now`. */
  writeRate(now) {
    const e = this.#live();
    const t = nowMs(now);
    try {
      return e.writeRate(t);
    } catch (err) {
      throw this.#fail(err);
    }
  }

  /** Drains the buffer when a batch is due: `{ keys: string[], flushAll: boolean }`. */
  pendingBatch(now) {
    const e = this.#live();
    const t = nowMs(now);
    try {
      return e.pendingBatch(t);
    } catch (err) {
      throw this.#fail(err);
    }
  }

  /**
   * Everything a host observes at `now`:
   * `{ strategy, writeRate, bufferedKeys, batchDue, switches: number, following }`.
   */
  status(now) {
    const e = this.#live();
    const t = nowMs(now);
    let s;
    try {
      s = e.status(t);
    } catch (err) {
      throw this.#fail(err);
    }
    s.switches = Number(s.switches);
    return s;
  }

  /** Follower mode: the strategy is `s` (the controller's decision) until `lead`. */
  follow(s, now) {
    const e = this.#live();
    const v = strategy(s);
    const t = nowMs(now);
    try {
      e.follow(v, t);
    } catch (err) {
      throw this.#fail(err);
    }
  }

  /** Leader mode (the default): the policy decides from its own measurement again. */
  lead(now) {
    const e = this.#live();
    const t = nowMs(now);
    try {
      e.lead(t);
    } catch (err) {
      throw this.#fail(err);
    }
  }
}

// ---- loading ----------------------------------------------------------------------------------

// Loaded glue per transpiled directory: { instantiate, getCoreModule, source }.
const factories = new Map();
// Resolution per component file, valid while its size and mtime stay the same.
const resolved = new Map();

/**
 * Finds the transpiled copy of a component: js/gen/<name>/ when its stamp names the same
 * component bytes, else js/gen/.cache/<sha256 prefix>-<name>/, transpiled now if missing (needs jco,
 * a devDependency). A named policy whose component file is absent, with no ACI_POLICY_DIR
 * override, falls back to js/gen/<name>/ as shipped.
 */
async function resolveGlue(spec, opts) {
  if (typeof spec !== 'string' || spec === '') throw new TypeError('policy must be a name or a path');
  const isPath = spec.endsWith('.wasm') || spec.includes('/') || spec.includes(path.sep);
  if (!isPath && !/^[A-Za-z0-9_.-]+$/.test(spec)) throw new TypeError(`bad policy name ${show(spec)}`);
  const dir = opts.policyDir ? path.resolve(opts.policyDir) : policyDir();
  const component = isPath ? path.resolve(spec) : path.join(dir, `${spec}.wasm`);
  const name = path.basename(component, '.wasm');
  const named = path.join(GEN_DIR, name);

  let st;
  try {
    st = statSync(component);
  } catch {
    const overridden = isPath || opts.policyDir || process.env.ACI_POLICY_DIR;
    if (!overridden && readStamp(named)) return { genDir: named, name, component: null, sha256: null };
    throw new Error(`no policy component at ${component} (build the policies with: cargo xtask policies)`);
  }
  const memo = resolved.get(component);
  if (memo && memo.size === st.size && memo.mtimeMs === st.mtimeMs) return memo.glue;

  const bytes = await readFile(component);
  const digest = sha256(bytes);
  let genDir = null;
  // The glue carries the name it was transpiled under (file names, exports), so one component
  // loaded under two names needs two copies.
  const cached = path.join(GEN_DIR, '.cache', `${digest.slice(0, 16)}-${name}`);
  for (const d of [named, cached]) {
    const stamp = readStamp(d);
    if (stamp && stamp.sha256 === digest && stamp.name === name && existsSync(path.join(d, `${name}.js`))) {
      genDir = d;
      break;
    }
  }
  if (!genDir) {
    if (opts.transpile === false) {
      throw new Error(`js/gen has no up-to-date copy of ${component}: run \`npm run build\` in js/`);
    }
    const { transpileInto, jcoVersion } = await import('./transpile.js');
    if (jcoVersion() === null) {
      // A production install (no jco): the glue of a bundled policy of the same layout.
      return { generic: true, bytes, name, component, sha256: digest };
    }
    genDir = cached;
    await transpileInto(bytes, genDir, { name, source: component });
  }
  const glue = { genDir, name, component, sha256: digest };
  resolved.set(component, { size: st.size, mtimeMs: st.mtimeMs, glue });
  return glue;
}

async function factory(glue, meter) {
  const cacheKey = `${glue.genDir}\0${glue.sha256}\0${meter}`;
  let f = factories.get(cacheKey);
  if (!f) {
    const stamp = readStamp(glue.genDir);
    const jsUrl = pathToFileURL(path.join(glue.genDir, `${glue.name}.js`));
    // The query makes a re-transpiled directory a new module rather than a cached old one.
    jsUrl.search = `?sha256=${stamp?.sha256 ?? ''}`;
    const { instantiate } = await import(jsUrl.href);
    // A component can hold several core modules (e.g. one running a start function); the glue
    // asks for each by file name. Each is compiled once per process.
    const modules = new Map();
    const getCoreModule = (file) => {
      let m = modules.get(file);
      if (!m) {
        // Metered (src/meter.js): a per-call CPU budget and a 32 MiB memory cap.
        m = readFile(path.join(glue.genDir, file)).then((wasm) => WebAssembly.compile(meter ? meterModule(wasm) : wasm));
        modules.set(file, m);
      }
      return m;
    };
    const source = Object.freeze({
      name: glue.name,
      component: glue.component,
      sha256: glue.sha256 ?? stamp?.sha256 ?? null,
      genDir: glue.genDir,
      metered: meter,
    });
    f = { instantiate, getCoreModule, source };
    factories.set(cacheKey, f);
  }
  return f;
}

/** A compiled policy component: every instantiate() makes a fresh, independent instance. */
export class PolicyModule {
  #f;

  /** @internal use policyModule() or loadComponent(). */
  constructor(f) {
    this.#f = f;
    /** { name, component, sha256, genDir, metered, generic } */
    this.source = f.source;
  }

  /** @returns {Promise<Policy>} */
  async instantiate() {
    const { instantiate, getCoreModule, source } = this.#f;
    let root;
    try {
      root = await instantiate(getCoreModule, {});
    } catch (err) {
      if (err instanceof WebAssembly.RuntimeError || err instanceof RangeError) {
        throw new PolicyTrap(`policy ${source.name} trapped while loading: ${err.message}`, { cause: err });
      }
      throw err;
    }
    const exports = root.policy ?? root['aci:cache/policy@0.1.0'];
    if (!exports) throw new Error(`${source.component ?? source.genDir} does not export aci:cache/policy`);
    return new Policy(exports, source);
  }
}

/**
 * The compiled module of a policy (see loadPolicy for `spec` and `opts`): instantiate it as often
 * as needed without resolving or compiling again.
 * @returns {Promise<PolicyModule>}
 */
export async function policyModule(spec, opts = {}) {
  const glue = await resolveGlue(spec, opts);
  // Metering is on unless turned off explicitly (opts.meter === false, or ACI_POLICY_METER=0 to
  // measure its cost).
  const meter = opts.meter ?? process.env.ACI_POLICY_METER !== '0';
  if (glue.generic) return loadComponent(glue.bytes, { meter, name: glue.name, component: glue.component });
  return new PolicyModule(await factory(glue, meter));
}

/**
 * A fresh instance of a policy.
 * @param {string} spec a policy name (`adaptive`, `fixed`: `<policyDir>/<name>.wasm`) or a path
 *   to a component file (anything ending in `.wasm` or containing a slash).
 * @param {{ policyDir?: string, transpile?: boolean, meter?: boolean }} [opts] `policyDir` overrides
 *   $ACI_POLICY_DIR / <repo>/target/policies; `transpile: false` refuses to run jco on demand.
 * @returns {Promise<Policy>}
 */
export async function loadPolicy(spec, opts = {}) {
  return (await policyModule(spec, opts)).instantiate();
}

// ---- components without jco (src/component.js) ------------------------------------------------

/** The component's bytes do not have the SHA-256 they were expected to have. */
export class HashMismatch extends Error {
  constructor(expected, got) {
    super(`hash mismatch: expected ${expected}, the bytes have ${got}`);
    this.name = 'HashMismatch';
  }
}

/** A component that cannot run here (layout, interface, metering, compile error). */
export class InvalidComponent extends Error {
  constructor(message) {
    super(message);
    this.name = 'InvalidComponent';
  }
}

let glues = null; // [{ shape, genDir, name, exports: [[name, kind]] }] of the shipped js/gen copies

function bundledGlues() {
  if (glues) return glues;
  const out = [];
  let dirs = [];
  try {
    dirs = readdirSync(GEN_DIR).filter((d) => !d.startsWith('.')).sort();
  } catch {
    // no js/gen
  }
  for (const d of dirs) {
    const genDir = path.join(GEN_DIR, d);
    const stamp = readStamp(genDir);
    if (stamp && !stamp.shape && stamp.component) {
      // A copy built before stamps carried the shape: its component, if it is still the same.
      try {
        const bytes = readFileSync(stamp.component);
        if (sha256(bytes) === stamp.sha256) stamp.shape = componentShape(bytes).shape;
      } catch {
        // gone or not a component: no shape
      }
    }
    if (!stamp?.shape || !stamp.name || out.some((g) => g.shape === stamp.shape)) continue;
    try {
      const ref = readFileSync(path.join(genDir, `${stamp.name}.core.wasm`));
      const js = path.join(genDir, `${stamp.name}.js`);
      if (!existsSync(js)) continue;
      out.push({ shape: stamp.shape, genDir, name: stamp.name, stampSha: stamp.sha256, exports: [...coreInterface(ref).exports] });
    } catch {
      // an unreadable copy is no reference
    }
  }
  glues = out;
  return out;
}

// Compiled components by SHA-256, most recently used last; bounded (a module is ~the size of
// its component, kept so a revert needs no fetch and two caches of a process share one).
const MAX_COMPILED = 8;
const compiled = new Map();
const WORKER_URL = new URL('./compile-worker.js', import.meta.url);
const COMPILE_TIMEOUT_MS = 60_000;

/** The compiled module of a component of this SHA-256 when this process has it, else undefined. */
export function compiledComponent(sha256, meter = process.env.ACI_POLICY_METER !== '0') {
  const key = `${sha256}:${meter}`;
  const m = compiled.get(key);
  if (m) {
    compiled.delete(key);
    compiled.set(key, m);
  }
  return m;
}

function compileOffThread(bytes, refs, meter, expect) {
  return new Promise((resolve, reject) => {
    const w = new Worker(WORKER_URL, {
      workerData: { bytes, refs: refs.map((r) => ({ shape: r.shape, exports: r.exports })), meter, expect },
      resourceLimits: { maxOldGenerationSizeMb: 256 },
      stdout: true,
      stderr: true,
    });
    let done = false;
    const timer = setTimeout(() => finish(new InvalidComponent(`compiling took over ${COMPILE_TIMEOUT_MS / 1000} s`)), COMPILE_TIMEOUT_MS);
    function finish(err, value) {
      if (done) return;
      done = true;
      clearTimeout(timer);
      w.terminate().catch(() => {});
      if (err) reject(err);
      else resolve(value);
    }
    w.once('message', (m) => finish(null, m));
    w.once('error', (err) => finish(new InvalidComponent(`compiler: ${err?.message ?? err}`)));
    w.once('exit', (code) => finish(new InvalidComponent(`compiler exited (${code})`)));
  });
}

/**
 * Compiles a policy component from its bytes without jco (see src/component.js), off the event
 * loop, metered (unless opts.meter is false). Throws HashMismatch when `expectSha256` is given
 * and differs, InvalidComponent when it cannot run here.
 * @param {Uint8Array} bytes
 * @param {{ meter?: boolean, expectSha256?: string, name?: string, component?: string }} [opts]
 * @returns {Promise<PolicyModule>}
 */
export async function loadComponent(bytes, opts = {}) {
  if (!(bytes instanceof Uint8Array)) throw new TypeError('a component must be a Buffer or Uint8Array');
  const meter = opts.meter ?? process.env.ACI_POLICY_METER !== '0';
  if (opts.expectSha256) {
    const known = compiledComponent(opts.expectSha256, meter);
    if (known) return known;
  }
  const refs = bundledGlues();
  if (refs.length === 0) throw new InvalidComponent('no bundled policy glue (js/gen) to run it with: run `npm run build` in js/');
  const r = await compileOffThread(bytes, refs, meter, opts.expectSha256);
  if (r.mismatch) throw new HashMismatch(opts.expectSha256, r.sha256);
  if (r.error !== undefined) throw new InvalidComponent(r.error);
  const ref = refs[r.ref];
  const jsUrl = pathToFileURL(path.join(ref.genDir, `${ref.name}.js`));
  jsUrl.search = `?sha256=${ref.stampSha ?? ''}`;
  const { instantiate } = await import(jsUrl.href);
  const want = `${ref.name}.core.wasm`;
  const module = r.module;
  const getCoreModule = (file) => {
    if (file !== want) throw new InvalidComponent(`the glue asked for ${file}`);
    return Promise.resolve(module);
  };
  const source = Object.freeze({
    name: opts.name ?? `sha256:${r.sha256.slice(0, 12)}`,
    component: opts.component ?? null,
    sha256: r.sha256,
    genDir: ref.genDir,
    metered: meter,
    generic: true,
  });
  const pm = new PolicyModule({ instantiate, getCoreModule, source });
  const key = `${r.sha256}:${meter}`;
  compiled.delete(key);
  compiled.set(key, pm);
  while (compiled.size > MAX_COMPILED) compiled.delete(compiled.keys().next().value);
  return pm;
}
