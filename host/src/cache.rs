//! The public cache: `get` serves from L1 when it can, `set` writes Redis and tells the fleet
//! by the strategy in force, `delete` always tells the fleet at once.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::{CacheBuilder, PolicySource, Settings};
use crate::error::{Error, Result};
use crate::fleet;
use crate::loss_detector::LossDetector;
use crate::near_cache::{clock, NearCache};
use crate::policy::{sha256_hex, PolicyConfig, PolicyModule, PolicyRuntime, Strategy};
use crate::rollout::{Installed, Rollout, Trust};
pub use crate::shared::SwitchEvent;
use crate::shared::{inc, lock, Counters, Shared};
use crate::wire::{Names, Sender};

/// Counters since start. Cheap to take.
#[derive(Clone, Debug, Default)]
pub struct Stats {
    pub instance_id: String,
    pub is_controller: bool,
    pub reads: u64,
    pub l1_hits: u64,
    pub l1_misses: u64,
    pub writes: u64,
    pub deletes: u64,
    pub messages_sent: u64,
    pub messages_received: u64,
    pub invalidations_applied: u64,
    /// Whole-L1 flushes: received `flush` messages, detected losses, resubscriptions.
    pub flushes: u64,
    /// Lost invalidations detected (sequence gaps, sender restarts).
    pub gaps: u64,
    /// Malformed messages ignored.
    pub malformed: u64,
    pub policy_faults: u64,
    pub resubscribes: u64,
    /// Times a follower lost its controller and fell back to eager.
    pub controller_lost: u64,
    /// Times L1 stopped serving because the subscription lagged past `max_lag`.
    pub lag_suspensions: u64,
    /// Every message the subscription delivered: this instance's own, other instances',
    /// malformed ones (the protocol's cost, docs/WIRE.md 6).
    pub pubsub_received: u64,
    /// Socket reads by the subscription (one server only; 0 on a cluster). Under eager a
    /// writing instance reads its own messages in batches, so this stays far below
    /// `pubsub_received`.
    pub pubsub_reads: u64,
    pub strategy: Option<Strategy>,
    pub write_rate: f64,
    pub l1_serving: bool,
    pub l1_entries: u64,
    pub switches: Vec<SwitchEvent>,
}

/// The component and the config to run it with, and the component's SHA-256 (what status
/// records report, docs/WIRE.md 9.8).
fn load_policy(source: &PolicySource, settings: &Settings) -> Result<(PolicyModule, PolicyConfig, String)> {
    let base = settings.policy_config.clone();
    let (module, cfg, hash) = match source {
        PolicySource::Bundled => (PolicyModule::try_adaptive()?, base, sha256_hex(crate::policy::ADAPTIVE_WASM)),
        PolicySource::Fixed(s) => (PolicyModule::try_fixed()?, PolicyConfig { initial_strategy: *s, ..base }, sha256_hex(crate::policy::FIXED_WASM)),
        PolicySource::File(p) => {
            let bytes = std::fs::read(p).map_err(|e| crate::PolicyError::Io(p.display().to_string(), e.to_string()))?;
            (PolicyModule::from_bytes(&bytes, settings.sandbox)?, base, sha256_hex(&bytes))
        }
        PolicySource::Bytes(b) => (PolicyModule::from_bytes(b, settings.sandbox)?, base, sha256_hex(b)),
    };
    Ok((module.with_limits(settings.sandbox), cfg, hash))
}

struct Inner {
    shared: Arc<Shared>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

/// Caches dropped without `shutdown` while a batch was pending, in this process.
static DROPPED_WITH_PENDING_BATCH: AtomicU64 = AtomicU64::new(0);

impl Drop for Inner {
    fn drop(&mut self) {
        // Dropping the last handle stops the background tasks. A pending batch must not vanish
        // silently: it is counted, logged, and published in the background when the runtime
        // is still there (a process that exits right away may still lose it: call `shutdown`,
        // or `shutdown_on_signal`, before exiting).
        let s = self.shared.clone();
        if s.shutdown.send_replace(true) {
            return; // shut down already
        }
        let pending = lock(&s.policy).status(s.now_ms()).buffered_keys;
        if pending == 0 && !s.needs_flush.load(Ordering::Acquire) {
            return;
        }
        DROPPED_WITH_PENDING_BATCH.fetch_add(1, Ordering::Relaxed);
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                tracing::warn!(instance = s.id(), pending_keys = pending,
                    "AciCache dropped without shutdown(): publishing its pending batch in the background");
                rt.spawn(async move {
                    if let Err(e) = fleet::final_drain(&s).await {
                        tracing::error!(instance = s.id(), error = %e, "the pending batch of a dropped AciCache could not be published");
                    }
                });
            }
            Err(_) => tracing::error!(instance = s.id(), pending_keys = pending,
                "AciCache dropped without shutdown() outside a tokio runtime: its pending batch is lost (readers stay stale up to local_ttl)"),
        }
    }
}

