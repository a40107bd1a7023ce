//! Where the time of `set` goes beyond a raw SET: each layer timed in interleaved chunks
//! against the raw baseline (profiling aid, not a test). `cargo run --release --example breakdown`
use std::time::{Duration, Instant};

use aci_testkit::RedisServer;
use aci_cache::{AciCache, Role, Strategy};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let srv = RedisServer::start(&[]).unwrap();
    let client = redis::Client::open(srv.url()).unwrap();
    let mut mx = client.get_multiplexed_async_connection().await.unwrap();
    let cfg = redis::aio::ConnectionManagerConfig::new().set_response_timeout(Some(Duration::from_secs(2)));
    let cm = redis::aio::ConnectionManager::new_with_config(client.clone(), cfg).await.unwrap();
    let cache = AciCache::builder().redis_url(srv.url()).fixed_strategy(Strategy::Ttl).role(Role::Controller).build().await.unwrap();
    let v = "x".repeat(100);
    let per = 200;
    let mut r = [vec![], vec![], vec![]];
    for round in 0..40 {
        for side in [0usize, 1, 2] {
            let side = (side + round) % 3;
            let t = Instant::now();
            for i in 0..per {
                let k = format!("k{}", i % 100);
                match side {
                    0 => { let _: () = redis::cmd("SET").arg(&k).arg(&v).arg("PX").arg(10000).query_async(&mut mx).await.unwrap(); }
                    1 => { let mut c = cm.clone(); let _: () = redis::cmd("SET").arg(&k).arg(&v).arg("PX").arg(10000).query_async(&mut c).await.unwrap(); }
                    _ => cache.set(&k, v.clone(), None).await.unwrap(),
                }
            }
            r[side].push(t.elapsed().as_nanos() as f64 / per as f64);
        }
    }
    let [a, b, c] = r;
    let (a, b, c) = (median(a), median(b), median(c));
    println!("multiplexed SET {a:.0} ns; connection-manager SET {b:.0} ns ({:.2}x); aci set/ttl {c:.0} ns ({:.2}x)", b / a, c / a);
}
