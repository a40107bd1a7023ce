//! The strategy engines' logic in plain Rust.
//!
//! This crate is what the policy components in `guest/` export through WIT, and what the host
//! links natively as the baseline for "how much does the component boundary cost". It has no
//! I/O and never reads a clock: time is the `now_ms` argument of every call, so the same call
//! sequence gives the same answers natively and inside every wasm host.
//!
//! The semantics are specified in `wit/policy.wit`; this file implements them.

use std::collections::BTreeMap;

/// Mirrors the WIT `strategy` enum. Ordered: ttl < batched < eager (more messages, fresher).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Strategy {
    Ttl,
    Batched,
    Eager,
}

impl Strategy {
    pub fn as_str(self) -> &'static str {
        match self {
            Strategy::Ttl => "ttl",
            Strategy::Batched => "batched",
            Strategy::Eager => "eager",
        }
    }

    pub fn parse(s: &str) -> Option<Strategy> {
        match s {
            "ttl" => Some(Strategy::Ttl),
            "batched" => Some(Strategy::Batched),
            "eager" => Some(Strategy::Eager),
            _ => None,
        }
    }
}

/// Mirrors the WIT `config` record.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    pub low_threshold: f64,
    pub high_threshold: f64,
    pub window_ms: i32,
    pub hold_ms: i32,
    pub batch_interval_ms: i32,
    pub batch_max_keys: i32,
    pub batch_max_bytes: i32,
    pub initial_strategy: Strategy,
}

impl Default for Config {
    /// The original product's tiers (10 and 50 writes/s, 5 s window, 2.5 s batches), plus the
    /// hold and caps it lacked.
    fn default() -> Self {
        Config {
            low_threshold: 10.0,
            high_threshold: 50.0,
            window_ms: 5_000,
            hold_ms: 3_000,
            batch_interval_ms: 2_500,
            batch_max_keys: 1_000,
            batch_max_bytes: 1 << 20,
            initial_strategy: Strategy::Ttl,
        }
    }
}

/// Mirrors the WIT `config-error` record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    pub field: String,
    pub message: String,
}

impl Config {
    /// Checks every field in declaration order and names the first bad one.
    pub fn validate(&self) -> Result<(), ConfigError> {
        fn err(field: &str, message: String) -> Result<(), ConfigError> {
            Err(ConfigError { field: field.to_string(), message })
        }
        if !self.low_threshold.is_finite() || self.low_threshold < 0.0 {
            return err(
                "low-threshold",
                format!("must be a finite number >= 0 (writes/s), got {}", self.low_threshold),
            );
        }
        if !self.high_threshold.is_finite() || self.high_threshold < 0.0 {
            return err(
                "high-threshold",
                format!("must be a finite number >= 0 (writes/s), got {}", self.high_threshold),
            );
        }
        if self.low_threshold >= self.high_threshold {
            return err(
                "low-threshold",
                format!(
                    "must be less than high-threshold ({}), got {}",
                    self.high_threshold, self.low_threshold
                ),
            );
        }
        let positive = [
            ("window-ms", self.window_ms, "ms"),
            ("hold-ms", self.hold_ms, "ms"),
            ("batch-interval-ms", self.batch_interval_ms, "ms"),
            ("batch-max-keys", self.batch_max_keys, "keys"),
            ("batch-max-bytes", self.batch_max_bytes, "bytes"),
        ];
        for (field, value, unit) in positive {
            let ok = if field == "hold-ms" { value >= 0 } else { value > 0 };
            if !ok {
                let bound = if field == "hold-ms" { ">= 0" } else { "> 0" };
                return err(field, format!("must be {bound} ({unit}), got {value}"));
            }
        }
        Ok(())
    }
}

/// Mirrors the WIT `batch` record.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Batch {
    pub keys: Vec<String>,
    pub flush_all: bool,
}

/// Mirrors the WIT `status` record.
#[derive(Clone, Debug, PartialEq)]
pub struct Status {
    pub strategy: Strategy,
    pub write_rate: f64,
    pub buffered_keys: u32,
    pub batch_due: bool,
    pub switches: u64,
    pub following: bool,
}

/// Which decision rule a leading engine applies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Tiers by rate, up at once, down after a hold.
    Adaptive,
    /// Always `initial-strategy`.
    Fixed,
    /// The cheapest strategy whose expected staleness fits a budget (see `Engine::target`).
    Budget,
}

