//! The fleet workload benchmark behind `aci bench workload` and the end of `aci demo`: N
//! in-process instances on one Redis, Zipf-distributed reads over M keys, writes timed by a
//! trace, run once per policy; each run measured from the server (commandstats) and by a
//! history check of every read.
//!
//! Staleness of a read (the definition of `tests/fleet/harness.py`, measured rather than
//! bounded): a read that returned the value of write `i` of its key is stale if a later write
//! `j` of that key was acknowledged before the read began; its staleness is the time from the
//! first such acknowledgement to the start of the read, that is how long the value read had
//! been superseded. A fresh read counts 0. Percentiles are over all reads.
//!
//! Writes are issued by one task, one at a time in trace order, so each key's writes are
//! acknowledged in the order of their sequence numbers.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};

use crate::error::ConfigError;
use crate::simulate::Trace;
use crate::{AciCache, PolicySource, Strategy};

/// The most writes a live workload replays: a live run issues them in real time, so more is
/// a trace meant for `aci simulate`, not a benchmark.
pub const MAX_WORKLOAD_WRITES: u64 = 2_000_000;
/// How long a write is remembered by the history check. An L1 entry lives at most
/// `local_ttl`, so no read can return a value superseded longer ago than that, plus slack.
const HISTORY_KEEP: Duration = Duration::from_secs(60);

/// What one run does. `Default` is the bundled benchmark's setting.
#[derive(Clone, Debug)]
pub struct Workload {
    /// Instances in the fleet (in-process, one Redis connection set each).
    pub instances: usize,
    /// Keys read and written: `k:0` .. `k:{keys-1}`.
    pub keys: usize,
    /// Zipf exponent of the key popularity (reads and writes): 0 is uniform.
    pub zipf_exponent: f64,
    /// Reads per second per instance (paced, so every policy serves the same reads).
    pub reads_per_sec: u32,
    /// Trace time is multiplied by this (0.5 replays twice as fast, doubling every rate).
    pub time_scale: f64,
    /// Policy time constants. The bundled trace is a day compressed to 36 s, so the rate
    /// window and hold are compressed too (the production defaults, 5 s and 3 s, are sized for
    /// minutes-long phases); the staleness bounds (batch interval, local TTL) are the defaults.
    pub window: Duration,
    pub hold: Duration,
    pub batch_interval: Duration,
    pub local_ttl: Duration,
    pub tick: Duration,
    /// Rate thresholds of the policy (writes/s): `None` is the policy's default (10 and 50).
    pub low_threshold: Option<f64>,
    pub high_threshold: Option<f64>,
    /// Reads continue this long after the last write, so the last writes' staleness counts.
    pub tail: Duration,
    /// Timeline sampling period.
    pub sample_every: Duration,
    /// Seed of the key choices: every policy sees the same sequence.
    pub seed: u64,
}

impl Default for Workload {
    fn default() -> Self {
        Workload {
            instances: 3,
            keys: 1000,
            zipf_exponent: 1.0,
            reads_per_sec: 1000,
            time_scale: 1.0,
            window: Duration::from_millis(2000),
            hold: Duration::from_millis(1000),
            batch_interval: Duration::from_millis(2500),
            local_ttl: Duration::from_secs(5),
            tick: Duration::from_millis(250),
            low_threshold: None,
            high_threshold: None,
            tail: Duration::from_secs(2),
            sample_every: Duration::from_millis(100),
            seed: 42,
        }
    }
}

impl Workload {
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |f: &str, m: &str| Err(ConfigError::new(f.to_string(), m.to_string()));
        if !(1..=64).contains(&self.instances) {
            return bad("instances", "must be 1..=64");
        }
        if !(1..=10_000_000).contains(&self.keys) {
            return bad("keys", "must be 1..=10000000");
        }
        if !(self.zipf_exponent.is_finite() && (0.0..=5.0).contains(&self.zipf_exponent)) {
            return bad("zipf_exponent", "must be in 0..=5");
        }
        if !(1..=1_000_000).contains(&self.reads_per_sec) {
            return bad("reads_per_sec", "must be 1..=1000000");
        }
        if !(self.time_scale.is_finite() && self.time_scale > 0.0 && self.time_scale <= 100.0) {
            return bad("time_scale", "must be in (0, 100]");
        }
        if self.sample_every.is_zero() || self.tick.is_zero() {
            return bad("sample_every", "sampling period and tick must be > 0");
        }
        Ok(())
    }
}

