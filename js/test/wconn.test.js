// The cache's own write connection (ownWriteConnection, src/wconn.js) against a real
// redis-server: which connection the eager writes take, the client's settings it must honour
// (db, AUTH, name), timeouts and a flush owed, a connection closed by the server, the clients
// it must leave alone, and stop().

import assert from 'node:assert/strict';
import net from 'node:net';
import { before, describe, test } from 'node:test';
import Redis from 'ioredis';
import { AdaptiveCache, CacheConfigError } from '../src/index.js';
import { decode } from '../src/wire.js';
import { clientsNamed, sleep, startRedis, until, useCaches } from './redis-server.js';

const fx = useCaches('w');
const { ns, quiet } = fx;

let adminClient = null;
const admin = () => (adminClient ??= fx.srv.client());

// The connections of the server named `name`, as CLIENT LIST fields.
const clients = (name) => clientsNamed(admin(), name);

// Records every command the server runs: [{ args, source, database }].
async function monitor(srv = fx.srv) {
  const m = await srv.client().monitor();
  const seen = [];
  m.on('monitor', (time, args, source, database) => seen.push({ args, source, database: Number(database) }));
  return { seen, stop: () => m.disconnect() };
}

async function listen(channel) {
  const sub = fx.srv.client();
  const got = [];
  sub.on('messageBuffer', (ch, payload) => got.push(decode(payload)));
  await sub.subscribe(channel);
  return got;
}

async function addrOf(redis) {
  const info = await redis.client('INFO');
  return /addr=(\S+)/.exec(info)[1];
}

// The suite runs twice: with the subscription on the write connection (ownSubscription, the
// default) and on a subscriber connection of its own.
let SUB = true;

async function eagerCache(redis, opts = {}) {
  const sub = SUB && (opts.pubsubRedis || opts.ownWriteConnection === false) ? {} : { ownSubscription: SUB };
  const c = new AdaptiveCache({ redis, namespace: ns(), isController: true, strategy: 'eager', logger: quiet, ...sub, ...opts });
  fx.caches.push(c);
  await c.start();
  return c;
}

// A TCP relay to the server that can refuse new connections, or drop a connection as soon as
// it carries a command (what a server closing an idle connection looks like to a writer whose
// write crossed the close).
async function relay(port) {
  const conns = new Set();
  const state = { refuse: false, dropNext: null, accepted: 0 };
  const server = net.createServer((down) => {
    if (state.refuse) {
      down.destroy();
      return;
    }
    state.accepted++;
    const up = net.connect(port, '127.0.0.1');
    conns.add(down);
    conns.add(up);
    down.on('data', (d) => {
      if (state.dropNext !== null && state.dropNext(down)) {
        state.dropNext = null;
        down.destroy();
        up.destroy();
        return;
      }
      up.write(d);
    });
    up.on('data', (d) => down.write(d));
    for (const s of [down, up]) {
      s.on('error', () => {});
      s.on('close', () => {
        conns.delete(s);
        (s === down ? up : down).destroy();
      });
    }
  });
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  const clients = [];
  const relayPort = server.address().port;
  return {
    port: relayPort,
    state,
    // An ioredis client through the relay, connected, that never reconnects; close() ends it.
    client: async () => {
      const redis = new Redis(relayPort, '127.0.0.1', { retryStrategy: () => null });
      redis.on('error', () => {});
      clients.push(redis);
      await redis.ping();
      return redis;
    },
    close: () => {
      for (const c of clients) c.disconnect();
      for (const s of conns) s.destroy();
      return new Promise((r) => server.close(r));
    },
  };
}