const BUCKETS: usize = 20;

/// Writes counted in a sliding window of fixed-width buckets: O(1) memory whatever the rate.
#[derive(Clone, Debug)]
struct RateWindow {
    width_ms: u64,
    counts: [u64; BUCKETS],
    /// Absolute index (now / width) of the newest bucket; `counts[head % BUCKETS]`.
    head: u64,
    total: u64,
    /// Writes in the newest `RECENT` buckets (the newest quarter), kept as buckets come and go
    /// because the adaptive kind reads it on every write.
    recent: u64,
}

impl RateWindow {
    fn new(window_ms: i32, now: u64) -> Self {
        let window = window_ms.max(1) as u64;
        let width_ms = window.div_ceil(BUCKETS as u64);
        RateWindow { width_ms, counts: [0; BUCKETS], head: now / width_ms, total: 0, recent: 0 }
    }

    fn advance(&mut self, now: u64) {
        let idx = now / self.width_ms;
        if idx <= self.head {
            return;
        }
        let steps = (idx - self.head).min(BUCKETS as u64);
        for i in 1..=steps {
            // The bucket that leaves the newest quarter as the head moves on; one that left
            // the window earlier in this loop was zeroed already.
            let leaving = ((self.head + i + BUCKETS as u64 - RECENT as u64) % BUCKETS as u64) as usize;
            self.recent = self.recent.saturating_sub(self.counts[leaving]);
            let slot = ((self.head + i) % BUCKETS as u64) as usize;
            self.total -= self.counts[slot];
            self.counts[slot] = 0;
        }
        self.head = idx;
    }

    fn add(&mut self, n: u64) {
        let slot = (self.head % BUCKETS as u64) as usize;
        self.counts[slot] = self.counts[slot].saturating_add(n);
        self.total = self.total.saturating_add(n);
        self.recent = self.recent.saturating_add(n);
    }

    fn rate(&self) -> f64 {
        self.total as f64 * 1000.0 / (self.width_ms * BUCKETS as u64) as f64
    }

    /// The rate over the newest quarter of the window: the last `RECENT - 1` whole buckets
    /// and the part of the newest one that has elapsed at `now`. It drops within a quarter
    /// window after a burst ends, where `rate` keeps the burst for a whole window.
    fn recent_rate(&self, now: u64) -> f64 {
        let sum = self.recent;
        let elapsed_in_head = now.saturating_sub(self.head * self.width_ms) + 1;
        let span = (RECENT as u64 - 1) * self.width_ms + elapsed_in_head.min(self.width_ms);
        sum as f64 * 1000.0 / span as f64
    }
}

/// The adaptive kind picks `ttl` only below this share of `low-threshold`. It bounds the
/// fleet's stale keys (the write rate times how long a write stays unannounced, Little's law)
/// by what `batched` leaves at `low-threshold`, `low * interval / 2`, as `batch_interval` does
/// above it. Under `ttl` a write stays unannounced for the local TTL, which every host defaults
/// to two batch intervals (5 s and 2.5 s), so `rate * 2 * interval <= low * interval / 2` gives
/// a quarter. Measured (`aci bench workload`): with `ttl` up to `low-threshold` (0.2.0) the
/// night of the bundled day (3 and 8 writes/s) left readers stale for up to the local TTL and
/// put adaptive's p99 staleness level with fixed batched's (off the frontier in some runs); a
/// quarter costs ~10 more messages and took ~250 ms off the p99.
pub const ADAPTIVE_TTL_SHARE: f64 = 0.25;

/// Buckets in the "recent" part of the window (a quarter).
const RECENT: usize = BUCKETS / 4;

/// Distinct keys waiting for the next batch, bounded by the config's caps.
#[derive(Clone, Debug, Default)]
struct BatchBuffer {
    /// key -> order of first insertion; a map so that rewriting a hot key costs nothing.
    keys: BTreeMap<String, u64>,
    next_seq: u64,
    bytes: u64,
    first_at: u64,
    overflow: bool,
}

impl BatchBuffer {
    fn full(&self, cfg: &Config) -> bool {
        self.keys.len() as u64 >= cfg.batch_max_keys as u64 || self.bytes >= cfg.batch_max_bytes as u64
    }

