//! The fleet protocol (docs/WIRE.md): the subscriber that applies other instances' messages,
//! and the tick that drains batches, reports writes, elects and heartbeats the controller.
//!
//! Everything here runs on the network path: errors are logged and counted, never propagated
//! as panics, and every loop ends when the cache shuts down.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use rand::Rng;
use tokio::task::JoinHandle;

use crate::shared::{inc, lock, Shared};
use crate::config::Role;
use crate::error::Result;
use crate::loss_detector::Verdict;
use crate::policy::{Batch, PolicyRuntime, Strategy};
use crate::wire::{self, Message};

/// Heartbeats (reports with count 0) at least this often, so receivers can check sequences
/// and the sender's own subscription sees traffic.
const HEARTBEAT_MS: u64 = 1000;
/// Messages per `PUBLISH` of a batch, well under the receivers' `MAX_KEYS`.
const KEYS_PER_MESSAGE: usize = 10_000;

/// Starts the subscriber and the tick. Waits (bounded) for the first subscription so that a
/// fresh cache starts with a trusted L1, and settles the role before returning.
pub(crate) async fn start(shared: Arc<Shared>) -> Result<Vec<JoinHandle<()>>> {
    let (ready_tx, mut ready_rx) = tokio::sync::watch::channel(false);
    let sub = tokio::spawn(subscriber(shared.clone(), ready_tx));
    let wait = shared.settings.command_timeout;
    let _ = tokio::time::timeout(wait, ready_rx.wait_for(|r| *r)).await;
    if !shared.l1.is_serving() {
        tracing::warn!(instance = shared.id(), "not subscribed yet: serving reads from Redis until it is");
    }
    let now = shared.now_ms();
    match shared.settings.role {
        Role::Controller => become_controller(&shared, now),
        Role::Follower => become_follower(&shared, now),
        Role::Auto => {
            let mut conn = shared.conn.clone();
            match try_lease(&shared, &mut conn).await {
                Ok(true) => become_controller(&shared, now),
                Ok(false) => become_follower(&shared, now),
                Err(e) => {
                    tracing::warn!(error = %e, "controller lease: cannot reach Redis; following");
                    become_follower(&shared, now);
                }
            }
        }
    }
    let tick = tokio::spawn(ticker(shared.clone()));
    Ok(vec![sub, tick])
}

fn become_controller(s: &Shared, now: u64) {
    if !s.is_controller.swap(true, Ordering::AcqRel) {
        tracing::info!(instance = s.id(), "controller");
        let mut p = lock(&s.policy);
        // A new controller has measured only its own writes. Prime it with the fleet rate the
        // last controller announced, so a takeover under load does not switch down for lack of
        // history (our own writes may count twice for one window: an error toward eager).
        let rate = f64::from_bits(s.write_rate_bits.load(Ordering::Relaxed));
        let window_s = p.config().window_ms as f64 / 1000.0;
        let primed = (rate * window_s).round();
        if primed >= 1.0 {
            p.record_remote_writes(primed.min(u32::MAX as f64) as u32, now);
        }
        p.lead(now);
        let strategy = p.last_strategy();
        drop(p);
        s.note_strategy(strategy, None);
    }
}

fn become_follower(s: &Shared, now: u64) {
    let was = s.is_controller.swap(false, Ordering::AcqRel);
    let mut p = lock(&s.policy);
    if was || !p.is_following() {
        // Until the controller is heard, eager: the one strategy that never leaves readers stale.
        p.follow(Strategy::Eager, now);
        drop(p);
        s.note_strategy(Strategy::Eager, None);
        s.last_controller_news_ms.store(now, Ordering::Release);
    }
}

const RENEW_LUA: &str = r"if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) else return 0 end";
const RELEASE_LUA: &str = r"if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) else return 0 end";

