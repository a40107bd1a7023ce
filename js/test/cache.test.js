// AdaptiveCache against a real redis-server (test/redis-server.js): the original README's
// snippets, L1 guarantees, the fleet protocol between instances, the policy sandbox.

import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { Cluster } from 'ioredis';
import { AdaptiveCache, CacheConfigError } from 'aci-cache';
import { NearCache } from '../src/near-cache.js';
import { policyDir } from '../src/policy.js';
import { sleep, until, useCaches } from './redis-server.js';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const HOSTILE = path.join(policyDir(), 'hostile.wasm');
const quiet = { warn() {} };

const fx = useCaches('t');
const { ns, cache } = fx;

describe('configuration', () => {
  test('errors name the option, at construction', () => {
    const redis = fx.srv.client();
    const cases = [
      [{ redis, namespace: 'a:b' }, 'namespace'],
      [{ redis, namespace: '' }, 'namespace'],
      [{ redis, lowThreshold: 60 }, 'lowThreshold'],
      [{ redis, defaultTtl: 0 }, 'defaultTtl'],
      [{ redis, batchInterval: -1 }, 'batchInterval'],
      [{ redis, slidingWindow: NaN }, 'slidingWindow'],
      [{ redis, isController: 'yes' }, 'isController'],
      [{ redis, instanceId: 'a:b' }, 'instanceId'],
      [{ redis, channelPrefix: 'x y' }, 'channelPrefix'],
      [{ redis, highTreshold: 5 }, 'highTreshold'],
      [{ redis, ownBatchDelay: 0.006 }, 'ownBatchDelay'], // docs/WIRE.md 5: at most 5 ms
      [{ redis, ownWriteConnection: 1 }, 'ownWriteConnection'],
      [{}, 'redis'],
      // Not WIRE.md 10 yet: refused rather than deaf to the rest of a cluster fleet.
      [{ redis: new Cluster([{ host: '127.0.0.1', port: 1 }], { lazyConnect: true }) }, 'redis'],
    ];
    for (const [opts, field] of cases) {
      assert.throws(() => new AdaptiveCache(opts), (e) => e instanceof CacheConfigError && e.field === field, field);
    }
  });

  test('id is 12 hex characters; reserved keys are refused without a namespace', async () => {
    const c = await cache({});
    assert.match(c.id, /^[0-9a-f]{12}$/);
    await assert.rejects(c.set('aci::controller', 'x'), (e) => e.field === 'key');
    await assert.rejects(c.get('aci::x'), (e) => e.field === 'key');
    await c.stop();
  });
});

