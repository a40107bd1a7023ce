// A private redis-server for one test file: a free loopback port, no persistence, killed at the
// end (by its pid: other people's servers on this machine are left alone).
import { spawn } from 'node:child_process';
import net from 'node:net';
import Redis from 'ioredis';
import { after, before } from 'node:test';
import { AdaptiveCache } from '../src/index.js';

export function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.unref();
    s.on('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

export async function startRedis() {
  // ACI_REDIS_SERVER: the server of scripts/test.sh's Valkey pass (valkey-server).
  const bin = process.env.ACI_REDIS_SERVER || process.env.REDIS_SERVER || 'redis-server';
  const port = await freePort();
  const child = spawn(bin, ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no'], {
    stdio: 'ignore',
  });
  let exited = false;
  child.on('exit', () => {
    exited = true;
  });
  const url = `redis://127.0.0.1:${port}`;
  const deadline = Date.now() + 10_000;
  for (;;) {
    const c = new Redis(port, '127.0.0.1', { lazyConnect: true, retryStrategy: () => null, maxRetriesPerRequest: 0 });
    c.on('error', () => {});
    try {
      await c.connect();
      await c.ping();
      c.disconnect();
      break;
    } catch {
      c.disconnect();
      if (exited || Date.now() > deadline) throw new Error(`redis-server did not start on port ${port}`);
      await new Promise((r) => setTimeout(r, 50));
    }
  }
  const clients = [];
  return {
    port,
    url,
    /** A new ioredis client, closed by stop(). */
    client(opts = {}) {
      const c = new Redis(port, '127.0.0.1', opts);
      c.on('error', () => {});
      clients.push(c);
      return c;
    },
    async stop() {
      for (const c of clients) c.disconnect();
      if (!exited) {
        const done = new Promise((r) => child.once('exit', r));
        child.kill('SIGKILL');
        await done;
      }
    },
  };
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Waits until fn() is truthy (polling), or fails after `ms`. */
export async function until(fn, ms = 5000, what = 'condition') {
  const end = Date.now() + ms;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await sleep(10);
  }
}

/**
 * A test file's fleet: one private redis-server for the file, fresh namespaces, and caches that
 * are stopped when the file ends. `fx.srv` is the server (set once `before` has run).
 */
export function useCaches(prefix) {
  const quiet = { warn() {} };
  const caches = [];
  let counter = 0;
  const fx = {
    srv: null,
    quiet,
    // Caches a test made itself go here too, to be stopped at the end.
    caches,
    ns: () => `${prefix}${process.pid}-${counter++}`,
    async cache(opts) {
      const c = new AdaptiveCache({ redis: fx.srv.client(), logger: quiet, ...opts });
      caches.push(c);
      await c.start();
      return c;
    },
  };
  before(async () => {
    fx.srv = await startRedis();
  });
  after(async () => {
    for (const c of caches) await c.stop().catch(() => {});
    await fx.srv.stop();
  });
  return fx;
}

/** The connections of the server that `client` talks to named `name`, as CLIENT LIST fields. */
export async function clientsNamed(client, name) {
  const list = await client.client('LIST');
  return list.split('\n').filter(Boolean)
    .map((l) => Object.fromEntries(l.split(' ').map((kv) => [kv.slice(0, kv.indexOf('=')), kv.slice(kv.indexOf('=') + 1)])))
    .filter((c) => c.name === name);
}
