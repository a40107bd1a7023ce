//! Where the time of `get`/`set` goes: each piece timed alone (profiling aid, not a test).
use std::time::{Duration, Instant};

use aci_cache::near_cache::NearCache;
use aci_cache::policy::{PolicyConfig, PolicyModule, PolicyRuntime};
use aci_cache::redis_server::RedisServer;
use bytes::Bytes;

fn ns(n: u64, t: Instant) -> f64 {
    t.elapsed().as_nanos() as f64 / n as f64
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let srv = RedisServer::start(&[]).unwrap();
    let client = redis::Client::open(srv.url()).unwrap();
    let mut mx = client.get_multiplexed_async_connection().await.unwrap();
    let mut cm = redis::aio::ConnectionManager::new(client.clone()).await.unwrap();
    let v = "x".repeat(100);
    let n = 20_000;
    for round in 0..2 {
        let t = Instant::now();
        for i in 0..n {
            let _: () = redis::cmd("SET").arg(format!("k{}", i % 100)).arg(&v).arg("PX").arg(10000).query_async(&mut mx).await.unwrap();
        }
        println!("[{round}] multiplexed SET {:.0} ns", ns(n, t));
        let t = Instant::now();
        for i in 0..n {
            let mut c = cm.clone();
            let _: () = redis::cmd("SET").arg(format!("k{}", i % 100)).arg(&v).arg("PX").arg(10000).query_async(&mut c).await.unwrap();
        }
        println!("[{round}] conn-manager SET {:.0} ns", ns(n, t));
    }
    let l1 = NearCache::new(10_000, 64 << 20);
    l1.resume();
    let m = 1_000_000;
    let val = Bytes::from(v.clone());
    let t = Instant::now();
    for i in 0..m {
        l1.put_own_write(&format!("aci:ns:k{}", i % 100), val.clone(), Duration::from_secs(60));
    }
    println!("l1 put_own_write {:.0} ns", ns(m, t));
    let t = Instant::now();
    for _ in 0..m {
        std::hint::black_box(l1.get("aci:ns:k1"));
    }
    println!("l1 get {:.0} ns", ns(m, t));
    let t = Instant::now();
    for _ in 0..m {
        std::hint::black_box(Instant::now());
    }
    println!("Instant::now {:.0} ns", ns(m, t));
    let t = Instant::now();
    for i in 0..m {
        std::hint::black_box(format!("aci:ns:{}", i % 10));
    }
    println!("format key {:.0} ns", ns(m, t));
    let mut p = PolicyRuntime::new(PolicyModule::adaptive(), PolicyConfig::default(), 0).unwrap();
    let mx2 = std::sync::Mutex::new(0);
    let t = Instant::now();
    for i in 0..m {
        let _g = mx2.lock().unwrap();
        std::hint::black_box(p.record_write("aci:ns:k1", i / 1000));
    }
    println!("policy record_write (+mutex) {:.0} ns", ns(m, t));
}
