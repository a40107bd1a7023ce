#!/usr/bin/env node
// Where an eager write's time goes, on one private redis-server (ratios to an ioredis SET, the
// median over 31 interleaved rounds of the per-round ratio):
//   script-nosub   SET + PUBLISH in one EVALSHA, to a channel nobody hears
//   script-sub     the same, heard by an ioredis subscriber of this process that reads every message
//   script-psub    the same, heard by a subscriber that leaves its socket unread for 5 ms after each read
//   two-*          SET then PUBLISH as two plain commands written in one socket write (corked)
//   script-cachesub the script sent past the cache, to its channel, with one of its own messages
//                  (what the cache's subscriber costs against a no-op one)
//   ttl / eager    AdaptiveCache.set under ttl / eager (default options)
//   eager-paused   the same with ownBatchDelay: 0.005
// Also prints each contender's node CPU (process.cpuUsage, median over rounds) and Redis CPU
// (INFO cpu) per op. ONLY=a,b runs only those (and raw). BENCH_SCALE=0.1 for a smoke run.
import Redis from 'ioredis';
import { createHash } from 'node:crypto';
import { AdaptiveCache } from '../src/index.js';
import { startRedis } from '../test/redis-server.js';

const SCALE = Number(process.env.BENCH_SCALE ?? 1);
const ROUNDS = 31;
const ops = Math.max(50, Math.round(400 * SCALE));
const srv = await startRedis();
try {
  const raw = new Redis(srv.port, '127.0.0.1');
  const only = (process.env.ONLY ?? '').split(',').filter(Boolean);
  const sub = new Redis(srv.port, '127.0.0.1');
  sub.on('messageBuffer', () => {});
  await sub.subscribe('heard');
  const psub = new Redis(srv.port, '127.0.0.1');
  let pending = false;
  psub.on('messageBuffer', () => {
    if (pending) return;
    pending = true;
    // After this read's messages are handled: stop reading the socket for 5 ms.
    queueMicrotask(() => {
      const s = psub.stream;
      s.pause();
      const h = s._handle;
      if (h && h.reading) {
        h.reading = false;
        h.readStop();
      }
      setTimeout(() => {
        pending = false;
        s.resume();
        if (s._handle && !s._handle.reading) {
          s._handle.reading = true;
          s._handle.readStart();
        }
      }, 5);
    });
  });
  await psub.subscribe('pheard');
  await raw.script('LOAD', "redis.call('set', KEYS[1], ARGV[1], 'px', ARGV[2]) return redis.call('publish', ARGV[3], ARGV[4])");
  const cacheRedis = new Redis(srv.port, '127.0.0.1');
  const cache = new AdaptiveCache({ redis: cacheRedis, namespace: 'b', strategy: 'eager', isController: true, logger: { warn() {} } });
  await cache.start();
  // One of the cache's own messages, to send past the cache (its subscriber handles it as its own).
  let ownMsg = null;
  {
    // Heard on the channel: the cache's eager writes go out on its own connection (wconn.js).
    const spy = new Redis(srv.port, '127.0.0.1');
    await spy.subscribe('aci:b:invalidation');
    const heard = new Promise((r) => spy.once('message', (ch, m) => r(m)));
    await cache.set('k0', 'x');
    ownMsg = await heard;
    spy.disconnect();
  }
  // The same cache with ownBatchDelay: its subscription pauses 5 ms after its own messages.
  const paused = new AdaptiveCache({ redis: new Redis(srv.port, '127.0.0.1'), ownBatchDelay: 0.005, namespace: 'u', strategy: 'eager', isController: true, logger: { warn() {} } });
  await paused.start();
  const ttlCache = new AdaptiveCache({ redis: new Redis(srv.port, '127.0.0.1'), namespace: 't', strategy: 'ttl', isController: true, logger: { warn() {} } });
  await ttlCache.start();
  const value = JSON.stringify({ name: 'Alice', id: 42, tags: ['a', 'b', 'c'] });
  const LUA = "redis.call('set', KEYS[1], ARGV[1], 'px', ARGV[2]) return redis.call('publish', ARGV[3], ARGV[4])";
  const SHA = createHash('sha1').update(LUA).digest('hex');
  const msg = JSON.stringify({ action: 'invalidate', keys: ['aci:b:k1'], strategy: 'eager', timestamp: Date.now() / 1000, seq: 1, source: 'abcdefabcdef', epoch: '0123456789abcdef', v: 2 });
  const two = (i, chan) => {
    const s = raw.stream;
    s.cork();
    raw.set(`k${i & 63}`, value, 'PX', 10_000).catch(() => {});
    const p = raw.publish(chan, msg);
    s.uncork();
    return p;
  };
  let contenders = {
    raw: (i) => raw.set(`k${i & 63}`, value, 'PX', 10_000),
    'script-nosub': (i) => raw.evalsha(SHA, 1, `k${i & 63}`, value, 10_000, 'nobody', msg),
    'script-sub': (i) => raw.evalsha(SHA, 1, `k${i & 63}`, value, 10_000, 'heard', msg),
    'script-psub': (i) => raw.evalsha(SHA, 1, `k${i & 63}`, value, 10_000, 'pheard', msg),
    'two-nosub': (i) => two(i, 'nobody'),
    'two-sub': (i) => two(i, 'heard'),
    'two-psub': (i) => two(i, 'pheard'),
    ttl: (i) => ttlCache.set(`k${i & 63}`, value),
    'script-cachesub': (i) => cacheRedis.evalsha(SHA, 1, `aci:b:k${i & 63}`, value, 10_000, 'aci:b:invalidation', ownMsg),
    eager: (i) => cache.set(`k${i & 63}`, value),
    'eager-paused': (i) => paused.set(`k${i & 63}`, value),
  };
  if (only.length) contenders = Object.fromEntries(Object.entries(contenders).filter(([k]) => k === 'raw' || only.includes(k)));
  const names = Object.keys(contenders);
  const rounds = Object.fromEntries(names.map((k) => [k, []]));
  const cpu = Object.fromEntries(names.map((k) => [k, []]));
  const scpu = Object.fromEntries(names.map((k) => [k, 0]));
  const info = new Redis(srv.port, '127.0.0.1');
  const serverCpu = async () => {
    const s = await info.info('cpu');
    const u = Number(/used_cpu_user:([0-9.]+)/.exec(s)[1]);
    const y = Number(/used_cpu_sys:([0-9.]+)/.exec(s)[1]);
    return (u + y) * 1e6; // us
  };
  for (const fn of Object.values(contenders)) for (let i = 0; i < 1000; i++) await fn(i);
  for (let r = 0; r < ROUNDS; r++) {
    for (let j = 0; j < names.length; j++) {
      const name = names[(r + j) % names.length];
      const fn = contenders[name];
      const s0 = await serverCpu();
      const c0 = process.cpuUsage();
      const t0 = process.hrtime.bigint();
      for (let i = 0; i < ops; i++) await fn(i);
      rounds[name].push(Number(process.hrtime.bigint() - t0) / ops);
      const c1 = process.cpuUsage(c0);
      cpu[name].push((c1.user + c1.system) / ops);
      scpu[name] += ((await serverCpu()) - s0) / ops;
    }
  }
  info.disconnect();
  const med = (xs) => [...xs].sort((a, b) => a - b)[xs.length >> 1];
  for (const k of names) {
    const ratio = med(rounds[k].map((x, i) => x / rounds.raw[i]));
    console.log(`eager-floor ${k.padEnd(13)} best ${Math.min(...rounds[k]).toFixed(0).padStart(6)} ns  ratio ${ratio.toFixed(2)}  node cpu ${med(cpu[k]).toFixed(1)} us/op (median)  redis cpu ${(scpu[k] / ROUNDS).toFixed(1)} us/op`);
  }
  await cache.stop();
  await ttlCache.stop();
  await paused.stop();
  raw.disconnect();
  sub.disconnect();
  psub.disconnect();
} finally {
  await srv.stop();
}
process.exit(0);
