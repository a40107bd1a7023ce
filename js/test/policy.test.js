// The wrapper's own behaviour: instances, conversions, errors, loading.

import assert from 'node:assert/strict';
import { copyFileSync, existsSync, mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { describe, test } from 'node:test';
import {
  ConfigError,
  Policy,
  PolicyTrap,
  configFromWire,
  configToWire,
  loadPolicy,
  policyDir,
} from '../src/policy.js';

const T0 = 1_700_000_000_000;

describe('loadPolicy', () => {
  test('gives a fresh, independent instance on every call', async () => {
    const a = await loadPolicy('adaptive');
    const b = await loadPolicy('adaptive');
    assert.notEqual(a, b);
    a.recordRemoteWrites(1000, T0);
    assert.equal(a.currentStrategy(T0), 'eager');
    assert.equal(b.currentStrategy(T0), 'ttl');
    assert.equal(b.writeRate(T0), 0);
  });

  test('loads both policies by name and by component path', async () => {
    assert.deepEqual((await loadPolicy('adaptive')).describe(), { name: 'adaptive', version: '0.3.0' });
    assert.equal((await loadPolicy('fixed')).describe().name, 'fixed');
    const byPath = await loadPolicy(path.join(policyDir(), 'fixed.wasm'));
    assert.equal(byPath.describe().name, 'fixed');
    assert.equal(byPath.source.name, 'fixed');
    assert.match(byPath.source.sha256, /^[0-9a-f]{64}$/);
  });

  test('transpiles on demand a component that js/gen has no copy of', async () => {
    const dir = mkdtempSync(path.join(os.tmpdir(), 'aci-policy-'));
    try {
      copyFileSync(path.join(policyDir(), 'adaptive.wasm'), path.join(dir, 'renamed.wasm'));
      const p = await loadPolicy('renamed', { policyDir: dir });
      assert.equal(p.describe().name, 'adaptive');
      assert.match(p.source.genDir, /[/\\]\.cache[/\\][0-9a-f]{16}-renamed$/);
      await assert.rejects(loadPolicy('absent', { policyDir: dir }), /no policy component at/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  test('rejects a bad policy name', async () => {
    await assert.rejects(loadPolicy(''), TypeError);
    await assert.rejects(loadPolicy('a b'), TypeError);
  });
});

describe('now-ms', () => {
  test('a Number and a BigInt mean the same; fractions are floored', async () => {
    const a = await loadPolicy('adaptive');
    const b = await loadPolicy('adaptive');
    a.recordRemoteWrites(30, T0);
    b.recordRemoteWrites(30, BigInt(T0));
    assert.equal(a.writeRate(T0 + 1000.9), b.writeRate(BigInt(T0 + 1000)));
    assert.deepEqual(a.status(T0 + 1000), b.status(BigInt(T0 + 1000)));
  });

  test('refuses values the u64 cannot carry before entering the engine', async () => {
    const p = await loadPolicy('adaptive');
    for (const bad of [-1, -1n, NaN, Infinity, 2 ** 53, 1n << 64n]) {
      assert.throws(() => p.writeRate(bad), RangeError, String(bad));
    }
    for (const bad of ['5', null, undefined, {}]) {
      assert.throws(() => p.currentStrategy(bad), TypeError, String(bad));
    }
    assert.equal(p.writeRate((1n << 64n) - 1n), 0); // the largest u64 is accepted
  });
});

describe('configure', () => {
  test('engine errors become ConfigError(field, message); nothing changes', async () => {
    const p = await loadPolicy('adaptive');
    const cfg = p.defaultConfig();
    p.recordRemoteWrites(100, T0);
    const before = p.status(T0);
    assert.throws(
      () => p.configure({ ...cfg, lowThreshold: 60 }, T0),
      (e) =>
        e instanceof ConfigError &&
        e.name === 'ConfigError' &&
        e.field === 'low-threshold' &&
        e.message === 'must be less than high-threshold (50), got 60',
    );
    assert.deepEqual(p.status(T0), before);
  });

  test('values the WIT types cannot carry are ConfigErrors naming the field', async () => {
    const p = await loadPolicy('adaptive');
    const cfg = p.defaultConfig();
    const cases = [
      [{ ...cfg, windowMs: 2 ** 31 }, 'window-ms'],
      [{ ...cfg, holdMs: 1.5 }, 'hold-ms'],
      [{ ...cfg, batchMaxKeys: '10' }, 'batch-max-keys'],
      [{ ...cfg, highThreshold: '50' }, 'high-threshold'],
      [{ ...cfg, initialStrategy: 'sometimes' }, 'initial-strategy'],
      [{ ...cfg, batchIntervalMs: undefined }, 'batch-interval-ms'],
    ];
    for (const [bad, field] of cases) {
      assert.throws(() => p.configure(bad, T0), (e) => e instanceof ConfigError && e.field === field, field);
    }
    p.configure({ ...cfg, initialStrategy: 'batched' }, T0);
    assert.equal(p.currentStrategy(T0), 'batched');
    assert.equal(p.status(T0).switches, 0);
  });

  test('configFromWire / configToWire convert names and non-finite floats', async () => {
    const p = await loadPolicy('adaptive');
    const cfg = { ...p.defaultConfig(), lowThreshold: NaN, highThreshold: -Infinity };
    const wire = configToWire(cfg);
    assert.equal(wire['low-threshold'], 'NaN');
    assert.equal(wire['high-threshold'], '-Infinity');
    assert.equal(wire['window-ms'], 5000);
    assert.deepEqual(configFromWire(wire), cfg);
    assert.throws(
      () => p.configure(configFromWire(wire), T0),
      (e) => e instanceof ConfigError && e.field === 'low-threshold',
    );
  });
});

describe('results', () => {
  test('status is plain JSON data with switches as a Number', async () => {
    const p = await loadPolicy('adaptive');
    p.recordRemoteWrites(1000, T0);
    const s = p.status(T0);
    assert.equal(typeof s.switches, 'number');
    assert.equal(s.switches, 1);
    assert.deepEqual(JSON.parse(JSON.stringify(s)), s);
  });

  test('batches come back with camelCase flushAll, keys in first-buffered order', async () => {
    const p = await loadPolicy('fixed');
    p.configure({ ...p.defaultConfig(), initialStrategy: 'batched', batchMaxKeys: 3 }, T0);
    assert.equal(p.recordWrites(['b', 'a', 'b', 'ключ'], T0), 'batched');
    assert.deepEqual(p.pendingBatch(T0), { keys: ['b', 'a', 'ключ'], flushAll: false });
    assert.deepEqual(p.pendingBatch(T0), { keys: [], flushAll: false });
  });

  test('argument errors are thrown before the engine is entered and do not poison it', async () => {
    const p = await loadPolicy('adaptive');
    assert.throws(() => p.follow('bogus', T0), TypeError);
    assert.throws(() => p.recordRemoteWrites(-1, T0), RangeError);
    assert.throws(() => p.recordRemoteWrites(2 ** 32, T0), RangeError);
    assert.throws(() => p.recordWrite(42, T0), TypeError);
    assert.throws(() => p.recordWrites(['a', 1], T0), TypeError);
    assert.throws(() => p.recordWrites('a', T0), TypeError);
    p.follow('eager', T0);
    assert.equal(p.status(T0).following, true);
    p.lead(T0);
    assert.equal(p.status(T0).following, false);
  });
});

describe('traps', () => {
  test('a trap poisons the instance (simulated engine)', () => {
    const fake = {
      recordWrite() {
        throw new WebAssembly.RuntimeError('unreachable');
      },
      status() {
        throw new Error('must not be called after a trap');
      },
    };
    const p = new Policy(fake, { name: 'fake' });
    assert.throws(() => p.recordWrite('k', 0), (e) => e instanceof PolicyTrap && e.cause instanceof WebAssembly.RuntimeError);
    assert.throws(() => p.status(0), (e) => e instanceof PolicyTrap && /unusable after an earlier trap/.test(e.message));
  });

  const hostile = path.join(policyDir(), 'hostile.wasm');
  test('a real trap in the engine poisons the instance', { skip: !existsSync(hostile) && `no ${hostile}` }, async () => {
    const p = await loadPolicy(hostile);
    assert.equal(p.recordWrite('fine', 0), 'ttl');
    assert.throws(() => p.recordWrite('hostile:trap', 1), PolicyTrap);
    assert.throws(() => p.status(1), PolicyTrap);
    const q = await loadPolicy(hostile);
    assert.equal(q.recordWrite('fine', 0), 'ttl');
  });

  const trapOnLoad = path.join(policyDir(), 'trap-on-load.wasm');
  test('a component that traps while loading', { skip: !existsSync(trapOnLoad) && `no ${trapOnLoad}` }, async () => {
    await assert.rejects(loadPolicy(trapOnLoad), PolicyTrap);
  });
});
