//! Trace replay: runs a policy over a write trace with simulated time and reports the strategy
//! timeline and the messages each strategy would have published. No Redis, no clock.

use std::fmt::Write as _;

use crate::error::ConfigError;
use crate::policy::{PolicyConfig, PolicyRuntime, Strategy};

/// One write at `at_ms` of `key`.
#[derive(Clone, Debug, PartialEq)]
pub struct TraceWrite {
    pub at_ms: u64,
    pub key: String,
}

/// Parses the text trace format (see `traces/ramp.trace`). Errors name the line.
pub fn parse_trace(text: &str) -> Result<Vec<TraceWrite>, ConfigError> {
    let mut writes = Vec::new();
    let mut cursor: u64 = 0;
    let mut n: u64 = 0;
    for (i, raw) in text.lines().enumerate() {
        let line = raw.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let bad = |m: &str| ConfigError::new(format!("trace line {}", i + 1), format!("{m}: `{raw}`"));
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["at", ms, rest @ ..] => {
                let at: u64 = ms.parse().map_err(|_| bad("expected `at <ms> [key]`"))?;
                if at < cursor {
                    return Err(bad("time goes backwards"));
                }
                cursor = at;
                let key = rest.first().map(|k| k.to_string()).unwrap_or_else(|| format!("key:{}", n % 100));
                n += 1;
                writes.push(TraceWrite { at_ms: at, key });
            }
            [rate, "for", dur] => {
                let rate: f64 = rate.strip_suffix("/s").and_then(|r| r.parse().ok())
                    .filter(|r: &f64| r.is_finite() && *r >= 0.0 && *r <= 1e6)
                    .ok_or_else(|| bad("expected `<0..1e6>/s for <seconds>s`"))?;
                let secs: f64 = dur.strip_suffix('s').and_then(|d| d.parse().ok())
                    .filter(|d: &f64| d.is_finite() && *d >= 0.0 && *d <= 1e7)
                    .ok_or_else(|| bad("expected a duration like `10s`"))?;
                let dur_ms = (secs * 1000.0) as u64;
                let count = (rate * secs).round() as u64;
                if writes.len() as u64 + count > 50_000_000 {
                    return Err(bad("trace too long (over 50 million writes)"));
                }
                for j in 0..count {
                    let at = cursor + j * dur_ms / count.max(1);
                    writes.push(TraceWrite { at_ms: at, key: format!("key:{}", n % 100) });
                    n += 1;
                }
                cursor += dur_ms;
            }
            _ => return Err(bad("expected `<rate>/s for <seconds>s` or `at <ms> [key]`")),
        }
    }
    Ok(writes)
}

/// A strategy change seen during the replay.
#[derive(Clone, Debug, PartialEq)]
pub struct Switch {
    pub at_ms: u64,
    pub from: Strategy,
    pub to: Strategy,
    pub write_rate: f64,
}

/// Per-strategy totals.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StrategyTotals {
    pub time_ms: u64,
    pub writes: u64,
    pub messages: u64,
}

#[derive(Clone, Debug, Default)]
pub struct Simulation {
    pub switches: Vec<Switch>,
    /// Indexed by strategy: ttl, batched, eager.
    pub totals: [StrategyTotals; 3],
    pub writes: u64,
    pub duration_ms: u64,
    pub flush_alls: u64,
}

fn idx(s: Strategy) -> usize {
    s as usize
}

/// Replays `writes` through `policy`, ticking every `tick_ms` (as a host would) to drain batches.
pub fn run(policy: &mut PolicyRuntime, writes: &[TraceWrite], tick_ms: u64, tail_ms: u64) -> Simulation {
    let mut sim = Simulation::default();
    // Simulated time starts at 0 (trace times are absolute from there).
    let start = 0;
    let end = writes.last().map(|w| w.at_ms).unwrap_or(0) + tail_ms;
    let mut strategy = policy.status(start).strategy;
    let mut last_t = start;
    let mut next_tick = start + tick_ms;
    let mut i = 0;
    let observe = |policy: &mut PolicyRuntime, sim: &mut Simulation, t: u64, strategy: &mut Strategy, last_t: &mut u64, now: Strategy| {
        sim.totals[idx(*strategy)].time_ms += t - *last_t;
        *last_t = t;
        if now != *strategy {
            let rate = policy.status(t).write_rate;
            sim.switches.push(Switch { at_ms: t, from: *strategy, to: now, write_rate: rate });
            *strategy = now;
        }
    };
    loop {
        let next_write = writes.get(i).map(|w| w.at_ms);
        match next_write {
            Some(w) if w < next_tick => {
                let s = policy.record_write(&writes[i].key, w);
                observe(policy, &mut sim, w, &mut strategy, &mut last_t, s);
                sim.totals[idx(s)].writes += 1;
                if s == Strategy::Eager {
                    sim.totals[idx(s)].messages += 1;
                }
                sim.writes += 1;
                i += 1;
            }
            _ => {
                if next_tick > end {
                    break;
                }
                let t = next_tick;
                let st = policy.status(t);
                observe(policy, &mut sim, t, &mut strategy, &mut last_t, st.strategy);
                let batch = policy.pending_batch(t, usize::MAX);
                if !batch.keys.is_empty() || batch.flush_all {
                    sim.totals[idx(Strategy::Batched)].messages += 1;
                    sim.flush_alls += batch.flush_all as u64;
                }
                next_tick += tick_ms;
            }
        }
    }
    sim.duration_ms = end - start;
    sim
}

/// Human-readable report.
pub fn report(sim: &Simulation, policy_name: &str, policy_version: &str, cfg: &PolicyConfig) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "policy {policy_name} {policy_version}: low {} high {} writes/s, window {} ms, hold {} ms, batch every {} ms",
        cfg.low_threshold, cfg.high_threshold, cfg.window_ms, cfg.hold_ms, cfg.batch_interval_ms);
    let _ = writeln!(out, "{:>10}  {:>10}  switch", "time", "rate");
    let _ = writeln!(out, "{:>9.3}s  {:>10}  start as {}", 0.0, "-", cfg.initial_strategy.as_str());
    for s in &sim.switches {
        let _ = writeln!(out, "{:>9.3}s  {:>8.1}/s  {} -> {}", s.at_ms as f64 / 1000.0, s.write_rate, s.from.as_str(), s.to.as_str());
    }
    let _ = writeln!(out, "\n{:<8} {:>10} {:>10} {:>10}", "strategy", "time", "writes", "messages");
    for s in [Strategy::Ttl, Strategy::Batched, Strategy::Eager] {
        let t = &sim.totals[idx(s)];
        let _ = writeln!(out, "{:<8} {:>9.1}s {:>10} {:>10}", s.as_str(), t.time_ms as f64 / 1000.0, t.writes, t.messages);
    }
    let total: u64 = sim.totals.iter().map(|t| t.messages).sum();
    let _ = writeln!(out, "{:<8} {:>9.1}s {:>10} {:>10}   (eager-only would send {}; flush-all batches: {})",
        "total", sim.duration_ms as f64 / 1000.0, sim.writes, total, sim.writes, sim.flush_alls);
    out
}