/// Resolves at the first SIGTERM or SIGINT (Ctrl-C elsewhere): what a supervisor sends before it
/// kills a process. For apps that shut down more than the cache on those signals.
#[cfg(unix)]
pub async fn termination_signal() -> std::io::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    Ok(())
}

/// Resolves at the first Ctrl-C.
#[cfg(not(unix))]
pub async fn termination_signal() -> std::io::Result<()> {
    tokio::signal::ctrl_c().await
}

/// A near cache over Redis with fleet-wide adaptive invalidation. Cheap to clone (one `Arc`).
#[derive(Clone)]
pub struct AciCache {
    inner: Arc<Inner>,
}

fn random_hex(n: usize) -> String {
    use rand::Rng;
    let mut rng = rand::rng();
    (0..n).map(|_| char::from_digit(rng.random_range(0..16), 16).unwrap()).collect()
}

impl AciCache {
    pub fn builder() -> CacheBuilder {
        CacheBuilder::default()
    }

    pub(crate) async fn from_builder(b: CacheBuilder) -> Result<AciCache> {
        let settings = b.settings()?;
        let (module, pcfg, hash) = load_policy(&settings.policy, &settings)?;
        let start = Instant::now();
        let policy = PolicyRuntime::new(module.clone(), pcfg.clone(), 0)?;
        let rollout = Rollout::new(
            Trust::new(settings.policy_public_key.as_deref(), &settings.policy_allow_hashes),
            Installed::local(module, pcfg, hash),
        );
        // One server or a cluster (transport.rs): the rest of the cache is the same code.
        let (conn, client) = crate::transport::connect(&settings).await?;
        // A server that requires a password accepts a connection without one and refuses
        // every command: ask once now, so a missing password fails here like a wrong one.
        let _: String = redis::cmd("PING").query_async(&mut conn.clone()).await.map_err(auth_error)?;
        let sender = Sender {
            source: settings.instance_id.clone().unwrap_or_else(|| random_hex(12)),
            epoch: random_hex(16),
        };
        let mut names = Names::new(&settings.channel_prefix, settings.namespace.as_deref(), &sender.source);
        if settings.redis_cluster.is_some() {
            crate::transport::cluster_channel_names(&mut names, &settings.channel_prefix, settings.namespace.as_deref());
        }
        let initial = policy.last_strategy();
        let (strategy_tx, _) = watch::channel(initial);
        let (shutdown, _) = watch::channel(false);
        // The Redis key of the empty user key is the namespace prefix: L1 holds user keys.
        let key_prefix = names.redis_key("").unwrap_or_default();
        let shared = Arc::new(Shared {
            l1: NearCache::new(settings.l1_max_entries, settings.l1_max_bytes).with_key_prefix(&key_prefix),
            settings,
            names,
            sender,
            policy: Mutex::new(policy),
            conn,
            client,
            counters: Counters::default(),
            inval_seq: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
            settled_seq: AtomicU64::new(0),
            marked: AtomicU64::new(0),
            published_since_tick: AtomicBool::new(false),
            needs_flush: AtomicBool::new(false),
            announced: std::sync::atomic::AtomicU8::new(u8::MAX),
            announce: tokio::sync::Notify::new(),
            want_reports: watch::channel(false).0,
            unreported_writes: AtomicU64::new(0),
            remote_writes: AtomicU64::new(0),
            is_controller: AtomicBool::new(false),
            lagging: AtomicBool::new(false),
            loss: Mutex::new(LossDetector::default()),
            last_controller_news_ms: AtomicU64::new(0),
            write_rate_bits: AtomicU64::new(0),
            strategy_tx,
            switches: Mutex::new(VecDeque::new()),
            malformed_seen: Mutex::new(Default::default()),
            shutdown,
            start,
            rollout,
        });
        // A late joiner runs the fleet's current policy before it serves (docs/WIRE.md 9.3).
        crate::rollout::start(&shared).await;
        let tasks = fleet::start(shared.clone()).await?;
        Ok(AciCache { inner: Arc::new(Inner { shared, tasks: Mutex::new(tasks) }) })
    }

