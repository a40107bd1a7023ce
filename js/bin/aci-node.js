#!/usr/bin/env node
// The node driver of docs/NODE.md: one AdaptiveCache driven over stdin/stdout, one JSON answer
// per command line, in order.
//
//   node js/bin/aci-node.js [--redis URL] [--namespace NS] [--role auto|controller|follower]
//     [--strategy ttl|batched|eager] [--tick-ms N] [--instance-id ID] [--local-ttl-ms N]
//     [--policy-public-key HEX64] [--policy-allow-hashes H1,H2] [--policy-rollback-faults N]
//
// Commands: set K V [TTL_MS], get K, del K, strategy, stats, policy (this instance's status
// record, docs/WIRE.md 9.8), quit.

import readline from 'node:readline';
import Redis from 'ioredis';
import { AdaptiveCache } from '../src/index.js';

const FLAGS = {
  '--redis': 'redis', '--namespace': 'namespace', '--role': 'role', '--strategy': 'strategy',
  '--tick-ms': 'tickMs', '--instance-id': 'instanceId', '--local-ttl-ms': 'localTtlMs',
  '--policy-public-key': 'policyPublicKey', '--policy-allow-hashes': 'policyAllowHashes',
  '--policy-rollback-faults': 'policyRollbackFaults',
};

function usage(msg) {
  process.stderr.write(`aci-node: ${msg}\n`);
  process.exit(2);
}

