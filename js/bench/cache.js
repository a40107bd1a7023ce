#!/usr/bin/env node
// AdaptiveCache against its baselines, measured in one run on one private redis-server:
//   - an L1 hit (`await cache.get(k)`) vs an ioredis GET and vs node-redis 5's client-side
//     cache hit (RESP3 tracking) of the same key;
//   - `await cache.set(k, v)` under each strategy vs an ioredis `SET k v PX ttl`; eager both on
//     the cache's own write connection (the default) and through the user's client.
// Operations are sequential (awaited one by one: latency, not throughput); rounds of each
// contender are interleaved so drift on a shared machine hits all alike; each figure is the
// fastest of 31 rounds (ns/op); each ratio is the median over rounds of the two contenders'
// times in the same round. Prints `cache-bench <what> <ns/op>` lines, then `ratio ...` lines with the
// targets of issue 11. BENCH_SCALE=0.1 for a smoke run.
import Redis from 'ioredis';
import { createClient } from 'redis';
import { AdaptiveCache } from '../src/index.js';
import { startRedis } from '../test/redis-server.js';
import { race, ratio } from './race.js';

const SCALE = Number(process.env.BENCH_SCALE ?? 1);
const n = (x) => Math.max(50, Math.round(x * SCALE));
const quiet = { warn() {} };

