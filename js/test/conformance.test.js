// Replays every trace vector of tests/vectors/*.json against a fresh instance of the policy it
// names, through the wrapper in src/policy.js. Results must match exactly (floats by ===).
// ACI_VECTORS_DIR overrides the vector folder, ACI_POLICY_DIR the policy folder (default
// <repo>/target/policies; a component without an up-to-date js/gen/ copy is transpiled first).

import assert from 'node:assert/strict';
import { readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { ConfigError, configFromWire, configToWire, loadPolicy } from '../src/policy.js';

const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
const VECTORS_DIR = process.env.ACI_VECTORS_DIR
  ? path.resolve(process.env.ACI_VECTORS_DIR)
  : path.join(REPO, 'tests', 'vectors');

const VECTORS = readdirSync(VECTORS_DIR)
  .filter((f) => f.endsWith('.json'))
  .sort()
  .map((file) => ({ ...JSON.parse(readFileSync(path.join(VECTORS_DIR, file), 'utf8')), file }));

const OPS_WITHOUT_NOW = new Set(['describe', 'default-config']);

// A step's now-ms, checked to be exactly what the vector says (JSON numbers past 2^53 are not).
function now(step) {
  if (!Number.isSafeInteger(step.now) || step.now < 0) {
    throw new Error(`step has no usable "now" (${JSON.stringify(step.now)})`);
  }
  return step.now;
}

// Runs one step; returns the result in the vector's form (kebab-case WIT names, strategies as
// strings, non-finite floats as "NaN"/"Infinity"/"-Infinity", nothing as null).
function runStep(policy, step) {
  const t = OPS_WITHOUT_NOW.has(step.op) ? undefined : now(step);
  switch (step.op) {
    case 'describe': {
      const { name, version } = policy.describe();
      return { name, version };
    }
    case 'default-config':
      return configToWire(policy.defaultConfig());
    case 'configure':
      try {
        policy.configure(configFromWire(step.config), t);
        return { ok: null };
      } catch (err) {
        if (err instanceof ConfigError) return { err: { field: err.field, message: err.message } };
        throw err;
      }
    case 'record-write':
      return policy.recordWrite(step.key, t);
    case 'record-writes':
      return policy.recordWrites(step.keys, t);
    case 'record-remote-writes':
      return policy.recordRemoteWrites(step.count, t);
    case 'current-strategy':
      return policy.currentStrategy(t);
    case 'write-rate':
      return wireFloat(policy.writeRate(t));
    case 'pending-batch': {
      const b = policy.pendingBatch(t);
      return { keys: b.keys, 'flush-all': b.flushAll };
    }
    case 'status': {
      const s = policy.status(t);
      return {
        strategy: s.strategy,
        'write-rate': wireFloat(s.writeRate),
        'buffered-keys': s.bufferedKeys,
        'batch-due': s.batchDue,
        switches: s.switches,
        following: s.following,
      };
    }
    case 'follow':
      return policy.follow(step.strategy, t) ?? null;
    case 'lead':
      return policy.lead(t) ?? null;
    default:
      throw new Error(`unknown op ${JSON.stringify(step.op)}`);
  }
}

function wireFloat(x) {
  return Number.isFinite(x) ? x : String(x);
}

// Exact equality of JSON-like values: same types, numbers by === (so 0.1 + 0.2 != 0.3), object
// keys the same set, arrays the same length and order.
function same(want, got) {
  if (want === null || typeof want !== 'object') {
    return typeof want === typeof got && want === got;
  }
  if (Array.isArray(want)) {
    return Array.isArray(got) && want.length === got.length && want.every((w, i) => same(w, got[i]));
  }
  if (got === null || typeof got !== 'object' || Array.isArray(got)) return false;
  const wk = Object.keys(want).sort();
  const gk = Object.keys(got).sort();
  return same(wk, gk) && wk.every((k) => same(want[k], got[k]));
}

function show(v) {
  return JSON.stringify(v, (_, x) => (typeof x === 'bigint' ? `${x}n` : x === undefined ? '<undefined>' : x));
}

describe('trace vectors', () => {
  test('vectors are present, named uniquely, for known policies', () => {
    assert.ok(VECTORS.length > 0, `no trace vectors in ${VECTORS_DIR}`);
    const names = VECTORS.map((v) => v.name);
    assert.equal(new Set(names).size, names.length, 'duplicate vector names');
    for (const v of VECTORS) {
      assert.ok(['adaptive', 'fixed', 'budget'].includes(v.policy), `${v.file}: unknown policy ${v.policy}`);
      assert.ok(Array.isArray(v.steps) && v.steps.length > 0, `${v.file}: no steps`);
    }
  });

  for (const vector of VECTORS) {
    test(`${vector.name} (${vector.policy}, ${vector.steps.length} steps)`, async () => {
      const policy = await loadPolicy(vector.policy); // a fresh instance for this vector
      vector.steps.forEach((step, i) => {
        const where = `vector ${vector.name} (${vector.file}) step ${i} [${step.op}]`;
        let got;
        try {
          got = runStep(policy, step);
        } catch (err) {
          const want = 'expect' in step ? show(step.expect) : '(no expectation)';
          assert.fail(`${where}: want ${want}, got exception ${err.name}: ${err.message}`);
        }
        if ('expect' in step && !same(step.expect, got)) {
          assert.fail(`${where}: want ${show(step.expect)}, got ${show(got)}`);
        }
      });
    });
  }
});