function parseArgs(argv) {
  const a = { redis: 'redis://127.0.0.1:6379', role: 'auto', tickMs: 250, localTtlMs: 5000, policyRollbackFaults: 3 };
  for (let i = 0; i < argv.length; i++) {
    const flag = argv[i];
    const name = FLAGS[flag];
    if (!name) usage(`unknown flag ${flag}`);
    if (i + 1 >= argv.length) usage(`${flag} needs a value`);
    a[name] = argv[++i];
  }
  if (!['auto', 'controller', 'follower'].includes(a.role)) usage(`--role must be auto, controller or follower, got ${a.role}`);
  if (a.strategy !== undefined && !['ttl', 'batched', 'eager'].includes(a.strategy)) {
    usage(`--strategy must be ttl, batched or eager, got ${a.strategy}`);
  }
  if (a.policyAllowHashes !== undefined) a.policyAllowHashes = a.policyAllowHashes.split(',').filter(Boolean);
  for (const [flag, name] of [['--tick-ms', 'tickMs'], ['--local-ttl-ms', 'localTtlMs'], ['--policy-rollback-faults', 'policyRollbackFaults']]) {
    const n = Number(a[name]);
    if (!/^[0-9]+$/.test(String(a[name])) || !(n > 0)) usage(`${flag} must be a positive integer, got ${a[name]}`);
    a[name] = n;
  }
  if (!/^rediss?:\/\//.test(a.redis)) usage(`--redis must be a redis:// URL, got ${a.redis}`);
  return a;
}

const args = parseArgs(process.argv.slice(2));
const options = {
  namespace: args.namespace,
  role: args.role,
  strategy: args.strategy,
  tickInterval: args.tickMs / 1000,
  localTtl: args.localTtlMs / 1000,
  instanceId: args.instanceId,
  policyPublicKey: args.policyPublicKey,
  policyAllowHashes: args.policyAllowHashes,
  policyRollbackFaults: args.policyRollbackFaults,
  logger: { warn: (m) => process.stderr.write(`${m}\n`) },
};
const redis = new Redis(args.redis, { lazyConnect: true });
redis.on('error', (e) => process.stderr.write(`aci-node: redis: ${e.message}\n`));
let cache;
try {
  cache = new AdaptiveCache({ redis, ...options });
} catch (e) {
  const field = e.field ? {
    namespace: '--namespace', instanceId: '--instance-id', role: '--role', strategy: '--strategy',
    policyPublicKey: '--policy-public-key', policyAllowHashes: '--policy-allow-hashes', policyRollbackFaults: '--policy-rollback-faults',
  }[e.field] ?? e.field : null;
  usage(field && e.field ? `${field} ${e.message.slice(e.field.length + 2)}` : e.message);
}

const out = (obj) => process.stdout.write(`${JSON.stringify(obj)}\n`);
let stopping = null;

async function shutdown(answer) {
  if (!stopping) {
    stopping = (async () => {
      try {
        await cache.stop();
      } catch (e) {
        process.stderr.write(`aci-node: stop: ${e.message}\n`);
      }
      redis.disconnect();
    })();
  }
  await stopping;
  if (answer) out({ bye: true });
  process.exit(0);
}

function statsLine() {
  const s = cache.stats();
  return {
    reads: s.reads, l1_hits: s.l1Hits, l1_misses: s.l1Misses, writes: s.writes, deletes: s.deletes,
    messages_sent: s.messagesSent, pubsub_received: s.pubsubReceived, messages_received: s.messagesReceived,
    invalidations_applied: s.invalidationsApplied, gaps: s.gaps, malformed: s.malformed, flushes: s.flushes,
    is_controller: s.isController, strategy: s.strategy, write_rate: s.writeRate, policy_faults: s.policyFaults,
    resubscribes: s.resubscribes, l1_serving: s.l1Serving, l1_entries: s.l1Entries, instance_id: s.instanceId,
    // docs/NODE.md: the running policy (docs/WIRE.md 9)
    policy: s.policy?.name ?? null, policy_sha256: s.policySha256, policy_origin: s.policyOrigin,
    policy_version: s.policy?.version ?? null, policy_rollout: s.policyRollout, policy_swaps: s.policySwaps,
  };
}

async function run(line) {
  const w = line.split(' ');
  switch (w[0]) {
    case 'set': {
      if (w.length !== 3 && w.length !== 4) throw new Error('usage: set K V [TTL_MS]');
      let ttl;
      if (w.length === 4) {
        if (!/^[0-9]+$/.test(w[3]) || Number(w[3]) <= 0) throw new Error(`TTL_MS must be a positive integer, got ${w[3]}`);
        ttl = Number(w[3]) / 1000;
      }
      await cache.set(w[1], w[2], ttl);
      return { ok: true };
    }
    case 'get':
      if (w.length !== 2) throw new Error('usage: get K');
      return { value: await cache.get(w[1]) };
    case 'del':
      if (w.length !== 2) throw new Error('usage: del K');
      await cache.delete(w[1]);
      return { ok: true };
    case 'strategy':
      return { strategy: cache.strategy };
    case 'stats':
      return statsLine();
    case 'policy':
      if (w.length !== 1) throw new Error('usage: policy');
      return cache.policyStatus();
    default:
      throw new Error(`unknown command ${JSON.stringify(w[0])}`);
  }
}

process.on('SIGTERM', () => shutdown(false));
process.on('SIGINT', () => shutdown(false));

try {
  await redis.connect();
  await cache.start();
} catch (e) {
  process.stderr.write(`aci-node: cannot start: ${e.message}\n`);
  process.exit(1);
}
// Ready means subscribed (docs/NODE.md): start() returns after connectTimeout even when the
// subscription is not up yet, so wait for it here (bounded).
for (let i = 0; i < 200 && !cache.stats().l1Serving; i++) await new Promise((r) => setTimeout(r, 50));
if (!cache.stats().l1Serving) process.stderr.write('aci-node: not subscribed yet; reads go to Redis until it is\n');
out({ ready: true, instance_id: cache.id, host: 'js', protocol: 2 });

const rl = readline.createInterface({ input: process.stdin, crlfDelay: Infinity });
// One command at a time, answers in order.
let queue = Promise.resolve();
rl.on('line', (raw) => {
  const line = raw.replace(/\r$/, '');
  queue = queue.then(async () => {
    if (stopping) return;
    if (line === 'quit') return shutdown(true);
    if (line === '') return;
    try {
      out(await run(line));
    } catch (e) {
      out({ error: String(e?.message ?? e).split('\n')[0] });
    }
  });
});
rl.on('close', () => {
  queue = queue.then(() => shutdown(false));
});