    fn s(&self) -> &Shared {
        &self.inner.shared
    }

    /// The value of `key`: from L1 when present and trusted, else from Redis (then cached for
    /// at most `local_ttl` and never past the key's Redis TTL).
    pub async fn get(&self, key: &str) -> Result<Option<Bytes>> {
        let s = self.s();
        // L1 is keyed by user key: a hit builds no Redis key. A key the namespace refuses is
        // never cached (set and fills check it first), so checking it on a miss only is the same.
        if let Some(v) = s.l1.get_local(key) {
            s.counters.l1_hits.incr();
            return Ok(Some(v));
        }
        // Boxed: the miss path's state (a Redis round trip) would otherwise make every `get`
        // future that large, and a hit would pay for creating and moving it.
        Box::pin(self.fill(key)).await
    }

    /// `get` after an L1 miss: read Redis and cache the value.
    async fn fill(&self, key: &str) -> Result<Option<Bytes>> {
        let s = self.s();
        inc(&s.counters.l1_misses);
        let rkey = s.names.redis_key(key)?;
        let token = s.l1.begin_fill(&rkey);
        let mut conn = s.conn.clone();
        let (value, pttl): (Option<Vec<u8>>, i64) =
            redis::pipe().get(&rkey).pttl(&rkey).query_async(&mut conn).await?;
        let Some(value) = value else { return Ok(None) };
        let value = Bytes::from(value);
        let ttl = match pttl {
            // No expiry in Redis: the local bound alone.
            -1 => s.settings.local_ttl,
            p if p > 0 => s.settings.local_ttl.min(Duration::from_millis(p as u64)),
            // Expired between GET and PTTL.
            _ => Duration::ZERO,
        };
        s.l1.complete_fill(token, &rkey, value.clone(), ttl);
        Ok(Some(value))
    }

    /// Convenience: `get` as UTF-8 text (lossy).
    pub async fn get_string(&self, key: &str) -> Result<Option<String>> {
        Ok(self.get(key).await?.map(|b| String::from_utf8_lossy(&b).into_owned()))
    }

    /// Writes `key` to Redis with `ttl` (default: `default_ttl`) and propagates by the strategy
    /// in force: under eager the invalidation is pipelined with the SET (one round trip);
    /// under batched the key joins the policy's batch; under ttl nothing is sent.
    pub async fn set(&self, key: &str, value: impl Into<Bytes>, ttl: Option<Duration>) -> Result<()> {
        let s = self.s();
        let value: Bytes = value.into();
        let ttl = ttl.unwrap_or(s.settings.default_ttl).max(Duration::from_millis(1));
        let rkey = s.names.redis_key(key)?;
        // Before the SET goes out: the key's TTL in Redis starts later than this.
        let started = clock::precise();
        // The policy call (~0.5 us, but it evicts enough CPU cache to cost ~10% of a loopback
        // SET when run inline) overlaps the round trip: the request is sent by the strategy in
        // force, then the write is counted while Redis works.
        let in_force = s.strategy();
        let now = s.now_ms();
        let ttl_ms = ttl.as_millis().min(u64::MAX as u128) as u64;
        let mut conn = s.conn.clone();
        let send = async {
            if in_force == Strategy::Eager {
                let mut pipe = redis::pipe();
                // Dropped unsettled (an error: the SET may have landed without its
                // invalidation), the next invalidation is preceded by a flush.
                let publishing = s.publishing();
                let flush_first = s.add_pending_flush(&mut pipe);
                let msg = s.sender.invalidate(std::slice::from_ref(&rkey), Strategy::Eager, s.next_inval_seq());
                pipe.pset_ex(&rkey, value.as_ref(), ttl_ms).ignore().publish(&s.names.invalidation, msg).ignore();
                pipe.query_async::<()>(&mut conn).await?;
                publishing.settled();
                if flush_first {
                    s.flush_sent();
                }
                s.counters.messages_sent.fetch_add(1 + flush_first as u64, Ordering::Relaxed);
            } else {
                let _: () = redis::cmd("SET").arg(&rkey).arg(value.as_ref()).arg("PX").arg(ttl_ms).query_async(&mut conn).await?;
            }
            redis::RedisResult::Ok(())
        };
        let count = async { lock(&s.policy).record_write(&rkey, now) };
        let (sent, strategy) = tokio::join!(send, count);
        s.note_strategy_and_announce(strategy, None);
        s.unreported_writes.fetch_add(1, Ordering::Relaxed);
        sent?;
        if strategy == Strategy::Eager && in_force != Strategy::Eager {
            // This very write switched the policy to eager: it must not wait for a batch.
            let mut pipe = redis::pipe();
            let publishing = s.publishing();
            let flush_first = s.add_pending_flush(&mut pipe);
            let msg = s.sender.invalidate(std::slice::from_ref(&rkey), Strategy::Eager, s.next_inval_seq());
            pipe.publish(&s.names.invalidation, msg).ignore();
            let mut conn = s.conn.clone();
            pipe.query_async::<()>(&mut conn).await?;
            publishing.settled();
            if flush_first {
                s.flush_sent();
            }
            s.counters.messages_sent.fetch_add(1 + flush_first as u64, Ordering::Relaxed);
        }
        inc(&s.counters.writes);
        s.l1.put_own_write_since(&rkey, value, s.settings.local_ttl.min(ttl), started);
        Ok(())
    }

