// Following policy rollouts (docs/WIRE.md 9) against a real redis-server: pushes written here as
// `aci policy push` writes them (blob, the compare-and-set script of 9.2, the announcement),
// signed with node:crypto, to JS caches that adopt, refuse, revert and roll the fleet back.

import assert from 'node:assert/strict';
import { createHash, generateKeyPairSync, sign } from 'node:crypto';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { describe, test } from 'node:test';
import { AdaptiveCache, CacheConfigError } from 'aci-cache';
import { InvalidComponent, loadComponent, policyDir } from '../src/policy.js';
import { Trust, signedMessage, verifyStrict, publicKeyObject } from '../src/rollout.js';
import { sleep, until, useCaches } from './redis-server.js';

const fx = useCaches('ro');
const { ns, cache } = fx;
const read = (name) => readFileSync(path.join(policyDir(), `${name}.wasm`));
const FIXED = read('fixed');
const HOSTILE = read('hostile');
const ADAPTIVE = read('adaptive');
const sha = (b) => createHash('sha256').update(b).digest('hex');

// The script of WIRE.md 9.2, copied from the spec (not from src/): the two must agree.
const CAS = `local cur = redis.call('HGET', KEYS[1], 'rollout')
if (cur or '0') ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], unpack(ARGV, 4))
redis.call('PUBLISH', ARGV[2], ARGV[3])
return 1`;

function keypair() {
  const { privateKey, publicKey } = generateKeyPairSync('ed25519');
  return { privateKey, pub: Buffer.from(publicKey.export({ format: 'jwk' }).x, 'base64url').toString('hex') };
}
const KEY = keypair();

// What `aci policy push` does (WIRE.md 9.7 Push), for namespace `n` under prefix `aci`.
async function push(n, bytes, { config = '', key = KEY.privateKey, canary = [], sig } = {}) {
  const r = fx.srv.client();
  const h = sha(bytes);
  const K = `aci::${n}:`;
  await r.hdel(`${K}policy:bad`, h);
  await r.set(`${K}policy:blob:${h}`, bytes, 'NX');
  const cur = await r.hgetall(`${K}policy:current`);
  const expected = cur.rollout ?? '0';
  const fleet = !cur.rollout ? ['', '', ''] : cur.canary ? [cur.previous, cur.previous_config, cur.previous_sig] : [cur.sha256, cur.config, cur.sig];
  const s = sig ?? (key ? sign(null, signedMessage('aci', n, h, config), key).toString('hex') : '');
  const rollout = Number(expected) + 1;
  await writeRecord(r, n, expected, {
    rollout: String(rollout), sha256: h, config, sig: s,
    previous: fleet[0], previous_config: fleet[1], previous_sig: fleet[2], canary: canary.join(','),
    name: '', version: '', by: 'test@here', reason: 'push', at: String(Date.now() / 1000),
  });
  return { sha256: h, rollout };
}

// `aci policy rollback`: back to the record's previous target.
async function rollback(n) {
  const r = fx.srv.client();
  const cur = await r.hgetall(`aci::${n}:policy:current`);
  await writeRecord(r, n, cur.rollout, {
    rollout: String(Number(cur.rollout) + 1), sha256: cur.previous, config: cur.previous_config, sig: cur.previous_sig,
    previous: cur.sha256, previous_config: cur.config, previous_sig: cur.sig, canary: '',
    name: '', version: '', by: 'test@here', reason: 'rollback', at: String(Date.now() / 1000),
  });
}

async function writeRecord(r, n, expected, fields) {
  const ann = JSON.stringify({ action: 'policy', rollout: Number(fields.rollout), timestamp: Date.now() / 1000, source: 'cli-test', v: 2 });
  const done = await r.eval(CAS, 1, `aci::${n}:policy:current`, expected, `aci:${n}:policy`, ann, ...Object.entries(fields).flat());
  assert.equal(done, 1, 'the compare-and-set wrote the record');
}

