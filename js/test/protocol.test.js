// The fleet protocol as seen on the wire (docs/WIRE.md v2), against a real redis-server: what an
// instance publishes (marks, reports, strategy updates, heartbeats, flush after a failed
// publish) and how it reacts to what it hears (gaps, restarts, controller silence).

import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { AdaptiveCache } from '../src/index.js';
import { decode } from '../src/wire.js';
import { sleep, until, useCaches } from './redis-server.js';

const fx = useCaches('p');
const { ns, cache, quiet } = fx;

// Records every message on the given channels: [{ channel, at, msg }].
async function listen(...channels) {
  const sub = fx.srv.client();
  const got = [];
  sub.on('messageBuffer', (ch, payload) => got.push({ channel: ch.toString(), at: performance.now(), msg: decode(payload) }));
  await sub.subscribe(...channels);
  return got;
}

describe('what an instance sends', () => {
  test('eager writes carry seq 1, 2, ...; one mark follows a burst; none at idle', async () => {
    const name = ns();
    const got = await listen(`aci:${name}:invalidation`);
    const c = await cache({ namespace: name, isController: true, strategy: 'eager' });
    for (let i = 0; i < 5; i++) await c.set(`k${i}`, 'v');
    await sleep(1200);
    const msgs = got.map((g) => g.msg);
    const inval = msgs.filter((m) => m.action === 'invalidate');
    assert.deepEqual(inval.map((m) => m.seq), [1, 2, 3, 4, 5]);
    assert.deepEqual(inval.map((m) => m.keys[0]), [0, 1, 2, 3, 4].map((i) => `aci:${name}:k${i}`));
    const marks = msgs.filter((m) => m.action === 'mark');
    assert.deepEqual(marks.map((m) => m.inval_seq), [5], 'exactly one mark after the burst');
    assert.ok(msgs.every((m) => m.source === c.id && m.epoch && !m.malformed));
  });

  test('controller: strategy_update every second; follower: write_report only after writes', async () => {
    const name = ns();
    const got = await listen(`aci:${name}:strategy`, `aci:${name}:reports`, `aci:${name}:liveness:fixed-id-1`);
    const ctl = await cache({ namespace: name, isController: true });
    const fol = await cache({ namespace: name, isController: false, instanceId: 'fixed-id-1' });
    await sleep(2200);
    const updates = got.filter((g) => g.msg.action === 'strategy_update');
    assert.ok(updates.length >= 2 && updates.length <= 4, `${updates.length} updates in 2.2 s`);
    assert.equal(got.filter((g) => g.msg.action === 'write_report').length, 0, 'reports at idle');
    assert.ok(got.filter((g) => g.msg.action === 'heartbeat' && g.msg.source === 'fixed-id-1').length >= 2);
    for (let i = 0; i < 10; i++) await fol.set(`k${i}`, 'v');
    await until(() => got.some((g) => g.msg.action === 'write_report'), 2000, 'a report');
    await sleep(600);
    const reports = got.filter((g) => g.msg.action === 'write_report');
    assert.equal(reports.reduce((a, g) => a + g.msg.count, 0), 10);
    assert.equal(fol.strategy, ctl.strategy, 'the follower follows');
  });

  test('a failed publish is followed by a flush before any other invalidation', async () => {
    const name = ns();
    const got = await listen(`aci:${name}:invalidation`);
    const redis = fx.srv.client({ maxRetriesPerRequest: 0, enableOfflineQueue: false });
    // The client's failure is the test (the own write connection's: test/wconn.test.js).
    const c = new AdaptiveCache({ redis, namespace: name, isController: true, strategy: 'eager', logger: quiet, ownWriteConnection: false });
    fx.caches.push(c);
    await c.start();
    await c.set('a', '1');
    redis.disconnect(true);
    await assert.rejects(c.set('b', '2'));
    // Once Redis answers again, the next write goes through, preceded by a flush.
    await until(() => c.set('c', '3').then(() => true, () => false), 5000, 'a write after reconnecting');
    await sleep(100);
    const actions = got.map((g) => g.msg.action + (g.msg.keys ? `:${g.msg.keys.join()}` : ''));
    const iFlush = actions.indexOf('flush');
    assert.ok(iFlush >= 0, actions.join(' '));
    assert.ok(iFlush < actions.indexOf(`invalidate:aci:${name}:c`), actions.join(' '));
  });

  test('an eager write after SCRIPT FLUSH goes through (EVAL), its invalidation in order, no flush owed', async () => {
    const name = ns();
    const got = await listen(`aci:${name}:invalidation`);
    const c = await cache({ namespace: name, isController: true, strategy: 'eager', ownWriteConnection: false });
    await c.set('a', '1');
    await fx.srv.client().script('FLUSH');
    await c.set('b', '2'); // NOSCRIPT, then EVAL
    await c.set('c', '3');
    await until(() => got.filter((g) => g.msg.action === 'invalidate').length >= 3, 2000, 'three invalidations');
    const inval = got.filter((g) => g.msg.action === 'invalidate').map((g) => `${g.msg.seq}:${g.msg.keys[0]}`);
    assert.deepEqual(inval, ['a', 'b', 'c'].map((k, i) => `${i + 1}:aci:${name}:${k}`));
    assert.equal(await fx.srv.client().get(`aci:${name}:b`), '2');
    assert.equal(await c.get('b'), '2');
    assert.equal(c.stats().publishFailures, 0);
    assert.equal(c.stats().messagesSent >= 3, true);
    assert.ok(!got.some((g) => g.msg.action === 'flush'), 'no flush');
  });

  test('a write still in flight is not announced: no position names it, no receiver flushes for it', async () => {
    // docs/WIRE.md 4: a position (mark, strategy_update) names only settled seqs. The writer's
    // eager script call is held back (as a cluster's SET waits on a slow shard, or a write goes
    // out on another connection) while its ticks go through on the same client.
    const name = ns();
    const got = await listen(`aci:${name}:invalidation`, `aci:${name}:strategy`);
    const redis = fx.srv.client();
    let gate = null;
    let release;
    const evalsha = redis.evalsha.bind(redis);
    redis.evalsha = (...args) => (gate ? gate.then(() => evalsha(...args)) : evalsha(...args));
    // The gate holds the script call: the writes go through the client (ownWriteConnection off).
    const w = new AdaptiveCache({ redis, namespace: name, isController: true, strategy: 'eager', tickInterval: 0.05, logger: quiet, ownWriteConnection: false });
    fx.caches.push(w);
    await w.start();
    const rx = await cache({ namespace: name, isController: false, tickInterval: 0.05 });
    await w.set('a', '1');
    await until(() => got.some((g) => g.msg.action === 'mark' && g.msg.inval_seq === 1), 2000, 'the mark of seq 1');
    gate = new Promise((r) => {
      release = r;
    });
    const write = w.set('b', '2');
    // Ticks every 50 ms, a heartbeat's strategy_update, and more than the 250 ms reorder allowance.
    await sleep(1300);
    const positions = got.filter((g) => g.msg.source === w.id && Number.isInteger(g.msg.inval_seq)).map((g) => g.msg);
    const shown = positions.map((m) => `${m.action}:${m.inval_seq}`).join(' ');
    assert.equal(rx.stats().gaps, 0, `the receiver took the write in flight for a loss (positions sent: ${shown})`);
    assert.ok(positions.every((m) => m.inval_seq <= 1), `announced seq 2 while in flight: ${shown}`);
    assert.ok(positions.some((m) => m.action === 'strategy_update'), 'a strategy_update went out meanwhile');
    gate = null;
    release();
    await write;
    await until(() => got.some((g) => g.msg.action === 'mark' && g.msg.inval_seq === 2), 2000, 'the mark of seq 2 once it settled');
    const inval = got.findIndex((g) => g.msg.action === 'invalidate' && g.msg.seq === 2);
    const mark = got.findIndex((g) => g.msg.action === 'mark' && g.msg.inval_seq === 2);
    assert.ok(inval >= 0 && inval < mark, 'the invalidation before the position that names it');
    await sleep(350);
    assert.equal(rx.stats().gaps, 0);
    assert.equal(rx.stats().flushes, 1, 'only the flush of subscribing');
  });
});