/// One policy to run: a label for the table and where the policy comes from.
#[derive(Clone, Debug)]
pub struct Contender {
    pub label: String,
    pub source: PolicySource,
}

impl Contender {
    /// Fixed ttl, fixed batched, fixed eager, then the bundled adaptive policy.
    pub fn standard() -> Vec<Contender> {
        let mut v: Vec<Contender> = [Strategy::Ttl, Strategy::Batched, Strategy::Eager]
            .into_iter()
            .map(|s| Contender { label: s.as_str().to_string(), source: PolicySource::Fixed(s) })
            .collect();
        v.push(Contender { label: "adaptive".into(), source: PolicySource::Bundled });
        v
    }
}

/// One point of a run's timeline.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    /// Since the first write was due, in ms.
    pub at_ms: u64,
    /// The controller's strategy (the fleet's decision).
    pub strategy: Strategy,
    /// The controller's measured fleet write rate.
    pub write_rate: f64,
}

/// What one run measured.
#[derive(Clone, Debug, Default)]
pub struct RunReport {
    pub label: String,
    pub policy: String,
    pub wall: Duration,
    pub writes: u64,
    pub write_errors: u64,
    pub reads: u64,
    pub read_errors: u64,
    /// PUBLISH commands the server executed during the run (INFO commandstats).
    pub published: u64,
    /// Messages the fleet's subscriptions delivered (sum of every instance's
    /// `Stats::pubsub_received`: Redis 7.0 keeps no server-side delivery counter).
    pub delivered: u64,
    /// Messages the instances counted as published (`Stats::messages_sent`): the same as
    /// `published` when runs do not overlap on one server.
    pub sent: u64,
    /// Commands the server executed during the run (INFO commandstats, the benchmark's own
    /// INFO calls excluded).
    pub redis_commands: u64,
    pub l1_hits: u64,
    pub stale_reads: u64,
    /// Staleness of the stale reads, µs, sorted.
    stale_us: Vec<u64>,
    /// How far the writer fell behind the trace at worst.
    pub max_write_lag: Duration,
    pub timeline: Vec<Sample>,
}

impl RunReport {
    pub fn l1_hit_ratio(&self) -> f64 {
        ratio(self.l1_hits, self.reads)
    }
    pub fn stale_ratio(&self) -> f64 {
        ratio(self.stale_reads, self.reads)
    }
    pub fn commands_per_sec(&self) -> f64 {
        self.redis_commands as f64 / self.wall.as_secs_f64().max(1e-9)
    }
    pub fn client_ops_per_sec(&self) -> f64 {
        (self.reads + self.writes) as f64 / self.wall.as_secs_f64().max(1e-9)
    }
    /// Staleness percentile over all reads (fresh reads count 0), in ms.
    pub fn staleness_ms(&self, p: f64) -> f64 {
        let fresh = self.reads.saturating_sub(self.stale_us.len() as u64);
        if self.reads == 0 {
            return 0.0;
        }
        // Nearest rank over reads sorted ascending: the fresh reads (0) come first.
        let rank = ((p * self.reads as f64).ceil() as u64).clamp(1, self.reads);
        if rank <= fresh {
            return 0.0;
        }
        self.stale_us[(rank - fresh - 1) as usize] as f64 / 1000.0
    }
    /// Time spent under each strategy (ttl, batched, eager), ms, from the timeline.
    pub fn strategy_time_ms(&self) -> [u64; 3] {
        let mut t = [0u64; 3];
        for w in self.timeline.windows(2) {
            t[w[0].strategy as usize] += w[1].at_ms - w[0].at_ms;
        }
        t
    }
}

fn ratio(a: u64, b: u64) -> f64 {
    if b == 0 { 0.0 } else { a as f64 / b as f64 }
}

/// Key popularity: P(key i) proportional to 1 / (i+1)^s.
struct Zipf {
    cdf: Vec<f64>,
}

