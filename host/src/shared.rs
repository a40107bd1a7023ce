//! The state that the cache's handle (`cache.rs`) and the fleet protocol (`fleet.rs`) share:
//! both depend on this module, neither on the other's internals (`cache` calls into `fleet`
//! to start and stop it; `fleet` never reaches back into `cache`).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::watch;

use crate::config::Settings;
use crate::loss_detector::LossDetector;
use crate::near_cache::NearCache;
use crate::policy::{PolicyRuntime, Strategy};
use crate::wire::{Names, Sender};

/// A strategy change, as `stats().switches` lists them.
#[derive(Clone, Debug, PartialEq)]
pub struct SwitchEvent {
    /// Unix time in seconds.
    pub at: f64,
    pub from: Strategy,
    pub to: Strategy,
    pub write_rate: f64,
}

#[derive(Default)]
pub(crate) struct Counters {
    /// Bumped by every L1 hit, so per thread rather than one shared atomic (see `counter`).
    pub l1_hits: crate::counter::PerThreadCounter,
    pub l1_misses: AtomicU64,
    pub writes: AtomicU64,
    pub deletes: AtomicU64,
    pub messages_sent: AtomicU64,
    pub messages_received: AtomicU64,
    pub invalidations_applied: AtomicU64,
    pub flushes: AtomicU64,
    pub gaps: AtomicU64,
    pub malformed: AtomicU64,
    pub resubscribes: AtomicU64,
    pub controller_lost: AtomicU64,
    pub lag_suspensions: AtomicU64,
    /// Every message the subscription delivered: own, others', malformed.
    pub pubsub_received: AtomicU64,
    pub pubsub_reads: AtomicU64,
}

/// Period of the controller's `strategy_update` and of every instance's own `heartbeat`
/// (docs/WIRE.md 3); not configurable.
pub(crate) const HEARTBEAT: std::time::Duration = std::time::Duration::from_secs(1);

