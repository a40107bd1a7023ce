//! `aci demo --cluster` and `aci bench --cluster`: the cache on a private local Redis Cluster
//! (3 masters + 3 replicas on loopback, started and stopped here).

use std::collections::HashMap;
use std::io::Write;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aci_cache::policy::Strategy;
use aci_cache::{AciCache, CacheBuilder, ClusterPubSub, Role};
use aci_testkit::RedisCluster;
use anyhow::{Context, Result};

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?)
}

fn start_cluster() -> Result<RedisCluster> {
    eprintln!("starting a local Redis Cluster: 3 masters + 3 replicas on loopback, node timeout 1 s ...");
    let t = Instant::now();
    let c = RedisCluster::start().context("starting a local Redis Cluster (needs redis-server and redis-cli, or ACI_REDIS_SERVER / ACI_REDIS_CLI)")?;
    eprintln!("cluster ready in {:.1} s: nodes {:?}", t.elapsed().as_secs_f64(), c.ports());
    Ok(c)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

// ---------------------------------------------------------------------------------------------
// demo

struct Phase {
    name: &'static str,
    rate: f64,
    secs: f64,
}

const PHASES: &[Phase] = &[
    Phase { name: "idle", rate: 2.0, secs: 3.0 },
    Phase { name: "medium", rate: 25.0, secs: 4.0 },
    Phase { name: "burst", rate: 200.0, secs: 4.0 },
    Phase { name: "failover", rate: 100.0, secs: 6.0 },
    Phase { name: "idle", rate: 2.0, secs: 3.0 },
];

#[derive(Default, Clone)]
struct Stale {
    reads: u64,
    stale: u64,
    max_ms: f64,
}

/// Three instances through idle, medium and burst write rates (ttl, batched, eager), then the
/// master of the fleet's channels is killed under load: L1 stops serving, the replica is
/// promoted, L1 comes back. Ends by itself (~25 s with the cluster's start).
pub fn demo() -> Result<ExitCode> {
    let mut cluster = start_cluster()?;
    let urls = cluster.urls();
    let rt = runtime()?;
    rt.block_on(async {
        let ns = format!("demo-{}", std::process::id());
        let mut fleet = Vec::new();
        for _ in 0..3 {
            fleet.push(
                AciCache::builder()
                    .redis_cluster(urls.clone())
                    .namespace(&ns)
                    .tick(Duration::from_millis(100))
                    .window(Duration::from_millis(2000))
                    .hold(Duration::from_millis(1000))
                    .batch_interval(Duration::from_millis(500))
                    .local_ttl(Duration::from_secs(3))
                    .liveness_timeout(Duration::from_millis(1500))
                    .build()
                    .await
                    .context("connecting to the cluster")?,
            );
        }
        let home = cluster.master_of(&format!("{{aci:{ns}}}:invalidation"))?;
        println!("aci demo --cluster: 3 instances, namespace {ns}; keys spread over the 3 shards, the fleet's messages on sharded Pub/Sub in the shard of node {home}");
        println!("phases: {}", PHASES.iter().map(|p| format!("{} {}/s {}s", p.name, p.rate, p.secs)).collect::<Vec<_>>().join(", "));
        const KEYS: usize = 40;
        let truth: Arc<Mutex<HashMap<usize, (u64, Instant, Strategy)>>> = Arc::default();
        let stale: Arc<Mutex<HashMap<Strategy, Stale>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let phase = Arc::new(AtomicUsize::new(0));
        let failed_writes = Arc::new(AtomicU64::new(0));
        let mut tasks = Vec::new();
        for c in fleet.iter().cloned() {
            let (truth, stale, stop) = (truth.clone(), stale.clone(), stop.clone());
            tasks.push(tokio::spawn(async move {
                let mut i = 0usize;
                while !stop.load(Ordering::Relaxed) {
                    i = (i + 7) % KEYS;
                    let before = truth.lock().unwrap().get(&i).copied();
                    if let Ok(Some(v)) = c.get_string(&format!("item:{i}")).await {
                        let seq: u64 = v.trim_start_matches('v').parse().unwrap_or(0);
                        let mut st = stale.lock().unwrap();
                        st.entry(c.strategy()).or_default().reads += 1;
                        if let Some((newest, acked, by)) = before {
                            if seq < newest {
                                let e = st.entry(by).or_default();
                                e.stale += 1;
                                e.max_ms = e.max_ms.max(acked.elapsed().as_secs_f64() * 1000.0);
                            }
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            }));
        }
        {
            let (fleet, truth, stop, phase, failed) = (fleet.clone(), truth.clone(), stop.clone(), phase.clone(), failed_writes.clone());
            tasks.push(tokio::spawn(async move {
                let mut seq = 0u64;
                for (pi, p) in PHASES.iter().enumerate() {
                    phase.store(pi, Ordering::Relaxed);
                    let end = Instant::now() + Duration::from_secs_f64(p.secs);
                    let gap = Duration::from_secs_f64(1.0 / p.rate);
                    let mut next = Instant::now();
                    while Instant::now() < end && !stop.load(Ordering::Relaxed) {
                        seq += 1;
                        let c = &fleet[seq as usize % fleet.len()];
                        let key = seq as usize % KEYS;
                        match c.set(&format!("item:{key}"), format!("v{seq}"), None).await {
                            Ok(()) => {
                                truth.lock().unwrap().insert(key, (seq, Instant::now(), c.strategy()));
                            }
                            Err(_) => {
                                failed.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        next += gap;
                        if next < Instant::now() {
                            next = Instant::now();
                        }
                        tokio::time::sleep_until(next.into()).await;
                    }
                }
                stop.store(true, Ordering::Relaxed);
            }));
        }
        let started = Instant::now();
        let mut seen = std::collections::BTreeSet::new();
        let mut killed: Option<Instant> = None;
        let mut promoted: Option<(Instant, u16)> = None;
        let mut l1_back: Option<Instant> = None;
        let mut last_writes = 0u64;
        let mut last_t = Instant::now();
        let probe_key = format!("{{aci:{ns}}}:invalidation");
        loop {
            tokio::time::sleep(Duration::from_millis(250)).await;
            let pi = phase.load(Ordering::Relaxed);
            if PHASES[pi].name == "failover" && killed.is_none() {
                tokio::time::sleep(Duration::from_millis(500)).await;
                cluster.kill(home)?;
                killed = Some(Instant::now());
                println!("  >>> killed master {home} (the shard of the fleet's channels and of a third of the keys) under load");
            }
            if let (Some(k), None) = (killed, promoted) {
                // The survivors' view (a few ms on loopback).
                if let Ok(p) = cluster.master_of(&probe_key) {
                    if p != home {
                        promoted = Some((Instant::now(), p));
                        println!("  >>> replica {p} promoted {} ms after the kill", k.elapsed().as_millis());
                    }
                }
            }
            let stats: Vec<_> = fleet.iter().map(|c| c.stats()).collect();
            let serving = stats.iter().filter(|s| s.l1_serving).count();
            if promoted.is_some() && l1_back.is_none() && serving == fleet.len() {
                l1_back = Some(Instant::now());
                println!("  >>> L1 serving again on all 3 instances {} ms after the kill", killed.unwrap().elapsed().as_millis());
            }
            let writes: u64 = stats.iter().map(|s| s.writes).sum();
            let rate = (writes - last_writes) as f64 / last_t.elapsed().as_secs_f64().max(1e-3);
            last_writes = writes;
            last_t = Instant::now();
            let (hits, reads) = stats.iter().fold((0, 0), |(h, r), s| (h + s.l1_hits, r + s.reads));
            let strategies: Vec<String> = stats.iter().enumerate().map(|(i, s)| {
                if let Some(x) = s.strategy {
                    seen.insert(x.as_str());
                }
                format!("{}{}={}", (b'A' + i as u8) as char, if s.is_controller { "*" } else { "" }, s.strategy.map(|x| x.as_str()).unwrap_or("?"))
            }).collect();
            let st = stale.lock().unwrap().clone();
            let (sr, smax) = st.values().fold((0u64, 0f64), |(c, m), e| (c + e.stale, m.max(e.max_ms)));
            println!(
                "t={:>5.1}s {:<8} rate {:>5.0}/s  {}  L1 serving {}/3  hit {:>5.1}%  resubscribes {}  failed writes {}  stale reads {} (max {:.0} ms)",
                started.elapsed().as_secs_f64(), PHASES[pi].name, rate, strategies.join(" "), serving,
                if reads > 0 { 100.0 * hits as f64 / reads as f64 } else { 0.0 },
                stats.iter().map(|s| s.resubscribes).sum::<u64>(), failed_writes.load(Ordering::Relaxed), sr, smax
            );
            let _ = std::io::stdout().flush();
            if stop.load(Ordering::Relaxed) {
                break;
            }
        }
        for t in tasks {
            let _ = t.await;
        }
        println!("\nreads by the reader's strategy; stale reads charged to the strategy the newer write was made under:");
        println!("{:<8} {:>8} {:>12} {:>14}", "strategy", "reads", "stale reads", "max stale ms");
        let st = stale.lock().unwrap().clone();
        for s in [Strategy::Ttl, Strategy::Batched, Strategy::Eager] {
            let e = st.get(&s).cloned().unwrap_or_default();
            println!("{:<8} {:>8} {:>12} {:>14.0}", s.as_str(), e.reads, e.stale, e.max_ms);
        }
        println!("strategies seen: {}", seen.iter().copied().collect::<Vec<_>>().join(", "));
        match (killed, promoted, l1_back) {
            (Some(k), Some((p, port)), Some(b)) => println!(
                "failover: replica {port} promoted {} ms after the kill; L1 suspended (reads from Redis) until {} ms after it; {} writes failed meanwhile (not acknowledged)",
                (p - k).as_millis(), (b - k).as_millis(), failed_writes.load(Ordering::Relaxed)),
            _ => println!("failover: not completed within the demo"),
        }
        println!("bounds: eager ~ propagation (ms); batched <= batch interval (500 ms) + tick; ttl <= local TTL (3 s)");
        for c in &fleet {
            let _ = c.shutdown().await;
        }
        Ok(ExitCode::SUCCESS)
    })
}

// ---------------------------------------------------------------------------------------------
// bench

/// Per node: Pub/Sub commands it executed and Pub/Sub messages it received over the cluster bus.
fn pubsub_counters(c: &RedisCluster) -> Vec<(u16, u64)> {
    let calls = |p: u16, name: &str| -> u64 {
        c.info(p, "commandstats", &format!("cmdstat_{name}"))
            .and_then(|v| v.strip_prefix("calls=").and_then(|r| r.split(',').next()).and_then(|n| n.parse().ok()))
            .unwrap_or(0)
    };
    let bus = |p: u16, f: &str| -> u64 { c.cluster_info(p, f).and_then(|v| v.parse().ok()).unwrap_or(0) };
    c.ports()
        .into_iter()
        .map(|p| {
            let n = calls(p, "publish") + calls(p, "spublish")
                + bus(p, "cluster_stats_messages_publish_received")
                + bus(p, "cluster_stats_messages_publishshard_received");
            (p, n)
        })
        .collect()
}

fn builder(urls: &[String], ns: &str) -> CacheBuilder {
    AciCache::builder().redis_cluster(urls.to_vec()).namespace(ns)
}

pub fn bench(scale: f64) -> Result<ExitCode> {
    anyhow::ensure!(scale > 0.0 && scale <= 100.0, "--scale must be in (0, 100]");
    let cluster = start_cluster()?;
    let urls = cluster.urls();
    runtime()?.block_on(async {
        let client = redis::cluster::ClusterClient::new(urls.clone())?;
        let mut raw = client.get_async_connection().await?;
        let ns = format!("bench-{}", std::process::id());
        let value = "x".repeat(100);
        let n = ((3_000.0 * scale) as u64).max(200);
        let rounds = 5;

        let reader = builder(&urls, &ns).role(Role::Controller).build().await?;
        reader.set("hot", value.clone(), Some(Duration::from_secs(600))).await?;
        let rkey = reader.redis_key("hot")?;
        let (mut raw_get, mut l1_get) = (Vec::new(), Vec::new());
        for _ in 0..rounds {
            let t = Instant::now();
            for _ in 0..n {
                let _: Option<Vec<u8>> = redis::cmd("GET").arg(&rkey).query_async(&mut raw).await?;
            }
            raw_get.push(t.elapsed().as_nanos() as f64 / n as f64);
            let m = n * 20;
            let t = Instant::now();
            for _ in 0..m {
                let _ = reader.get("hot").await?;
            }
            l1_get.push(t.elapsed().as_nanos() as f64 / m as f64);
        }
        let (rg, lg) = (median(raw_get), median(l1_get));
        println!("\n# get on a cluster: L1 hit vs raw cluster GET (redis-rs ClusterConnection, sequential, median of {rounds} rounds)");
        println!("raw cluster GET  {rg:>10.0} ns");
        println!("aci get (L1 hit) {lg:>10.0} ns   {:.0}x faster", rg / lg);
        reader.shutdown().await?;

        println!("\n# set vs raw cluster SET PX (ratio = aci / raw); eager = SET, then SPUBLISH once the SET is acked (docs/WIRE.md 10.2)");
        for s in [Strategy::Ttl, Strategy::Batched, Strategy::Eager] {
            let c = builder(&urls, &format!("{ns}-{}", s.as_str())).fixed_strategy(s).role(Role::Controller).build().await?;
            let chunks = 40;
            let per = (n / chunks).max(20);
            let (mut rs, mut cs, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
            for round in 0..chunks {
                let mut pair = [0.0f64; 2];
                for side in if round % 2 == 0 { [0, 1] } else { [1, 0] } {
                    let t = Instant::now();
                    for i in 0..per {
                        if side == 0 {
                            let _: () = redis::cmd("SET").arg(format!("raw:{}", i % 1000)).arg(&value).arg("PX").arg(10_000).query_async(&mut raw).await?;
                        } else {
                            c.set(&format!("k:{}", i % 1000), value.clone(), None).await?;
                        }
                    }
                    pair[side] = t.elapsed().as_nanos() as f64 / per as f64;
                }
                rs.push(pair[0]);
                cs.push(pair[1]);
                ratios.push(pair[1] / pair[0]);
            }
            println!("{:<8} raw {:>8.0} ns   aci {:>8.0} ns   ratio {:.2} (median of {chunks} interleaved pairs)", s.as_str(), median(rs), median(cs), median(ratios));
            c.shutdown().await?;
        }

        let a = builder(&urls, &format!("{ns}-lat")).fixed_strategy(Strategy::Eager).role(Role::Controller).build().await?;
        let b = builder(&urls, &format!("{ns}-lat")).fixed_strategy(Strategy::Eager).role(Role::Follower).build().await?;
        let iters = ((1000.0 * scale) as u64).max(50);
        let mut lat = Vec::new();
        let mut lost = 0;
        for i in 0..iters {
            let key = format!("lat:{}", i % 20);
            let _ = b.get(&key).await?;
            let v = format!("v{i}");
            a.set(&key, v.clone(), None).await?;
            let t = Instant::now();
            loop {
                if b.get_string(&key).await?.as_deref() == Some(v.as_str()) {
                    break;
                }
                if t.elapsed() > Duration::from_secs(2) {
                    lost += 1;
                    break;
                }
                tokio::task::yield_now().await;
            }
            lat.push(t.elapsed().as_secs_f64() * 1e6);
        }
        lat.sort_by(|x, y| x.partial_cmp(y).unwrap());
        println!("\n# eager on a cluster: A.set returns -> B.get sees the new value ({iters} writes over 20 keys on 3 shards)");
        println!("p50 {:.0} us   p99 {:.0} us   max {:.0} us   not seen within 2 s: {lost}", pct(&lat, 0.5), pct(&lat, 0.99), pct(&lat, 1.0));
        a.shutdown().await?;
        b.shutdown().await?;

        // Pub/Sub load per node: the same eager workload in sharded and in classic mode.
        let writes = ((2000.0 * scale) as u64).max(200);
        println!("\n# Pub/Sub messages handled per node ({writes} eager writes, 3 instances; PUBLISH/SPUBLISH executed + messages received over the cluster bus)");
        let mut rows: Vec<(u16, u64, u64)> = cluster.ports().into_iter().map(|p| (p, 0, 0)).collect();
        let mut homes = Vec::new();
        for (col, mode) in [(1, ClusterPubSub::Sharded), (2, ClusterPubSub::Classic)] {
            let ns_m = format!("{ns}-ps{col}");
            homes.push(cluster.master_of(&format!("{{aci:{ns_m}}}:invalidation"))?);
            let mut fleet = Vec::new();
            for i in 0..3 {
                fleet.push(builder(&urls, &ns_m).fixed_strategy(Strategy::Eager).cluster_pubsub(mode)
                    .role(if i == 0 { Role::Controller } else { Role::Follower }).build().await?);
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
            let before = pubsub_counters(&cluster);
            let t = Instant::now();
            for i in 0..writes {
                fleet[(i % 3) as usize].set(&format!("k{}", i % 100), value.clone(), None).await?;
            }
            let secs = t.elapsed().as_secs_f64();
            tokio::time::sleep(Duration::from_millis(300)).await;
            let after = pubsub_counters(&cluster);
            for (row, (b, a)) in rows.iter_mut().zip(before.iter().zip(&after)) {
                let d = a.1 - b.1;
                if col == 1 { row.1 = d } else { row.2 = d }
            }
            let received: u64 = fleet.iter().map(|c| c.stats().pubsub_received).sum();
            println!("{:<8} {writes} writes in {secs:.2} s; the instances received {received} messages (their own and the others')", if col == 1 { "sharded" } else { "classic" });
            for c in fleet {
                c.shutdown().await?;
            }
        }
        let masters = cluster.masters()?;
        println!("{:<7} {:<8} {:>10} {:>10}", "node", "role", "sharded", "classic");
        for (p, s, c) in &rows {
            let role = if masters.contains(p) { "master" } else { "replica" };
            let mark = if *p == homes[0] { "  <- shard of the sharded namespace's channels" } else { "" };
            println!("{p:<7} {role:<8} {s:>10} {c:>10}{mark}");
        }
        let (ts, tc): (u64, u64) = rows.iter().fold((0, 0), |(a, b), r| (a + r.1, b + r.2));
        let hot = rows.iter().map(|r| r.1).max().unwrap_or(0);
        println!("total   {:<8} {ts:>10} {tc:>10}   classic/sharded {:.1}x; the hottest node handles {:.0}% of the sharded load (one namespace = one slot = one shard)",
            "", tc as f64 / ts.max(1) as f64, 100.0 * hot as f64 / ts.max(1) as f64);
        Ok(ExitCode::SUCCESS)
    })
}
