#!/usr/bin/env node
// Cost of one engine call from JavaScript, through the wrapper (src/policy.js) and jco's glue,
// on the adaptive policy. Prints exactly one line per operation on stdout:
//
//   engine-call js <op> <nanoseconds per call>
//
// ops: record-write (a short key, "user:42"), status, pending-batch-100 (a drained batch of 100
// keys). Each figure is the median of ROUNDS timed rounds after a warm-up. Details (setup,
// per-round figures) go to stderr. BENCH_SCALE=0.1 runs ten times fewer calls (a smoke run).

import { loadPolicy } from '../src/policy.js';

const SCALE = Number(process.env.BENCH_SCALE ?? 1);
const ROUNDS = 7;
const T0 = 1_700_000_000_000;

function median(xs) {
  const s = [...xs].sort((a, b) => a - b);
  return s[s.length >> 1];
}

// Times `n` back-to-back calls of fn(i) per round; returns the median ns per call.
function timeLoop(n, fn) {
  n = Math.max(1, Math.round(n * SCALE));
  for (let i = 0; i < n; i++) fn(i); // warm-up: JIT, engine state
  const rounds = [];
  for (let r = 0; r < ROUNDS; r++) {
    const t0 = process.hrtime.bigint();
    for (let i = 0; i < n; i++) fn(i);
    rounds.push(Number(process.hrtime.bigint() - t0) / n);
  }
  return { ns: median(rounds), rounds };
}

// For calls that need untimed setup before each one: times each call alone and subtracts the
// cost of reading the clock twice.
function timeEach(n, setup, fn) {
  n = Math.max(1, Math.round(n * SCALE));
  let clock = Infinity;
  for (let i = 0; i < 10_000; i++) {
    const a = process.hrtime.bigint();
    const b = process.hrtime.bigint();
    clock = Math.min(clock, Number(b - a));
  }
  for (let i = 0; i < n; i++) { setup(i); fn(i); } // warm-up
  const rounds = [];
  for (let r = 0; r < ROUNDS; r++) {
    let total = 0n;
    for (let i = 0; i < n; i++) {
      setup(i);
      const t0 = process.hrtime.bigint();
      fn(i);
      total += process.hrtime.bigint() - t0;
    }
    rounds.push(Number(total) / n - clock);
  }
  return { ns: median(rounds), rounds, clock };
}

function report(op, { ns, rounds }) {
  console.log(`engine-call js ${op} ${Math.round(ns)}`);
  console.error(`  ${op}: rounds ${rounds.map((x) => Math.round(x)).join(' ')} ns`);
}

// record-write: one local write of a short key per call, the clock advancing 1 ms every 16
// writes (a steady ~16,000 writes/s: the policy settles on eager, as under real load).
{
  const p = await loadPolicy('adaptive');
  const r = timeLoop(200_000, (i) => p.recordWrite('user:42', T0 + (i >> 4)));
  console.error(`record-write: strategy after the run: ${p.currentStrategy(T0 + 1_000_000)}`);
  report('record-write', r);
}

// status: a snapshot, the clock advancing 1 ms per call, with writes in the window.
{
  const p = await loadPolicy('adaptive');
  p.recordRemoteWrites(100, T0);
  const r = timeLoop(200_000, (i) => p.status(T0 + i));
  report('status', r);
}

// pending-batch-100: 100 distinct keys buffered (untimed, one record-writes call), then the
// timed pending-batch call that drains and returns them (the batch is due on batch-max-keys).
{
  const p = await loadPolicy('adaptive');
  const cfg = p.defaultConfig();
  p.configure(
    { ...cfg, lowThreshold: 0, highThreshold: 1e12, batchMaxKeys: 100, initialStrategy: 'batched' },
    T0,
  );
  const keys = Array.from({ length: 100 }, (_, i) => `user:${1000 + i}`);
  let got = 0;
  const r = timeEach(
    2_000,
    (i) => p.recordWrites(keys, T0 + i),
    (i) => {
      got = p.pendingBatch(T0 + i).keys.length;
    },
  );
  if (got !== 100) throw new Error(`pending-batch returned ${got} keys, not 100`);
  console.error(`pending-batch-100: clock read pair ${r.clock} ns subtracted`);
  report('pending-batch-100', r);
}
