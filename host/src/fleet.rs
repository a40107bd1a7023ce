//! The fleet protocol v2 (docs/WIRE.md): the subscriber that applies other instances' messages,
//! and the tick that drains batches, reports writes, marks, elects the controller and keeps the
//! subscription's liveness proven by our own heartbeat.
//!
//! Everything here runs on the network path: errors are logged and counted, never propagated
//! as panics, and every loop ends when the cache shuts down.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use tokio::task::JoinHandle;

use crate::config::Role;
use crate::error::Result;
use crate::loss_detector::Verdict;
use crate::policy::{Batch, PolicyRuntime, Strategy};
use crate::shared::{inc, lock, Publishing, Shared, HEARTBEAT};
use crate::wire::{self, Message, KEYS_PER_MESSAGE};

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
    let rollout = tokio::spawn(crate::rollout::task(shared.clone()));
    Ok(vec![sub, tick, rollout])
}

fn become_controller(s: &Shared, now: u64) {
    if !s.is_controller.swap(true, Ordering::AcqRel) {
        tracing::info!(instance = s.id(), "controller");
        // Only the controller hears the reports (docs/WIRE.md 1.3); announce at once.
        s.want_reports.send_replace(true);
        s.announced.store(u8::MAX, Ordering::Release);
        s.announce.notify_one();
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
    if was {
        s.want_reports.send_replace(false);
    }
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
async fn try_lease(s: &Shared, conn: &mut crate::transport::Conn) -> redis::RedisResult<bool> {
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

/// How long the subscription is left unread after a read that brought only this instance's
/// own messages. Under eager every write comes back to its writer; reading each as it arrives
/// woke this task once per write, which cost a writing instance ~10% of a SET. Left unread for
/// this long, they queue in the socket and are read in one go. The cost: another instance's
/// message may wait this long while this one writes, a hundredth of `max_lag` (docs/WIRE.md 5
/// allows it). The Python and Go hosts do the same.
const OWN_PAUSE: Duration = Duration::from_millis(5);

async fn subscriber(s: Arc<Shared>, ready: tokio::sync::watch::Sender<bool>) {
    let mut shutdown = s.shutdown.subscribe();
    let mut want_reports = s.want_reports.subscribe();
    let mut backoff = Duration::from_millis(50);
    let liveness_ms = s.settings.liveness_timeout.as_millis() as u64;
    let mut first = true;
    loop {
        if *shutdown.borrow() {
            return;
        }
        // One server or a cluster (transport.rs): a fresh connection each time.
        let channels = [s.names.invalidation.as_str(), s.names.strategy.as_str(), s.names.liveness.as_str(), s.names.policy.as_str()];
        let attempt = crate::transport::subscribe(&s.client, &channels);
        match tokio::time::timeout(s.settings.command_timeout, attempt).await {
            Ok(Ok((mut sink, mut stream))) => {
                backoff = Duration::from_millis(50);
                if !first {
                    inc(&s.counters.resubscribes);
                }
                first = false;
                // Positions of other senders are unknown after a gap in listening; whatever we
                // cached before may have been invalidated meanwhile.
                lock(&s.loss).resubscribed();
                s.lagging.store(false, Ordering::Release);
                s.l1.resume();
                inc(&s.counters.flushes);
                s.rollout.resubscribed();
                let _ = ready.send(true);
                let mut reports = false;
                want_reports.mark_changed();
                let mut last_heard = s.now_ms();
                let mut check = tokio::time::interval(Duration::from_millis(100));
                let own = OwnSuffix::new(&s);
                // Set after a read that brought only our own messages; see OWN_PAUSE.
                let mut paused: Option<tokio::time::Instant> = None;
                let reason = loop {
                    tokio::select! {
                        _ = tokio::time::sleep_until(paused.unwrap_or_else(tokio::time::Instant::now)), if paused.is_some() => paused = None,
                        msg = stream.next(), if paused.is_none() => match msg {
                            Some(m) => {
                                s.counters.pubsub_reads.fetch_add(stream.take_reads(), Ordering::Relaxed);
                                last_heard = s.now_ms();
                                let payload = m.bytes();
                                if m.channel() == Some(s.names.policy.as_str()) {
                                    inc(&s.counters.pubsub_received);
                                    crate::rollout::on_announcement(&s, payload);
                                    continue;
                                }
                                match own.timestamp(payload) {
                                    Some(ts) => {
                                        inc(&s.counters.pubsub_received);
                                        check_lag(&s, wire::unix_now() - ts);
                                        // Only an invalidation says this instance is writing;
                                        // pausing after a heartbeat would only delay others.
                                        if stream.can_pause() && m.channel() == Some(s.names.invalidation.as_str()) {
                                            paused = Some(tokio::time::Instant::now() + OWN_PAUSE);
                                        }
                                    }
                                    None => handle(&s, payload, last_heard),
                                }
                            }
                            None => break stream.end_reason().unwrap_or("connection closed"),
                        },
                        _ = check.tick() => {
                            if s.now_ms().saturating_sub(last_heard) > liveness_ms {
                                break "no message within the liveness timeout";
                            }
                        }
                        r = want_reports.changed() => {
                            if r.is_err() {
                                return;
                            }
                            let want = *want_reports.borrow_and_update();
                            if want != reports {
                                let done = if want { sink.subscribe(&[&s.names.reports]).await } else { sink.unsubscribe(&s.names.reports).await };
                                match done {
                                    Ok(()) => reports = want,
                                    Err(_) => break "cannot change the reports subscription",
                                }
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

/// Recognises this instance's own messages without decoding them. Under eager every write
/// comes back to its writer through the subscription; decoding it as JSON (a map, a string per
/// member) only to learn that it is ours and read its timestamp was the one part of that round
/// trip that is our own cost. What we send always ends, in this order (`wire::Out`), with
/// `,"timestamp":T,"source":"<id>","epoch":"<epoch>"`, then `,"seq":N` or `,"inval_seq":N` or
/// nothing, then `,"v":2}`: a payload that ends so is ours (or impersonates our source and
/// epoch, which `handle` would ignore too, apart from the lag check), and anything else goes
/// through the full decode.
struct OwnSuffix {
    /// `,"source":"<id>","epoch":"<epoch>"`
    origin: Vec<u8>,
}

impl OwnSuffix {
    fn new(s: &Shared) -> Self {
        Self::of(&s.sender)
    }

    fn of(sender: &wire::Sender) -> Self {
        OwnSuffix { origin: format!(r#","source":"{}","epoch":"{}""#, sender.source, sender.epoch).into_bytes() }
    }

    /// The timestamp of our own message, `None` for anything else.
    fn timestamp(&self, payload: &[u8]) -> Option<f64> {
        let rest = payload.strip_suffix(br#","v":2}"#)?;
        // Drop an optional `,"seq":N` / `,"inval_seq":N`.
        let digits = rest.iter().rev().take_while(|b| b.is_ascii_digit()).count();
        let before = &rest[..rest.len() - digits];
        let rest = match digits {
            1..=20 => before.strip_suffix(br#","seq":"#).or_else(|| before.strip_suffix(br#","inval_seq":"#)).unwrap_or(rest),
            _ => rest,
        };
        let rest = rest.strip_suffix(self.origin.as_slice())?;
        const TS: &[u8] = br#","timestamp":"#;
        let start = rest.len().saturating_sub(48);
        let at = rest[start..].windows(TS.len()).rposition(|w| w == TS)? + start + TS.len();
        let num = &rest[at..];
        // JSON's grammar, not Rust's (which also takes `+1`, `inf`, `NaN`).
        if !num.first().is_some_and(|b| *b == b'-' || b.is_ascii_digit()) || !num.iter().all(|b| b"0123456789.eE+-".contains(b)) {
            return None;
        }
        let ts: f64 = std::str::from_utf8(num).ok()?.parse().ok()?;
        ts.is_finite().then_some(ts)
    }
}

fn lost(s: &Shared, why: &str) {
    // The detector has already marked every sender's holes filled: L1 is about to be empty.
    inc(&s.counters.gaps);
    inc(&s.counters.flushes);
    s.l1.flush();
    tracing::warn!(instance = s.id(), why, "invalidation loss detected: L1 flushed");
}

/// Applies one payload from any of our channels.
pub(crate) fn handle(s: &Shared, payload: &[u8], now: u64) {
    inc(&s.counters.pubsub_received);
    let msg = match wire::decode(payload) {
        Ok(m) => m,
        Err(kind) => return malformed(s, kind, payload.len()),
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
    let position = |q: u64| {
        if lock(&s.loss).position(&origin.source, epoch, q, now) == Verdict::Lost {
            lost(s, "sequence gap or sender restart");
        }
    };
    match &msg {
        Message::Invalidate { keys, seq, .. } => {
            for k in keys {
                s.l1.invalidate(k);
            }
            s.counters.invalidations_applied.fetch_add(keys.len() as u64, Ordering::Relaxed);
            if let Some(seq) = seq {
                if lock(&s.loss).message(&origin.source, epoch, *seq, now) == Verdict::Lost {
                    lost(s, "sequence gap or sender restart");
                }
            }
        }
        Message::Flush { seq, .. } => {
            s.l1.flush();
            inc(&s.counters.flushes);
            if let Some(seq) = seq {
                // A restart seen here is moot: L1 was just flushed.
                let _ = lock(&s.loss).message(&origin.source, epoch, *seq, now);
            }
        }
        Message::Mark { inval_seq, .. } => position(*inval_seq),
        Message::StrategyUpdate { strategy, write_rate, inval_seq, .. } => {
            if let Some(q) = inval_seq {
                position(*q);
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
                position(*q);
            }
            if s.is_controller.load(Ordering::Acquire) {
                // Saturating: a forged count adds at most 2^32-1 per message, and the tick
                // passes at most 2^32-1 per tick to the policy in one call.
                let _ = s.remote_writes.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |r| Some(r.saturating_add(*count as u64)));
            }
        }
        // Heartbeats travel only on their sender's own channel; someone else's is no news.
        Message::Heartbeat { .. } => {}
    }
}

/// Counts a malformed message and logs its kind once (docs/WIRE.md 2.3).
pub(crate) fn malformed(s: &Shared, kind: wire::Malformed, bytes: usize) {
    inc(&s.counters.malformed);
    if lock(&s.malformed_seen).insert(kind) {
        tracing::warn!(instance = s.id(), kind = kind.as_str(), bytes, "malformed message ignored (logged once per kind)");
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

/// When the periodic messages last went out.
#[derive(Default)]
struct Clocks {
    heartbeat: u64,
    strategy_update: u64,
}

async fn ticker(s: Arc<Shared>) {
    let mut shutdown = s.shutdown.subscribe();
    let mut interval = tokio::time::interval(s.settings.tick);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut clocks = Clocks::default();
    loop {
        let full = tokio::select! {
            _ = interval.tick() => true,
            _ = s.announce.notified() => false,
            _ = shutdown.changed() => return,
        };
        let r = if full { tick(&s, &mut clocks).await } else { announce(&s, &mut clocks).await };
        if let Err(e) = r {
            tracing::warn!(instance = s.id(), error = %e, "tick failed; retrying next tick");
        }
    }
}

/// A controller's strategy change, published at once (docs/WIRE.md 3).
async fn announce(s: &Shared, clocks: &mut Clocks) -> redis::RedisResult<()> {
    if !s.is_controller.load(Ordering::Acquire) {
        return Ok(());
    }
    let strategy = s.strategy();
    if s.announced.load(Ordering::Acquire) == strategy as u8 {
        return Ok(());
    }
    let rate = f64::from_bits(s.write_rate_bits.load(Ordering::Relaxed));
    let msg = s.sender.strategy_update(strategy, rate, s.position());
    let mut conn = s.conn.clone();
    let _: i64 = redis::cmd("PUBLISH").arg(&s.names.strategy).arg(msg).query_async(&mut conn).await?;
    inc(&s.counters.messages_sent);
    s.announced.store(strategy as u8, Ordering::Release);
    clocks.strategy_update = s.now_ms();
    Ok(())
}

async fn tick(s: &Shared, clocks: &mut Clocks) -> redis::RedisResult<()> {
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
    if lock(&s.loss).tick(now) == Verdict::Lost {
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
    // At most one record-remote-writes call per tick, with at most 2^32-1: no work here grows
    // with a number taken from the wire, and the lock covers no I/O.
    let remote = if controller { s.remote_writes.swap(0, Ordering::Relaxed).min(wire::MAX_COUNT) as u32 } else { 0 };
    let (status, batch) = {
        let mut p = lock(&s.policy);
        if remote > 0 {
            p.record_remote_writes(remote, now);
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

    // Taken before this tick hands out seqs of its own: positions name only answered seqs.
    let last_seq = s.position();
    let mut pipe = redis::pipe();
    let publishing = s.publishing();
    let flush_first = s.add_pending_flush(&mut pipe);
    let mut invalidations = flush_first as u64 + add_batch(s, &mut pipe, &batch);
    // A mark when nothing went out on P:invalidation since the last tick (this tick's batch
    // included) and the last seq is unannounced: one per burst, none at idle.
    let published = s.published_since_tick.swap(false, Ordering::AcqRel) || invalidations > 0;
    let mut mark = None;
    if !published && last_seq > s.marked.load(Ordering::Acquire) {
        pipe.publish(&s.names.invalidation, s.sender.mark(last_seq)).ignore();
        mark = Some(last_seq);
        invalidations += 1;
    }
    let mut sent = invalidations;
    if controller {
        let strategy = status.strategy;
        let changed = s.announced.load(Ordering::Acquire) != strategy as u8;
        if changed || now.saturating_sub(clocks.strategy_update) >= HEARTBEAT.as_millis() as u64 {
            pipe.publish(&s.names.strategy, s.sender.strategy_update(strategy, status.write_rate, last_seq)).ignore();
            sent += 1;
            clocks.strategy_update = now;
            s.announced.store(strategy as u8, Ordering::Release);
        }
        // Our own writes were counted by our policy directly.
        s.unreported_writes.store(0, Ordering::Relaxed);
    } else {
        let count = s.unreported_writes.swap(0, Ordering::Relaxed);
        if count > 0 {
            pipe.publish(&s.names.reports, s.sender.write_report(count, last_seq)).ignore();
            sent += 1;
        }
    }
    if now.saturating_sub(clocks.heartbeat) >= HEARTBEAT.as_millis() as u64 {
        pipe.publish(&s.names.liveness, s.sender.heartbeat()).ignore();
        sent += 1;
        clocks.heartbeat = now;
    }
    if sent > 0 {
        let r: redis::RedisResult<()> = pipe.query_async(&mut conn).await;
        if let Err(e) = r {
            // Receivers cannot know what they got of it: a flush goes first next time (the
            // guard, dropped unsettled). A lost mark alone needs none: `marked` stays behind,
            // so the mark is sent again.
            if invalidations == mark.is_some() as u64 {
                publishing.settled();
            }
            s.announced.store(u8::MAX, Ordering::Release);
            return Err(e);
        }
        publishing.settled();
        if flush_first {
            s.flush_sent();
        }
        if let Some(m) = mark {
            s.marked.fetch_max(m, Ordering::AcqRel);
        }
        s.counters.messages_sent.fetch_add(sent, Ordering::Relaxed);
    } else {
        publishing.settled();
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

/// Publishes `batch` (after a pending flush), marking a failure so the next invalidation is
/// preceded by a flush.
pub(crate) async fn publish_batch(s: &Shared, batch: &Batch, extra: impl FnOnce(&mut redis::Pipeline) -> u64) -> Result<()> {
    let mut pipe = redis::pipe();
    let publishing = s.publishing();
    let flush_first = s.add_pending_flush(&mut pipe);
    let invalidations = flush_first as u64 + add_batch(s, &mut pipe, batch);
    let publishing = if invalidations == 0 {
        publishing.settled();
        None
    } else {
        Some(publishing)
    };
    let commands = invalidations + extra(&mut pipe);
    if commands == 0 {
        return Ok(());
    }
    let mut conn = s.conn.clone();
    pipe.query_async::<()>(&mut conn).await?;
    publishing.map(Publishing::settled);
    if flush_first {
        s.flush_sent();
    }
    s.counters.messages_sent.fetch_add(invalidations, Ordering::Relaxed);
    Ok(())
}

/// Replaces the running policy (hot swap), atomically with respect to writes: the new
/// instance is built and configured first (a refusal changes nothing), takes over the mode
/// (leading or following) and the strategy in force, is primed with the measured rate so it
/// does not start from zero, and the old one's buffered keys are published, never dropped
/// (docs/WIRE.md 9.6).
pub(crate) async fn swap(s: &Shared, module: crate::policy::PolicyModule, cfg: crate::policy::PolicyConfig) -> Result<()> {
    let now = s.now_ms();
    let mut fresh = PolicyRuntime::new(module.with_limits(s.settings.sandbox), cfg.clone(), now)?;
    let batch = {
        let mut p = lock(&s.policy);
        let st = p.status(now);
        let window_s = cfg.window_ms as f64 / 1000.0;
        fresh.record_remote_writes((st.write_rate * window_s).round().min(u32::MAX as f64) as u32, now);
        fresh.follow(st.strategy, now);
        if !p.is_following() {
            fresh.lead(now);
        }
        let batch = drain_all(&mut p, now);
        *p = fresh;
        batch
    };
    let strategy = lock(&s.policy).last_strategy();
    s.note_strategy_and_announce(strategy, None);
    publish_batch(s, &batch, |_| 0).await
}

/// On shutdown: publish the pending batch and release the controller lease.
pub(crate) async fn final_drain(s: &Shared) -> Result<()> {
    let batch = drain_all(&mut lock(&s.policy), s.now_ms());
    let release = s.is_controller.swap(false, Ordering::AcqRel);
    publish_batch(s, &batch, |pipe| {
        if release {
            pipe.cmd("EVAL").arg(RELEASE_LUA).arg(1).arg(&s.names.controller_lease).arg(s.id()).ignore();
            1
        } else {
            0
        }
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::Sender;

    #[test]
    fn own_messages_are_recognised_without_decoding_and_nothing_else_is() {
        // An epoch ending in digits, like a seq.
        let me = Sender { source: "3f2a9c1b0d4e".into(), epoch: "9c1b0d4e3f2a9c19".into() };
        let own = OwnSuffix::of(&me);
        let keys = vec!["aci:shop:user:1".to_string(), "k\",\"source\":\"x".to_string()];
        let ours = [
            me.invalidate(&keys, Strategy::Eager, 17),
            me.flush(Strategy::Batched, 18),
            me.mark(18),
            me.strategy_update(Strategy::Batched, 23.5, 18),
            me.write_report(12, 4),
            me.heartbeat(),
        ];
        for m in &ours {
            let decoded = wire::decode(m.as_bytes()).unwrap().origin().timestamp;
            // serde_json's default float parsing may round the last bit differently.
            let fast = own.timestamp(m.as_bytes()).unwrap_or_else(|| panic!("not recognised: {m}"));
            assert!((fast - decoded).abs() < 1e-6, "{m}: {fast} vs {decoded}");
        }
        // Another instance, another epoch of ours (a restart), other shapes: the full decode.
        let other = Sender { source: "77aa00bb11cc".into(), epoch: me.epoch.clone() };
        let old_me = Sender { source: me.source.clone(), epoch: "0011223344556677".into() };
        for m in [other.invalidate(&keys, Strategy::Eager, 1), old_me.mark(3), other.heartbeat()] {
            assert_eq!(own.timestamp(m.as_bytes()), None, "{m}");
        }
        let tail = r#","source":"3f2a9c1b0d4e","epoch":"9c1b0d4e3f2a9c19","seq":1,"v":2}"#;
        for m in [
            format!(r#"{{"action":"invalidate","keys":["a"],"timestamp":"x"{tail}"#),
            format!(r#"{{"action":"invalidate","keys":["a"],"timestamp":NaN{tail}"#),
            format!(r#"{{"action":"invalidate","keys":["a"],"timestamp":+5{tail}"#),
            format!(r#"{{"action":"invalidate","keys":["a"]{tail}"#),
            format!(r#"{{"keys":["a"],"source":"77aa00bb11cc","epoch":"9c1b0d4e3f2a9c19","seq":1,"v":2}}"#),
            tail.to_string(),
            String::new(),
        ] {
            assert_eq!(own.timestamp(m.as_bytes()), None, "{m}");
        }
    }
}