for (const ownSubscription of [true, false]) describe(`own write connection (ownSubscription: ${ownSubscription})`, () => {
  before(() => {
    SUB = ownSubscription;
  });
  // The cache's connections named like the client: the client's, ours, and the subscriber's
  // unless the subscription is on ours.
  const CONNS = ownSubscription ? 2 : 3;
  test('eager sets and deletes go out on the cache\'s own connection, value and TTL as asked', async () => {
    const name = `app-${ns()}`;
    const redis = fx.srv.client({ connectionName: name });
    const c = await eagerCache(redis);
    const userAddr = await addrOf(redis);
    const mon = await monitor();
    await c.set('a', 'v1', 7);
    await c.set('b', Buffer.from([0, 1, 2, 255]));
    assert.equal(await c.delete('a'), true);
    assert.equal(await c.delete('a'), false);
    await sleep(50);
    mon.stop();
    const rk = (k) => c.redisKey(k);
    for (const s of mon.seen) s.args[0] = String(s.args[0]).toLowerCase();
    const mine = mon.seen.filter((s) => s.args.some((a) => typeof a === 'string' && a.startsWith(rk(''))));
    // The SET runs inside the script: MONITOR shows it after the EVALSHA, from "lua". With the
    // subscription on that connection, SET and PUBLISH go as two commands.
    const sets = mine.filter((s) => s.args[0] === (ownSubscription ? 'set' : 'evalsha'));
    const dels = mine.filter((s) => s.args[0] === 'del');
    assert.equal(sets.length, 2, JSON.stringify(mine));
    assert.equal(dels.length, 2);
    const own = sets[0].source;
    assert.notEqual(own, userAddr, 'the SET went through the user\'s client');
    for (const s of [...sets, ...dels]) {
      assert.equal(s.source, own, `${s.args[0]} on another connection`);
    }
    // Value and TTL: a fresh write, checked from outside.
    await c.set('t', 'v2', 7);
    const r = fx.srv.client();
    assert.equal(await r.get(rk('t')), 'v2');
    const pttl = await r.pttl(rk('t'));
    assert.ok(pttl > 6000 && pttl <= 7000, `PTTL ${pttl}`);
    assert.deepEqual(await r.getBuffer(rk('b')), Buffer.from([0, 1, 2, 255]));
    assert.equal(await r.exists(rk('a')), 0);
    // The user's client and ours (and the subscription's duplicate), all with the client's name.
    assert.equal((await clients(name)).length, CONNS);
    const s = c.stats();
    assert.equal(s.ownWriteConnection, true);
    assert.equal(s.ownWrites, 5);
    assert.equal(s.publishFailures, 0);
    assert.equal(s.messagesSent >= 5, true);
    // Read-your-writes on the writer.
    assert.equal(await c.get('t'), 'v2');
  });

  test('the client\'s db (also one SELECTed later), password, ACL user and name are honoured', async () => {
    const srv = await startRedis();
    try {
      const admin = srv.client();
      await admin.acl('SETUSER', 'app', 'on', '>s3cret', '~*', '&*', '+@all');
      await admin.config('SET', 'requirepass', 'pw');
      const acl = srv.client({ username: 'app', password: 's3cret', db: 3, connectionName: 'acl-app' });
      const pass = srv.client({ password: 'pw', db: 2, connectionName: 'pw-app' });
      const caches = [];
      try {
        for (const redis of [acl, pass]) {
          const c = new AdaptiveCache({ redis, namespace: 'n', isController: true, strategy: 'eager', logger: quiet, ownSubscription });
          caches.push(c);
          await c.start();
        }
        await caches[0].set('k', 'acl');
        await caches[1].set('k', 'pw');
        const at = (db) => srv.client({ password: 'pw', db });
        assert.equal(await at(3).get('aci:n:k'), 'acl');
        assert.equal(await at(2).get('aci:n:k'), 'pw');
        assert.equal(await at(0).exists('aci:n:k'), 0, 'written to db 0');
        assert.ok(caches.every((c) => c.stats().ownWrites === 1), 'not on the own connection');
        const list = await at(0).client('LIST');
        const lines = list.split('\n').filter((l) => / name=acl-app /.test(l));
        assert.equal(lines.length, CONNS, list);
        assert.ok(lines.every((l) => / user=app /.test(l)), 'the ACL user');
        // A SELECT made on the client later: our connection follows it.
        await acl.select(5);
        await caches[0].set('k', 'five');
        assert.equal(await at(5).get('aci:n:k'), 'five');
        assert.equal(await at(3).get('aci:n:k'), 'acl');
        assert.equal(caches[0].stats().ownWrites, 2);
      } finally {
        for (const c of caches) await c.stop();
      }
    } finally {
      await srv.stop();
    }
  });

  test('CLIENT PAUSE WRITE past commandTimeout: the set rejects, L1 drops it, the next write flushes first', async () => {
    const redis = fx.srv.client({ commandTimeout: 200 });
    // No tick after start(): the flush owed must come with the next write itself.
    const c = await eagerCache(redis, { tickInterval: 30 });
    const got = await listen(`aci:${c.redisKey('').split(':')[1]}:invalidation`);
    await c.set('a', '1');
    assert.equal(await c.get('a'), '1');
    await admin().client('PAUSE', 700, 'WRITE');
    const t0 = performance.now();
    await assert.rejects(c.set('a', '2'), /timed out/);
    assert.ok(performance.now() - t0 < 600, 'the timeout did not apply');
    assert.equal(c.stats().publishFailures, 1);
    assert.equal(c.stats().l1Entries, 0, 'the L1 entry survived a failed write');
    await sleep(800); // the pause is over
    await c.set('b', '3');
    await until(() => got.some((m) => m.keys?.[0] === c.redisKey('b')), 2000, 'the invalidation of b');
    const actions = got.map((m) => m.action + (m.keys ? `:${m.keys[0]}` : ''));
    const iFlush = actions.indexOf('flush');
    assert.ok(iFlush >= 0 && iFlush < actions.indexOf(`invalidate:${c.redisKey('b')}`), actions.join(' '));
    assert.equal(await admin().get(c.redisKey('b')), '3');
    // The flush was owed once: later writes carry none.
    const flushes = got.filter((m) => m.action === 'flush').length;
    await c.set('d', '4');
    await sleep(50);
    assert.equal(got.filter((m) => m.action === 'flush').length, flushes);
  });

  test('after SCRIPT FLUSH an eager write still goes through (EVAL), in order, no flush owed', async () => {
    const c = await eagerCache(fx.srv.client());
    const got = await listen(`aci:${c.redisKey('').split(':')[1]}:invalidation`);
    await c.set('a', '1');
    await admin().script('FLUSH');
    await c.set('b', '2'); // NOSCRIPT, then EVAL
    await c.set('c', Buffer.from('3'));
    await until(() => got.filter((m) => m.action === 'invalidate').length >= 3, 2000, 'three invalidations');
    assert.deepEqual(got.map((m) => `${m.action}:${m.seq}:${m.keys?.[0]}`), ['a', 'b', 'c'].map((k, i) => `invalidate:${i + 1}:${c.redisKey(k)}`));
    assert.equal(await admin().get(c.redisKey('b')), '2');
    assert.equal(await admin().get(c.redisKey('c')), '3');
    assert.equal(c.stats().publishFailures, 0);
    assert.equal(c.stats().ownWrites, 3);
  });

  test('the server killing the idle connection: the next set still succeeds', async () => {
    const name = `kill-${ns()}`;
    const redis = fx.srv.client({ connectionName: name });
    const c = await eagerCache(redis);
    await c.set('a', '1');
    const userId = await redis.client('ID');
    const own = (await clients(name)).filter((x) => Number(x.id) !== userId && (ownSubscription ? x.resp === '3' : x.sub === '0' && x.psub === '0'));
    assert.equal(own.length, 1);
    await admin().client('KILL', 'ID', own[0].id);
    await c.set('a', '2');
    assert.equal(await admin().get(c.redisKey('a')), '2');
    assert.equal(c.stats().publishFailures, 0);
    assert.equal(c.stats().ownWrites, 2);
  });

  test('a write crossing the close of an idle connection is sent once more on a fresh one', async () => {
    const r = await relay(fx.srv.port);
    try {
      const redis = await r.client();
      const c = await eagerCache(redis, { pubsubRedis: fx.srv.client() });
      await c.set('a', '1');
      await c.set('a', '2');
      const accepted = r.state.accepted;
      // The next command on any connection but the client's own is dropped with its socket:
      // the write reached a connection the "server" closed without answering.
      const userPort = redis.stream.localPort;
      let dropped = 0;
      r.state.dropNext = (down) => down.remotePort !== userPort && ++dropped > 0;
      await c.set('a', '3');
      assert.equal(dropped, 1, 'nothing was dropped');
      assert.equal(r.state.accepted, accepted + 1, 'no fresh connection');
      assert.equal(await admin().get(c.redisKey('a')), '3');
      assert.equal(c.stats().publishFailures, 0);
      assert.equal(c.stats().ownWrites, 3);
      await c.stop();
      redis.disconnect();
    } finally {
      await r.close();
    }
  });

  test('a write connection that cannot be opened: writes go through the client, for a while', async () => {
    const r = await relay(fx.srv.port);
    try {
      const redis = await r.client();
      r.state.refuse = true; // the client's connection is up; new ones are refused
      const c = new AdaptiveCache({ redis, namespace: ns(), isController: true, strategy: 'eager', logger: quiet, pubsubRedis: fx.srv.client() });
      fx.caches.push(c);
      await c.start();
      await c.set('a', '1'); // the dial at start() failed: through the client at once
      // Each a second later: the dial fails under the write, which then goes through the client.
      await sleep(1100);
      await c.set('a', '2');
      assert.equal(await admin().get(c.redisKey('a')), '2');
      await sleep(1100);
      assert.equal(await c.delete('a'), true);
      await c.set('b', 'x');
      assert.equal(await admin().get(c.redisKey('b')), 'x');
      assert.equal(c.stats().ownWrites, 0);
      assert.equal(c.stats().publishFailures, 0);
      assert.equal(c.stats().writes, 3);
      assert.equal(c.stats().deletes, 1);
      // The server takes connections again: after the back-off, writes are ours again.
      r.state.refuse = false;
      await sleep(1100);
      await c.set('b', 'y');
      await until(async () => {
        await c.set('b', 'z');
        return c.stats().ownWrites > 0;
      }, 3000, 'a write on the own connection');
      await c.stop();
      redis.disconnect();
    } finally {
      await r.close();
    }
  });

  test('clients it cannot stand in for keep their writes; so does ownWriteConnection: false', async () => {
    const name = ns();
    const cases = [
      ['keyPrefix', fx.srv.client({ keyPrefix: 'pre:' })],
      ['enableAutoPipelining', fx.srv.client({ enableAutoPipelining: true })],
      ['option off', fx.srv.client(), { ownWriteConnection: false }],
    ];
    const r = fx.srv.client();
    for (const [what, redis, opts] of cases) {
      const c = await eagerCache(redis, { namespace: `${name}-${what.replace(/ /g, '')}`, ...opts });
      await c.set('k', what);
      assert.equal(await c.delete('k'), true, what);
      await c.set('k', what);
      assert.equal(c.stats().ownWriteConnection, false, what);
      assert.equal(c.stats().ownWrites, 0, what);
      const prefix = what === 'keyPrefix' ? 'pre:' : '';
      assert.equal(await r.get(prefix + c.redisKey('k')), what);
    }
    assert.throws(() => new AdaptiveCache({ redis: r, ownWriteConnection: 'yes' }), (e) => e instanceof CacheConfigError && e.field === 'ownWriteConnection');
  });

  test('writes keep the order they were made in across the two paths', async () => {
    // Under ttl a set goes through the client, a delete through our connection: one made right
    // after the other must not overtake it, even while our connection is still being opened.
    const name = `order-${ns()}`;
    const redis = fx.srv.client({ connectionName: name });
    const c = await eagerCache(redis, { strategy: 'ttl' });
    const userId = await redis.client('ID');
    const r = admin();
    for (let i = 0; i < 100; i++) {
      const k = `k${i}`;
      await Promise.all([c.set(k, 'v'), c.delete(k)]);
      assert.equal(await r.exists(c.redisKey(k)), 0, `the DEL of ${k} overtook its SET`);
    }
    for (let i = 0; i < 20; i++) {
      // Our connection gone: the delete waits for a new one, the set after it must wait too.
      const own = (await clients(name)).filter((x) => Number(x.id) !== userId && (ownSubscription ? x.resp === '3' : x.sub === '0'));
      for (const x of own) await r.client('KILL', 'ID', x.id);
      await sleep(5);
      const k = `d${i}`;
      await Promise.all([c.delete(k), c.set(k, 'v')]);
      assert.equal(await r.get(c.redisKey(k)), 'v', `the SET of ${k} overtook the DEL before it`);
    }
    assert.ok(c.stats().ownWrites >= 40, `${c.stats().ownWrites} writes on our connection`);
  });

  test('stop() closes the connection it opened; the client stays open', async () => {
    const name = `stop-${ns()}`;
    const redis = fx.srv.client({ connectionName: name });
    await redis.ping();
    const before = process.getActiveResourcesInfo().filter((x) => x === 'TCPSocketWrap').length;
    const c = await eagerCache(redis);
    await c.set('a', '1');
    assert.equal((await clients(name)).length, CONNS);
    // Writes in flight when stop() is called are answered, not cut.
    const writes = [c.set('b', '2'), c.set('c', '3')];
    await c.stop();
    await Promise.all(writes);
    await until(async () => (await clients(name)).length === 1, 2000, 'only the user\'s connection');
    await until(() => process.getActiveResourcesInfo().filter((x) => x === 'TCPSocketWrap').length <= before, 2000, 'the sockets closed');
    assert.equal(await redis.get(c.redisKey('c')), '3');
  });
});
