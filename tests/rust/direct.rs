//! The cache's command connections to one server (host/src/direct.rs): requests written and
//! answered on the caller's task. What must hold whatever happens to a request: no reply ever
//! reaches the wrong request, the number of connections stays bounded, a restarted server
//! costs no failed request, and the URL's password and database apply to every connection.

use std::time::Duration;

use aci_cache::{AciCache, Role, Strategy};
use aci_testkit::RedisServer;

fn server(extra: &[&str]) -> RedisServer {
    RedisServer::start(extra).expect("redis-server must be installed for these tests")
}

async fn cache(url: &str, ns: &str) -> AciCache {
    AciCache::builder().redis_url(url).namespace(ns).role(Role::Controller).fixed_strategy(Strategy::Eager).build().await.unwrap()
}

async fn raw(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url).unwrap().get_multiplexed_async_connection().await.unwrap()
}

async fn connected_clients(r: &mut redis::aio::MultiplexedConnection) -> usize {
    let info: String = redis::cmd("INFO").arg("clients").query_async(r).await.unwrap();
    info.lines().find_map(|l| l.strip_prefix("connected_clients:")).unwrap().trim().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abandoned_request_never_hands_its_reply_to_the_next_one() {
    let srv = server(&[]);
    let c = cache(&srv.url(), "abandon").await;
    let mut r = raw(&srv.url()).await;
    let _: () = redis::cmd("SET").arg(c.redis_key("one").unwrap()).arg("1").query_async(&mut r).await.unwrap();
    let _: () = redis::cmd("SET").arg(c.redis_key("two").unwrap()).arg("2").query_async(&mut r).await.unwrap();
    for _ in 0..3 {
        // The server holds every client; the first read is given up while its request is on the wire.
        let _: () = redis::cmd("CLIENT").arg("PAUSE").arg(300).arg("ALL").query_async(&mut r).await.unwrap();
        let abandoned = tokio::time::timeout(Duration::from_millis(50), c.get("one")).await;
        assert!(abandoned.is_err(), "the server was paused: the read cannot have finished");
        tokio::time::sleep(Duration::from_millis(350)).await;
        // Its reply ("1") arrives later on its connection; the next reads must not see it.
        assert_eq!(c.get_string("two").await.unwrap().as_deref(), Some("2"));
        c.flush_local();
    }
    assert_eq!(c.get_string("one").await.unwrap().as_deref(), Some("1"));
    c.shutdown().await.unwrap();

    // The same when the cache's own command timeout gives up on the request.
    let t = AciCache::builder().redis_url(srv.url()).namespace("abandon").role(Role::Controller).command_timeout(Duration::from_millis(100)).build().await.unwrap();
    for _ in 0..3 {
        let _: () = redis::cmd("CLIENT").arg("PAUSE").arg(300).arg("ALL").query_async(&mut r).await.unwrap();
        assert!(t.get("one").await.is_err(), "the server was paused: the read must time out");
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(t.get_string("two").await.unwrap().as_deref(), Some("2"));
        t.flush_local();
    }
    t.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_concurrent_writes_opens_a_bounded_number_of_connections() {
    let srv = server(&[]);
    let c = cache(&srv.url(), "burst").await;
    let mut r = raw(&srv.url()).await;
    let before = connected_clients(&mut r).await;
    let writes = (0..400).map(|i| {
        let c = c.clone();
        tokio::spawn(async move { c.set(&format!("k{i}"), format!("v{i}"), None).await })
    });
    for w in futures_util::future::join_all(writes).await {
        w.unwrap().unwrap();
    }
    let after = connected_clients(&mut r).await;
    // At most 16 command connections (one was open before): the rest of the burst waited.
    assert!(after <= before + 15, "{before} clients before the burst, {after} after");
    let keys: Vec<String> = (0..400).map(|i| c.redis_key(&format!("k{i}")).unwrap()).collect();
    let values: Vec<Option<String>> = redis::cmd("MGET").arg(&keys).query_async(&mut r).await.unwrap();
    for (i, v) in values.iter().enumerate() {
        assert_eq!(v.as_deref(), Some(format!("v{i}").as_str()));
    }
    c.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_server_costs_no_failed_request() {
    let mut srv = server(&[]);
    let c = cache(&srv.url(), "restart").await;
    let burst = |tag: &'static str| {
        let writes: Vec<_> = (0..16).map(|i| {
            let c = c.clone();
            tokio::spawn(async move { c.set(&format!("k{i}"), tag, None).await })
        }).collect();
        async move { futures_util::future::join_all(writes).await.into_iter().map(|w| w.unwrap()).collect::<Vec<_>>() }
    };
    // Leaves several connections idle (the heartbeat alone would use one of them).
    assert!(burst("before").await.iter().all(|r| r.is_ok()));
    srv.restart(&[]).unwrap();
    // Long enough for an idle connection to be checked before it is used again.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let failed: Vec<_> = burst("after").await.into_iter().filter_map(|r| r.err()).collect();
    assert!(failed.is_empty(), "{} of 16 writes failed: {:?}", failed.len(), failed.first());
    c.flush_local();
    assert_eq!(c.get_string("k3").await.unwrap().as_deref(), Some("after"));
    c.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_urls_password_and_database_apply_to_every_connection() {
    let srv = server(&["--requirepass", "s3cret"]);
    let port = srv.url().rsplit(':').next().unwrap().to_string();
    let url = format!("redis://:s3cret@127.0.0.1:{port}/3");
    let c = cache(&url, "authdb").await;
    // The subscription authenticated too: L1 serves only while it is up.
    let t = std::time::Instant::now();
    while !c.stats().l1_serving {
        assert!(t.elapsed() < Duration::from_secs(3), "the subscription never came up");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Concurrent writes: several connections, each must have authenticated and selected db 3.
    let writes = (0..32).map(|i| {
        let c = c.clone();
        tokio::spawn(async move { c.set(&format!("k{i}"), "v", None).await })
    });
    for w in futures_util::future::join_all(writes).await {
        w.unwrap().unwrap();
    }
    let key = c.redis_key("k7").unwrap();
    let mut db3 = raw(&url).await;
    let mut db0 = raw(&format!("redis://:s3cret@127.0.0.1:{port}/0")).await;
    let n3: usize = redis::cmd("DBSIZE").query_async(&mut db3).await.unwrap();
    let v0: Option<String> = redis::cmd("GET").arg(&key).query_async(&mut db0).await.unwrap();
    assert!(n3 >= 32, "db 3 holds {n3} keys");
    assert_eq!(v0, None, "nothing written to db 0");
    c.flush_local();
    assert_eq!(c.get_string("k7").await.unwrap().as_deref(), Some("v"));
    c.shutdown().await.unwrap();
    let wrong = AciCache::builder().redis_url(format!("redis://:nope@127.0.0.1:{port}/3")).build().await;
    assert!(wrong.is_err(), "a wrong password fails the build");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_reads_its_own_invalidations_in_batches_and_still_hears_the_others_promptly() {
    let srv = server(&[]);
    let a = cache(&srv.url(), "batches").await;
    let b = AciCache::builder().redis_url(srv.url()).namespace("batches").role(Role::Follower).fixed_strategy(Strategy::Eager).build().await.unwrap();
    b.set("theirs", "old", None).await.unwrap();
    assert_eq!(a.get_string("theirs").await.unwrap().as_deref(), Some("old"));
    let before = a.stats();
    let writer = {
        let a = a.clone();
        tokio::spawn(async move {
            for i in 0..600 {
                a.set(&format!("mine{}", i % 50), "x", None).await.unwrap();
            }
        })
    };
    // Midway through A's writes, B writes: A must drop its copy within a few milliseconds.
    tokio::time::sleep(Duration::from_millis(5)).await;
    b.set("theirs", "new", None).await.unwrap();
    let t = std::time::Instant::now();
    while a.get_string("theirs").await.unwrap().as_deref() != Some("new") {
        assert!(t.elapsed() < Duration::from_millis(200), "A still serves the old value after {:?}", t.elapsed());
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    writer.await.unwrap();
    // Let the last of A's own messages arrive.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let st = a.stats();
    let (received, reads) = (st.pubsub_received - before.pubsub_received, st.pubsub_reads - before.pubsub_reads);
    assert!(received >= 600, "{st:?}");
    assert!(reads * 4 <= received, "{reads} socket reads for {received} messages: not batched");
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}
