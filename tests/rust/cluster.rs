//! The cache on a real Redis Cluster (3 masters + 3 replicas on loopback, tests/kit), through
//! the cluster transport (docs/WIRE.md 10): keys spread over the shards, fleet messages on
//! sharded Pub/Sub, and the fault scenarios a near cache gets wrong in practice (a master
//! killed and its replica promoted, a node restarted, slots migrated under load), each judged
//! by the history checker.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aci_cache::{AciCache, CacheBuilder, ClusterPubSub, Role, Strategy};
use aci_testkit::cluster::key_slot;
use aci_testkit::history::{self, History, Read, Verdict, Write};
use aci_testkit::RedisCluster;

fn cluster() -> RedisCluster {
    // ACI_LOG=warn (or info, debug) shows the cache's own account of each fault.
    if let Ok(filter) = tracing_subscriber::EnvFilter::try_from_env("ACI_LOG") {
        let _ = tracing_subscriber::fmt().with_env_filter(filter).with_test_writer().try_init();
    }
    RedisCluster::start().expect("redis-server and redis-cli must be installed for the cluster tests")
}

fn builder(c: &RedisCluster, ns: &str) -> CacheBuilder {
    AciCache::builder().redis_cluster(c.urls()).namespace(ns).tick(Duration::from_millis(50))
}

async fn raw(c: &RedisCluster) -> redis::cluster_async::ClusterConnection {
    redis::cluster::ClusterClient::new(c.urls()).unwrap().get_async_connection().await.unwrap()
}

async fn wait_until<F: std::future::Future<Output = bool>>(timeout: Duration, mut f: impl FnMut() -> F) -> bool {
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if f().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    false
}