impl Zipf {
    fn new(n: usize, s: f64) -> Zipf {
        let mut cdf = Vec::with_capacity(n);
        let mut sum = 0.0;
        for i in 0..n {
            sum += 1.0 / ((i + 1) as f64).powf(s);
            cdf.push(sum);
        }
        for c in &mut cdf {
            *c /= sum;
        }
        Zipf { cdf }
    }

    fn sample(&self, rng: &mut impl Rng) -> usize {
        let u: f64 = rng.random();
        self.cdf.partition_point(|c| *c < u).min(self.cdf.len() - 1)
    }
}

/// Every acknowledged write of each key (seq, ack time) over the last [`HISTORY_KEEP`].
#[derive(Default)]
struct Truth {
    keys: HashMap<usize, VecDeque<(u64, Instant)>>,
}

impl Truth {
    fn acked(&mut self, key: usize, seq: u64, at: Instant) {
        let q = self.keys.entry(key).or_default();
        q.push_back((seq, at));
        while q.len() > 1 && q.front().is_some_and(|(_, t)| at.duration_since(*t) > HISTORY_KEEP) {
            q.pop_front();
        }
    }

    /// How long the value `seq` had been superseded when a read that began at `start` returned
    /// it; `None` if it had not been.
    fn staleness(&self, key: usize, seq: u64, start: Instant) -> Option<Duration> {
        let q = self.keys.get(&key)?;
        // The first write after `seq`; when it was forgotten, the oldest remembered one (a lower
        // bound: that value was superseded even earlier).
        let i = q.partition_point(|(s, _)| *s <= seq);
        let (_, at) = q.get(i)?;
        (*at < start).then(|| start.duration_since(*at))
    }
}

fn parse_commandstats(info: &str) -> HashMap<String, u64> {
    let mut m = HashMap::new();
    for line in info.lines() {
        let Some(rest) = line.strip_prefix("cmdstat_") else { continue };
        let Some((name, fields)) = rest.split_once(':') else { continue };
        let calls = fields.split(',').find_map(|f| f.strip_prefix("calls=")).and_then(|c| c.trim().parse().ok());
        if let Some(c) = calls {
            m.insert(name.to_string(), c);
        }
    }
    m
}

async fn commandstats(conn: &mut redis::aio::MultiplexedConnection) -> crate::Result<HashMap<String, u64>> {
    let info: String = redis::cmd("INFO").arg("commandstats").query_async(conn).await?;
    Ok(parse_commandstats(&info))
}

/// Write times of `trace`, scaled, in ms.
fn schedule(trace: &Trace<'_>, scale: f64) -> Result<Vec<u64>, ConfigError> {
    if trace.len() > MAX_WORKLOAD_WRITES {
        return Err(ConfigError::new("trace", format!(
            "{} writes: a live workload replays at most {MAX_WORKLOAD_WRITES} (use `aci simulate` for longer traces)", trace.len())));
    }
    Ok(trace.writes().map(|w| (w.at_ms as f64 * scale) as u64).collect())
}

fn namespace_for(label: &str, run: u64) -> String {
    let clean: String = label.chars().filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_').take(24).collect();
    format!("wl-{}-{run}-{clean}", std::process::id())
}

static RUNS: AtomicU64 = AtomicU64::new(0);