async function statusOf(n, id) {
  const v = await fx.srv.client().get(`aci::${n}:policy:status:${id}`);
  return v === null ? null : JSON.parse(v);
}

const trusted = { policyPublicKey: KEY.pub, tickInterval: 0.1, logger: { warn() {} } };

describe('configuration', () => {
  test('bad trust settings are refused at construction, naming the option', () => {
    const redis = fx.srv.client();
    const cases = [
      [{ policyPublicKey: 'AB'.repeat(32) }, 'policyPublicKey'],
      [{ policyPublicKey: 'ab' }, 'policyPublicKey'],
      [{ policyPublicKey: 42 }, 'policyPublicKey'],
      [{ policyAllowHashes: 'ab'.repeat(32) }, 'policyAllowHashes'],
      [{ policyAllowHashes: ['AB'.repeat(32)] }, 'policyAllowHashes'],
      [{ policyRollbackFaults: 0 }, 'policyRollbackFaults'],
      [{ policyRollbackFaults: 1.5 }, 'policyRollbackFaults'],
    ];
    for (const [opts, field] of cases) {
      assert.throws(() => new AdaptiveCache({ redis, ...opts }), (e) => e instanceof CacheConfigError && e.field === field, field);
    }
    new AdaptiveCache({ redis, policyPublicKey: KEY.pub, policyAllowHashes: [sha(FIXED)], policyRollbackFaults: 1 });
  });

  test('signatures are verified strictly (non-canonical S, small-order R or key refused)', () => {
    const msg = signedMessage('aci', 'x', sha(FIXED), '');
    const good = sign(null, msg, KEY.privateKey);
    const pub = publicKeyObject(KEY.pub);
    assert.ok(verifyStrict(pub, msg, good.toString('hex')));
    // S + L: the same signature with a non-canonical scalar.
    const s = Buffer.from(good.subarray(32));
    const L = Buffer.from('edd3f55c1a631258d69cf7a2def9de1400000000000000000000000000000010', 'hex');
    let carry = 0;
    for (let i = 0; i < 32; i++) {
      const v = s[i] + L[i] + carry;
      s[i] = v & 0xff;
      carry = v >> 8;
    }
    assert.ok(!verifyStrict(pub, msg, Buffer.concat([good.subarray(0, 32), s]).toString('hex')));
    const smallR = Buffer.concat([Buffer.from('01'.padEnd(64, '0'), 'hex'), good.subarray(32)]);
    assert.ok(!verifyStrict(pub, msg, smallR.toString('hex')));
    const t = new Trust('01'.padEnd(64, '0'), undefined);
    assert.match(t.check({ sha256: sha(FIXED), config: '', sig: good.toString('hex') }, 'aci', 'x'), /bad signature/);
  });
});

// A component whose core module is `core` instead of fixed's (the rest byte for byte).
function withCore(component, core) {
  const out = [component.subarray(0, 8)];
  let pos = 8;
  let replaced = false;
  while (pos < component.length) {
    const id = component[pos];
    let size = 0;
    let shift = 0;
    let p = pos + 1;
    for (;;) {
      const b = component[p++];
      size += (b & 0x7f) * 2 ** shift;
      if (!(b & 0x80)) break;
      shift += 7;
    }
    if (id === 1 && !replaced) {
      replaced = true;
      const len = [];
      let n = core.length;
      do {
        let b = n & 0x7f;
        n = Math.floor(n / 128);
        if (n) b |= 0x80;
        len.push(b);
      } while (n);
      out.push(Buffer.from([1, ...len]), core);
    } else {
      out.push(component.subarray(pos, p + size));
    }
    pos = p + size;
  }
  return Buffer.concat(out);
}

