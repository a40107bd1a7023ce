#!/usr/bin/env node
// What an eager write on a connection of the cache's own can cost at best, on one private
// redis-server (ratios to an ioredis SET, median over 31 interleaved rounds of per-round ratios):
//   own-nosub   SET + PUBLISH in one write on a raw socket, to a channel nobody hears
//   own-sub     the same, heard by an ioredis subscriber of this process (what the cache does)
//   own-sub-script  EVALSHA of SET + PUBLISH on that raw socket, heard by the same subscriber
//   own-resp3   the same on a RESP3 connection subscribed to the channel itself: the message
//               comes back as a push in the same read as the replies (docs: README "Eager writes")
//   cache       AdaptiveCache.set under eager (default options)
// BENCH_SCALE=0.1 for a smoke run.
import net from 'node:net';
import Redis from 'ioredis';
import { AdaptiveCache } from '../src/index.js';
import { startRedis } from '../test/redis-server.js';
import { race, ratio } from './race.js';

const SCALE = Number(process.env.BENCH_SCALE ?? 1);
const ROUNDS = 31;
const ops = Math.max(50, Math.round(400 * SCALE));
const srv = await startRedis();

// A raw connection: counts CRLF-terminated top-level replies crudely (enough for +OK, :n and
// the push of a short message), resolving one waiter per `n` replies.
function rawConn(hello3) {
  const s = net.connect(srv.port, '127.0.0.1');
  s.setNoDelay(true);
  const waiters = [];
  let pushes = 0;
  s.on('data', (b) => {
    // Replies: lines starting with + or : ; a push starts with '>' and has 3 elements.
    let i = 0;
    while (i < b.length) {
      const t = b[i];
      const e = b.indexOf(10, i);
      if (t === 62) { // > push: skip its 3 bulk strings (6 lines + header)
        let j = e + 1;
        for (let k = 0; k < 3; k++) {
          const e1 = b.indexOf(10, j);
          const len = parseInt(b.toString('latin1', j + 1, e1 - 1), 10);
          j = e1 + 1 + len + 2;
        }
        pushes++;
        i = j;
        continue;
      }
      i = e + 1;
      if (t === 42) continue; // array header of a subscribe reply: skip roughly
      if (t === 36) { i = b.indexOf(10, i) + 1; continue; }
      const w = waiters[0];
      if (w && --w.n === 0) { waiters.shift(); w.resolve(); }
    }
  });
  return {
    s,
    pushes: () => pushes,
    send(str, n) {
      return new Promise((resolve) => {
        waiters.push({ n, resolve });
        s.write(str);
      });
    },
  };
}

try {
  const raw = new Redis(srv.port, '127.0.0.1');
  const sub = new Redis(srv.port, '127.0.0.1');
  sub.on('messageBuffer', () => {});
  await sub.subscribe('heard');
  const value = JSON.stringify({ name: 'Alice', id: 42, tags: ['a', 'b', 'c'] });
  const msg = JSON.stringify({ action: 'invalidate', keys: ['aci:b:k1'], strategy: 'eager', timestamp: Date.now() / 1000, seq: 1, source: 'abcdefabcdef', epoch: '0123456789abcdef', v: 2 });
  const LUA = "redis.call('set', KEYS[1], ARGV[1], 'px', ARGV[2]) return redis.call('publish', ARGV[3], ARGV[4])";
  const SHA = await raw.script('LOAD', LUA);
  const cmd = (...a) => `*${a.length}\r\n${a.map((x) => `$${Buffer.byteLength(x)}\r\n${x}\r\n`).join('')}`;
  const c2 = rawConn(false);
  const c3 = rawConn(true);
  await new Promise((r) => c3.s.once('connect', r));
  c3.s.write(cmd('HELLO', '3'));
  await new Promise((r) => setTimeout(r, 50));
  c3.s.removeAllListeners('data');
  const c3b = rawConn(true);
  await new Promise((r) => c3b.s.once('connect', r));
  // HELLO's reply is a map: consume it before the counting parser listens.
  await new Promise((r) => { c3b.s.removeAllListeners('data'); c3b.s.once('data', () => r()); c3b.s.write(cmd('HELLO', '3')); });
  const c3c = rawConn(true);
  c3c.s.destroy();
  // Re-attach the counting parser to c3b: a fresh wrapper over the same socket.
  const own3 = (() => {
    const waiters = [];
    let pushes = 0;
    c3b.s.on('data', (b) => {
      let i = 0;
      while (i < b.length) {
        const t = b[i];
        const e = b.indexOf(10, i);
        if (t === 62) {
          const n = parseInt(b.toString('latin1', i + 1, e - 1), 10);
          let j = e + 1;
          for (let k = 0; k < n; k++) {
            const e1 = b.indexOf(10, j);
            if (b[j] === 58) { j = e1 + 1; continue; }
            const len = parseInt(b.toString('latin1', j + 1, e1 - 1), 10);
            j = e1 + 1 + len + 2;
          }
          pushes++;
          i = j;
          continue;
        }
        i = e + 1;
        const w = waiters[0];
        if (w && --w.n === 0) { waiters.shift(); w.resolve(); }
      }
    });
    return { pushes: () => pushes, send(str, n) { return new Promise((resolve) => { waiters.push({ n, resolve }); c3b.s.write(str); }); } };
  })();
  // SUBSCRIBE on RESP3 answers with a push too (counted as one), not a reply.
  c3b.s.write(cmd('SUBSCRIBE', 'self'));
  await new Promise((r) => setTimeout(r, 50));
  const cache = new AdaptiveCache({ redis: new Redis(srv.port, '127.0.0.1'), namespace: 'b', strategy: 'eager', isController: true, logger: { warn() {} } });
  await cache.start();
  const contenders = {
    raw: (i) => raw.set(`k${i & 63}`, value, 'PX', 10_000),
    'own-nosub': (i) => c2.send(cmd('SET', `k${i & 63}`, value, 'PX', '10000') + cmd('PUBLISH', 'nobody', msg), 2),
    'own-sub': (i) => c2.send(cmd('SET', `k${i & 63}`, value, 'PX', '10000') + cmd('PUBLISH', 'heard', msg), 2),
    'own-sub-script': (i) => c2.send(cmd('EVALSHA', SHA, '1', `k${i & 63}`, value, '10000', 'heard', msg), 1),
    'own-resp3': (i) => own3.send(cmd('SET', `k${i & 63}`, value, 'PX', '10000') + cmd('PUBLISH', 'self', msg), 2),
    cache: (i) => cache.set(`k${i & 63}`, value),
  };
  const res = await race(contenders, ops, { rounds: ROUNDS, warm: ops });
  for (const k of Object.keys(res)) console.log(`own-floors ${k} ${res[k].best.toFixed(0)} ns/op ratio ${ratio(res[k], res.raw).toFixed(2)}`);
  if (own3.pushes() < ops) throw new Error(`the RESP3 connection heard ${own3.pushes()} pushes`);
  await cache.stop();
  for (const c of [c2, c3, c3b]) c.s.destroy();
  raw.disconnect();
  sub.disconnect();
} finally {
  await srv.stop();
}
process.exit(0);
