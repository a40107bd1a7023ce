//! Fault injection against real `redis-server` processes, each scenario judged by the history
//! checker of the test kit (`aci_testkit::history`): no read older than the bound of the
//! strategy its newer write was made under, no acknowledged value missing from Redis.
//!
//! Prints one line per scenario: writes, reads, stale reads beyond the bound, lost values,
//! recovery time.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aci_cache::{AciCache, Role, Strategy};
use aci_testkit::history::{self, History, Read, Verdict, Write};
use aci_testkit::RedisServer;

const KEYS: usize = 16;
/// Eager's bound: propagation on loopback plus scheduling noise on a loaded 2-core machine.
const ALLOWANCE: Duration = Duration::from_millis(300);

fn bound(s: Strategy, local_ttl: Duration, batch: Duration, tick: Duration) -> Duration {
    history::bound(s, ALLOWANCE, local_ttl, batch, tick)
}

struct Fleet {
    caches: Vec<AciCache>,
    history: Arc<Mutex<History>>,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

fn parse(v: &str) -> u64 {
    v.split(':').next().and_then(|s| s.parse().ok()).unwrap_or(0)
}

impl Fleet {
    /// Instance 0 writes; every instance reads. Values are "<seq>:<padding>".
    fn start(caches: Vec<AciCache>, value_len: usize, write_gap: Duration) -> Fleet {
        let history = Arc::new(Mutex::new(History::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let mut tasks = Vec::new();
        {
            let (c, h, stop) = (caches[0].clone(), history.clone(), stop.clone());
            tasks.push(tokio::spawn(async move {
                let mut seq = 0u64;
                let pad = "p".repeat(value_len);
                while !stop.load(Ordering::Relaxed) {
                    seq += 1;
                    let key = (seq as usize) % KEYS;
                    if c.set(&format!("k{key}"), format!("{seq}:{pad}"), Some(Duration::from_secs(600))).await.is_ok() {
                        let strategy = c.strategy();
                        h.lock().unwrap().writes.push(Write { key, seq, acked: Instant::now(), strategy });
                    }
                    tokio::time::sleep(write_gap).await;
                }
            }));
        }
        for (i, c) in caches.iter().enumerate() {
            let (c, h, stop) = (c.clone(), history.clone(), stop.clone());
            tasks.push(tokio::spawn(async move {
                let mut n = i;
                while !stop.load(Ordering::Relaxed) {
                    n = (n + 5) % KEYS;
                    let started = Instant::now();
                    if let Ok(Some(v)) = c.get_string(&format!("k{n}")).await {
                        h.lock().unwrap().reads.push(Read { instance: i, key: n, seq: parse(&v), started });
                    }
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }));
        }
        Fleet { caches, history, stop, tasks }
    }

    async fn finish(self, url: &str, ns: &str) -> (History, HashMap<usize, u64>) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            let _ = t.await;
        }
        let mut conn = redis::Client::open(url).unwrap().get_multiplexed_async_connection().await.unwrap();
        let mut finals = HashMap::new();
        for k in 0..KEYS {
            let v: Option<String> = redis::cmd("GET").arg(format!("aci:{ns}:k{k}")).query_async(&mut conn).await.unwrap();
            finals.insert(k, v.map(|v| parse(&v)).unwrap_or(0));
        }
        for c in &self.caches {
            let _ = c.shutdown().await;
        }
        let h = std::mem::take(&mut *self.history.lock().unwrap());
        (h, finals)
    }
}

async fn fleet(url: &str, ns: &str, n: usize, strategy: Strategy) -> Vec<AciCache> {
    let mut v = Vec::new();
    for i in 0..n {
        let c = AciCache::builder()
            .redis_url(url)
            .namespace(ns)
            .fixed_strategy(strategy)
            .role(if i == 0 { Role::Controller } else { Role::Follower })
            .tick(Duration::from_millis(50))
            .local_ttl(Duration::from_secs(30))
            .liveness_timeout(Duration::from_millis(1500))
            .controller_timeout(Duration::from_secs(1))
            .build()
            .await
            .unwrap();
        v.push(c);
    }
    v
}

fn resubscribes(caches: &[AciCache]) -> Vec<u64> {
    caches.iter().map(|c| c.stats().resubscribes).collect()
}

/// Time until every instance serves from L1 again (and, given the counts from before the
/// fault, has resubscribed since: the fault was noticed, not slept through).
async fn recovery(caches: &[AciCache], from: Instant, before: Option<Vec<u64>>) -> Duration {
    let end = Instant::now() + Duration::from_secs(15);
    while Instant::now() < end {
        let resubscribed = before.as_ref().is_none_or(|b| resubscribes(caches).iter().zip(b).all(|(now, was)| now > was));
        if resubscribed && caches.iter().all(|c| c.stats().l1_serving) {
            return from.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("L1 did not come back within 15 s");
}

fn report(name: &str, v: &Verdict, rec: Duration) {
    println!(
        "scenario {name:<22} writes {:>6}  reads {:>7}  stale beyond bound {:>3} (worst {:>5.0} ms)  lost values {:>2}  recovery {:>5} ms",
        v.writes, v.reads, v.stale_beyond_bound, v.worst_stale_ms, v.lost_values, rec.as_millis()
    );
}

fn judge(name: &str, v: Verdict, rec: Duration) {
    report(name, &v, rec);
    assert!(v.writes > 50 && v.reads > 200, "{name}: too little traffic to judge: {v:?}");
    assert_eq!(v.stale_beyond_bound, 0, "{name}: {v:?}");
    assert_eq!(v.lost_values, 0, "{name}: {v:?}");
}

fn eager_bound(s: Strategy) -> Duration {
    bound(s, Duration::from_secs(30), Duration::from_millis(2500), Duration::from_millis(50))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restart_under_load() {
    // AOF with fsync per write: an acknowledged value must survive the restart.
    let args = ["--appendonly", "yes", "--appendfsync", "always"];
    let mut srv = RedisServer::start(&args).unwrap();
    let url = srv.url();
    let caches = fleet(&url, "restart", 2, Strategy::Eager).await;
    let f = Fleet::start(caches.clone(), 8, Duration::from_millis(3));
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let before = resubscribes(&caches);
    srv.kill();
    let fault = Instant::now();
    tokio::time::sleep(Duration::from_millis(300)).await;
    srv.restart(&args).unwrap();
    let rec = recovery(&caches, fault, Some(before)).await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let (h, finals) = f.finish(&url, "restart").await;
    let st = caches[1].stats();
    assert!(st.resubscribes >= 1, "{st:?}");
    judge("redis-restart", h.check(&finals, eager_bound), rec);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_kill_of_the_subscriber() {
    let srv = RedisServer::start(&[]).unwrap();
    let url = srv.url();
    let caches = fleet(&url, "kill", 2, Strategy::Eager).await;
    let f = Fleet::start(caches.clone(), 8, Duration::from_millis(3));
    tokio::time::sleep(Duration::from_millis(800)).await;
    let mut conn = redis::Client::open(url.as_str()).unwrap().get_multiplexed_async_connection().await.unwrap();
    // Every pub/sub connection: the followers lose their subscriptions mid-stream.
    let before = resubscribes(&caches);
    let killed: i64 = redis::cmd("CLIENT").arg("KILL").arg("TYPE").arg("pubsub").query_async(&mut conn).await.unwrap();
    let fault = Instant::now();
    assert!(killed >= 2, "killed {killed}");
    let rec = recovery(&caches, fault, Some(before)).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    let (h, finals) = f.finish(&url, "kill").await;
    judge("client-kill-subscriber", h.check(&finals, eager_bound), rec);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tiny_pubsub_output_buffer_limit() {
    let srv = RedisServer::start(&[]).unwrap();
    let url = srv.url();
    let caches = fleet(&url, "obuf", 2, Strategy::Eager).await;
    let mut conn = redis::Client::open(url.as_str()).unwrap().get_multiplexed_async_connection().await.unwrap();
    // The server drops any subscriber with more than 4 KB pending: a slow reader loses messages.
    let _: () = redis::cmd("CONFIG").arg("SET").arg("client-output-buffer-limit").arg("pubsub 4096 1024 1").query_async(&mut conn).await.unwrap();
    let f = Fleet::start(caches.clone(), 8, Duration::from_millis(2));
    let fault = Instant::now();
    // Flood the channel with big messages from outside so the subscribers overflow.
    let chan = "aci:obuf:invalidation";
    let big = format!(r#"{{"action":"invalidate","keys":["{}"],"source":"flooder00000","epoch":"f","seq":1}}"#, "z".repeat(3000));
    // One pipeline: Redis queues all of it in the subscribers' output buffers before writing
    // any, so the limit trips however fast they read.
    let mut pipe = redis::pipe();
    for _ in 0..50 {
        pipe.cmd("PUBLISH").arg(chan).arg(&big).ignore();
    }
    let _: () = pipe.query_async(&mut conn).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let _: () = redis::cmd("CONFIG").arg("SET").arg("client-output-buffer-limit").arg("pubsub 33554432 8388608 60").query_async(&mut conn).await.unwrap();
    let rec = recovery(&caches, fault, None).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    let dropped: u64 = caches.iter().map(|c| c.stats().resubscribes).sum();
    assert!(dropped >= 1, "the server never dropped a subscriber: the scenario tested nothing");
    let (h, finals) = f.finish(&url, "obuf").await;
    judge("tiny-output-buffer", h.check(&finals, eager_bound), rec);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_pause() {
    let srv = RedisServer::start(&[]).unwrap();
    let url = srv.url();
    let caches = fleet(&url, "pause", 2, Strategy::Eager).await;
    let f = Fleet::start(caches.clone(), 8, Duration::from_millis(3));
    tokio::time::sleep(Duration::from_millis(800)).await;
    let mut conn = redis::Client::open(url.as_str()).unwrap().get_multiplexed_async_connection().await.unwrap();
    let _: () = redis::cmd("CLIENT").arg("PAUSE").arg(1000).arg("ALL").query_async(&mut conn).await.unwrap();
    let fault = Instant::now();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let rec = recovery(&caches, fault, None).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    // Heartbeats held up by the pause come back ~1 s late: L1 was suspended meanwhile.
    let lagged: u64 = caches.iter().map(|c| c.stats().lag_suspensions).sum();
    assert!(lagged >= 1, "the lag check never fired");
    let (h, finals) = f.finish(&url, "pause").await;
    judge("client-pause", h.check(&finals, eager_bound), rec);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_controller() {
    let srv = RedisServer::start(&[]).unwrap();
    let url = srv.url();
    let mk = || {
        AciCache::builder()
            .redis_url(&url)
            .namespace("ctl")
            .role(Role::Auto)
            .tick(Duration::from_millis(50))
            .window(Duration::from_millis(1000))
            .hold(Duration::from_millis(300))
            .controller_timeout(Duration::from_secs(1))
            .liveness_timeout(Duration::from_millis(1500))
            .local_ttl(Duration::from_secs(30))
            .build()
    };
    let ctl = mk().await.unwrap();
    let a = mk().await.unwrap();
    let b = mk().await.unwrap();
    assert!(ctl.is_controller() && !a.is_controller() && !b.is_controller());
    // Writes from a follower at ~200/s: the controller hears the reports and goes eager.
    let f = Fleet::start(vec![a.clone(), b.clone()], 8, Duration::from_millis(5));
    let until_eager = Instant::now() + Duration::from_secs(3);
    while b.strategy() != Strategy::Eager && Instant::now() < until_eager {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(b.strategy(), Strategy::Eager);
    // A crash: no shutdown, the lease is not released, the heartbeats just stop.
    drop(ctl);
    let fault = Instant::now();
    let end = fault + Duration::from_secs(5);
    while !(a.is_controller() || b.is_controller()) && Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let takeover = fault.elapsed();
    assert!(a.is_controller() ^ b.is_controller(), "exactly one new controller");
    tokio::time::sleep(Duration::from_millis(500)).await;
    // No follower stays on a stale strategy: both run the new controller's decision.
    assert_eq!(a.strategy(), b.strategy());
    assert_eq!(a.strategy(), Strategy::Eager, "still writing at ~200/s");
    let (h, finals) = f.finish(&url, "ctl").await;
    let v = h.check(&finals, |s| bound(s, Duration::from_secs(30), Duration::from_millis(2500), Duration::from_millis(50)));
    assert!(takeover < Duration::from_secs(3), "takeover took {takeover:?}");
    judge("kill-controller", v, takeover);
}