describe('pushed components without jco (the glue of a bundled policy of the same layout)', () => {
  test('every component of target/policies: the policies load, another layout is refused', async () => {
    for (const name of ['adaptive', 'fixed', 'budget', 'hostile']) {
      const m = await loadComponent(read(name));
      assert.equal(m.source.sha256, sha(read(name)));
      const p = await m.instantiate();
      assert.equal(p.describe().name, name);
      assert.equal(p.recordWrite('k', 1), 'ttl');
    }
    await assert.rejects(loadComponent(read('trap-on-load')), (e) => e instanceof InvalidComponent && /component layout/.test(e.message));
  });

  test('a core module that imports, lacks an export or is not wasm is refused', async () => {
    const header = [0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00];
    const importing = Buffer.from([...header, 1, 4, 1, 0x60, 0, 0, 2, 7, 1, 1, 0x78, 1, 0x79, 0, 0]);
    await assert.rejects(loadComponent(withCore(FIXED, importing)), /imports something/);
    await assert.rejects(loadComponent(withCore(FIXED, Buffer.from(header))), /does not export/);
    await assert.rejects(loadComponent(withCore(FIXED, Buffer.from('not a module'))), InvalidComponent);
    await assert.rejects(loadComponent(FIXED.subarray(0, 1000)), /truncated/);
    // fixed's glue with hostile's core module: runs, and is metered.
    const mixed = await (await loadComponent(withCore(FIXED, (await import('../src/component.js')).componentShape(HOSTILE).modules[0]))).instantiate();
    assert.equal(mixed.describe().name, 'hostile');
    assert.throws(() => mixed.recordWrite('hostile:loop', 1), /trapped/);
  });
});

