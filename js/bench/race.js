// How the benchmarks here compare contenders on a shared 2-core machine.

/**
 * Times `ops` awaited calls of each contender per round, for `rounds` rounds, the contenders
 * taking turns (in a rotating order) within each round, so that drift in machine load hits them
 * alike. `warm` calls of each first. Returns, per contender, its fastest round and its
 * per-round times (ns per call).
 */
export async function race(contenders, ops, { rounds = 31, warm = Math.min(ops, 2000) } = {}) {
  const names = Object.keys(contenders);
  const times = Object.fromEntries(names.map((k) => [k, []]));
  for (const fn of Object.values(contenders)) for (let i = 0; i < warm; i++) await fn(i);
  for (let r = 0; r < rounds; r++) {
    for (let j = 0; j < names.length; j++) {
      const name = names[(r + j) % names.length];
      const fn = contenders[name];
      const t0 = process.hrtime.bigint();
      for (let i = 0; i < ops; i++) await fn(i);
      times[name].push(Number(process.hrtime.bigint() - t0) / ops);
    }
  }
  return Object.fromEntries(names.map((k) => [k, { best: Math.min(...times[k]), rounds: times[k] }]));
}

/** The median over rounds of a/b measured in the same round: robust to load that comes and goes. */
export function ratio(a, b) {
  const xs = a.rounds.map((x, i) => x / b.rounds[i]).sort((p, q) => p - q);
  return xs[xs.length >> 1];
}