pub(crate) fn inc(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

const MAX_SWITCH_HISTORY: usize = 1000;

/// State shared by the handle and the background tasks.
pub(crate) struct Shared {
    pub settings: Settings,
    pub names: Names,
    pub sender: Sender,
    pub l1: NearCache,
    pub policy: Mutex<PolicyRuntime>,
    pub conn: crate::transport::Conn,
    pub client: crate::transport::PubSubSource,
    pub counters: Counters,
    /// Seq of the last invalidation message handed out (its publish may still be unanswered).
    pub inval_seq: AtomicU64,
    /// Publishes on `P:invalidation` holding a seq whose answer has not come yet.
    pub in_flight: AtomicU64,
    /// The highest seq with no unanswered publish at or below it: what positions announce.
    pub settled_seq: AtomicU64,
    /// The last `inval_seq` announced in a `mark` (docs/WIRE.md 4).
    pub marked: AtomicU64,
    /// Set by every publish on `P:invalidation`; the tick takes it to decide on a `mark`.
    pub published_since_tick: AtomicBool,
    /// A publish of an invalidation failed: receivers cannot know what they missed, so the
    /// next invalidation we send must be preceded by a `flush`.
    pub needs_flush: AtomicBool,
    /// The strategy last announced in a `strategy_update` (as `Strategy as u8`, 255: none).
    pub announced: std::sync::atomic::AtomicU8,
    /// Wakes the tick to announce a strategy change at once.
    pub announce: tokio::sync::Notify,
    /// Whether the subscriber should listen on `P:reports` (the controller only).
    pub want_reports: watch::Sender<bool>,
    pub unreported_writes: AtomicU64,
    pub remote_writes: AtomicU64,
    pub is_controller: AtomicBool,
    /// Set while our own messages come back later than `max_lag`.
    pub lagging: AtomicBool,
    pub loss: Mutex<LossDetector>,
    pub last_controller_news_ms: AtomicU64,
    pub write_rate_bits: AtomicU64,
    pub strategy_tx: watch::Sender<Strategy>,
    pub switches: Mutex<VecDeque<SwitchEvent>>,
    pub malformed_seen: Mutex<std::collections::HashSet<crate::wire::Malformed>>,
    pub shutdown: watch::Sender<bool>,
    pub start: Instant,
    /// Policy rollout state (docs/WIRE.md 9).
    pub rollout: crate::rollout::Rollout,
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic elsewhere must not take the cache down with a poisoned lock.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Shared {
    /// Milliseconds on the policy's clock (monotonic, from start).
    pub fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    pub fn id(&self) -> &str {
        &self.sender.source
    }

    /// Records a strategy change (from the write path or the tick) once.
    pub fn note_strategy(&self, s: Strategy, rate: Option<f64>) {
        if *self.strategy_tx.borrow() == s {
            return;
        }
        let mut from = s;
        let changed = self.strategy_tx.send_if_modified(|cur| {
            if *cur == s {
                return false;
            }
            from = *cur;
            *cur = s;
            true
        });
        if changed {
            let rate = rate.unwrap_or_else(|| f64::from_bits(self.write_rate_bits.load(Ordering::Relaxed)));
            let at = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0);
            tracing::info!(instance = self.id(), from = from.as_str(), to = s.as_str(), rate, "strategy switch");
            let mut h = lock(&self.switches);
            if h.len() >= MAX_SWITCH_HISTORY {
                h.pop_front();
            }
            h.push_back(SwitchEvent { at, from, to: s, write_rate: rate });
        }
    }

    pub fn strategy(&self) -> Strategy {
        *self.strategy_tx.borrow()
    }

    /// Taken before a publish on `P:invalidation` gets its seq, kept until Redis answers it.
    pub fn publishing(&self) -> Publishing<'_> {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        Publishing { s: self, settled: false }
    }

    /// The `inval_seq` a `mark`, `strategy_update` or `write_report` may announce: the last
    /// seq whose message, and every earlier one, has been answered. Announcing a seq still in
    /// flight would let the position overtake its message (a cluster sends a write's `SET`
    /// and `SPUBLISH` one after the other; a redirected `SET` can take longer than the
    /// receivers' reorder allowance), and receivers would flush for a loss that is not one
    /// (docs/WIRE.md 4).
    pub fn position(&self) -> u64 {
        // Every seq is handed out while its publish is counted in `in_flight`; so if none is in
        // flight after `q` was read, every seq up to `q` has been answered (all SeqCst).
        let q = self.inval_seq.load(Ordering::SeqCst);
        if self.in_flight.load(Ordering::SeqCst) == 0 {
            return self.settled_seq.fetch_max(q, Ordering::AcqRel).max(q);
        }
        self.settled_seq.load(Ordering::Acquire)
    }

    /// The seq of a message about to be published on `P:invalidation`; the caller holds a
    /// [`Publishing`] until the publish is answered.
    pub fn next_inval_seq(&self) -> u64 {
        self.published_since_tick.store(true, Ordering::Release);
        self.inval_seq.fetch_add(1, Ordering::AcqRel) + 1
    }

    /// Adds a `flush` to `pipe` if an earlier publish failed (docs/WIRE.md 4: a flush before
    /// any other invalidation). Returns whether it did; the caller confirms with
    /// [`flush_sent`](Self::flush_sent) once the pipeline succeeded.
    pub fn add_pending_flush(&self, pipe: &mut redis::Pipeline) -> bool {
        if !self.needs_flush.load(Ordering::Acquire) {
            return false;
        }
        pipe.publish(&self.names.invalidation, self.sender.flush(self.strategy(), self.next_inval_seq())).ignore();
        true
    }

    pub fn flush_sent(&self) {
        self.needs_flush.store(false, Ordering::Release);
    }

    /// A publish on `P:invalidation` failed.
    pub fn publish_failed(&self) {
        self.needs_flush.store(true, Ordering::Release);
    }

    /// Note a strategy change; a controller announces it at once.
    pub fn note_strategy_and_announce(&self, s: Strategy, rate: Option<f64>) {
        self.note_strategy(s, rate);
        if self.is_controller.load(Ordering::Acquire) && self.announced.load(Ordering::Acquire) != s as u8 {
            self.announce.notify_one();
        }
    }
}

/// A publish on `P:invalidation` whose answer has not come yet (see [`Shared::position`]).
/// Dropped without [`settled`](Self::settled), it counts as failed: an error, or a caller that
/// dropped the future mid-flight; either way receivers cannot know what they got, so the
/// next invalidation is preceded by a `flush`.
pub(crate) struct Publishing<'a> {
    s: &'a Shared,
    settled: bool,
}

impl Publishing<'_> {
    /// Redis answered, or nothing in the pipeline needs a flush if it did not.
    pub fn settled(mut self) {
        self.settled = true;
    }
}

impl Drop for Publishing<'_> {
    fn drop(&mut self) {
        if !self.settled {
            self.s.publish_failed();
        }
        self.s.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}