    /// Deletes `key` from Redis and tells the fleet at once, whatever the strategy.
    pub async fn delete(&self, key: &str) -> Result<bool> {
        let s = self.s();
        let rkey = s.names.redis_key(key)?;
        s.l1.invalidate(&rkey);
        let mut pipe = redis::pipe();
        let publishing = s.publishing();
        let flush_first = s.add_pending_flush(&mut pipe);
        let msg = s.sender.invalidate(std::slice::from_ref(&rkey), Strategy::Eager, s.next_inval_seq());
        pipe.del(&rkey).publish(&s.names.invalidation, msg).ignore();
        let mut conn = s.conn.clone();
        let (deleted,): (i64,) = pipe.query_async(&mut conn).await?;
        publishing.settled();
        if flush_first {
            s.flush_sent();
            inc(&s.counters.messages_sent);
        }
        // A concurrent fill may have read the value just before the DEL.
        s.l1.invalidate(&rkey);
        inc(&s.counters.deletes);
        inc(&s.counters.messages_sent);
        Ok(deleted > 0)
    }

    /// Replaces the policy while serving (hot swap). The new one must load, validate and accept
    /// the config, or nothing changes. It takes over the mode (leading or following) and the
    /// strategy in force, is primed with the measured rate so it does not start from zero,
    /// and the old one's buffered keys are published, not lost.
    pub async fn swap_policy(&self, source: PolicySource) -> Result<()> {
        let s = self.s();
        let (module, cfg, hash) = load_policy(&source, &s.settings)?;
        fleet::swap(s, module.clone(), cfg.clone()).await?;
        // What this instance now calls its local policy: a rollback to "local" returns here.
        s.rollout.local_swapped(Installed::local(module, cfg, hash));
        tracing::info!(instance = s.id(), policy = lock(&s.policy).module().name(), "policy swapped");
        Ok(())
    }

    /// SHA-256 (64 hex) of the running policy component, and whether it came from a fleet
    /// rollout (docs/WIRE.md 9) rather than this instance's configuration.
    pub fn policy_hash(&self) -> (String, bool) {
        self.s().rollout.running()
    }

    /// The running policy's name and version.
    pub fn policy_info(&self) -> (String, String) {
        let p = lock(&self.s().policy);
        (p.module().name().to_string(), p.module().version().to_string())
    }

    /// Drops this instance's whole L1 (Redis untouched).
    pub fn flush_local(&self) {
        self.s().l1.flush();
    }

    /// The strategy in force here, without a call into the policy.
    pub fn strategy(&self) -> Strategy {
        self.s().strategy()
    }

    /// A receiver that sees every strategy change (`changed().await`).
    pub fn watch_strategy(&self) -> watch::Receiver<Strategy> {
        self.s().strategy_tx.subscribe()
    }

    pub fn instance_id(&self) -> &str {
        self.s().id()
    }

    pub fn is_controller(&self) -> bool {
        self.s().is_controller.load(Ordering::Acquire)
    }

    /// The Redis key that `key` is stored under (namespaced).
    /// Without a namespace, keys in the protocol key space (`<prefix>::...`) are refused.
    pub fn redis_key(&self, key: &str) -> Result<String> {
        self.s().names.redis_key(key)
    }

