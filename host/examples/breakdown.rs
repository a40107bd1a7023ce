//! Where the time of an eager `set` goes beyond a raw SET: each layer timed in interleaved
//! chunks (rotating order) against the raw baseline, all in one run (profiling aid, not a test).
//! `cargo run --release --example breakdown [-- chunks]`
//!
//! Rows, each a median of per-chunk ratios to the raw SET measured next to it (redis-rs's
//! multiplexed connection, the baseline of `aci bench`):
//! - set+publish, nobody subscribed: the PUBLISH command's own cost;
//! - set+publish, 1 redis-rs subscriber: plus Redis writing the message to one subscriber and
//!   that subscriber (a task in this process, as the cache's own is) reading it: the floor of
//!   an eager write in a process that listens to its own channel;
//! - the same with a bare subscriber that sleeps 5 ms after each read (so the kernel batches
//!   the messages): what a subscriber's wake-ups cost;
//! - SET and SET+PUBLISH written and read on the caller's task over a bare socket, as the
//!   cache's direct connections do (host/src/direct.rs): what redis-rs's driver task costs;
//! - aci set under ttl (the policy call, bookkeeping) and under eager (everything).
use std::time::{Duration, Instant};

use aci_cache::{AciCache, Role, Strategy};
use aci_testkit::RedisServer;
use futures_util::StreamExt;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

const NAMES: [&str; 9] = [
    "raw SET PX (redis-rs multiplexed)",
    "SET+PUBLISH, nobody subscribed",
    "SET+PUBLISH, 1 redis-rs subscriber",
    "SET+PUBLISH, bare sub pausing 5 ms",
    "caller-task SET PX",
    "caller-task SET+PUBLISH, redis-rs sub",
    "aci set ttl",
    "aci set eager",
    "raw SET PX (2nd, noise check)",
];

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let chunks: usize = std::env::args().nth(1).map(|a| a.parse().unwrap()).unwrap_or(60);
    let srv = RedisServer::start(&[]).unwrap();
    let client = redis::Client::open(srv.url()).unwrap();
    let mut mx = client.get_multiplexed_async_connection().await.unwrap();
    {
        let ps = client.get_async_pubsub().await.unwrap();
        let (mut sink, mut stream) = ps.split();
        sink.subscribe("sub:discard").await.unwrap();
        tokio::spawn(async move {
            let _sink = sink;
            while let Some(m) = stream.next().await {
                std::hint::black_box(m.get_payload_bytes().len());
            }
        });
    }
    let addr = srv.url().trim_start_matches("redis://").trim_end_matches('/').to_string();
    let mut raw = tokio::net::TcpStream::connect(&addr).await.unwrap();
    raw.write_all(b"*2\r\n$9\r\nSUBSCRIBE\r\n$7\r\nsub:raw\r\n").await.unwrap();
    let mut buf = vec![0u8; 1 << 16];
    let _ = raw.read(&mut buf).await.unwrap();
    tokio::spawn(async move {
        loop {
            match raw.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => std::hint::black_box(n),
            };
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    let mut lean = tokio::net::TcpStream::connect(&addr).await.unwrap();
    lean.set_nodelay(true).unwrap();
    let mut lbuf = vec![0u8; 4096];
    let ttl = AciCache::builder().redis_url(srv.url()).namespace("bt").fixed_strategy(Strategy::Ttl).role(Role::Controller).build().await.unwrap();
    let eager = AciCache::builder().redis_url(srv.url()).namespace("be").fixed_strategy(Strategy::Eager).role(Role::Controller).build().await.unwrap();
    let v = "x".repeat(100);
    // A message of the size the cache publishes for one key.
    let msg = format!(
        r#"{{"action":"invalidate","keys":["be:k12"],"strategy":"eager","timestamp":{:.6},"source":"0123456789ab","epoch":"0123456789abcdef","seq":1,"v":2}}"#,
        1.7e9
    );
    let per = 100;
    let mut r: Vec<Vec<f64>> = vec![vec![]; NAMES.len()];
    let mut ratio: Vec<Vec<f64>> = vec![vec![]; NAMES.len()];
    for round in 0..chunks {
        let mut this = vec![0.0; NAMES.len()];
        for k in 0..NAMES.len() {
            let row = (k + round) % NAMES.len();
            let t = Instant::now();
            for i in 0..per {
                let key = format!("k{}", i % 100);
                let set = || redis::cmd("SET").arg(&key).arg(&v).arg("PX").arg(10000).to_owned();
                match row {
                    0 | 8 => {
                        let _: () = set().query_async(&mut mx).await.unwrap();
                    }
                    1..=3 => {
                        let chan = ["nobody", "sub:discard", "sub:raw"][row - 1];
                        let _: () = redis::pipe().add_command(set()).ignore().publish(chan, &msg).ignore().query_async(&mut mx).await.unwrap();
                    }
                    4 | 5 => {
                        let mut out = set().get_packed_command();
                        if row == 5 {
                            out.extend(redis::cmd("PUBLISH").arg("sub:discard").arg(&msg).get_packed_command());
                        }
                        let want = if row == 4 { 1 } else { 2 };
                        lean.write_all(&out).await.unwrap();
                        // Every reply here is one line (+OK, :1).
                        let (mut got, mut lines) = (0, 0);
                        while lines < want {
                            got += lean.read(&mut lbuf[got..]).await.unwrap();
                            lines = lbuf[..got].iter().filter(|b| **b == b'\n').count();
                        }
                    }
                    6 => ttl.set(&key, v.clone(), None).await.unwrap(),
                    _ => eager.set(&key, v.clone(), None).await.unwrap(),
                }
            }
            this[row] = t.elapsed().as_nanos() as f64 / per as f64;
        }
        for row in 0..NAMES.len() {
            r[row].push(this[row]);
            ratio[row].push(this[row] / this[0]);
        }
    }
    println!("# eager set breakdown: {chunks} chunks of {per} writes per row, rotating order; ratio = median of per-chunk ratios to raw SET");
    for row in 0..NAMES.len() {
        println!("{:<44} {:>8.0} ns  {:.2}x", NAMES[row], median(r[row].clone()), median(ratio[row].clone()));
    }
    let st = eager.stats();
    println!("# eager cache: pubsub_received {} (its own messages), messages_sent {}", st.pubsub_received, st.messages_sent);
    ttl.shutdown().await.unwrap();
    eager.shutdown().await.unwrap();
}
