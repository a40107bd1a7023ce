//! The L1 hit path alone, in a loop long enough to profile (`perf record`, callgrind): not a
//! test. `cargo run --release --example l1hit -- [millions of gets] [namespace|-]`
use std::time::{Duration, Instant};

use aci_cache::{AciCache, Role};
use aci_testkit::RedisServer;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let mut args = std::env::args().skip(1);
    let millions: f64 = args.next().map(|a| a.parse().unwrap()).unwrap_or(5.0);
    let ns = args.next().unwrap_or_else(|| "bench".into());
    let srv = RedisServer::start(&[]).unwrap();
    let mut b = AciCache::builder().redis_url(srv.url()).role(Role::Controller);
    if ns != "-" {
        b = b.namespace(ns);
    }
    let cache = b.build().await.unwrap();
    cache.set("user:hot", "x".repeat(100), Some(Duration::from_secs(600))).await.unwrap();
    let n = (millions * 1e6) as u64;
    let mut best = f64::MAX;
    for _ in 0..5 {
        let t = Instant::now();
        for _ in 0..n / 5 {
            std::hint::black_box(cache.get(std::hint::black_box("user:hot")).await.unwrap());
        }
        best = best.min(t.elapsed().as_nanos() as f64 / (n / 5) as f64);
    }
    // Reference in the same run: a Mutex<std HashMap> hit with the key prebuilt.
    let map = std::sync::Mutex::new(std::collections::HashMap::<String, bytes::Bytes>::new());
    map.lock().unwrap().insert("aci:bench:user:hot".into(), bytes::Bytes::from("x".repeat(100)));
    let mut base = f64::MAX;
    for _ in 0..5 {
        let t = Instant::now();
        for _ in 0..n / 5 {
            std::hint::black_box(map.lock().unwrap().get(std::hint::black_box("aci:bench:user:hot")).cloned());
        }
        base = base.min(t.elapsed().as_nanos() as f64 / (n / 5) as f64);
    }
    println!("L1 hit: best of 5 rounds {best:.1} ns; locked HashMap + Bytes clone {base:.1} ns ({:.2}x)", best / base);
    assert_eq!(cache.stats().l1_misses, 0);
    cache.shutdown().await.unwrap();
}