    pub fn stats(&self) -> Stats {
        let s = self.s();
        let c = &s.counters;
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        // Each read once, so that `reads` is `l1_hits + l1_misses` even while gets run.
        let (l1_hits, l1_misses) = (c.l1_hits.sum(), g(&c.l1_misses));
        Stats {
            instance_id: s.id().to_string(),
            is_controller: s.is_controller.load(Ordering::Acquire),
            // Every read is exactly one hit or one miss: one counter fewer on the hot path.
            reads: l1_hits + l1_misses,
            l1_hits,
            l1_misses,
            writes: g(&c.writes),
            deletes: g(&c.deletes),
            messages_sent: g(&c.messages_sent),
            messages_received: g(&c.messages_received),
            invalidations_applied: g(&c.invalidations_applied),
            flushes: g(&c.flushes),
            gaps: g(&c.gaps),
            malformed: g(&c.malformed),
            policy_faults: lock(&s.policy).fault_stats().faults,
            resubscribes: g(&c.resubscribes),
            controller_lost: g(&c.controller_lost),
            lag_suspensions: g(&c.lag_suspensions),
            pubsub_received: g(&c.pubsub_received),
            pubsub_reads: g(&c.pubsub_reads),
            strategy: Some(s.strategy()),
            write_rate: f64::from_bits(s.write_rate_bits.load(Ordering::Relaxed)),
            l1_serving: s.l1.is_serving(),
            l1_entries: s.l1.entry_count(),
            switches: lock(&s.switches).iter().cloned().collect(),
        }
    }

    /// Waits for SIGTERM or SIGINT (Ctrl-C elsewhere), then [`shutdown`](Self::shutdown): the
    /// pending batch is published and the lease released, so a process stopped by its
    /// supervisor leaves no reader stale. Once this runs, those signals no longer kill the
    /// process by default: the application decides when to exit. The pattern for a tokio app:
    ///
    /// ```no_run
    /// # async fn app(cache: aci_cache::AciCache, serve: impl std::future::Future<Output = ()>) {
    /// tokio::select! {
    ///     _ = serve => cache.shutdown().await.unwrap(),
    ///     r = cache.shutdown_on_signal() => r.unwrap(), // SIGTERM/SIGINT: drained, then exit
    /// }
    /// # }
    /// ```
    pub async fn shutdown_on_signal(&self) -> Result<()> {
        termination_signal().await.map_err(|e| Error::Signal(e.to_string()))?;
        tracing::info!(instance = self.s().id(), "termination signal: shutting down");
        self.shutdown().await
    }

    /// How many caches this process dropped without `shutdown` while a batch was pending
    /// (each also logged at warn level).
    pub fn dropped_with_pending_batch() -> u64 {
        DROPPED_WITH_PENDING_BATCH.load(Ordering::Relaxed)
    }

    /// Publishes whatever batch is pending, gives up the controller lease, stops the
    /// background tasks. Reads and writes on any clone still work afterwards, but nothing
    /// listens for invalidations any more, so L1 stops serving.
    pub async fn shutdown(&self) -> Result<()> {
        let s = self.inner.shared.clone();
        if *s.shutdown.borrow() {
            return Ok(());
        }
        let _ = s.shutdown.send(true);
        let tasks: Vec<JoinHandle<()>> = std::mem::take(&mut *lock(&self.inner.tasks));
        for t in tasks {
            let _ = t.await;
        }
        s.l1.suspend();
        fleet::final_drain(&s).await
    }
}

/// The error `build()` gives when Redis refuses us: authentication problems get one clear
/// typed error, whatever the spelling of the server's refusal.
pub(crate) fn auth_error(e: redis::RedisError) -> Error {
    let text = e.to_string();
    let auth = e.kind() == redis::ErrorKind::AuthenticationFailed
        || ["NOAUTH", "WRONGPASS", "invalid password", "Authentication required", "invalid username-password"]
            .iter()
            .any(|w| text.contains(w));
    if auth {
        let why = if text.contains("NOAUTH") || text.contains("Authentication required") {
            "the server requires a password and none was given"
        } else {
            "the server refused the password"
        };
        Error::Auth(why.to_string())
    } else {
        Error::Redis(e)
    }
}

impl CacheBuilder {
    /// Connects, loads and configures the policy, subscribes, settles the role.
    pub async fn build(self) -> Result<AciCache> {
        AciCache::from_builder(self).await
    }
}