    fn push(&mut self, key: &str, now: u64, cfg: &Config) {
        if self.keys.contains_key(key) {
            return;
        }
        if self.full(cfg) {
            // Nobody drained a full batch: remember that keys were lost so the host flushes
            // everything instead of leaving them stale.
            self.overflow = true;
            return;
        }
        if self.keys.is_empty() {
            self.first_at = now;
        }
        self.keys.insert(key.to_string(), self.next_seq);
        self.next_seq += 1;
        self.bytes += key.len() as u64;
    }

    fn is_empty(&self) -> bool {
        self.keys.is_empty() && !self.overflow
    }

    fn due(&self, now: u64, strategy: Strategy, cfg: &Config, interval_ms: impl FnOnce() -> u64) -> bool {
        if self.is_empty() {
            return false;
        }
        self.overflow
            || strategy != Strategy::Batched
            || self.full(cfg)
            || now.saturating_sub(self.first_at) >= interval_ms()
    }

    fn drain(&mut self) -> Batch {
        let mut entries: Vec<(u64, String)> =
            std::mem::take(&mut self.keys).into_iter().map(|(k, s)| (s, k)).collect();
        entries.sort_unstable_by_key(|(s, _)| *s);
        let batch = Batch { keys: entries.into_iter().map(|(_, k)| k).collect(), flush_all: self.overflow };
        self.overflow = false;
        self.bytes = 0;
        self.next_seq = 0;
        batch
    }
}

/// One strategy engine instance.
#[derive(Clone, Debug)]
pub struct Engine {
    kind: Kind,
    cfg: Config,
    now: u64,
    window: RateWindow,
    strategy: Strategy,
    following: bool,
    /// When the target strategy first went below the one in force (hysteresis).
    below_since: Option<u64>,
    switches: u64,
    buffer: BatchBuffer,
}

impl Engine {
    pub fn new(kind: Kind) -> Self {
        let cfg = Config::default();
        Engine {
            kind,
            window: RateWindow::new(cfg.window_ms, 0),
            strategy: cfg.initial_strategy,
            cfg,
            now: 0,
            following: false,
            below_since: None,
            switches: 0,
            buffer: BatchBuffer::default(),
        }
    }