/// `cmdstat_<name>` calls on one node.
fn calls(c: &RedisCluster, port: u16, name: &str) -> u64 {
    c.info(port, "commandstats", &format!("cmdstat_{name}"))
        .and_then(|v| v.strip_prefix("calls=").and_then(|r| r.split(',').next()).and_then(|n| n.parse().ok()))
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eager_and_batched_lose_nothing_and_fleet_messages_stay_in_one_shard() {
    let c = cluster();
    // Eager: every write B has cached must reach it, through SPUBLISH on the namespace's shard.
    let a = builder(&c, "ce").fixed_strategy(Strategy::Eager).role(Role::Controller).build().await.unwrap();
    let b = builder(&c, "ce").fixed_strategy(Strategy::Eager).role(Role::Follower).build().await.unwrap();
    let mut r = raw(&c).await;
    let mut lat = Vec::new();
    for i in 0..300 {
        let key = format!("k{}", i % 30);
        let _ = b.get(&key).await.unwrap();
        let v = format!("v{i}");
        a.set(&key, v.clone(), None).await.unwrap();
        let t = Instant::now();
        let seen = wait_until(Duration::from_secs(1), || {
            let (b, key, v) = (b.clone(), key.clone(), v.clone());
            async move { b.get_string(&key).await.unwrap().as_deref() == Some(v.as_str()) }
        })
        .await;
        assert!(seen, "B never saw {key}={v}");
        lat.push(t.elapsed());
    }
    lat.sort();
    eprintln!("cluster eager propagation p50 {:?} p99 {:?}", lat[150], lat[297]);
    // The keys are spread over every shard, and Redis kept every value.
    let mut shards = std::collections::BTreeSet::new();
    for k in 0..30 {
        let key = format!("aci:ce:k{k}");
        shards.insert(c.master_of(&key).unwrap());
        let v: Option<String> = redis::cmd("GET").arg(&key).query_async(&mut r).await.unwrap();
        assert_eq!(v, Some(format!("v{}", 270 + k)));
    }
    assert_eq!(shards.len(), 3, "30 keys over 3 masters");
    // Every invalidation reaches B, though not necessarily before B read the value: under load
    // B's L1 may have been suspended for lag (it then reads Redis), with messages still queued.
    assert!(wait_until(Duration::from_secs(5), || {
        let b = b.clone();
        async move { b.stats().invalidations_applied >= 300 }
    }).await, "B applied {} of 300 invalidations", b.stats().invalidations_applied);
    // Fleet messages went to the shard of `{aci:ce}` only, and as SPUBLISH.
    let home = c.master_of("{aci:ce}:invalidation").unwrap();
    for m in c.masters().unwrap() {
        let (sp, p) = (calls(&c, m, "spublish"), calls(&c, m, "publish"));
        assert_eq!(p, 0, "no classic PUBLISH on {m}");
        if m == home {
            assert!(sp >= 300, "home shard {m}: {sp} SPUBLISH");
        } else {
            assert_eq!(sp, 0, "shard {m} handled none of the namespace's messages");
        }
    }

    // Batched: a key written under batched reaches the reader within the batch interval.
    let long = Duration::from_secs(60);
    let w = builder(&c, "cb").fixed_strategy(Strategy::Batched).role(Role::Controller)
        .batch_interval(Duration::from_millis(300)).local_ttl(long).build().await.unwrap();
    let rd = builder(&c, "cb").role(Role::Follower).local_ttl(long).build().await.unwrap();
    for k in 0..20 {
        w.set(&format!("k{k}"), "old", None).await.unwrap();
        assert_eq!(rd.get_string(&format!("k{k}")).await.unwrap().as_deref(), Some("old"));
    }
    let t = Instant::now();
    for k in 0..20 {
        w.set(&format!("k{k}"), "new", None).await.unwrap();
    }
    assert!(wait_until(Duration::from_secs(2), || {
        let rd = rd.clone();
        async move {
            for k in 0..20 {
                if rd.get_string(&format!("k{k}")).await.unwrap().as_deref() != Some("new") {
                    return false;
                }
            }
            true
        }
    }).await, "batched invalidations never arrived");
    eprintln!("cluster batched: 20 keys seen new after {:?}", t.elapsed());
    for x in [a, b, w, rd] {
        x.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn classic_mode_publishes_to_every_node_and_still_converges() {
    let c = cluster();
    let a = builder(&c, "cc").fixed_strategy(Strategy::Eager).role(Role::Controller).cluster_pubsub(ClusterPubSub::Classic).build().await.unwrap();
    let b = builder(&c, "cc").fixed_strategy(Strategy::Eager).role(Role::Follower).cluster_pubsub(ClusterPubSub::Classic).build().await.unwrap();
    for i in 0..100 {
        let key = format!("k{}", i % 10);
        let _ = b.get(&key).await.unwrap();
        a.set(&key, format!("v{i}"), None).await.unwrap();
        let want = format!("v{i}");
        assert!(wait_until(Duration::from_secs(1), || { let (b, key, want) = (b.clone(), key.clone(), want.clone()); async move { b.get_string(&key).await.unwrap() == Some(want) } }).await);
    }
    // The cluster bus delivers asynchronously: let the last messages land before counting.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let spublish: u64 = c.masters().unwrap().iter().map(|m| calls(&c, *m, "spublish")).sum();
    assert_eq!(spublish, 0);
    // Every node (replicas too) relayed the messages over the cluster bus.
    for p in c.ports() {
        let n: u64 = c.cluster_info(p, "cluster_stats_messages_publish_received").and_then(|v| v.parse().ok()).unwrap_or(0);
        let own = calls(&c, p, "publish");
        assert!(n + own >= 100, "node {p}: {n} publish messages over the bus + {own} PUBLISH commands");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_write_is_not_taken_for_a_lost_invalidation() {
    // On a cluster an eager write is two round trips: the SET on the key's shard, then the
    // SPUBLISH on the namespace's. While the SET hangs (here its master pauses writes; in
    // production a redirect during a migration, a slow node), the writer's ticks go on, and a
    // `mark` or `strategy_update` naming the write's seq would reach receivers before the
    // invalidation itself: after the reorder allowance (250 ms) they would flush L1 for a loss
    // that is not one. Positions name only answered seqs (docs/WIRE.md 4).
    let ns = "slow";
    let c = cluster();
    let home = c.master_of(&format!("{{aci:{ns}}}:invalidation")).unwrap();
    let k = (0..100).map(|i| format!("k{i}")).find(|k| c.master_of(&format!("aci:{ns}:{k}")).unwrap() != home).unwrap();
    let key_master = c.master_of(&format!("aci:{ns}:{k}")).unwrap();
    let a = builder(&c, ns).fixed_strategy(Strategy::Eager).role(Role::Controller).build().await.unwrap();
    let b = builder(&c, ns).role(Role::Follower).build().await.unwrap();
    a.set(&k, "v0", None).await.unwrap();
    assert!(wait_until(Duration::from_secs(2), || { let b = b.clone(); async move { b.stats().invalidations_applied >= 1 } }).await);
    assert_eq!(b.get_string(&k).await.unwrap().as_deref(), Some("v0"));
    // Let the writer's mark for v0 go out: from here on it has nothing unannounced.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = b.stats();
    let mut node = redis::Client::open(format!("redis://127.0.0.1:{key_master}")).unwrap().get_multiplexed_async_connection().await.unwrap();
    let _: () = redis::cmd("CLIENT").arg("PAUSE").arg(900).arg("WRITE").query_async(&mut node).await.unwrap();
    let t = Instant::now();
    a.set(&k, "v1", None).await.unwrap();
    let took = t.elapsed();
    assert!(took >= Duration::from_millis(600), "the SET was not held ({took:?}): the scenario tested nothing");
    // Ticks of both sides, and the receiver's reorder allowance, several times over.
    assert!(wait_until(Duration::from_secs(2), || { let b = b.clone(); async move { b.stats().invalidations_applied > before.invalidations_applied } }).await);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = b.stats();
    assert_eq!((after.gaps, after.flushes), (before.gaps, before.flushes), "a write held {took:?} was taken for a loss");
    assert_eq!(b.get_string(&k).await.unwrap().as_deref(), Some("v1"));
    for x in [a, b] {
        x.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_config_errors_are_typed_and_name_the_field() {
    let field = |b: CacheBuilder| async move {
        match b.build().await {
            Err(aci_cache::Error::Config(e)) => e.field,
            Err(other) => panic!("not a config error: {other}"),
            Ok(_) => panic!("accepted"),
        }
    };
    assert_eq!(field(AciCache::builder().redis_cluster(Vec::<String>::new())).await, "redis_cluster");
    assert_eq!(field(AciCache::builder().redis_cluster(["not a url"])).await, "redis_cluster");
    assert_eq!(field(AciCache::builder().redis_url("redis://127.0.0.1:1").redis_cluster(["redis://127.0.0.1:2"])).await, "redis_cluster");
    // A single server given as a cluster seed.
    let single = aci_testkit::RedisServer::start(&[]).unwrap();
    assert_eq!(field(AciCache::builder().redis_cluster([single.url()]).namespace("x")).await, "redis_cluster");
}

// ---------------------------------------------------------------------------------------------
// Fault scenarios. Instance 0 writes "<seq>:<pad>" over KEYS keys; every instance reads.

const KEYS: usize = 16;
/// Eager's bound: propagation plus scheduling noise on a loaded 2-core machine.
const ALLOWANCE: Duration = Duration::from_millis(300);
/// After a promotion or restart is visible, how long L1 may still serve a value Redis lost:
/// the topology poll (one tick), the resubscription, scheduling noise.
const LOSS_BOUND: Duration = Duration::from_millis(1000);
const TICK: Duration = Duration::from_millis(50);
const BATCH: Duration = Duration::from_millis(500);

fn parse(v: &str) -> u64 {
    v.split(':').next().and_then(|s| s.parse().ok()).unwrap_or(0)
}

struct Fleet {
    caches: Vec<AciCache>,
    history: Arc<Mutex<History>>,
    stop: Arc<AtomicBool>,
    /// Held while Redis's state right after a fault is read: no write may land meanwhile.
    hold_writes: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Fleet {
    fn start(caches: Vec<AciCache>, write_gap: Duration) -> Fleet {
        let history = Arc::new(Mutex::new(History::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let hold_writes = Arc::new(AtomicBool::new(false));
        let mut tasks = Vec::new();
        {
            let (c, h, stop, hold) = (caches[0].clone(), history.clone(), stop.clone(), hold_writes.clone());
            tasks.push(tokio::spawn(async move {
                let mut seq = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    if hold.load(Ordering::Acquire) {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                        continue;
                    }
                    seq += 1;
                    let key = (seq as usize) % KEYS;
                    match c.set(&format!("k{key}"), format!("{seq}:pppppppp"), Some(Duration::from_secs(600))).await {
                        Ok(()) => {
                            let strategy = c.strategy();
                            h.lock().unwrap().writes.push(Write { key, seq, acked: Instant::now(), strategy });
                        }
                        // Shown with a failure: a failed eager write makes the next one carry a flush.
                        Err(e) => eprintln!("write k{key} failed: {e}"),
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
        Fleet { caches, history, stop, hold_writes, tasks }
    }

    async fn finish(self, c: &RedisCluster, ns: &str) -> (History, HashMap<usize, u64>) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            let _ = t.await;
        }
        let finals = redis_values(c, ns).await;
        for x in &self.caches {
            let _ = x.shutdown().await;
        }
        let h = std::mem::take(&mut *self.history.lock().unwrap());
        (h, finals)
    }
}

/// What Redis holds now for every key (seq, 0 if absent).
async fn redis_values(c: &RedisCluster, ns: &str) -> HashMap<usize, u64> {
    let mut conn = raw(c).await;
    let mut v = HashMap::new();
    for k in 0..KEYS {
        let x: Option<String> = redis::cmd("GET").arg(format!("aci:{ns}:k{k}")).query_async(&mut conn).await.unwrap_or(None);
        v.insert(k, x.map(|x| parse(&x)).unwrap_or(0));
    }
    v
}

async fn fleet(c: &RedisCluster, ns: &str, n: usize, strategy: Strategy) -> Vec<AciCache> {
    let mut v = Vec::new();
    for i in 0..n {
        v.push(
            builder(c, ns)
                .fixed_strategy(strategy)
                .role(if i == 0 { Role::Controller } else { Role::Follower })
                .tick(TICK)
                .batch_interval(BATCH)
                .local_ttl(Duration::from_secs(30))
                .liveness_timeout(Duration::from_millis(1500))
                .controller_timeout(Duration::from_secs(1))
                .build()
                .await
                .unwrap(),
        );
    }
    v
}

fn resubscribes(caches: &[AciCache]) -> Vec<u64> {
    caches.iter().map(|c| c.stats().resubscribes).collect()
}

/// Watches every instance's L1 state every few ms from before a fault: when did the last
/// suspension end, and how long was L1 suspended in all.
struct Sampler {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<(Option<Instant>, Duration)>,
}

impl Sampler {
    fn start(caches: &[AciCache]) -> Sampler {
        let caches = caches.to_vec();
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let task = tokio::spawn(async move {
            let mut last: Vec<(bool, u64)> = caches.iter().map(|c| (c.stats().l1_serving, c.stats().resubscribes)).collect();
            let (mut back, mut suspended, mut t) = (None, Duration::ZERO, Instant::now());
            while !s.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_millis(2)).await;
                let now = Instant::now();
                for (i, c) in caches.iter().enumerate() {
                    let st = c.stats();
                    if !st.l1_serving {
                        suspended += now - t;
                    }
                    // Back: serving again, or a resubscription (a suspension too short to see).
                    if (st.l1_serving && !last[i].0) || st.resubscribes != last[i].1 {
                        back = Some(now);
                    }
                    last[i] = (st.l1_serving, st.resubscribes);
                }
                t = now;
            }
            (back, suspended)
        });
        Sampler { stop, task }
    }

    /// (time from `fault` until the last suspension ended, L1 time suspended summed over the
    /// instances).
    async fn finish(self, fault: Instant) -> (Duration, Duration) {
        self.stop.store(true, Ordering::Relaxed);
        let (back, suspended) = self.task.await.unwrap();
        (back.map(|b| b.saturating_duration_since(fault)).unwrap_or_default(), suspended)
    }
}

/// Judges `h` without the writes Redis lost: a reader that gets the older value Redis still
/// holds after a failover is reading Redis faithfully (the loss is asynchronous replication's,
/// and reading a lost value is counted apart, against its own bound).
fn check_without(h: &mut History, lost: &std::collections::HashSet<(usize, u64)>, finals: &HashMap<usize, u64>) -> Verdict {
    h.writes.retain(|w| !lost.contains(&(w.key, w.seq)));
    h.check(finals, bound)
}

/// Values Redis acknowledged and then lost: for each key, the acknowledged seqs above what
/// Redis held right after the fault was repaired.
fn lost_by_redis(h: &History, after: &HashMap<usize, u64>, before: Instant) -> std::collections::HashSet<(usize, u64)> {
    h.writes.iter().filter(|w| w.acked < before && w.seq > after.get(&w.key).copied().unwrap_or(0)).map(|w| (w.key, w.seq)).collect()
}

struct Outcome {
    verdict: Verdict,
    redis_lost: usize,
    served_lost: usize,
    served_lost_after_bound: usize,
    /// From the fault until the cluster was whole again (promotion visible, node back,
    /// reshard done).
    failover: Duration,
    /// From the fault until the last L1 suspension ended (0: L1 never stopped serving).
    recovery: Duration,
}

fn judge(name: &str, o: Outcome) {
    let v = &o.verdict;
    println!(
        "cluster scenario {name:<24} writes {:>5}  reads {:>6}  stale beyond bound {:>2} (worst {:>4.0} ms)  lost acked values {:>2}  \
         Redis lost {:>3} acked writes, L1 served them {:>3}x, after the bound {:>2}x  repaired in {:>5} ms  L1 back {:>5} ms",
        v.writes, v.reads, v.stale_beyond_bound, v.worst_stale_ms, v.lost_values, o.redis_lost, o.served_lost, o.served_lost_after_bound,
        o.failover.as_millis(), o.recovery.as_millis()
    );
    assert!(v.writes > 50 && v.reads > 200, "{name}: too little traffic to judge: {v:?}");
    assert_eq!(v.stale_beyond_bound, 0, "{name}: {v:?}");
    assert_eq!(v.lost_values, 0, "{name}: {v:?}");
    assert_eq!(o.served_lost_after_bound, 0, "{name}: L1 served values Redis had lost after the bound");
}

fn bound(s: Strategy) -> Duration {
    history::bound(s, ALLOWANCE, Duration::from_secs(30), BATCH, TICK)
}

/// A key of namespace `ns` (as `k<i>`) served by `master`.
fn key_on(c: &RedisCluster, ns: &str, master: u16) -> usize {
    (0..KEYS).find(|k| c.master_of(&format!("aci:{ns}:k{k}")).unwrap() == master).expect("16 keys cover every master")
}

/// A master kill with writes its replica never got: the replica is stopped, a large value
/// fills the replication link, the fleet's writes go on for a while (acknowledged by the
/// master only), then the master dies and the replica, resumed, is promoted without them.
async fn master_killed(strategy: Strategy, ns: &str, kill_channel_shard: bool) -> Outcome {
    let mut c = cluster();
    let home = c.master_of(&format!("{{aci:{ns}}}:invalidation")).unwrap();
    let victim = if kill_channel_shard { home } else { *c.masters().unwrap().iter().find(|m| **m != home).unwrap() };
    let victim_key = key_on(&c, ns, victim);
    let caches = fleet(&c, ns, 2, strategy).await;
    let f = Fleet::start(caches.clone(), Duration::from_millis(4));
    tokio::time::sleep(Duration::from_millis(1000)).await;

    let replica = c.replica_of(victim).unwrap();
    c.pause(replica).unwrap();
    // ~16 MB on the victim: the replication stream backs up behind it in the master's memory.
    let junk = (0..).map(|i| format!("junk{i}")).find(|k| c.master_of(k).unwrap() == victim).unwrap();
    let big = "j".repeat(16 << 20);
    aci_testkit::cluster::command(victim, &["SET", &junk, &big]).unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    f.hold_writes.store(true, Ordering::Release);
    tokio::time::sleep(Duration::from_millis(20)).await; // a write in flight lands or fails
    let sampler = Sampler::start(&caches);
    c.kill(victim).unwrap();
    let fault = Instant::now();
    c.resume(replica).unwrap();
    let key = format!("aci:{ns}:k{victim_key}");
    let promoted = {
        let c = &c;
        tokio::task::block_in_place(|| c.wait_new_master(&key, victim, Duration::from_secs(20))).unwrap()
    };
    assert_eq!(promoted, replica);
    let failover = fault.elapsed();
    let promoted_at = Instant::now();
    let after = redis_values(&c, ns).await;
    // No writes for a while longer: a value Redis lost, still in an L1 that was not flushed,
    // would be served until its local TTL instead of being overwritten by the next write.
    tokio::time::sleep(LOSS_BOUND + Duration::from_millis(500)).await;
    f.hold_writes.store(false, Ordering::Release);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (recovery, suspended) = sampler.finish(fault).await;
    eprintln!("master-kill: L1 suspended {} ms summed over the instances", suspended.as_millis());
    let (mut h, finals) = f.finish(&c, ns).await;
    let lost = lost_by_redis(&h, &after, fault);
    let served: Vec<&Read> = h.reads.iter().filter(|r| r.started > promoted_at && lost.contains(&(r.key, r.seq))).collect();
    let late = served.iter().filter(|r| r.started > promoted_at + LOSS_BOUND).count();
    let (served, late) = (served.len(), late);
    assert!(!lost.is_empty(), "the promoted replica lost nothing: the scenario tested nothing");
    Outcome { verdict: check_without(&mut h, &lost, &finals), redis_lost: lost.len(), served_lost: served, served_lost_after_bound: late, failover, recovery }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_killed_under_eager_load() {
    // A data shard, not the fleet's channels: only the topology watch can notice it.
    let o = master_killed(Strategy::Eager, "kille", false).await;
    judge("master-kill-eager", o);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_killed_under_batched_load() {
    // The shard of the fleet's channels: every subscription dies with it.
    let o = master_killed(Strategy::Batched, "killb", true).await;
    judge("master-kill-batched", o);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_restarted_empty_before_any_failover() {
    // No persistence and back within the node timeout: the node is master again, empty, and
    // its replica resyncs to empty. Redis lost the shard's values; L1 must not keep them.
    let ns = "restart";
    let mut c = cluster();
    let home = c.master_of(&format!("{{aci:{ns}}}:invalidation")).unwrap();
    let victim = *c.masters().unwrap().iter().find(|m| **m != home).unwrap();
    let caches = fleet(&c, ns, 2, Strategy::Eager).await;
    let f = Fleet::start(caches.clone(), Duration::from_millis(4));
    tokio::time::sleep(Duration::from_millis(1000)).await;
    f.hold_writes.store(true, Ordering::Release);
    tokio::time::sleep(Duration::from_millis(20)).await;
    let sampler = Sampler::start(&caches);
    let fault = Instant::now();
    tokio::task::block_in_place(|| c.restart(victim)).unwrap();
    let back_at = Instant::now();
    let after = redis_values(&c, ns).await;
    // No writes for a while longer: a value Redis lost, still in an L1 that was not flushed,
    // would be served until its local TTL instead of being overwritten by the next write.
    tokio::time::sleep(LOSS_BOUND + Duration::from_millis(500)).await;
    f.hold_writes.store(false, Ordering::Release);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (recovery, suspended) = sampler.finish(fault).await;
    eprintln!("restart: L1 suspended {} ms summed over the instances", suspended.as_millis());
    assert_eq!(c.masters().unwrap().len(), 3);
    assert!(c.masters().unwrap().contains(&victim), "restarted within the node timeout: still a master");
    let (mut h, finals) = f.finish(&c, ns).await;
    let lost = lost_by_redis(&h, &after, fault);
    let served: Vec<&Read> = h.reads.iter().filter(|r| r.started > back_at && lost.contains(&(r.key, r.seq))).collect();
    let late = served.iter().filter(|r| r.started > back_at + LOSS_BOUND).count();
    let (served, late) = (served.len(), late);
    assert!(!lost.is_empty(), "the restart lost nothing: the scenario tested nothing");
    let o = Outcome { verdict: check_without(&mut h, &lost, &finals), redis_lost: lost.len(), served_lost: served, served_lost_after_bound: late, failover: back_at - fault, recovery };
    judge("master-restart-empty", o);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slots_migrated_under_eager_load() {
    // `redis-cli --cluster reshard` moves slots (and their keys, with MIGRATE) to another
    // master while the fleet writes and reads: clients see ASK and MOVED, the slot map changes.
    let ns = "reshard";
    let c = cluster();
    let home = c.master_of(&format!("{{aci:{ns}}}:invalidation")).unwrap();
    // A key on another master, and the slots from the start of that master's range up to it:
    // reshard moves a master's slots in ascending order.
    let view = c.slot_masters_seen_by(c.ports()[0]).unwrap();
    let (from, first, key_slot_moved) = (0..KEYS)
        .filter_map(|k| {
            let s = key_slot(format!("aci:{ns}:k{k}").as_bytes());
            let (a, _, m) = *view.iter().find(|(a, b, _)| (*a..=*b).contains(&s))?;
            (m != home).then_some((m, a, s))
        })
        .min_by_key(|(_, a, s)| s - a)
        .unwrap();
    let to = *c.masters().unwrap().iter().find(|m| **m != from).unwrap();
    let slots = (key_slot_moved - first + 1) as u32;
    let caches = fleet(&c, ns, 2, Strategy::Eager).await;
    let f = Fleet::start(caches.clone(), Duration::from_millis(4));
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let before = resubscribes(&caches);
    let flushes_before: Vec<u64> = caches.iter().map(|x| x.stats().flushes).collect();
    let fault = Instant::now();
    tokio::task::block_in_place(|| c.reshard(from, to, slots)).unwrap();
    let moved = fault.elapsed();
    // Keys moved whole between two existing masters: nothing to flush, L1 kept serving (unless
    // a loaded machine delayed the subscription past max_lag: a lag suspension, not a topology
    // reaction).
    assert_eq!(resubscribes(&caches), before, "a migration away from the channels' slot needs no resubscription");
    let flushes: Vec<u64> = caches.iter().map(|x| x.stats().flushes).collect();
    let gaps: Vec<u64> = caches.iter().map(|x| x.stats().gaps).collect();
    assert_eq!(flushes, flushes_before, "a migration flushes no L1 (losses detected: {gaps:?})");
    for x in &caches {
        let st = x.stats();
        assert!(st.l1_serving || st.lag_suspensions > 0, "L1 stopped serving without lagging");
    }
    let recovery = Duration::ZERO;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (h, finals) = f.finish(&c, ns).await;
    let now_at = c.slot_masters_seen_by(c.ports()[0]).unwrap();
    assert!(now_at.iter().any(|(a, b, m)| (*a..=*b).contains(&key_slot_moved) && *m == to), "the key's slot moved");
    let o = Outcome { verdict: h.check(&finals, bound), redis_lost: 0, served_lost: 0, served_lost_after_bound: 0, failover: moved, recovery };
    eprintln!("moved {slots} slots from {from} to {to}");
    judge("reshard-eager", o);
}