/// Runs `trace` once with `contender` on the Redis at `redis_url` and measures it. The fleet
/// is started fresh in a namespace of its own and shut down before the counters are read.
pub async fn run(redis_url: &str, trace: &Trace<'_>, contender: &Contender, w: &Workload) -> crate::Result<RunReport> {
    w.validate()?;
    let times = schedule(trace, w.time_scale)?;
    let ns = namespace_for(&contender.label, RUNS.fetch_add(1, Ordering::Relaxed));
    let client = redis::Client::open(redis_url)?;
    let mut admin = client.get_multiplexed_async_connection().await?;

    let mut fleet = Vec::with_capacity(w.instances);
    for i in 0..w.instances {
        let mut b = AciCache::builder()
            .redis_url(redis_url)
            .namespace(&ns)
            .policy(contender.source.clone())
            // The first instance holds the lease for the whole run, so the timeline is one
            // controller's view.
            .role(if i == 0 { crate::Role::Controller } else { crate::Role::Follower })
            .window(w.window)
            .hold(w.hold)
            .batch_interval(w.batch_interval)
            .local_ttl(w.local_ttl)
            .tick(w.tick)
            // No key may expire in Redis during a run: a read of an expired key is no read.
            .default_ttl(Duration::from_secs(3600));
        if let Some(v) = w.low_threshold {
            b = b.low_threshold(v);
        }
        if let Some(v) = w.high_threshold {
            b = b.high_threshold(v);
        }
        fleet.push(b.build().await?);
    }
    let policy = {
        let (n, v) = fleet[0].policy_info();
        format!("{n} {v}")
    };

    // Every key starts with value 0 (written before the run, outside the measurement).
    let truth = Arc::new(Mutex::new(Truth::default()));
    {
        let t0 = Instant::now();
        let mut pipe = redis::pipe();
        for k in 0..w.keys {
            pipe.pset_ex(fleet[0].redis_key(&format!("k:{k}"))?, "0", 3_600_000).ignore();
            if pipe.len() >= 1000 {
                pipe.query_async::<()>(&mut admin).await?;
                pipe = redis::pipe();
            }
        }
        if pipe.len() > 0 {
            pipe.query_async::<()>(&mut admin).await?;
        }
        let mut t = truth.lock().unwrap_or_else(|e| e.into_inner());
        for k in 0..w.keys {
            t.acked(k, 0, t0);
        }
    }
    // Followers must have heard the controller before the first write is measured.
    tokio::time::sleep(w.tick * 2).await;

    let zipf = Arc::new(Zipf::new(w.keys, w.zipf_exponent));
    let before = commandstats(&mut admin).await?;
    let started = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));

    // Readers: paced slots of 5 ms so every policy serves the same reads.
    let mut readers = Vec::new();
    for (i, c) in fleet.iter().cloned().enumerate() {
        let (truth, stop, zipf) = (truth.clone(), stop.clone(), zipf.clone());
        let per_slot = w.reads_per_sec as f64 / 200.0;
        let seed = w.seed.wrapping_add(1000 + i as u64);
        readers.push(tokio::spawn(async move {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let (mut reads, mut errors, mut stale_us) = (0u64, 0u64, Vec::new());
            let mut owed = 0.0f64;
            let mut next = Instant::now();
            let mut key = String::new();
            while !stop.load(Ordering::Relaxed) {
                owed += per_slot;
                while owed >= 1.0 {
                    owed -= 1.0;
                    let k = zipf.sample(&mut rng);
                    key.clear();
                    use std::fmt::Write as _;
                    let _ = write!(key, "k:{k}");
                    let start = Instant::now();
                    match c.get(&key).await {
                        Ok(v) => {
                            reads += 1;
                            let seq = v.as_deref().and_then(|b| std::str::from_utf8(b).ok()).and_then(|s| s.parse::<u64>().ok());
                            // A missing or unparsable value: superseded by everything written.
                            let seq = seq.unwrap_or(0);
                            let t = truth.lock().unwrap_or_else(|e| e.into_inner());
                            if let Some(d) = t.staleness(k, seq, start) {
                                stale_us.push(d.as_micros() as u64);
                            }
                        }
                        Err(_) => errors += 1,
                    }
                }
                next += Duration::from_millis(5);
                tokio::time::sleep_until(next.into()).await;
            }
            (reads, errors, stale_us)
        }));
    }

    // The sampler: the controller's strategy and measured rate.
    let sampler = {
        let (c, stop, every) = (fleet[0].clone(), stop.clone(), w.sample_every);
        tokio::spawn(async move {
            let mut out = Vec::new();
            let mut next = Instant::now();
            loop {
                let s = c.stats();
                out.push(Sample { at_ms: started.elapsed().as_millis() as u64, strategy: c.strategy(), write_rate: s.write_rate });
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                next += every;
                tokio::time::sleep_until(next.into()).await;
            }
            out
        })
    };

    // The writer: trace order, one write at a time, instances in turn.
    let mut rng = rand::rngs::StdRng::seed_from_u64(w.seed);
    let (mut writes, mut write_errors, mut max_lag) = (0u64, 0u64, Duration::ZERO);
    let mut seq = 0u64;
    for (i, at) in times.iter().enumerate() {
        let due = started + Duration::from_millis(*at);
        let now = Instant::now();
        if due > now {
            tokio::time::sleep_until(due.into()).await;
        } else {
            max_lag = max_lag.max(now - due);
        }
        seq += 1;
        let k = zipf.sample(&mut rng);
        let c = &fleet[i % fleet.len()];
        match c.set(&format!("k:{k}"), seq.to_string(), None).await {
            Ok(()) => {
                let mut t = truth.lock().unwrap_or_else(|e| e.into_inner());
                t.acked(k, seq, Instant::now());
                writes += 1;
            }
            Err(_) => write_errors += 1,
        }
    }
    let last = times.last().map_or(Duration::ZERO, |t| Duration::from_millis(*t));
    tokio::time::sleep_until((started + last + w.tail).into()).await;
    stop.store(true, Ordering::Relaxed);

    let mut report = RunReport { label: contender.label.clone(), policy, writes, write_errors, max_write_lag: max_lag, ..Default::default() };
    for r in readers {
        let (reads, errors, stale) = r.await.unwrap_or_default();
        report.reads += reads;
        report.read_errors += errors;
        report.stale_us.extend(stale);
    }
    report.stale_us.sort_unstable();
    report.stale_reads = report.stale_us.len() as u64;
    report.timeline = sampler.await.unwrap_or_default();
    for c in &fleet {
        let s = c.stats();
        report.l1_hits += s.l1_hits;
        report.delivered += s.pubsub_received;
    }
    // Shutdown publishes what is pending: part of the run's cost.
    for c in &fleet {
        c.shutdown().await?;
    }
    for c in &fleet {
        report.sent += c.stats().messages_sent;
    }
    report.wall = started.elapsed();
    let after = commandstats(&mut admin).await?;
    let delta = |name: &str| after.get(name).copied().unwrap_or(0).saturating_sub(before.get(name).copied().unwrap_or(0));
    report.published = delta("publish");
    let all: u64 = after.keys().map(|k| delta(k)).sum();
    // Our own INFO (the one before counted in `after`).
    report.redis_commands = all.saturating_sub(1);
    Ok(report)
}

