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
    // The two hit paths side by side on the same map type (quick_cache, as NearCache uses):
    // before (Redis key built per get in a reused thread-local buffer, Instant::now per hit)
    // and now (looked up by the user key as given, coarse clock per hit).
    let old_map: quick_cache::sync::Cache<std::sync::Arc<str>, (bytes::Bytes, u64, Instant)> = quick_cache::sync::Cache::new(1000);
    old_map.insert("aci:bench:user:hot".into(), (bytes::Bytes::from("x".repeat(100)), 0, Instant::now() + Duration::from_secs(600)));
    let new_map: quick_cache::sync::Cache<std::sync::Arc<str>, (bytes::Bytes, u64, u64)> = quick_cache::sync::Cache::new(1000);
    new_map.insert("user:hot".into(), (bytes::Bytes::from("x".repeat(100)), 0, u64::MAX - 1));
    thread_local! {
        static BUF: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
    }
    let prefix = String::from("aci:bench:");
    let (mut old, mut new) = (f64::MAX, f64::MAX);
    for _ in 0..5 {
        let t = Instant::now();
        for _ in 0..n / 5 {
            let key = std::hint::black_box("user:hot");
            let v = BUF.with(|b| {
                let mut b = b.borrow_mut();
                b.clear();
                b.push_str(&prefix);
                b.push_str(key);
                let e = old_map.get(b.as_str())?;
                (e.1 == 0 && e.2 > Instant::now()).then_some(e.0)
            });
            std::hint::black_box(v);
        }
        old = old.min(t.elapsed().as_nanos() as f64 / (n / 5) as f64);
        let t = Instant::now();
        for _ in 0..n / 5 {
            let key = std::hint::black_box("user:hot");
            let v = new_map.get(key).and_then(|e| {
                let mut now = 0;
                coarse(&mut now);
                (e.1 == 0 && e.2 > now).then_some(e.0)
            });
            std::hint::black_box(v);
        }
        new = new.min(t.elapsed().as_nanos() as f64 / (n / 5) as f64);
    }
    println!("hit path alone: before {old:.1} ns (prefix + Instant), now {new:.1} ns (user key + coarse clock)");
    assert_eq!(cache.stats().l1_misses, 0);
    cache.shutdown().await.unwrap();
}

/// CLOCK_MONOTONIC_COARSE in ns (what NearCache reads per hit on Linux).
fn coarse(out: &mut u64) {
    #[repr(C)]
    struct Ts {
        s: i64,
        n: i64,
    }
    extern "C" {
        fn clock_gettime(c: i32, t: *mut Ts) -> i32;
    }
    let mut ts = Ts { s: 0, n: 0 };
    // SAFETY: a valid, writable timespec; 6 is CLOCK_MONOTONIC_COARSE on Linux.
    unsafe { clock_gettime(6, &mut ts) };
    *out = ts.s as u64 * 1_000_000_000 + ts.n as u64;
}
