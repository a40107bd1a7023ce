#!/usr/bin/env node
// Chooses the L1 store: cost of a hit and of an insert with eviction, on the near cache's
// Map + CLOCK store (src/near-cache.js) and on lru-cache 11 configured for the same job
// (entry and byte bounds, per-entry TTL). Prints `l1-store <store> <op> <ns per op>`.
import { LRUCache } from 'lru-cache';
import { NearCache } from '../src/near-cache.js';

const N = 10_000;
const OPS = Math.round(2_000_000 * Number(process.env.BENCH_SCALE ?? 1));
const keys = Array.from({ length: N }, (_, i) => `user:${i}`);
const val = 'x'.repeat(100);

function time(fn) {
  for (let i = 0; i < OPS / 4; i++) fn(i);
  const rounds = [];
  for (let r = 0; r < 5; r++) {
    const t0 = process.hrtime.bigint();
    for (let i = 0; i < OPS; i++) fn(i);
    rounds.push(Number(process.hrtime.bigint() - t0) / OPS);
  }
  return rounds.sort((a, b) => a - b)[2];
}

const nc = new NearCache(N, 64 << 20);
nc.resume();
const far = Date.now() + 3_600_000;
for (const k of keys) nc.putOwn(k, val, undefined, far, 0);
let sink = 0;
const ncHit = time((i) => { const e = nc.get(keys[i % N], Date.now()); sink += e.s.length; });

const lru = new LRUCache({ max: N, maxSize: 64 << 20, sizeCalculation: (v, k) => k.length * 2 + v.length + 96, ttl: 3_600_000, ttlResolution: 0 });
for (const k of keys) lru.set(k, val);
const lruHit = time((i) => { sink += lru.get(keys[i % N]).length; });

// Inserts of new keys into a full store (each evicts one).
const nc2 = new NearCache(N, 64 << 20);
nc2.resume();
const ncSet = time((i) => nc2.putOwn(`k${i}`, val, undefined, far, 0));
const lru2 = new LRUCache({ max: N, maxSize: 64 << 20, sizeCalculation: (v, k) => k.length * 2 + v.length + 96, ttl: 3_600_000, ttlResolution: 0 });
const lruSet = time((i) => lru2.set(`k${i}`, val));

console.log(`l1-store map-clock hit ${ncHit.toFixed(1)}`);
console.log(`l1-store lru-cache hit ${lruHit.toFixed(1)}`);
console.log(`l1-store map-clock insert-evict ${ncSet.toFixed(1)}`);
console.log(`l1-store lru-cache insert-evict ${lruSet.toFixed(1)}`);
if (sink < 0) console.log(sink);
