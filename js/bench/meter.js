#!/usr/bin/env node
// Cost of the policy sandbox (src/meter.js): the same engine calls on a metered and an
// unmetered instance of the adaptive policy, in one run. Prints
//   meter <op> metered <ns> plain <ns> ratio <x>
// (target: ratio <= 2). BENCH_SCALE=0.1 for a smoke run.
import { loadPolicy } from '../src/policy.js';

const SCALE = Number(process.env.BENCH_SCALE ?? 1);
const T0 = 1_700_000_000_000;
const N = Math.max(1000, Math.round(200_000 * SCALE));

function time(fn) {
  for (let i = 0; i < N / 4; i++) fn(i);
  const rounds = [];
  for (let r = 0; r < 7; r++) {
    const t0 = process.hrtime.bigint();
    for (let i = 0; i < N; i++) fn(i);
    rounds.push(Number(process.hrtime.bigint() - t0) / N);
  }
  return rounds.sort((a, b) => a - b)[3];
}

const ops = {
  'record-write': (p) => (i) => p.recordWrite('user:42', T0 + (i >> 4)),
  status: (p) => {
    p.recordRemoteWrites(100, T0);
    return (i) => p.status(T0 + i);
  },
  'record-writes-16': (p) => {
    const keys = Array.from({ length: 16 }, (_, i) => `user:${i}`);
    return (i) => p.recordWrites(keys, T0 + i);
  },
};
for (const [op, make] of Object.entries(ops)) {
  // Interleaved, twice each, so drift on a shared machine hits both alike.
  const m = [], u = [];
  for (let k = 0; k < 2; k++) {
    m.push(time(make(await loadPolicy('adaptive', { meter: true }))));
    u.push(time(make(await loadPolicy('adaptive', { meter: false }))));
  }
  const a = Math.min(...m), b = Math.min(...u);
  console.log(`meter ${op} metered ${Math.round(a)} plain ${Math.round(b)} ratio ${(a / b).toFixed(2)}`);
}