    pub fn kind(&self) -> Kind {
        self.kind
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// Applies the clock rule: time never goes backwards inside the engine.
    fn tick(&mut self, now_ms: u64) {
        if now_ms > self.now {
            self.now = now_ms;
        }
        self.window.advance(self.now);
        self.evaluate();
    }

    fn set_strategy(&mut self, s: Strategy) {
        if s != self.strategy {
            self.strategy = s;
            self.switches += 1;
        }
        self.below_since = None;
    }

    /// The strategy to move up to at once, and the one to move down to after `hold-ms`.
    fn targets(&self) -> (Strategy, Strategy) {
        let rate = self.window.rate();
        if self.kind != Kind::Adaptive {
            let t = self.target(rate);
            return (t, t);
        }
        // Eager costs a message per write, so it should end as soon as the burst does; the
        // whole window keeps a burst for `window-ms`. So the adaptive kind decides on the lower
        // of the whole window's rate and the newest quarter's: up only when both are above a
        // threshold (a rising rate shows in the quarter first, so this is as early as the whole
        // window alone), down when either falls below. Going below batched leaves writes
        // unannounced for a whole local TTL, so that step still waits for the whole window.
        let slow = self.target(rate);
        if slow <= self.strategy && slow != Strategy::Eager {
            // The quarter's target is at most `slow` (the tiers rise with the rate): nothing
            // to move up to, and the way down is `slow` itself. Spares the quarter's rate in
            // steady ttl and batched.
            return (slow, slow);
        }
        let fast = self.target(rate.min(self.window.recent_rate(self.now)));
        (fast, fast.max(slow.min(Strategy::Batched)))
    }

    fn target(&self, rate: f64) -> Strategy {
        if self.kind == Kind::Budget {
            // Expected staleness, in stale key-seconds per second (Little's law: how many
            // written keys some reader may be seeing stale at any moment), is the write rate
            // times how long a write stays unannounced: `low-threshold` seconds under ttl (the
            // local TTL the fleet runs with), half a batch interval on average under batched,
            // about nothing under eager. The budget is `high-threshold`. Cheapest first.
            let budget = self.cfg.high_threshold;
            if rate * self.cfg.low_threshold <= budget {
                return Strategy::Ttl;
            }
            if rate * (self.cfg.batch_interval_ms as f64 / 2000.0) <= budget {
                return Strategy::Batched;
            }
            return Strategy::Eager;
        }
        let ttl_below = if self.kind == Kind::Adaptive {
            self.cfg.low_threshold * ADAPTIVE_TTL_SHARE
        } else {
            self.cfg.low_threshold
        };
        if rate > self.cfg.high_threshold {
            Strategy::Eager
        } else if rate < ttl_below {
            Strategy::Ttl
        } else {
            Strategy::Batched
        }
    }

    /// How long a batch may wait. Under batched, readers see a written key stale for about
    /// half this on average, so the fleet has about `rate * interval / 2` stale keys at any
    /// moment. The adaptive kind keeps that at what it is at `low-threshold`: above it the
    /// interval shrinks as `low-threshold / rate`, down to `low / high` of `batch-interval-ms`
    /// at the eager threshold. Each instance still sends at most one message per interval,
    /// where eager would send one per write. On a follower the rate is its own writes only, so
    /// its batches wait longer than the controller's, never longer than `batch-interval-ms`.
    fn batch_interval(&self) -> u64 {
        let full = self.cfg.batch_interval_ms as u64;
        let (low, high) = (self.cfg.low_threshold, self.cfg.high_threshold);
        let rate = self.window.rate();
        if self.kind != Kind::Adaptive || low <= 0.0 || rate <= low {
            return full;
        }
        let scale = (low / rate).max(low / high);
        ((full as f64 * scale) as u64).max(1)
    }

    fn evaluate(&mut self) {
        if self.following {
            return;
        }
        if self.kind == Kind::Fixed {
            // Leading, the fixed policy's decision is its configured strategy, whatever it
            // followed before.
            let s = self.cfg.initial_strategy;
            self.set_strategy(s);
            return;
        }
        let (up, down) = self.targets();
        if up > self.strategy {
            self.set_strategy(up);
        } else if down < self.strategy {
            let since = *self.below_since.get_or_insert(self.now);
            if self.now - since >= self.cfg.hold_ms as u64 {
                self.set_strategy(down);
            }
        } else {
            self.below_since = None;
        }
    }

    pub fn configure(&mut self, cfg: Config, now_ms: u64) -> Result<(), ConfigError> {
        cfg.validate()?;
        if now_ms > self.now {
            self.now = now_ms;
        }
        self.window = RateWindow::new(cfg.window_ms, self.now);
        self.following = false;
        // A reset, not a decision: it does not count as a switch.
        self.strategy = cfg.initial_strategy;
        self.below_since = None;
        self.cfg = cfg;
        Ok(())
    }

    fn count_local(&mut self, key: &str) {
        self.window.add(1);
        self.evaluate();
        if self.strategy == Strategy::Batched {
            self.buffer.push(key, self.now, &self.cfg);
        }
    }

    pub fn record_write(&mut self, key: &str, now_ms: u64) -> Strategy {
        self.tick(now_ms);
        self.count_local(key);
        self.strategy
    }

    pub fn record_writes<S: AsRef<str>>(&mut self, keys: &[S], now_ms: u64) -> Strategy {
        self.tick(now_ms);
        for key in keys {
            self.count_local(key.as_ref());
        }
        self.strategy
    }

    pub fn record_remote_writes(&mut self, count: u32, now_ms: u64) -> Strategy {
        self.tick(now_ms);
        self.window.add(count as u64);
        self.evaluate();
        self.strategy
    }

    pub fn current_strategy(&mut self, now_ms: u64) -> Strategy {
        self.tick(now_ms);
        self.strategy
    }

    pub fn write_rate(&mut self, now_ms: u64) -> f64 {
        self.tick(now_ms);
        self.window.rate()
    }

    pub fn pending_batch(&mut self, now_ms: u64) -> Batch {
        self.tick(now_ms);
        if self.buffer.due(self.now, self.strategy, &self.cfg, || self.batch_interval()) {
            self.buffer.drain()
        } else {
            Batch::default()
        }
    }

    pub fn status(&mut self, now_ms: u64) -> Status {
        self.tick(now_ms);
        Status {
            strategy: self.strategy,
            write_rate: self.window.rate(),
            buffered_keys: self.buffer.keys.len() as u32,
            batch_due: self.buffer.due(self.now, self.strategy, &self.cfg, || self.batch_interval()),
            switches: self.switches,
            following: self.following,
        }
    }

    pub fn follow(&mut self, strategy: Strategy, now_ms: u64) {
        self.following = true;
        self.tick(now_ms);
        self.set_strategy(strategy);
    }

    pub fn lead(&mut self, now_ms: u64) {
        self.following = false;
        self.tick(now_ms);
    }
}

pub const ADAPTIVE_NAME: &str = "adaptive";
pub const FIXED_NAME: &str = "fixed";
pub const BUDGET_NAME: &str = "budget";
/// Version of each kind's decision logic; bump a kind's when one of its vectors' expected
/// output would change.
/// - adaptive 0.2.0: eager ends on the newest quarter of the window, and batches wait less as
///   the rate rises above `low-threshold` (see `Engine::targets` and `Engine::batch_interval`).
/// - adaptive 0.3.0: `ttl` only below a quarter of `low-threshold` (see `ADAPTIVE_TTL_SHARE`);
///   from there up to `low-threshold`, `batched` with full batches.
pub fn logic_version(kind: Kind) -> &'static str {
    match kind {
        Kind::Adaptive => "0.3.0",
        Kind::Fixed | Kind::Budget => "0.1.0",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fast() -> Config {
        Config { window_ms: 1000, hold_ms: 500, ..Config::default() }
    }

    #[test]
    fn tiers_go_up_at_once_and_down_after_hold() {
        let mut e = Engine::new(Kind::Adaptive);
        e.configure(fast(), 0).unwrap();
        // ttl below a quarter of low (2.5 writes/s here), batched from there.
        for i in 0..3 {
            assert_eq!(e.record_write("k", i), if i < 2 { Strategy::Ttl } else { Strategy::Batched });
        }
        let keys: Vec<String> = (0..48).map(|i| format!("k{i}")).collect();
        assert_eq!(e.record_writes(&keys, 10), Strategy::Eager);
        // All writes leave the window at 1000 ms + a bucket; then the hold starts.
        assert_eq!(e.current_strategy(1100), Strategy::Eager);
        assert_eq!(e.current_strategy(1599), Strategy::Eager);
        assert_eq!(e.current_strategy(1600), Strategy::Ttl);
    }

    #[test]
    fn eager_ends_when_the_newest_quarter_of_the_window_is_quiet() {
        // 1000 ms window: 50 ms buckets, the newest quarter is 250 ms.
        let mut e = Engine::new(Kind::Adaptive);
        e.configure(fast(), 0).unwrap();
        let keys: Vec<String> = (0..60).map(|i| format!("k{i}")).collect();
        assert_eq!(e.record_writes(&keys, 0), Strategy::Eager);
        // The whole window still holds 60 writes, but none in the last quarter: the hold starts
        // as soon as bucket 0 has left the quarter (at 250 ms), not the window (at 1000 ms).
        assert_eq!(e.current_strategy(249), Strategy::Eager);
        assert_eq!(e.current_strategy(250), Strategy::Eager);
        assert_eq!(e.current_strategy(749), Strategy::Eager);
        assert_eq!(e.current_strategy(750), Strategy::Batched, "down to batched only: ttl waits for the window");
        assert_eq!(e.write_rate(760), 60.0);
        // Bucket 0 leaves the whole window at 1000 ms; then the hold.
        assert_eq!(e.current_strategy(1000), Strategy::Batched);
        assert_eq!(e.current_strategy(1499), Strategy::Batched);
        assert_eq!(e.current_strategy(1500), Strategy::Ttl);
    }

    #[test]
    fn a_quiet_quarter_does_not_make_a_steady_rate_flap() {
        // One write every 16 ms (62.5/s) for 3 s: the quarter and the whole window agree, eager holds.
        let mut e = Engine::new(Kind::Adaptive);
        e.configure(fast(), 0).unwrap();
        let mut switches = Vec::new();
        for t in (0..3000).step_by(16) {
            let s = e.record_write("k", t);
            if t > 1000 {
                switches.push(s);
            }
        }
        assert!(switches.iter().all(|s| *s == Strategy::Eager), "{switches:?}");
    }

    #[test]
    fn ttl_only_below_a_quarter_of_low_and_batches_wait_the_full_interval_up_to_low() {
        // low 10: ttl below 2.5 writes/s; 1000 ms window so the rate is the count.
        let mut e = Engine::new(Kind::Adaptive);
        e.configure(Config { batch_interval_ms: 1000, ..fast() }, 0).unwrap();
        assert_eq!(e.record_remote_writes(2, 0), Strategy::Ttl);
        assert_eq!(e.record_write("a", 0), Strategy::Batched, "3 writes/s is below low but not below low / 4");
        e.record_remote_writes(5, 0);
        assert!(e.pending_batch(999).keys.is_empty(), "8 writes/s: the full interval");
        assert_eq!(e.pending_batch(1000).keys, ["a"]);
        // One write at 600 ms keeps 1 write/s in the window after the others leave at 1000 ms.
        e.record_remote_writes(1, 600);
        assert_eq!(e.current_strategy(1000), Strategy::Batched);
        assert_eq!(e.current_strategy(1499), Strategy::Batched);
        assert_eq!(e.current_strategy(1500), Strategy::Ttl, "1 write/s is below low / 4, after the hold");
    }

    #[test]
    fn batches_wait_less_as_the_rate_rises() {
        let mut e = Engine::new(Kind::Adaptive);
        // 1000 ms batches; low 10, high 50: the interval is 1000 ms up to 10 writes/s,
        // 1000 * 10 / r above, and 200 ms from 50 writes/s.
        e.configure(Config { batch_interval_ms: 1000, initial_strategy: Strategy::Batched, hold_ms: 10_000, ..fast() }, 0).unwrap();
        for i in 0..10 {
            e.record_write(&format!("a{i}"), 0);
        }
        assert!(e.pending_batch(999).keys.is_empty(), "10 writes/s: the full interval");
        assert_eq!(e.pending_batch(1000).keys.len(), 10);
        let keys: Vec<String> = (0..25).map(|i| format!("b{i}")).collect();
        e.record_writes(&keys, 2000);
        assert_eq!(e.write_rate(2000), 25.0);
        assert!(e.pending_batch(2399).keys.is_empty(), "25 writes/s: 1000 * 10 / 25 = 400 ms");
        assert_eq!(e.pending_batch(2400).keys.len(), 25);
        // Fixed and budget keep the configured interval.
        let mut f = Engine::new(Kind::Fixed);
        f.configure(Config { batch_interval_ms: 1000, initial_strategy: Strategy::Batched, ..fast() }, 0).unwrap();
        f.record_writes(&keys, 0);
        assert!(f.pending_batch(999).keys.is_empty());
    }

    #[test]
    fn budget_picks_the_cheapest_strategy_within_the_budget() {
        // 2 s under ttl, 1 s batches (0.5 s on average), a budget of 20 stale key-seconds per
        // second: ttl up to 10 writes/s, batched up to 40, eager above. No hold: down at once.
        let mut e = Engine::new(Kind::Budget);
        let cfg = Config { low_threshold: 2.0, high_threshold: 20.0, batch_interval_ms: 1000, hold_ms: 0, ..fast() };
        e.configure(cfg, 0).unwrap();
        let keys = |n: usize| (0..n).map(|i| format!("k{i}")).collect::<Vec<_>>();
        assert_eq!(e.record_writes(&keys(10), 0), Strategy::Ttl);
        assert_eq!(e.record_writes(&keys(1), 0), Strategy::Batched);
        assert_eq!(e.record_writes(&keys(29), 0), Strategy::Batched);
        assert_eq!(e.record_writes(&keys(1), 0), Strategy::Eager);
        assert_eq!(e.current_strategy(1100), Strategy::Ttl);
    }

    #[test]
    fn memory_is_bounded_by_caps() {
        let mut e = Engine::new(Kind::Fixed);
        e.configure(Config { initial_strategy: Strategy::Batched, batch_max_keys: 10, ..fast() }, 0).unwrap();
        for i in 0..1000 {
            e.record_write(&format!("k{i}"), 0);
        }
        let b = e.pending_batch(0);
        assert_eq!(b.keys.len(), 10);
        assert!(b.flush_all);
        assert!(e.pending_batch(0).keys.is_empty());
    }
}
