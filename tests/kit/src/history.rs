//! The history checker: every acknowledged write and every read of a run is recorded, and no
//! read may return a value older than the bound of the strategy its newer write was made under
//! (plus a propagation allowance), and no acknowledged value may be missing from Redis at the
//! end.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use aci_policy_core::Strategy;

/// One acknowledged write of value `seq` to `key`.
#[derive(Clone, Debug)]
pub struct Write {
    pub key: usize,
    pub seq: u64,
    pub acked: Instant,
    /// The writer's strategy: it decides how (and so how fast) the write propagates.
    pub strategy: Strategy,
}

/// One read of `key` that returned value `seq`, started at `started`.
#[derive(Clone, Debug)]
pub struct Read {
    pub instance: usize,
    pub key: usize,
    pub seq: u64,
    pub started: Instant,
}

#[derive(Default)]
pub struct History {
    pub writes: Vec<Write>,
    pub reads: Vec<Read>,
}

/// Counts, not just pass/fail.
#[derive(Debug, Default)]
pub struct Verdict {
    pub writes: usize,
    pub reads: usize,
    pub stale_beyond_bound: usize,
    pub worst_stale_ms: f64,
    pub lost_values: usize,
}

/// The staleness bound of a strategy: eager's is the allowance alone, batched's the batch
/// interval plus a tick, ttl's the local TTL (each plus the allowance).
pub fn bound(s: Strategy, allowance: Duration, local_ttl: Duration, batch: Duration, tick: Duration) -> Duration {
    match s {
        Strategy::Eager => allowance,
        Strategy::Batched => batch + tick + allowance,
        Strategy::Ttl => local_ttl + allowance,
    }
}

impl History {
    /// A read is stale beyond its bound if some write of the same key with a newer value was
    /// acknowledged more than `bound` before the read started, `bound` being that of the
    /// strategy the write was made under (the writer decides how a write propagates; readers
    /// apply every invalidation whatever their own strategy). `final_values` is what Redis
    /// holds at the end, per key.
    pub fn check(&self, final_values: &HashMap<usize, u64>, b: impl Fn(Strategy) -> Duration) -> Verdict {
        let mut by_key: HashMap<usize, Vec<&Write>> = HashMap::new();
        for w in &self.writes {
            by_key.entry(w.key).or_default().push(w);
        }
        let mut v = Verdict { writes: self.writes.len(), reads: self.reads.len(), ..Default::default() };
        for r in &self.reads {
            let newer_acked_long_ago = by_key
                .get(&r.key)
                .into_iter()
                .flatten()
                .filter(|w| w.seq > r.seq && w.acked + b(w.strategy) < r.started);
            if let Some(w) = newer_acked_long_ago.min_by_key(|w| w.acked) {
                v.stale_beyond_bound += 1;
                v.worst_stale_ms = v.worst_stale_ms.max((r.started - w.acked).as_secs_f64() * 1000.0);
                if v.stale_beyond_bound <= 3 {
                    eprintln!(
                        "  stale: instance {} key {} read seq {} at +{:?} after seq {} was acked",
                        r.instance, r.key, r.seq, r.started - w.acked, w.seq
                    );
                }
            }
        }
        for (k, ws) in &by_key {
            let last = ws.iter().map(|w| w.seq).max().unwrap_or(0);
            if final_values.get(k).copied().unwrap_or(0) < last {
                v.lost_values += 1;
            }
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_checker_catches_a_stale_read_and_a_lost_value() {
        // A checker that cannot fail would prove nothing.
        let t0 = Instant::now();
        let h = History {
            writes: vec![
                Write { key: 1, seq: 1, acked: t0, strategy: Strategy::Eager },
                Write { key: 1, seq: 2, acked: t0 + Duration::from_millis(10), strategy: Strategy::Eager },
            ],
            reads: vec![
                Read { instance: 1, key: 1, seq: 1, started: t0 + Duration::from_millis(100) },
                Read { instance: 1, key: 1, seq: 1, started: t0 + Duration::from_millis(2000) },
            ],
        };
        let finals = HashMap::from([(1, 1)]);
        let v = h.check(&finals, |_| Duration::from_millis(300));
        assert_eq!(v.stale_beyond_bound, 1, "only the read 2 s later is beyond the eager bound");
        assert_eq!(v.lost_values, 1, "Redis holds seq 1 though seq 2 was acknowledged");
    }
}
