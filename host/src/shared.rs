//! The state that the cache's handle (`cache.rs`) and the fleet protocol (`fleet.rs`) share:
//! both depend on this module, neither on the other's internals (`cache` calls into `fleet`
//! to start and stop it; `fleet` never reaches back into `cache`).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use redis::aio::ConnectionManager;
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
    pub l1_hits: AtomicU64,
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
}

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
    pub conn: ConnectionManager,
    pub client: redis::Client,
    pub counters: Counters,
    /// Seq of the last invalidation message we published.
    pub inval_seq: AtomicU64,
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

    pub fn next_inval_seq(&self) -> u64 {
        self.inval_seq.fetch_add(1, Ordering::AcqRel) + 1
    }
}