/// Runs every contender in turn.
pub async fn run_all(redis_url: &str, trace: &Trace<'_>, contenders: &[Contender], w: &Workload,
    mut progress: impl FnMut(&RunReport)) -> crate::Result<Vec<RunReport>> {
    let mut out = Vec::new();
    for c in contenders {
        let r = run(redis_url, trace, c, w).await?;
        progress(&r);
        out.push(r);
    }
    Ok(out)
}

/// For each report, whether it is on the staleness-vs-messages frontier: no other run has both
/// fewer messages published and a lower staleness p99.
pub fn on_frontier(reports: &[RunReport]) -> Vec<bool> {
    reports.iter().map(|r| {
        !reports.iter().any(|o| o.published < r.published && o.staleness_ms(0.99) < r.staleness_ms(0.99))
    }).collect()
}

/// The table `aci bench workload` prints.
pub fn table(reports: &[RunReport]) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let front = on_frontier(reports);
    let _ = writeln!(out, "{:<10} {:>7} {:>9} {:>9} {:>9} {:>7} {:>7} {:>8} {:>8} {:>8} {:>9} {:>9}  time ttl/batched/eager",
        "policy", "writes", "published", "delivered", "cmds/s", "L1 hit", "stale", "p50 ms", "p99 ms", "max ms", "ops/s", "frontier");
    for (r, f) in reports.iter().zip(front) {
        let t = r.strategy_time_ms();
        let _ = writeln!(out, "{:<10} {:>7} {:>9} {:>9} {:>9.0} {:>6.1}% {:>6.2}% {:>8.1} {:>8.1} {:>8.1} {:>9.0} {:>9}  {:.1}/{:.1}/{:.1} s",
            r.label, r.writes, r.published, r.delivered, r.commands_per_sec(), 100.0 * r.l1_hit_ratio(), 100.0 * r.stale_ratio(),
            r.staleness_ms(0.5), r.staleness_ms(0.99), r.staleness_ms(1.0), r.client_ops_per_sec(), if f { "yes" } else { "no" },
            t[0] as f64 / 1000.0, t[1] as f64 / 1000.0, t[2] as f64 / 1000.0);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn staleness_is_the_time_since_the_value_was_first_superseded() {
        let t0 = Instant::now();
        let mut t = Truth::default();
        t.acked(1, 0, t0);
        t.acked(1, 1, t0 + Duration::from_millis(10));
        t.acked(1, 2, t0 + Duration::from_millis(30));
        let at = |ms| t0 + Duration::from_millis(ms);
        assert_eq!(t.staleness(1, 2, at(100)), None, "newest value");
        assert_eq!(t.staleness(1, 1, at(100)), Some(Duration::from_millis(70)));
        assert_eq!(t.staleness(1, 0, at(100)), Some(Duration::from_millis(90)), "since the first newer write");
        assert_eq!(t.staleness(1, 0, at(5)), None, "the newer write was not acknowledged yet");
        assert_eq!(t.staleness(7, 0, at(5)), None, "never written");
    }

    fn report(reads: u64, stale_ms: &[u64]) -> RunReport {
        let mut stale_us: Vec<u64> = stale_ms.iter().map(|m| m * 1000).collect();
        stale_us.sort_unstable();
        RunReport { reads, stale_reads: stale_us.len() as u64, stale_us, ..Default::default() }
    }

    #[test]
    fn percentiles_count_fresh_reads_as_zero() {
        let r = report(100, &[5, 10, 1000]);
        assert_eq!(r.staleness_ms(0.5), 0.0);
        assert_eq!(r.staleness_ms(0.97), 0.0);
        assert_eq!(r.staleness_ms(0.98), 5.0);
        assert_eq!(r.staleness_ms(0.99), 10.0);
        assert_eq!(r.staleness_ms(1.0), 1000.0);
        assert_eq!(report(0, &[]).staleness_ms(0.99), 0.0);
    }

    #[test]
    fn the_frontier_keeps_runs_no_other_beats_on_both_axes() {
        let mut runs = vec![report(100, &[]), report(100, &[1; 50]), report(100, &[9; 50]), report(100, &[2; 50])];
        for (r, p) in runs.iter_mut().zip([100, 10, 20, 30]) {
            r.published = p;
        }
        // 0: most messages, no staleness. 1: fewest messages. 2: beaten by 1. 3: beaten by 1.
        assert_eq!(on_frontier(&runs), [true, true, false, false]);
    }

    #[test]
    fn zipf_prefers_low_ranks_and_covers_the_range() {
        let z = Zipf::new(100, 1.0);
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let mut counts = [0u32; 100];
        for _ in 0..100_000 {
            counts[z.sample(&mut rng)] += 1;
        }
        // P(rank 0) = 1/H(100) ~ 19%; P(rank 99) ~ 0.19%.
        assert!((17_000..21_000).contains(&counts[0]), "{}", counts[0]);
        assert!(counts[0] > counts[1] && counts[1] > counts[9] && counts[9] > counts[99]);
        assert!(counts[99] > 0);
        let u = Zipf::new(4, 0.0);
        let mut c = [0u32; 4];
        for _ in 0..40_000 {
            c[u.sample(&mut rng)] += 1;
        }
        assert!(c.iter().all(|n| (9_000..11_000).contains(n)), "{c:?}");
    }

    #[test]
    fn commandstats_are_parsed_per_command() {
        let info = "# Commandstats\r\ncmdstat_publish:calls=12,usec=30,usec_per_call=2.50,rejected_calls=0,failed_calls=0\r\ncmdstat_set:calls=7,usec=1\r\ncmdstat_client|list:calls=3,usec=1\r\n";
        let m = parse_commandstats(info);
        assert_eq!(m.get("publish"), Some(&12));
        assert_eq!(m.get("set"), Some(&7));
        assert_eq!(m.get("client|list"), Some(&3));
    }
}