const srv = await startRedis();
try {
  const redis = new Redis(srv.port, '127.0.0.1');
  const raw = new Redis(srv.port, '127.0.0.1');
  const nr = createClient({ url: srv.url, RESP: 3, clientSideCache: { ttl: 0, maxEntries: 0 } });
  nr.on('error', () => {});
  await nr.connect();
  const mk = async (strategy, namespace, extra = {}) => {
    const c = new AdaptiveCache({ redis: new Redis(srv.port, '127.0.0.1'), namespace, strategy, isController: true, logger: quiet, ...extra });
    await c.start();
    return c;
  };
  const caches = { ttl: await mk('ttl', 'b-ttl'), batched: await mk('batched', 'b-batched'), eager: await mk('eager', 'b-eager'),
    // The same through the user's client (an EVALSHA per write): ownWriteConnection off.
    eagerClient: await mk('eager', 'b-eager-c', { ownWriteConnection: false }),
    // The own write connection, its own messages heard on a subscriber connection: ownSubscription off.
    eagerSub: await mk('eager', 'b-eager-s', { ownSubscription: false }) };
  if (!caches.eager.stats().ownWriteConnection) throw new Error('the eager cache has no write connection of its own');
  if (!caches.eager.stats().ownSubscription || caches.eagerSub.stats().ownSubscription) throw new Error('ownSubscription not as asked');
  const value = JSON.stringify({ name: 'Alice', id: 42, tags: ['a', 'b', 'c'] });
  await raw.set('hot', value);
  await caches.ttl.set('hot', value, 3600);
  await nr.get('hot');
  await nr.get('hot');

  const c = caches.ttl;
  const hit = await race({ l1: () => c.get('hot'), csc: () => nr.get('hot') }, n(20_000));
  const get = await race({ l1: () => c.get('hot'), ioredis: () => raw.get('hot') }, n(300));
  if (c.stats().l1Misses > 1) throw new Error(`the L1 missed ${c.stats().l1Misses} times: not a hit benchmark`);
  if (nr.clientSideCache?.stats && nr.clientSideCache.stats().hitCount === 0) throw new Error('node-redis CSC never hit');

  const KEYS = 64;
  // The floor of any eager design: SET + PUBLISH in one script, to a channel that a connection
  // of this same process listens to (every instance hears its own invalidations).
  const floorSub = new Redis(srv.port, '127.0.0.1');
  floorSub.on('messageBuffer', () => {});
  await floorSub.subscribe('floor');
  const LUA = "redis.call('set', KEYS[1], ARGV[1], 'px', ARGV[2]) return redis.call('publish', ARGV[3], ARGV[4])";
  const msg = JSON.stringify({ action: 'invalidate', keys: ['aci:b-eager:k1'], strategy: 'eager', timestamp: Date.now() / 1000, seq: 1, source: 'abcdefabcdef', epoch: '0123456789abcdef', v: 2 });
  const set = await race({
    raw: (i) => raw.set(`k${i % KEYS}`, value, 'PX', 10_000),
    floor: (i) => raw.eval(LUA, 1, `f${i % KEYS}`, value, 10_000, 'floor', msg),
    // The script call alone (a SET in a script, no PUBLISH): what running a script costs.
    script: (i) => raw.eval("return redis.call('set', KEYS[1], ARGV[1], 'px', ARGV[2])", 1, `f${i % KEYS}`, value, 10_000),
    ttl: (i) => caches.ttl.set(`k${i % KEYS}`, value),
    batched: (i) => caches.batched.set(`k${i % KEYS}`, value),
    eager: (i) => caches.eager.set(`k${i % KEYS}`, value),
    eagerClient: (i) => caches.eagerClient.set(`k${i % KEYS}`, value),
    eagerSub: (i) => caches.eagerSub.set(`k${i % KEYS}`, value),
  }, n(300));
  for (const s of ['ttl', 'batched', 'eager']) {
    if (caches[s].strategy !== s || (s === 'eager' && (caches.eagerClient.strategy !== s || caches.eagerSub.strategy !== s))) throw new Error(`the ${s} cache ran ${caches[s].strategy}`);
  }

  const f = (x) => x.best.toFixed(0);
  console.log(`cache-bench l1-hit ${f(hit.l1)}`);
  console.log(`cache-bench node-redis-csc-hit ${f(hit.csc)}`);
  console.log(`cache-bench ioredis-get ${f(get.ioredis)}`);
  console.log(`cache-bench ioredis-set ${f(set.raw)}`);
  for (const s of ['ttl', 'batched', 'eager']) console.log(`cache-bench set-${s} ${f(set[s])}`);
  console.log(`cache-bench set-eager-client ${f(set.eagerClient)}`);
  console.log(`cache-bench set-eager-sub ${f(set.eagerSub)}`);
  console.log(`cache-bench set+publish-floor ${f(set.floor)}`);
  const r = (x) => x.toFixed(2);
  console.log(`ratio csc-hit/l1-hit ${r(ratio(hit.csc, hit.l1))} (target >= 2)`);
  console.log(`ratio ioredis-get/l1-hit ${r(ratio(get.ioredis, get.l1))} (target >= 100)`);
  for (const s of ['ttl', 'batched', 'eager']) {
    console.log(`ratio set-${s}/ioredis-set ${r(ratio(set[s], set.raw))} (target <= ${s === 'eager' ? '1.25' : '1.10'})`);
  }
  console.log(`ratio set-eager-client/ioredis-set ${r(ratio(set.eagerClient, set.raw))} (ownWriteConnection: false: the script through the user's client)`);
  console.log(`ratio set-eager-sub/ioredis-set ${r(ratio(set.eagerSub, set.raw))} (ownSubscription: false: own messages heard on a subscriber connection)`);
  console.log(`ratio set+publish-floor/ioredis-set ${r(ratio(set.floor, set.raw))} (raw ioredis, no cache: the floor under eager)`);
  console.log(`ratio set-eager/set+publish-floor ${r(ratio(set.eager, set.floor))}`);
  console.log(`ratio script-set-only/ioredis-set ${r(ratio(set.script, set.raw))} (a SET inside EVAL: the script call's own cost)`);
  floorSub.disconnect();
  for (const x of Object.values(caches)) await x.stop();
  await nr.quit();
  redis.disconnect();
  raw.disconnect();
  for (const x of Object.values(caches)) void x;
} finally {
  await srv.stop();
}
process.exit(0);
