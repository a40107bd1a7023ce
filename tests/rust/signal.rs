//! `AciCache::shutdown_on_signal`, the library's answer to SIGTERM for tokio apps: a process
//! that receives the signal publishes its pending batch and releases its lease before exiting.
//! Its own test binary: it sends SIGTERM to its own process.

use std::time::{Duration, Instant};

use aci_cache::{AciCache, Role, Strategy};
use aci_testkit::RedisServer;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_shuts_the_cache_down_with_its_pending_batch_published() {
    let srv = RedisServer::start(&[]).unwrap();
    let long = Duration::from_secs(60);
    let b = || AciCache::builder().redis_url(srv.url()).namespace("sig").tick(Duration::from_millis(50)).local_ttl(long);
    let reader = b().role(Role::Follower).build().await.unwrap();
    let w = b().fixed_strategy(Strategy::Batched).batch_interval(long).role(Role::Auto).build().await.unwrap();
    assert!(w.is_controller());
    w.set("k", "old", None).await.unwrap();
    assert_eq!(reader.get_string("k").await.unwrap().as_deref(), Some("old"));
    w.set("k", "new", None).await.unwrap(); // buffered for 60 s
    let waiter = tokio::spawn({
        let w = w.clone();
        async move { w.shutdown_on_signal().await }
    });
    tokio::time::sleep(Duration::from_millis(100)).await; // the handlers are installed
    let pid = std::process::id().to_string();
    assert!(std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    tokio::time::timeout(Duration::from_secs(2), waiter).await.expect("shut down within 2 s").unwrap().unwrap();
    let t = Instant::now();
    while reader.get_string("k").await.unwrap().as_deref() != Some("new") {
        assert!(t.elapsed() < Duration::from_secs(1), "the pending batch was not published");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The lease was released: nobody holds it.
    let mut r = redis::Client::open(srv.url()).unwrap().get_multiplexed_async_connection().await.unwrap();
    let holder: Option<String> = redis::cmd("GET").arg("aci::sig:controller").query_async(&mut r).await.unwrap();
    assert_eq!(holder, None);
}