describe('following pushes', () => {
  test('a signed push makes two caches run fixed with its config override within 2 s; status records say so', async () => {
    const n = ns();
    const a = await cache({ namespace: n, ...trusted });
    const b = await cache({ namespace: n, ...trusted });
    const local = a.policyStatus();
    assert.equal(local.origin, 'local');
    assert.equal(local.name, 'adaptive');
    assert.equal(local.host, 'js');
    assert.equal(local.trust, 'key');
    const t0 = Date.now();
    const { sha256, rollout } = await push(n, FIXED, { config: '{"initial-strategy":"eager"}' });
    for (const c of [a, b]) {
      const st = await until(async () => {
        const s = await statusOf(n, c.id);
        return s && s.sha256 === sha256 && s.strategy === 'eager' ? s : null;
      }, 2000, `${c.id} on the pushed policy`);
      assert.equal(st.origin, 'pushed');
      assert.equal(st.name, 'fixed');
      assert.equal(st.rollout, rollout);
      assert.equal(st.host, 'js');
      assert.equal(st.rejected, null);
      assert.equal(c.strategy, 'eager');
      assert.equal(c.stats().policyOrigin, 'pushed');
      assert.equal(c.stats().policySha256, sha256);
    }
    assert.ok(Date.now() - t0 < 2000);
    // A leading instance runs fixed/eager because of the override: not just because it follows.
    const leader = a.isController ? a : b;
    assert.equal(leader.strategy, 'eager');

    // The operator rolls back: both return to their local policy.
    await rollback(n);
    for (const c of [a, b]) {
      await until(() => c.policyStatus().origin === 'local' && c.policyStatus().name === 'adaptive', 2000, 'back to local');
    }
    const st = await until(() => statusOf(n, a.id).then((s) => (s?.origin === 'local' ? s : null)), 2000, 'status local');
    assert.equal(st.sha256, sha(ADAPTIVE));
  });

  test('an unsigned or wrongly signed push is refused, the reason in the status record', async () => {
    const n = ns();
    const a = await cache({ namespace: n, ...trusted });
    const { rollout } = await push(n, FIXED, { key: null });
    const st = await until(() => statusOf(n, a.id).then((s) => (s?.rejected ? s : null)), 2000, 'a rejection');
    assert.equal(st.origin, 'local');
    assert.equal(st.rejected.rollout, rollout);
    assert.equal(st.rejected.sha256, sha(FIXED));
    assert.match(st.rejected.reason, /^unsigned/);
    await push(n, FIXED, { key: keypair().privateKey });
    await until(() => /^bad signature/.test(a.policyStatus().rejected?.reason ?? ''), 2000, 'bad signature');
    assert.equal(a.policyStatus().origin, 'local');
    // A config the signature does not cover.
    await push(n, FIXED, { config: '{"initial-strategy":"eager"}', sig: sign(null, signedMessage('aci', n, sha(FIXED), ''), KEY.privateKey).toString('hex') });
    await until(() => /^bad signature/.test(a.policyStatus().rejected?.reason ?? '') && a.policyStatus().rollout === 3, 2000, 'bad signature for the config');
  });

  test('overrides the policy config cannot take are refused naming the field', async () => {
    const n = ns();
    const a = await cache({ namespace: n, ...trusted });
    await push(n, FIXED, { config: '{"initial-strategy":"fast"}' });
    await until(() => /^config: initial-strategy: /.test(a.policyStatus().rejected?.reason ?? ''), 2000, 'config refusal');
    await push(n, FIXED, { config: '{"windw-ms":5}' });
    await until(() => /^config: windw-ms: /.test(a.policyStatus().rejected?.reason ?? ''), 2000, 'unknown member');
    await push(n, FIXED, { config: '{"window-ms":-5}' });
    await until(() => /^config: window-ms: /.test(a.policyStatus().rejected?.reason ?? ''), 2000, 'refused by configure');
    assert.equal(a.policyStatus().origin, 'local');
  });

  test('an allow-listed hash runs unsigned (but not with a config override)', async () => {
    const n = ns();
    const a = await cache({ namespace: n, policyAllowHashes: [sha(FIXED)], tickInterval: 0.1, logger: fx.quiet });
    assert.equal(a.policyStatus().trust, 'allow-list');
    await push(n, FIXED, { key: null, config: '{"initial-strategy":"eager"}' });
    await until(() => /config override/.test(a.policyStatus().rejected?.reason ?? ''), 2000, 'override refused');
    await push(n, FIXED, { key: null });
    await until(() => a.policyStatus().sha256 === sha(FIXED), 2000, 'allow-listed hash adopted');
    await push(n, HOSTILE, { key: null });
    await until(() => a.policyStatus().rejected?.reason === 'not in the allow-list', 2000, 'not listed');
  });

  test('a cache with no trust ignores pushes and reports them refused', async () => {
    const n = ns();
    const a = await cache({ namespace: n, tickInterval: 0.1 });
    assert.equal(a.policyStatus().trust, 'none');
    const { rollout } = await push(n, FIXED);
    const st = await until(() => statusOf(n, a.id).then((s) => (s?.rejected ? s : null)), 2000, 'a rejection');
    assert.match(st.rejected.reason, /^no policy trust configured/);
    assert.equal(st.rejected.rollout, rollout);
    assert.equal(st.origin, 'local');
    assert.equal(st.trust, 'none');
    assert.equal(a.policyStatus().name, 'adaptive');
  });

  test('a late joiner adopts the current record before it serves', async () => {
    const n = ns();
    const { sha256 } = await push(n, FIXED, { config: '{"initial-strategy":"batched"}' });
    const c = await cache({ namespace: n, ...trusted, role: 'controller' });
    const st = c.policyStatus();
    assert.equal(st.sha256, sha256);
    assert.equal(st.origin, 'pushed');
    assert.equal(c.strategy, 'batched');
  });

  test('keys buffered under batched right before a swap are published (a reader sees the write)', async () => {
    const n = ns();
    const slow = { batchInterval: 60, localTtl: 60, defaultTtl: 120 };
    const writer = await cache({ namespace: n, ...trusted, ...slow, role: 'controller', strategy: 'batched' });
    const reader = await cache({ namespace: n, ...trusted, ...slow, role: 'follower' });
    await until(() => reader.strategy === 'batched', 3000, 'the reader follows batched');
    await writer.set('k', 'v1');
    assert.equal(await reader.get('k'), 'v1');
    assert.equal(await reader.get('k'), 'v1');
    assert.ok(reader.stats().l1Hits >= 1, 'the reader serves k from L1');
    await writer.set('k', 'v2'); // batched: buffered by the writer's policy for a minute
    await sleep(400);
    assert.equal(await reader.get('k'), 'v1', 'stale until the batch is published (the point of batched)');
    const { sha256 } = await push(n, FIXED, { config: '{"initial-strategy":"eager"}' });
    await until(() => writer.policyStatus().sha256 === sha256, 2000, 'the writer swapped');
    await until(async () => (await reader.get('k')) === 'v2', 2000, 'the old batch published at the swap');
  });

  test('a hostile canary is rolled back by the canary itself; the rest never loads it', async () => {
    const n = ns();
    const opts = { namespace: n, ...trusted, slidingWindow: 0.2 };
    const a = await cache({ ...opts, role: 'controller' });
    const b = await cache({ ...opts, role: 'follower' });
    const fixed = await push(n, FIXED);
    for (const c of [a, b]) await until(() => c.policyStatus().sha256 === fixed.sha256, 2000, 'fixed everywhere');
    const seenByB = new Set();
    const watch = setInterval(() => seenByB.add(b.policyStatus().sha256), 20);
    try {
      const hostile = await push(n, HOSTILE, { canary: [a.id] });
      await until(() => a.policyStatus().sha256 === hostile.sha256, 2000, 'the canary runs hostile');
      assert.equal(a.policyStatus().origin, 'pushed');
      // Each write of this key makes the policy loop until its fuel runs out: a fault.
      const t0 = Date.now();
      await until(async () => {
        await a.set('hostile:loop', 'x');
        return a.policyStatus().sha256 === fixed.sha256;
      }, 10_000, 'the automatic rollback');
      const elapsed = Date.now() - t0;
      const r = fx.srv.client();
      const rec = await until(async () => {
        const v = await r.hgetall(`aci::${n}:policy:current`);
        return Number(v.rollout) === hostile.rollout + 1 ? v : null;
      }, 2000, 'the rollback record');
      assert.equal(rec.sha256, fixed.sha256);
      assert.equal(rec.previous, hostile.sha256);
      assert.equal(rec.canary, '');
      assert.equal(rec.by, a.id);
      assert.match(rec.reason, new RegExp(`^auto-rollback: ${a.id}: 3 faults: `));
      assert.match(await r.hget(`aci::${n}:policy:bad`, hostile.sha256), /^auto-rollback: /);
      const st = await until(() => statusOf(n, a.id).then((s) => (s?.sha256 === fixed.sha256 ? s : null)), 2000, 'status');
      assert.equal(st.origin, 'pushed');
      assert.match(st.rejected.reason, /^auto-rollback: /);
      assert.ok(elapsed < 10_000);
      // The fleet stays on fixed; a push of the bad hash again would be refused as marked bad
      // only if the pusher did not clear it (push clears it: the operator insists).
      await sleep(300);
      assert.equal(b.policyStatus().sha256, fixed.sha256);
      assert.ok(!seenByB.has(hostile.sha256), 'the non-canary instance never ran the hostile policy');
      // A record naming the bad hash again (written without clearing K policy:bad) is refused.
      await writeRecord(r, n, String(hostile.rollout + 1), {
        ...rec, rollout: String(hostile.rollout + 2), sha256: hostile.sha256,
        sig: sign(null, signedMessage('aci', n, hostile.sha256, ''), KEY.privateKey).toString('hex'), config: '',
      });
      await until(() => /^marked bad: /.test(b.policyStatus().rejected?.reason ?? ''), 2000, 'marked bad');
      assert.equal(b.policyStatus().sha256, fixed.sha256);
    } finally {
      clearInterval(watch);
    }
  });

  test('missing blob, hash mismatch and malformed records are refused; malformed announcements counted', async () => {
    const n = ns();
    const a = await cache({ namespace: n, ...trusted });
    const r = fx.srv.client();
    const fake = 'ab'.repeat(32);
    await writeRecord(r, n, '0', {
      rollout: '1', sha256: fake, config: '', sig: sign(null, signedMessage('aci', n, fake, ''), KEY.privateKey).toString('hex'),
      previous: '', previous_config: '', previous_sig: '', canary: '', name: '', version: '', by: 't', reason: 'push', at: '0',
    });
    await until(() => /^missing/.test(a.policyStatus().rejected?.reason ?? ''), 2000, 'missing');
    await r.set(`aci::${n}:policy:blob:${fake}`, FIXED);
    await writeRecord(r, n, '1', {
      rollout: '2', sha256: fake, config: '', sig: sign(null, signedMessage('aci', n, fake, ''), KEY.privateKey).toString('hex'),
      previous: '', previous_config: '', previous_sig: '', canary: '', name: '', version: '', by: 't', reason: 'push', at: '0',
    });
    await until(() => /^hash mismatch/.test(a.policyStatus().rejected?.reason ?? ''), 2000, 'hash mismatch');
    await writeRecord(r, n, '2', { rollout: '3', sha256: 'AB'.repeat(32) });
    await until(() => a.policyStatus().rejected?.reason === 'malformed record: sha256', 2000, 'malformed');
    const before = a.stats().malformed;
    await r.publish(`aci:${n}:policy`, '{"action":"policy","rollout":"9","source":"x"}');
    await r.publish(`aci:${n}:policy`, 'nope');
    await until(() => a.stats().malformed === before + 2, 2000, 'malformed announcements counted');
    assert.equal(a.policyStatus().origin, 'local');
  });

  test('a record written while not listening is read after the resubscription', async () => {
    const n = ns();
    const a = await cache({ namespace: n, ...trusted });
    const r = fx.srv.client();
    // The record without its announcement (a lost message).
    const h = sha(FIXED);
    await r.set(`aci::${n}:policy:blob:${h}`, FIXED);
    await r.hset(`aci::${n}:policy:current`, 'rollout', '1', 'sha256', h, 'config', '', 'canary', '',
      'sig', sign(null, signedMessage('aci', n, h, ''), KEY.privateKey).toString('hex'));
    await sleep(500);
    assert.equal(a.policyStatus().origin, 'local', 'nothing announced: not read yet');
    const before = a.stats().resubscribes;
    await r.client('KILL', 'TYPE', 'pubsub');
    await until(() => a.stats().resubscribes > before, 5000, 'resubscribed');
    await until(() => a.policyStatus().sha256 === h, 2000, 'read after the resubscription');
  });

  test('a record whose announcement was lost is read within 10 s anyway (the poll)', { timeout: 20_000 }, async () => {
    const n = ns();
    const a = await cache({ namespace: n, ...trusted });
    const r = fx.srv.client();
    const h = sha(FIXED);
    await r.set(`aci::${n}:policy:blob:${h}`, FIXED);
    const t0 = Date.now();
    await r.hset(`aci::${n}:policy:current`, 'rollout', '1', 'sha256', h,
      'sig', sign(null, signedMessage('aci', n, h, ''), KEY.privateKey).toString('hex'));
    await until(() => a.policyStatus().sha256 === h, 12_000, 'read by the poll');
    assert.ok(Date.now() - t0 > 1000, 'not before the poll');
  });

  test('swapPolicy: a local swap while serving; a rollout back to local returns to it', async () => {
    const n = ns();
    const a = await cache({ namespace: n, ...trusted, role: 'controller' });
    const got = await a.swapPolicy(FIXED, { strategy: 'eager' });
    assert.deepEqual(got, { name: 'fixed', version: '0.1.0', sha256: sha(FIXED) });
    assert.equal(a.strategy, 'eager');
    assert.equal(a.policyStatus().origin, 'local');
    await assert.rejects(a.swapPolicy(Buffer.from('junk')), /not a WebAssembly component/);
    await assert.rejects(a.swapPolicy(path.join(policyDir(), 'fixed.wasm'), { strategy: 'slow' }), CacheConfigError);
    assert.equal(a.policyStatus().name, 'fixed');
    await a.swapPolicy('adaptive');
    assert.equal(a.policyStatus().name, 'adaptive');
  });
});
