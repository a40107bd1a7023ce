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
    /// Seq of the last invalidation message we published.
    pub inval_seq: AtomicU64,
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

    /// The seq of a message about to be published on `P:invalidation`.
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

