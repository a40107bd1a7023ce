// The subscription on the cache's own write connection (ownSubscription, src/wconn.js
// OwnSubscriber) against a real redis-server: one RESP3 connection carries the writes and the
// subscription; other instances' invalidations reach the L1 through it; losing it suspends the
// L1 until it is back, subscribed and flushed; a flush owed still goes first; the option's rules.

import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { describe, test } from 'node:test';
import Redis from 'ioredis';
import { AdaptiveCache, CacheConfigError } from '../src/index.js';
import { decode } from '../src/wire.js';
import { clientsNamed, freePort, sleep, until, useCaches } from './redis-server.js';

const fx = useCaches('o');
const { ns, quiet } = fx;

let adminClient = null;
const admin = () => (adminClient ??= fx.srv.client());

// The connections of the server named `name`, as CLIENT LIST fields.
const clients = (name) => clientsNamed(admin(), name);

async function make(redis, opts = {}) {
  const c = new AdaptiveCache({ redis, namespace: ns(), logger: quiet, ...opts });
  fx.caches.push(c);
  await c.start();
  return c;
}

describe('subscription on the own write connection', () => {
  test('one RESP3 connection carries the writes and the subscription; no subscriber of its own', async () => {
    const name = `one-${ns()}`;
    const redis = fx.srv.client({ connectionName: name });
    await redis.ping(); // ready: start() would dial the write connection at once
    const dialled = async () => Number(/total_connections_received:(\d+)/.exec(await admin().info('stats'))[1]);
    const before = await dialled();
    const warns = [];
    const c = await make(redis, { isController: true, strategy: 'eager', logger: { warn: (m) => warns.push(m) } });
    // Subscribed at the first try, on the one RESP3 connection it dialled.
    assert.equal(await dialled(), before + 1, 'start() dialled more than one connection');
    assert.deepEqual(warns, []);
    assert.equal(c.stats().resubscribes, 0);
    assert.equal(c.stats().l1Serving, true);
    await c.set('a', '1');
    await c.delete('a');
    const userId = Number(await redis.client('ID'));
    const mine = (await clients(name)).filter((x) => Number(x.id) !== userId);
    assert.equal(mine.length, 1, JSON.stringify(mine));
    const [own] = mine;
    assert.equal(own.resp, '3');
    // invalidation, strategy, liveness, policy, and reports (controller)
    assert.equal(own.sub, '5');
    assert.match(own.cmd, /^(evalsha|del|publish)$/, 'the writes go on it');
    const s = c.stats();
    assert.equal(s.ownSubscription, true);
    assert.equal(s.ownWrites, 2);
    assert.ok(s.pubsubReceived >= 2, `${s.pubsubReceived} messages heard: its own writes come back on it`);
    // And no connection with the name is subscribed but that one.
    assert.equal((await clients(name)).filter((x) => x.sub !== '0').length, 1);
  });

  test('another instance\'s invalidation reaches this L1 through it', async () => {
    const name = ns();
    const cname = `inv-${name}`;
    const a = await make(fx.srv.client({ connectionName: cname }), { namespace: name, isController: false });
    const b = await make(fx.srv.client(), { namespace: name, isController: true, strategy: 'eager' });
    await until(() => a.strategy === 'eager', 3000, 'a follows eager');
    await b.set('x', 'v1');
    // Its invalidation heard first (else it could drop what the next read puts in L1).
    await until(() => a.stats().invalidationsApplied >= 1, 2000, 'the first invalidation at a');
    assert.equal(await a.get('x'), 'v1');
    const hits = a.stats().l1Hits;
    assert.equal(await a.get('x'), 'v1');
    assert.equal(a.stats().l1Hits, hits + 1, 'served from L1');
    const applied = a.stats().invalidationsApplied;
    await b.set('x', 'v2');
    await until(() => a.stats().invalidationsApplied > applied, 2000, 'the invalidation at a');
    assert.equal(await a.get('x'), 'v2');
    // a's only subscribed connection is its own write connection.
    const subs = (await clients(cname)).filter((x) => x.sub !== '0');
    assert.equal(subs.length, 1);
    assert.equal(subs[0].resp, '3');
    assert.equal(a.stats().ownSubscription, true);
  });

  test('CLIENT KILL of it: L1 suspended, then resubscribed, flushed and serving again', async () => {
    const name = ns();
    const cname = `kill-${name}`;
    const redis = fx.srv.client({ connectionName: cname });
    const c = await make(redis, { namespace: name, isController: true, strategy: 'ttl' });
    const other = await make(fx.srv.client(), { namespace: name, isController: false, strategy: 'ttl' });
    await c.set('k', 'v');
    assert.equal(await c.get('k'), 'v');
    assert.equal(c.stats().l1Serving, true);
    assert.equal(c.stats().l1Entries, 1);
    const flushes = c.stats().flushes;
    const userId = Number(await redis.client('ID'));
    const [own] = (await clients(cname)).filter((x) => Number(x.id) !== userId);
    await admin().client('KILL', 'ID', own.id);
    await until(() => !c.stats().l1Serving, 2000, 'suspension');
    // Written meanwhile (ttl: nobody is told): a suspended L1 reads Redis.
    await other.set('k', 'v2');
    assert.equal(await c.get('k'), 'v2', 'read from Redis while suspended');
    await until(() => c.stats().l1Serving, 10_000, 'resubscription');
    const s = c.stats();
    assert.ok(s.resubscribes >= 1);
    assert.ok(s.flushes > flushes, 'flushed on resubscribe');
    // Back on one connection, subscribed again.
    const mine = (await clients(cname)).filter((x) => Number(x.id) !== userId);
    assert.equal(mine.length, 1);
    assert.equal(mine[0].resp, '3');
    assert.equal(mine[0].sub, '5');
    // Serving again, from an L1 that came back empty.
    assert.equal(await c.get('k'), 'v2');
    const hits = c.stats().l1Hits;
    assert.equal(await c.get('k'), 'v2');
    assert.equal(c.stats().l1Hits, hits + 1);
    // Writes go on the new connection.
    const ow = c.stats().ownWrites;
    await c.delete('k');
    assert.equal(c.stats().ownWrites, ow + 1);
  });

  test('a publish that failed: the flush owed goes first, and the L1 waits for a resubscription', async () => {
    const redis = fx.srv.client({ commandTimeout: 200 });
    const name = ns();
    const c = await make(redis, { namespace: name, isController: true, strategy: 'eager', tickInterval: 30 });
    const sub = fx.srv.client();
    const got = [];
    sub.on('messageBuffer', (ch, payload) => got.push(decode(payload)));
    await sub.subscribe(`aci:${name}:invalidation`);
    await c.set('a', '1');
    assert.equal(await c.get('a'), '1');
    await admin().client('PAUSE', 700, 'WRITE');
    await assert.rejects(c.set('a', '2'), /timed out/);
    assert.equal(c.stats().publishFailures, 1);
    // The timeout closed the connection, and the subscription on it.
    assert.equal(c.stats().l1Serving, false);
    await sleep(800);
    await until(() => c.stats().l1Serving, 10_000, 'resubscription');
    await c.set('b', '3');
    await until(() => got.some((m) => m.keys?.[0] === c.redisKey('b')), 2000, 'the invalidation of b');
    const actions = got.map((m) => m.action + (m.keys ? `:${m.keys[0]}` : ''));
    const iFlush = actions.indexOf('flush');
    assert.ok(iFlush >= 0 && iFlush < actions.indexOf(`invalidate:${c.redisKey('b')}`), actions.join(' '));
    assert.equal(got.filter((m) => m.action === 'flush').length, 1);
    assert.equal(c.stats().ownSubscription, true);
  });

  test('liveness: a silent subscription is dropped and comes back on a new connection', async () => {
    const name = ns();
    const cname = `live-${name}`;
    const redis = fx.srv.client({ connectionName: cname });
    // A follower hears nothing of its own: no controller, only its liveness silence.
    const c = await make(redis, { namespace: name, role: 'follower', livenessTimeout: 0.3, tickInterval: 0.05 });
    const userId = Number(await redis.client('ID'));
    const [first] = (await clients(cname)).filter((x) => Number(x.id) !== userId);
    await until(() => c.stats().resubscribes >= 1, 5000, 'a resubscription after the silence');
    await until(async () => {
      const mine = (await clients(cname)).filter((x) => Number(x.id) !== userId);
      return mine.length === 1 && mine[0].id !== first.id && mine[0].sub === '4';
    }, 5000, 'a new subscribed connection instead of the old');
  });

  test('stop() leaves no connection and no handle', async () => {
    const name = `stop-${ns()}`;
    const redis = fx.srv.client({ connectionName: name });
    await redis.ping();
    const sockets = () => process.getActiveResourcesInfo().filter((x) => x === 'TCPSocketWrap').length;
    const before = sockets();
    const c = await make(redis, { isController: true, strategy: 'eager' });
    await c.set('a', '1');
    assert.equal((await clients(name)).length, 2);
    const writes = [c.set('b', '2'), c.delete('a')];
    await c.stop();
    await Promise.all(writes);
    await until(async () => (await clients(name)).length === 1, 2000, 'only the user\'s connection');
    await until(() => sockets() <= before, 2000, 'the sockets closed');
    assert.equal(await redis.get(c.redisKey('b')), '2');
  });

  test('the option: default on, off on request, with pubsubRedis or ownBatchDelay; refused where it cannot be', async () => {
    const r = fx.srv.client();
    const off = await make(fx.srv.client(), { ownSubscription: false });
    assert.equal(off.stats().ownSubscription, false);
    assert.equal(off.stats().ownWriteConnection, true);
    const passed = await make(fx.srv.client(), { pubsubRedis: fx.srv.client() });
    assert.equal(passed.stats().ownSubscription, false);
    const delayed = await make(fx.srv.client(), { ownBatchDelay: 0.005 });
    assert.equal(delayed.stats().ownSubscription, false);
    const noOwn = await make(fx.srv.client(), { ownWriteConnection: false });
    assert.equal(noOwn.stats().ownSubscription, false);
    const prefixed = await make(fx.srv.client({ keyPrefix: 'p:' }));
    assert.equal(prefixed.stats().ownSubscription, false, 'no own writer, no own subscription');
    for (const [opts, what] of [
      [{ ownSubscription: 'yes' }, 'a boolean'],
      [{ ownSubscription: true, pubsubRedis: fx.srv.client() }, 'pubsubRedis'],
      [{ ownSubscription: true, ownBatchDelay: 0.001 }, 'ownBatchDelay'],
      [{ ownSubscription: true, ownWriteConnection: false }, 'ownWriteConnection'],
    ]) {
      assert.throws(() => new AdaptiveCache({ redis: r, ...opts }), (e) => e instanceof CacheConfigError && e.field === 'ownSubscription' && e.message.includes(what), what);
    }
  });
});