describe('the original README, unchanged', () => {
  test('Node.js quick start (its own process, `new Redis()` pointed at the test server)', async () => {
    const dir = mkdtempSync(path.join(HERE, '.snippet-'));
    try {
      // The snippet verbatim; a preload points ioredis's default port at the test server.
      writeFileSync(path.join(dir, 'quickstart.mjs'), `import Redis from "ioredis";
import { AdaptiveCache } from "aci-cache";

const cache = new AdaptiveCache({ redis: new Redis() });
await cache.start();

await cache.set("user:42", JSON.stringify({ name: "Alice" }));
const data = await cache.get("user:42");

console.log(cache.strategy);           // "ttl" | "batched" | "eager"
console.log(cache.statsSnapshot.totalWrites);

await cache.stop();
`);
      const out = await runSnippet(dir, 'quickstart.mjs');
      assert.match(out[0], /^(ttl|batched|eager)$/);
      assert.equal(out[1], '1');
      assert.equal(await fx.srv.client().get('user:42'), '{"name":"Alice"}');
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  test('multi-instance setup and configuration example', async () => {
    const redis = fx.srv.client();
    {
      // Instance 1
      const cache = new AdaptiveCache({ redis, isController: true });
      fx.caches.push(cache);
      await cache.start();
      assert.equal(cache.role, 'controller');
      await cache.stop();
    }
    {
      // Instances 2+
      const cache = new AdaptiveCache({ redis, isController: false });
      fx.caches.push(cache);
      await cache.start();
      assert.equal(cache.role, 'follower');
      await cache.stop();
    }
    const cache = new AdaptiveCache({
        redis,
        highThreshold: 100,
        lowThreshold: 20,
        defaultTtl: 30,
        namespace: "user-service",
        isController: true,
    });
    fx.caches.push(cache);
    await cache.start();
    const switches = [];
    cache.onSwitch((from, to) => switches.push([from, to]));
    await cache.set('user:42', 'x');
    assert.equal(await cache.get('user:42'), 'x');
    const ttl = await redis.pttl('user-service:user:42'.replace(/^/, 'aci:'));
    assert.ok(ttl > 29_000 && ttl <= 30_000, String(ttl));
    const s = cache.statsSnapshot;
    assert.deepEqual(
      Object.keys(s).sort(),
      ['cacheHits', 'cacheMisses', 'currentStrategy', 'strategySwitches', 'totalReads', 'totalWrites', 'writeRate'],
    );
    assert.equal(s.totalWrites, 1);
    assert.equal(s.totalReads, 1);
    assert.equal(s.cacheHits, 1);
    await cache.stop();
  });
});

// Runs a snippet file in `dir` (inside js/, so `aci-cache` resolves to this package) and
// returns its output lines once it has stopped its cache (it keeps its own `new Redis()` open,
// as the README's code does, so the process is ended here).
async function runSnippet(dir, file) {
  const preload = path.join(dir, 'preload.mjs');
  writeFileSync(preload, `import { DEFAULT_REDIS_OPTIONS } from 'ioredis/built/redis/RedisOptions.js';
DEFAULT_REDIS_OPTIONS.port = ${fx.srv.port};
`);
  const child = spawn(process.execPath, ['--import', preload, file], { cwd: dir, stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  child.stdout.on('data', (d) => (out += d));
  child.stderr.on('data', (d) => (err += d));
  const exited = new Promise((r) => child.on('exit', r));
  try {
    await until(() => out.split('\n').length > 2 || child.exitCode !== null, 15_000, `snippet output (stderr: ${err})`);
    // stop() releases the controller lease when it held it: wait for that, then end the process.
    await until(async () => (await fx.srv.client().exists('aci::controller')) === 0, 5000, 'stop()');
    await sleep(100);
  } finally {
    child.kill('SIGKILL');
    await exited;
  }
  assert.equal(err, '', err);
  return out.trim().split('\n');
}

describe('L1', () => {
  test('hits after a miss; read-your-writes; nothing served past the Redis TTL', async () => {
    const r = fx.srv.client();
    const c = await cache({ namespace: ns(), isController: true, strategy: 'ttl' });
    await r.set(c.redisKey('a'), 'va', 'PX', 300);
    assert.equal(await c.get('a'), 'va');
    assert.equal(await c.get('a'), 'va');
    assert.equal(c.stats().l1Hits, 1);
    await sleep(350);
    assert.equal(await c.get('a'), null, 'served past its Redis TTL');
    await c.set('b', 'v1');
    await r.set(c.redisKey('b'), 'changed behind our back');
    assert.equal(await c.get('b'), 'v1', 'read-your-writes from L1');
    await c.set('b', Buffer.from([0xff, 0x00, 0x01]), 0.2);
    assert.deepEqual(await c.getBuffer('b'), Buffer.from([0xff, 0x00, 0x01]));
    assert.deepEqual(await r.getBuffer(c.redisKey('b')), Buffer.from([0xff, 0x00, 0x01]));
    await sleep(250);
    assert.equal(await c.getBuffer('b'), null);
  });

  test('bounded by entries and by bytes', async () => {
    const c = await cache({ namespace: ns(), isController: true, strategy: 'ttl', localMaxEntries: 50 });
    for (let i = 0; i < 200; i++) await c.set(`k${i}`, 'v');
    assert.ok(c.stats().l1Entries <= 50, String(c.stats().l1Entries));
    const d = await cache({ namespace: ns(), isController: true, strategy: 'ttl', localMaxBytes: 64 * 1024 });
    for (let i = 0; i < 200; i++) await d.set(`k${i}`, 'x'.repeat(1000));
    assert.ok(d.stats().l1Bytes <= 64 * 1024, String(d.stats().l1Bytes));
    await d.set('huge', 'x'.repeat(20_000)); // over an eighth of the budget: not cached
    assert.equal(await d.get('huge'), 'x'.repeat(20_000));
    assert.equal(d.stats().l1Hits, 0);
  });

  test('a fill never installs a value older than a racing invalidation or local write', () => {
    const l1 = new NearCache(100, 1 << 20);
    l1.resume();
    let f = l1.beginFill('k');
    l1.invalidate('k');
    assert.equal(l1.completeFill(f, 'k', Buffer.from('old'), 1e12, 0), false);
    assert.equal(l1.get('k', 0), undefined);
    f = l1.beginFill('k');
    l1.putOwn('k', 'new', undefined, 1e12, 0);
    assert.equal(l1.completeFill(f, 'k', Buffer.from('old'), 1e12, 0), false);
    assert.equal(l1.get('k', 0).s, 'new');
    f = l1.beginFill('j');
    assert.equal(l1.joinFill('j'), f);
    l1.flush();
    assert.equal(l1.joinFill('j'), undefined, 'no joining a fill of the old generation');
    assert.equal(l1.completeFill(f, 'j', Buffer.from('old'), 1e12, 0), false);
    l1.putOwn('x', 'v', undefined, 1e12, 0);
    l1.suspend();
    assert.equal(l1.get('x', 0), undefined);
  });

  test('flush() drops the namespace everywhere and nothing else; without a namespace it is FLUSHDB', async () => {
    const r = fx.srv.client();
    const name = ns();
    const a = await cache({ namespace: name, isController: true, strategy: 'ttl' });
    const b = await cache({ namespace: name, isController: false });
    await a.set('k', 'v');
    assert.equal(await b.get('k'), 'v');
    assert.equal(await b.get('k'), 'v'); // cached in b's L1
    await r.set('other-service:k', 'keep');
    await r.set(`aci:${name}x:k`, 'keep'); // a namespace sharing our prefix
    await a.flush();
    await until(async () => (await b.get('k')) === null, 2000, "b's L1 flushed");
    assert.equal(await r.get(a.redisKey('k')), null);
    assert.equal(await r.get('other-service:k'), 'keep');
    assert.equal(await r.get(`aci:${name}x:k`), 'keep');
    // Without a namespace, flush() is the original's FLUSHDB.
    const plain = await cache({ isController: true });
    await plain.flush();
    assert.equal(await r.get('other-service:k'), null);
    assert.equal(await r.dbsize(), 0);
  });

  test('L1 stops serving while the subscription is down, and comes back empty', async () => {
    const r = fx.srv.client();
    const c = await cache({ namespace: ns(), isController: true, strategy: 'ttl' });
    await c.set('k', 'v');
    assert.equal(c.stats().l1Serving, true);
    await r.client('KILL', 'TYPE', 'pubsub');
    await until(() => !c.stats().l1Serving, 2000, 'suspension');
    await r.set(c.redisKey('k'), 'v2');
    assert.equal(await c.get('k'), 'v2', 'read from Redis while suspended');
    await until(() => c.stats().l1Serving, 10_000, 'resubscription');
    assert.ok(c.stats().resubscribes >= 1);
  });
});

describe('fleet', () => {
  test('two instances in eager: nothing lost, nothing staler than the bound', async () => {
    const name = ns();
    const w = await cache({ namespace: name, isController: true, strategy: 'eager' });
    const rd = await cache({ namespace: name, isController: false });
    await until(() => rd.strategy === 'eager', 3000);
    const KEYS = 8;
    const acked = []; // per key: [time acknowledged, version][]
    for (let k = 0; k < KEYS; k++) acked.push([[0, -1]]);
    for (let k = 0; k < KEYS; k++) {
      await w.set(`k${k}`, '0');
      acked[k].push([performance.now(), 0]);
    }
    let writing = true;
    const reads = [];
    const reader = (async () => {
      while (writing) {
        const k = Math.floor(Math.random() * KEYS);
        const t = performance.now();
        const v = await rd.get(`k${k}`);
        reads.push([k, t, v === null ? -1 : Number(v)]);
        if (reads.length % 16 === 0) await sleep(0);
      }
    })();
    for (let v = 1; v <= 60; v++) {
      for (let k = 0; k < KEYS; k++) {
        await w.set(`k${k}`, String(v));
        acked[k].push([performance.now(), v]);
      }
      await sleep(5);
    }
    writing = false;
    await reader;
    // Staleness bound: a read that began BOUND ms after a write was acknowledged sees it.
    const BOUND = 500;
    let checked = 0;
    for (const [k, t, v] of reads) {
      const due = acked[k].filter(([at]) => at <= t - BOUND).pop();
      if (due) {
        checked++;
        assert.ok(v >= due[1], `key k${k} read version ${v} at ${t.toFixed(1)}, but ${due[1]} was acknowledged at ${due[0].toFixed(1)}`);
      }
    }
    assert.ok(reads.length > 100 && checked > 0, `${reads.length} reads, ${checked} checked`);
    await sleep(300);
    for (let k = 0; k < KEYS; k++) assert.equal(await rd.get(`k${k}`), '60');
    const s = rd.stats();
    assert.equal(s.gaps, 0);
    assert.ok(s.l1Hits > 0, 'the reader served from L1');
    assert.ok(s.invalidationsApplied >= 60 * KEYS, String(s.invalidationsApplied));
  });

  test('under eager, writes reach the policy as a count each tick: it stays eager while they go on', async () => {
    // window 1 s (newest quarter 250 ms), hold 0.3 s, eager above 50 writes/s. Were the
    // counts lost, the adaptive policy would leave eager one hold after its quarter went quiet.
    const c = await cache({ namespace: ns(), isController: true, slidingWindow: 1, hold: 0.3, tickInterval: 0.05 });
    let downs = 0;
    c.onSwitch((from) => { if (from === 'eager') downs++; });
    let eagerSince = 0;
    for (let i = 0; !eagerSince || performance.now() - eagerSince < 1500; i++) {
      await c.set('k', 'v');
      if (!eagerSince && c.strategy === 'eager') eagerSince = performance.now();
      assert.ok(i < 2000, `never eager: ${c.strategy}`);
      await sleep(5);
    }
    await sleep(0);
    assert.equal(downs, 0, 'left eager while writing');
    assert.equal(c.strategy, 'eager');
    assert.ok(c.statsSnapshot.writeRate >= 50, `rate ${c.statsSnapshot.writeRate} under eager writes`);
    await until(() => c.strategy !== 'eager', 3000);
  });

  test('ownBatchDelay: own invalidations read in batches, the others\' still arrive, nothing lost', async () => {
    const name = ns();
    const a = await cache({ namespace: name, isController: true, strategy: 'eager', ownBatchDelay: 0.005 });
    const b = await cache({ namespace: name, isController: false, ownBatchDelay: 0.005 });
    // Default off, and never on a subscription connection passed in.
    const off = await cache({ namespace: name, isController: false });
    const passed = await cache({ namespace: name, isController: false, ownBatchDelay: 0.005, pubsubRedis: fx.srv.client() });
    await until(() => [b, off, passed].every((c) => c.strategy === 'eager'), 3000);
    await b.set('x', 'b0');
    assert.equal(await a.get('x'), 'b0'); // now in a's L1
    const N = 600;
    let bWrote = 0;
    let seenAfter = -1;
    const t0 = performance.now();
    for (let i = 0; i < N; i++) {
      await a.set(`k${i % 50}`, String(i));
      if (i === N / 2) {
        await b.set('x', 'b1');
        bWrote = performance.now();
      }
      // While a keeps writing (and pausing), b's invalidation must still reach it.
      if (bWrote && seenAfter < 0 && (await a.get('x')) === 'b1') seenAfter = performance.now() - bWrote;
    }
    const writing = performance.now() - t0;
    assert.ok(seenAfter >= 0, 'a never saw b\'s write while writing');
    assert.ok(seenAfter < 250, `b's invalidation reached a ${seenAfter.toFixed(1)} ms after b's set returned`);
    // Every one of a's invalidations reached b; a heard all its own messages back.
    await until(() => b.stats().invalidationsApplied >= N, 3000, 'b to apply a\'s invalidations');
    await sleep(50);
    assert.equal(b.stats().invalidationsApplied, N);
    await until(() => a.stats().pubsubReceived >= N + 2, 3000, 'a to read its own messages back');
    const pauses = a.stats().subscriptionPauses;
    // At most one pause per 5 ms of writing (plus slack for the first and the last), and some.
    assert.ok(pauses > 0, 'a never paused its subscription');
    assert.ok(pauses <= writing / 5 + 5, `${pauses} pauses in ${writing.toFixed(0)} ms`);
    assert.ok(a.stats().messagesReceived >= 2, 'a heard b');
    for (const c of [a, b]) assert.equal(c.stats().gaps, 0);
    for (const c of [b, off, passed]) {
      await c.set(`own-${c.id}`, 'v');
      await c.set(`own-${c.id}`, 'w');
    }
    await sleep(50);
    assert.equal(off.stats().subscriptionPauses, 0, 'ownBatchDelay is off by default');
    assert.equal(passed.stats().subscriptionPauses, 0, 'a pubsubRedis passed in is not ours to pause');
  });

  test('auto role: one controller by lease; followers take over when it stops', async () => {
    const name = ns();
    const a = await cache({ namespace: name, controllerInterval: 1 });
    const b = await cache({ namespace: name, controllerInterval: 1 });
    assert.deepEqual([a.role, b.role].sort(), ['controller', 'follower']);
    const [ctl, fol] = a.isController ? [a, b] : [b, a];
    await ctl.stop();
    await until(() => fol.isController, 3000, 'takeover');
  });

  test('malformed messages are counted, not fatal', async () => {
    const name = ns();
    const c = await cache({ namespace: name, isController: true });
    const r = fx.srv.client();
    await r.publish(`aci:${name}:invalidation`, 'not json');
    await r.publish(`aci:${name}:invalidation`, '{"action":"write_report","count":18446744073709551615,"source":"x"}');
    await until(() => c.stats().malformed === 2, 2000, 'malformed counted');
    assert.ok(c.stats().pubsubReceived >= 2);
  });
});

describe('policy sandbox', () => {
  test('a looping policy falls back to eager without hanging the process', async () => {
    const c = await cache({ namespace: ns(), isController: true, policy: HOSTILE });
    assert.equal(c.strategy, 'ttl');
    const t0 = performance.now();
    await c.set('hostile:loop', 'x');
    assert.ok(performance.now() - t0 < 2000, 'the write came back');
    // The policy hears of the write at the next tick, loops, is stopped by its CPU budget.
    await until(() => c.stats().policyFaults === 1, 2000, 'the fault');
    assert.equal(c.strategy, 'eager');
    const t2 = performance.now();
    await sleep(50);
    assert.ok(performance.now() - t2 < 500, 'the event loop is not blocked');
    // It goes on working, eager, then with a fresh instance after one window.
    await c.set('plain', 'y');
    assert.equal(await c.get('plain'), 'y');
    const t1 = performance.now();
    await c.set('hostile:trap', 'x');
    assert.ok(performance.now() - t1 < 2000);
  });
});

describe('lifecycle', () => {
  test('stop() during start() waits for it and leaves nothing running; start() twice is refused', async () => {
    const c = new AdaptiveCache({ redis: fx.srv.client(), namespace: ns(), logger: quiet });
    const started = c.start();
    await c.stop();
    await started;
    assert.equal(c.stats().l1Serving, false);
    await assert.rejects(c.start(), (e) => e.name === 'CacheStateError');
    await assert.rejects(c.get('k'), (e) => e.name === 'CacheStateError');
    await assert.rejects(c.set('k', 'v'), (e) => e.name === 'CacheStateError');
  });
});