/// Takes or renews the controller lease; true if we hold it afterwards.
async fn try_lease(s: &Shared, conn: &mut redis::aio::ConnectionManager) -> redis::RedisResult<bool> {
    let lease_ms = s.settings.controller_timeout.as_millis() as u64;
    if s.is_controller.load(Ordering::Acquire) {
        let renewed: i64 = redis::cmd("EVAL")
            .arg(RENEW_LUA)
            .arg(1)
            .arg(&s.names.controller_lease)
            .arg(s.id())
            .arg(lease_ms)
            .query_async(conn)
            .await?;
        if renewed == 1 {
            return Ok(true);
        }
    }
    let took: Option<String> = redis::cmd("SET")
        .arg(&s.names.controller_lease)
        .arg(s.id())
        .arg("NX")
        .arg("PX")
        .arg(lease_ms)
        .query_async(conn)
        .await?;
    Ok(took.is_some())
}

fn jitter(d: Duration) -> Duration {
    let ms = d.as_millis() as u64;
    Duration::from_millis(ms / 2 + rand::rng().random_range(0..=ms / 2 + 1))
}

async fn subscriber(s: Arc<Shared>, ready: tokio::sync::watch::Sender<bool>) {
    let mut shutdown = s.shutdown.subscribe();
    let mut backoff = Duration::from_millis(50);
    let liveness_ms = s.settings.liveness_timeout.as_millis() as u64;
    let mut first = true;
    loop {
        if *shutdown.borrow() {
            return;
        }
        let attempt = async {
            let mut ps = s.client.get_async_pubsub().await?;
            ps.subscribe(&[&s.names.invalidation, &s.names.strategy, &s.names.reports]).await?;
            redis::RedisResult::Ok(ps)
        };
        match tokio::time::timeout(s.settings.command_timeout, attempt).await {
            Ok(Ok(ps)) => {
                backoff = Duration::from_millis(50);
                if !first {
                    inc(&s.counters.resubscribes);
                }
                first = false;
                // Positions of other senders are unknown after a gap in listening; whatever we
                // cached before may have been invalidated meanwhile.
                lock(&s.loss).forget_all();
                s.lagging.store(false, Ordering::Release);
                s.l1.resume();
                inc(&s.counters.flushes);
                let _ = ready.send(true);
                let (_sink, mut stream) = ps.split();
                let mut last_heard = s.now_ms();
                let mut check = tokio::time::interval(Duration::from_millis(100));
                let reason = loop {
                    tokio::select! {
                        msg = stream.next() => match msg {
                            Some(m) => {
                                last_heard = s.now_ms();
                                handle(&s, m.get_payload_bytes(), last_heard);
                            }
                            None => break "connection closed",
                        },
                        _ = check.tick() => {
                            if s.now_ms().saturating_sub(last_heard) > liveness_ms {
                                break "no message within the liveness timeout";
                            }
                        }
                        _ = shutdown.changed() => return,
                    }
                };
                s.l1.suspend();
                tracing::warn!(instance = s.id(), reason, "subscription lost: L1 suspended, resubscribing");
            }
            Ok(Err(e)) => tracing::warn!(instance = s.id(), error = %e, "subscribe failed"),
            Err(_) => tracing::warn!(instance = s.id(), "subscribe timed out"),
        }
        tokio::select! {
            _ = tokio::time::sleep(jitter(backoff)) => {}
            _ = shutdown.changed() => return,
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

fn lost(s: &Shared, why: &str) {
    inc(&s.counters.gaps);
    inc(&s.counters.flushes);
    s.l1.flush();
    lock(&s.loss).reset_holes();
    tracing::warn!(instance = s.id(), why, "invalidation loss detected: L1 flushed");
}

/// Applies one payload from any of our channels.
pub(crate) fn handle(s: &Shared, payload: &[u8], now: u64) {
    let msg = match wire::decode(payload) {
        Ok(m) => m,
        Err(kind) => {
            inc(&s.counters.malformed);
            if lock(&s.malformed_seen).insert(kind) {
                tracing::warn!(instance = s.id(), kind = kind.as_str(), bytes = payload.len(),
                    "malformed message ignored (logged once per kind)");
            }
            return;
        }
    };
    let origin = msg.origin();
    if origin.source == s.id() {
        // Our own message, stamped by our own clock: how far behind is the subscription?
        if origin.epoch.as_deref() == Some(s.sender.epoch.as_str()) {
            check_lag(s, wire::unix_now() - origin.timestamp);
        }
        return;
    }
    inc(&s.counters.messages_received);
    let epoch = origin.epoch.as_deref();
    match &msg {
        Message::Invalidate { keys, seq, .. } => {
            for k in keys {
                s.l1.invalidate(k);
            }
            s.counters.invalidations_applied.fetch_add(keys.len() as u64, Ordering::Relaxed);
            if let Some(seq) = seq {
                if lock(&s.loss).on_message(&origin.source, epoch, *seq, now) == Verdict::Lost {
                    lost(s, "sequence gap or sender restart");
                }
            }
        }
        Message::Flush { seq, .. } => {
            s.l1.flush();
            inc(&s.counters.flushes);
            if let Some(seq) = seq {
                let _ = lock(&s.loss).on_message(&origin.source, epoch, *seq, now);
            }
        }
        Message::StrategyUpdate { strategy, write_rate, inval_seq, .. } => {
            if let Some(q) = inval_seq {
                if lock(&s.loss).on_heartbeat(&origin.source, epoch, *q, now) == Verdict::Lost {
                    lost(s, "sender restart");
                }
            }
            if s.is_controller.load(Ordering::Acquire) {
                tracing::debug!(other = origin.source.as_str(), "another controller is broadcasting; ignoring it");
                return;
            }
            s.last_controller_news_ms.store(now, Ordering::Release);
            lock(&s.policy).follow(*strategy, now);
            s.write_rate_bits.store(write_rate.to_bits(), Ordering::Relaxed);
            s.note_strategy(*strategy, Some(*write_rate));
        }
        Message::WriteReport { count, inval_seq, .. } => {
            if let Some(q) = inval_seq {
                if lock(&s.loss).on_heartbeat(&origin.source, epoch, *q, now) == Verdict::Lost {
                    lost(s, "sender restart");
                }
            }
            if s.is_controller.load(Ordering::Acquire) {
                s.remote_writes.fetch_add(*count, Ordering::Relaxed);
            }
        }
    }
}

/// A subscriber that falls behind serves stale values for as long as it lags, and Redis drops
/// it once its output buffer fills: stop serving L1 before either matters.
fn check_lag(s: &Shared, lag_s: f64) {
    let max = s.settings.max_lag.as_secs_f64();
    if lag_s > max {
        if !s.lagging.swap(true, Ordering::AcqRel) {
            s.l1.suspend();
            inc(&s.counters.lag_suspensions);
            tracing::warn!(instance = s.id(), lag_ms = (lag_s * 1000.0) as u64, "subscription lagging: L1 suspended");
        }
    } else if lag_s < max / 2.0 && s.lagging.swap(false, Ordering::AcqRel) {
        s.l1.resume();
        tracing::info!(instance = s.id(), "subscription caught up: L1 serving again");
    }
}

async fn ticker(s: Arc<Shared>) {
    let mut shutdown = s.shutdown.subscribe();
    let mut interval = tokio::time::interval(s.settings.tick);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_heartbeat = 0u64;
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            _ = shutdown.changed() => return,
        }
        if let Err(e) = tick(&s, &mut last_heartbeat).await {
            tracing::warn!(instance = s.id(), error = %e, "tick failed; retrying next tick");
        }
    }
}

async fn tick(s: &Shared, last_heartbeat: &mut u64) -> redis::RedisResult<()> {
    let mut conn = s.conn.clone();
    if s.settings.role == Role::Auto {
        let holds = try_lease(s, &mut conn).await?;
        let now = s.now_ms();
        if holds {
            become_controller(s, now);
        } else {
            become_follower(s, now);
        }
    }
    let now = s.now_ms();
    let controller = s.is_controller.load(Ordering::Acquire);
    if lock(&s.loss).expire(now) == Verdict::Lost {
        lost(s, "sequence gap not filled in time");
    }
    if !controller {
        let silent = now.saturating_sub(s.last_controller_news_ms.load(Ordering::Acquire));
        let mut p = lock(&s.policy);
        if silent > s.settings.controller_timeout.as_millis() as u64 && p.last_strategy() != Strategy::Eager {
            p.follow(Strategy::Eager, now);
            drop(p);
            inc(&s.counters.controller_lost);
            s.note_strategy(Strategy::Eager, None);
            tracing::warn!(instance = s.id(), silent_ms = silent, "no controller heard: following eager");
        }
    }
    let (status, batch) = {
        let mut p = lock(&s.policy);
        if controller {
            let remote = s.remote_writes.swap(0, Ordering::Relaxed);
            let mut left = remote;
            while left > 0 {
                let n = left.min(u32::MAX as u64) as u32;
                p.record_remote_writes(n, now);
                left -= n as u64;
            }
        }
        let status = p.status(now);
        let cap = p.config().batch_max_keys.max(1) as usize;
        let batch = if status.batch_due { p.pending_batch(now, cap) } else { Default::default() };
        (status, batch)
    };
    if controller {
        s.write_rate_bits.store(status.write_rate.to_bits(), Ordering::Relaxed);
    }
    s.note_strategy(status.strategy, Some(status.write_rate));

    let mut pipe = redis::pipe();
    let mut sent = add_batch(s, &mut pipe, &batch);
    let inval_seq = s.inval_seq.load(Ordering::Acquire);
    if controller {
        pipe.publish(&s.names.strategy, s.sender.strategy_update(status.strategy, status.write_rate, inval_seq)).ignore();
        sent += 1;
        // Our own writes were counted by our policy directly.
        s.unreported_writes.store(0, Ordering::Relaxed);
    } else {
        let count = s.unreported_writes.swap(0, Ordering::Relaxed);
        if count > 0 || now.saturating_sub(*last_heartbeat) >= HEARTBEAT_MS {
            pipe.publish(&s.names.reports, s.sender.write_report(count, inval_seq)).ignore();
            sent += 1;
            *last_heartbeat = now;
        }
    }
    if sent > 0 {
        let r: redis::RedisResult<()> = pipe.query_async(&mut conn).await;
        if let Err(e) = r {
            if !batch.keys.is_empty() || batch.flush_all {
                // The batch is gone with the failed publish: others cannot know these keys
                // changed. Tell them to flush as soon as Redis answers again.
                lock(&s.policy).force_flush_next();
            }
            return Err(e);
        }
        s.counters.messages_sent.fetch_add(sent, Ordering::Relaxed);
    }
    Ok(())
}

/// Adds the messages that publish `batch` to `pipe` (a flush when keys were lost, else the
/// keys in chunks); returns how many.
pub(crate) fn add_batch(s: &Shared, pipe: &mut redis::Pipeline, batch: &Batch) -> u64 {
    let mut n = 0;
    if batch.flush_all {
        pipe.publish(&s.names.invalidation, s.sender.flush(Strategy::Batched, s.next_inval_seq())).ignore();
        return 1;
    }
    for chunk in batch.keys.chunks(KEYS_PER_MESSAGE) {
        pipe.publish(&s.names.invalidation, s.sender.invalidate(chunk, Strategy::Batched, s.next_inval_seq())).ignore();
        n += 1;
    }
    n
}

/// Whatever the policy still buffers, made due (switching away from batched drains it).
pub(crate) fn drain_all(p: &mut PolicyRuntime, now: u64) -> Batch {
    p.follow(Strategy::Eager, now);
    p.pending_batch(now, usize::MAX)
}

/// On shutdown: publish the pending batch and release the controller lease.
pub(crate) async fn final_drain(s: &Shared) -> Result<()> {
    let batch = drain_all(&mut lock(&s.policy), s.now_ms());
    let mut conn = s.conn.clone();
    let mut pipe = redis::pipe();
    let mut commands = add_batch(s, &mut pipe, &batch);
    if s.is_controller.swap(false, Ordering::AcqRel) {
        pipe.cmd("EVAL").arg(RELEASE_LUA).arg(1).arg(&s.names.controller_lease).arg(s.id()).ignore();
        commands += 1;
    }
    if commands > 0 {
        let _: () = pipe.query_async(&mut conn).await?;
    }
    Ok(())
}
