//! Where the time of an eager `set` goes beyond a raw SET: each layer timed in interleaved
//! chunks (rotating order) against the raw baseline, all in one run (profiling aid, not a test).
//! `cargo run --release --example breakdown [-- chunks]`
//!
//! Rows, each a median of per-chunk ratios to the raw SET measured next to it:
//! - set+publish, nobody subscribed: the PUBLISH command's own cost;
//! - set+publish, 1 discarding subscriber: plus Redis writing the message to one subscriber and
//!   that subscriber (a task in this process, as the cache's own is) reading it: the floor of
//!   an eager write in a process that listens to its own channel;
//! - the same, the subscriber parsing each message as JSON (what decoding costs);
//! - aci set under ttl (the policy call, bookkeeping) and under eager (everything).
use std::time::{Duration, Instant};

use aci_cache::{AciCache, Role, Strategy};
use aci_testkit::RedisServer;
use futures_util::StreamExt;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

const NAMES: [&str; 8] = [
    "raw SET PX",
    "ConnectionManager SET PX (the cache's)",
    "SET+PUBLISH, nobody subscribed",
    "SET+PUBLISH, 1 discarding subscriber",
    "SET+PUBLISH, 1 subscriber parsing JSON",
    "aci set ttl",
    "aci set eager",
    "raw SET PX (2nd, noise check)",
];

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let chunks: usize = std::env::args().nth(1).map(|a| a.parse().unwrap()).unwrap_or(60);
    let srv = RedisServer::start(&[]).unwrap();
    let client = redis::Client::open(srv.url()).unwrap();
    let mut mx = client.get_multiplexed_async_connection().await.unwrap();
    let cm_cfg = redis::aio::ConnectionManagerConfig::new().set_response_timeout(Some(Duration::from_secs(2)));
    let cm = redis::aio::ConnectionManager::new_with_config(client.clone(), cm_cfg).await.unwrap();
    // Two subscribers on their own channels: one discards, one parses.
    for (chan, parse) in [("sub:discard", false), ("sub:parse", true)] {
        let ps = client.get_async_pubsub().await.unwrap();
        let (mut sink, mut stream) = ps.split();
        sink.subscribe(chan).await.unwrap();
        tokio::spawn(async move {
            let _sink = sink;
            while let Some(m) = stream.next().await {
                if parse {
                    let v: serde_json::Value = serde_json::from_slice(m.get_payload_bytes()).unwrap();
                    std::hint::black_box(v);
                } else {
                    std::hint::black_box(m.get_payload_bytes().len());
                }
            }
        });
    }
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
            let side = (k + round) % NAMES.len();
            let t = Instant::now();
            for i in 0..per {
                let key = format!("k{}", i % 100);
                let set = || redis::cmd("SET").arg(&key).arg(&v).arg("PX").arg(10000).to_owned();
                let side = [0, 7, 1, 2, 3, 4, 5, 6][side];
                match side {
                    7 => {
                        let mut c = cm.clone();
                        let _: () = set().query_async(&mut c).await.unwrap();
                    }
                    0 | 6 => {
                        let _: () = set().query_async(&mut mx).await.unwrap();
                    }
                    1..=3 => {
                        let chan = ["nobody", "sub:discard", "sub:parse"][side - 1];
                        let _: () = redis::pipe().add_command(set()).ignore().publish(chan, &msg).ignore().query_async(&mut mx).await.unwrap();
                    }
                    4 => ttl.set(&key, v.clone(), None).await.unwrap(),
                    _ => eager.set(&key, v.clone(), None).await.unwrap(),
                }
            }
            this[side] = t.elapsed().as_nanos() as f64 / per as f64;
        }
        for side in 0..NAMES.len() {
            r[side].push(this[side]);
            ratio[side].push(this[side] / this[0]);
        }
    }
    println!("# eager set breakdown: {chunks} chunks of {per} writes per row, rotating order; ratio = median of per-chunk ratios to raw SET");
    for side in 0..NAMES.len() {
        println!("{:<40} {:>8.0} ns  {:.2}x", NAMES[side], median(r[side].clone()), median(ratio[side].clone()));
    }
    let st = eager.stats();
    println!("# eager cache: pubsub_received {} (its own messages), messages_sent {}", st.pubsub_received, st.messages_sent);
    ttl.shutdown().await.unwrap();
    eager.shutdown().await.unwrap();
}
