// The policy sandbox (src/meter.js, src/engine.js) on the real hostile test policy
// (guest/hostile: `hostile:loop` spins forever, `hostile:trap` panics, `hostile:grow` leaks
// 4 MiB per write, `hostile:huge` makes the next batch 200,000 keys).

import assert from 'node:assert/strict';
import path from 'node:path';
import { describe, test } from 'node:test';
import { PolicyRuntime } from '../src/engine.js';
import { MeterError, meterModule } from '../src/meter.js';
import { PolicyTrap, loadPolicy, policyDir } from '../src/policy.js';

const HOSTILE = path.join(policyDir(), 'hostile.wasm');

async function runtime() {
  const faults = [];
  const rt = await PolicyRuntime.create(HOSTILE, { windowMs: 1000 }, { onFault: (e) => faults.push(e) });
  await rt.ready();
  return { rt, faults };
}

describe('metering', () => {
  test('a looping call traps in milliseconds instead of hanging', async () => {
    const p = await loadPolicy(HOSTILE);
    const t0 = performance.now();
    assert.throws(() => p.recordWrite('aci:ns:hostile:loop', 1), PolicyTrap);
    assert.ok(performance.now() - t0 < 1000, `${performance.now() - t0} ms`);
  });

  test('memory is capped at 32 MiB', async () => {
    const p = await loadPolicy(HOSTILE);
    let writes = 0;
    assert.throws(() => {
      for (; writes < 100; writes++) p.recordWrite('hostile:grow', 1);
    }, PolicyTrap);
    assert.ok(writes <= 8, `${writes} leaks of 4 MiB succeeded`);
  });

  test('unmetered, the same module really loops (the bound comes from the metering)', async () => {
    const p = await loadPolicy(HOSTILE, { meter: false });
    assert.equal(p.source.metered, false);
    // Not called with hostile:loop (it would hang this test): the grow leak shows no cap.
    for (let i = 0; i < 12; i++) p.recordWrite('hostile:grow', 1);
  });

  test('modules the meter does not understand are refused, not run unmetered', () => {
    assert.throws(() => meterModule(Buffer.from('not wasm')), MeterError);
  });
});

describe('fault rules (docs/WIRE.md 7)', () => {
  test('a fault answers eager for a window, then a fresh instance takes over', async () => {
    const { rt, faults } = await runtime();
    assert.equal(rt.recordWrite('a', 0), 'ttl');
    assert.equal(rt.recordWrite('hostile:loop', 10), 'eager');
    assert.equal(rt.faults, 1);
    assert.equal(faults.length, 1);
    assert.equal(rt.currentStrategy(500), 'eager', 'eager during the window');
    assert.deepEqual(rt.pendingBatch(600), { keys: [], flushAll: true }, 'buffered keys were lost: flush');
    await rt.ready();
    assert.equal(rt.currentStrategy(1100), 'ttl', 'a fresh instance after the window');
    assert.equal(rt.faults, 1);
  });

  test('a follower stays a follower across a fault', async () => {
    const { rt } = await runtime();
    rt.follow('batched', 0);
    rt.recordWrite('hostile:trap', 1);
    assert.equal(rt.faults, 1);
    await rt.ready();
    assert.equal(rt.currentStrategy(2000), 'batched');
    assert.equal(rt.status(2000).following, true);
  });

  test('a batch over the cap is a fault and becomes a flush', async () => {
    const { rt } = await runtime();
    rt.follow('batched', 0);
    rt.recordWrite('hostile:huge', 1);
    rt.recordWrite('k', 1);
    const b = rt.pendingBatch(10_000);
    assert.equal(rt.faults, 1);
    assert.deepEqual(b, { keys: [], flushAll: true });
  });

  test('three faults in a row back off', async () => {
    const { rt } = await runtime();
    let t = 0;
    for (let i = 0; i < 3; i++) {
      await rt.ready();
      t += 1100;
      assert.notEqual(rt.currentStrategy(t), undefined);
      rt.recordWrite('hostile:trap', t);
    }
    assert.equal(rt.faults, 3);
    await rt.ready();
    rt.pendingBatch(t);
    assert.equal(rt.currentStrategy(t + 1100), 'eager', 'still waiting: window x 2');
    assert.equal(rt.currentStrategy(t + 2100), 'ttl', 'a fresh instance after window x 2');
  });
});