describe('what an instance does with what it hears', () => {
  test('a sequence gap flushes L1 after the reorder allowance; a restart at once', async () => {
    const name = ns();
    const c = await cache({ namespace: name, isController: true, strategy: 'ttl' });
    const r = fx.srv.client();
    const ch = `aci:${name}:invalidation`;
    const inval = (seq, epoch = 'e1') => JSON.stringify({ action: 'invalidate', keys: [], source: 'other', epoch, seq, timestamp: Date.now() / 1000 });
    await c.set('k', 'v');
    assert.equal(c.stats().l1Entries, 1);
    await r.publish(ch, inval(1));
    await r.publish(ch, inval(3));
    await sleep(100);
    assert.equal(c.stats().gaps, 0, 'within the allowance');
    await until(() => c.stats().gaps === 1, 2000, 'the gap declared');
    assert.equal(c.stats().l1Entries, 0);
    await c.set('k', 'v');
    await r.publish(ch, inval(1, 'e2'));
    await until(() => c.stats().gaps === 2, 1000, 'the restart noticed');
    assert.equal(c.stats().l1Entries, 0);
  });

  test('a write made under batched is published even when the policy left batched before hearing of it', async () => {
    const name = ns();
    const r = fx.srv.client();
    const got = await listen(`aci:${name}:invalidation`);
    // A long tick, so the write and the change of strategy both happen between two ticks.
    const fol = await cache({ namespace: name, isController: false, tickInterval: 1.5, controllerInterval: 10 });
    const update = (strategy) => r.publish(`aci:${name}:strategy`,
      JSON.stringify({ action: 'strategy_update', strategy, write_rate: 20, source: 'ctl', timestamp: Date.now() / 1000 }));
    await update('batched');
    await until(() => fol.strategy === 'batched', 1000, 'following batched');
    await fol.set('x', '1');
    await update('ttl'); // the policy follows ttl before the tick tells it of the write
    await until(() => fol.strategy === 'ttl', 1000, 'following ttl');
    await until(() => got.some((g) => g.msg.action === 'invalidate'), 4000, 'the write published');
    const m = got.find((g) => g.msg.action === 'invalidate').msg;
    assert.deepEqual(m.keys, [`aci:${name}:x`]);
    assert.equal(m.strategy, 'batched');
    assert.equal(m.source, fol.id);
  });

  test('a follower that hears no controller follows eager', async () => {
    const name = ns();
    const r = fx.srv.client();
    const fol = await cache({ namespace: name, isController: false, controllerInterval: 0.5 });
    await r.publish(`aci:${name}:strategy`, JSON.stringify({ action: 'strategy_update', strategy: 'ttl', write_rate: 1, source: 'ctl', timestamp: 1 }));
    await until(() => fol.strategy === 'ttl', 1000, 'following ttl');
    await until(() => fol.strategy === 'eager', 2000, 'eager after silence');
    assert.equal(fol.stats().controllerLost, 1);
  });
});