describe('a server without HELLO (as Redis < 6)', () => {
  test('the subscription falls back to a subscriber connection; writes stay on the own connection', async () => {
    const bin = process.env.ACI_REDIS_SERVER || process.env.REDIS_SERVER || 'redis-server';
    const port = await freePort();
    const child = spawn(bin, ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--rename-command', 'HELLO', ''], { stdio: 'ignore' });
    const exited = new Promise((r) => child.once('exit', r));
    const mine = [];
    try {
      const client = () => {
        const r = new Redis(port, '127.0.0.1', { retryStrategy: (n) => (n > 100 ? null : 50) });
        r.on('error', () => {});
        mine.push(r);
        return r;
      };
      await until(async () => (await client().ping().catch(() => null)) === 'PONG', 10_000, 'the server');
      const warns = [];
      const mk = async (opts) => {
        const c = new AdaptiveCache({ redis: client(), namespace: 'old', logger: { warn: (m) => warns.push(m) }, ...opts });
        mine.push({ disconnect: () => c.stop() });
        await c.start();
        return c;
      };
      const a = await mk({ isController: false });
      const b = await mk({ isController: true, strategy: 'eager' });
      await until(() => a.strategy === 'eager' && a.stats().l1Serving, 5000, 'a subscribed and eager');
      assert.equal(a.stats().ownSubscription, false);
      assert.equal(a.stats().ownWriteConnection, true);
      assert.ok(warns.some((m) => /no RESP3/.test(m)), warns.join('\n'));
      await b.set('x', 'v1');
      await until(() => a.stats().invalidationsApplied >= 1, 2000, 'the first invalidation');
      assert.equal(await a.get('x'), 'v1');
      const applied = a.stats().invalidationsApplied;
      await b.set('x', 'v2');
      await until(() => a.stats().invalidationsApplied > applied, 2000, 'the invalidation at a');
      assert.equal(await a.get('x'), 'v2');
      await b.set('y', 'w');
      assert.ok(b.stats().ownWrites >= 1, 'writes left the own connection');
      assert.equal(b.stats().publishFailures, 0);
      await a.stop();
      await b.stop();
    } finally {
      for (const r of mine.reverse()) await r.disconnect();
      child.kill('SIGKILL');
      await exited;
    }
  });
});
