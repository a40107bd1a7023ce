// Replays the language-neutral wire vectors (tests/vectors/wire/*.json, docs/WIRE.md v2) with
// exact comparison: decode.json through decode(), loss.json through LossDetector, naming.json
// through Names. Format: tests/vectors/wire/make.py.

import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { CacheConfigError, Names } from '../src/config.js';
import { createPrivateKey, createPublicKey, sign } from 'node:crypto';
import { RecordError, Trust, parseRecord, signedMessage, targetFor } from '../src/rollout.js';
import { LossDetector, Sender, decode, decodePolicy } from '../src/wire.js';

const DIR = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..', 'tests', 'vectors', 'wire');
const load = (f) => JSON.parse(readFileSync(path.join(DIR, f), 'utf8')).cases;

// snake_case config fields of the vectors -> our option names.
const FIELD = { namespace: 'namespace', channel_prefix: 'channelPrefix', instance_id: 'instanceId', key: 'key' };

function payloadOf(c) {
  let bytes = c.payload_hex !== undefined ? Buffer.from(c.payload_hex, 'hex') : Buffer.from(c.payload, 'utf8');
  if (c.expand_keys !== undefined) {
    const keys = Array(c.expand_keys).fill('"k"').join(',');
    bytes = Buffer.from(bytes.toString('utf8').replace('"@KEYS@"', keys), 'utf8');
  }
  if (c.pad_to !== undefined && bytes.length < c.pad_to) {
    bytes = Buffer.concat([bytes, Buffer.alloc(c.pad_to - bytes.length, 0x20)]);
  }
  return bytes;
}

describe('decode.json', () => {
  const cases = load('decode.json');
  test('vectors are present', () => assert.ok(cases.length > 50));
  for (const c of cases) {
    test(c.name, () => {
      const got = decode(payloadOf(c));
      if ('keys_count' in c.expect) {
        assert.equal(got.action, c.expect.action);
        assert.equal(got.keys.length, c.expect.keys_count);
        return;
      }
      assert.deepStrictEqual(got, c.expect);
    });
  }
});

describe('loss.json', () => {
  for (const c of load('loss.json')) {
    test(c.name, () => {
      const d = new LossDetector();
      c.events.forEach((e, i) => {
        let got;
        if (e.do === 'message') got = d.message(e.source, e.epoch ?? null, e.seq, e.at);
        else if (e.do === 'position') got = d.position(e.source, e.epoch ?? null, e.inval_seq, e.at);
        else if (e.do === 'tick') got = d.tick(e.at);
        else if (e.do === 'resubscribed') got = (d.resubscribed(), 'ok');
        else assert.fail(`unknown event ${e.do}`);
        assert.equal(got, e.expect, `event ${i} (${JSON.stringify(e)})`);
      });
    });
  }
});

describe('naming.json', () => {
  for (const c of load('naming.json')) {
    test(c.name, () => {
      let names;
      try {
        names = new Names(c.channel_prefix, c.namespace, c.instance_id);
        names.checkKey(c.key);
      } catch (err) {
        assert.ok(err instanceof CacheConfigError, `${err}`);
        assert.ok('error' in c.expect, `unexpected error ${err.message}`);
        assert.equal(err.field, FIELD[c.expect.error]);
        return;
      }
      assert.ok(!('error' in c.expect), `expected an error on ${c.expect.error}`);
      const got = {
        invalidation: names.invalidation, strategy: names.strategy, reports: names.reports,
        liveness: names.liveness, lease: names.lease, redis_key: names.redisKey(c.key),
      };
      assert.deepStrictEqual(got, c.expect);
    });
  }
});

// Section 9: announcements, signatures (computed by an independent implementation), records.
describe('policy.json', () => {
  const cases = load('policy.json');
  test('vectors are present, of every kind', () => {
    assert.deepEqual(new Set(cases.map((c) => c.kind)), new Set(['announcement', 'signature', 'record']));
  });
  for (const c of cases) {
    test(`${c.kind}: ${c.name}`, () => {
      if (c.kind === 'announcement') {
        const m = decodePolicy(payloadOf(c));
        const got = m.malformed !== undefined ? { malformed: m.malformed } : { rollout: m.rollout, source: m.source };
        assert.deepStrictEqual(got, c.expect);
      } else if (c.kind === 'signature') {
        const msg = signedMessage(c.prefix, c.namespace, c.sha256, c.config);
        assert.ok(msg.equals(Buffer.from(c.message, 'utf8')), 'the signed message');
        const seed = Buffer.from(c.seed, 'hex');
        const x = Buffer.from(c.public_key, 'hex').toString('base64url');
        const key = createPrivateKey({ key: { kty: 'OKP', crv: 'Ed25519', d: seed.toString('base64url'), x }, format: 'jwk' });
        const pub = Buffer.from(createPublicKey(key).export({ format: 'jwk' }).x, 'base64url').toString('hex');
        assert.equal(pub, c.public_key, 'the public key of the seed');
        assert.equal(sign(null, msg, key).toString('hex'), c.sig, 'ed25519 is deterministic');
        const trust = new Trust(c.public_key, undefined);
        for (const v of c.verifies) {
          const reason = trust.check({ sha256: v.sha256, config: v.config, sig: c.sig }, v.prefix, v.namespace);
          assert.equal(reason === null, v.verifies, `${JSON.stringify(v)}: ${reason}`);
        }
      } else if (c.kind === 'record') {
        let got;
        try {
          const t = targetFor(parseRecord(c.fields), c.instance);
          got = { sha256: t.sha256, config: t.config, sig: t.sig };
        } catch (err) {
          assert.ok(err instanceof RecordError, String(err));
          got = { malformed: err.field };
        }
        assert.deepStrictEqual(got, c.expect);
      } else {
        assert.fail(`unknown case kind ${c.kind}`);
      }
    });
  }
});

describe('encoding', () => {
  test('every message we send decodes to what we meant', () => {
    const s = new Sender('3f2a9c1b0d4e', '9c1b0d4e3f2a9c1b');
    const base = { source: s.source, epoch: s.epoch };
    const check = (text, want) => {
      const got = decode(Buffer.from(text));
      assert.equal(typeof got.timestamp, 'number');
      delete got.timestamp;
      assert.deepStrictEqual(got, { ...want, ...base });
    };
    check(s.invalidate(['a', 'line\nbreak', 'é'], 'eager', 7), { action: 'invalidate', keys: ['a', 'line\nbreak', 'é'], strategy: 'eager', seq: 7 });
    check(s.flush(8), { action: 'flush', seq: 8 });
    check(s.mark(8), { action: 'mark', inval_seq: 8 });
    check(s.strategyUpdate('batched', 12.5, 8), { action: 'strategy_update', strategy: 'batched', write_rate: 12.5, inval_seq: 8 });
    check(s.writeReport(2 ** 40, 3), { action: 'write_report', count: 2 ** 32 - 1, inval_seq: 3 });
    check(s.heartbeat(), { action: 'heartbeat' });
  });

  test('a deeply nested 1 MiB payload is refused without blowing the stack', () => {
    const deep = Buffer.from('['.repeat((1 << 20) - 1));
    assert.deepStrictEqual(decode(deep), { malformed: 'not-json' });
    const nested = Buffer.from('{"action":"heartbeat","source":"a","x":' + '['.repeat(500_000) + ']'.repeat(500_000) + '}');
    assert.ok(nested.length <= 1 << 20);
    assert.deepStrictEqual(decode(nested), { malformed: 'not-json' }, 'deeper than 64 levels (docs/WIRE.md 2.3)');
  });
});
