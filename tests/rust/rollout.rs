//! Policy rollout (docs/WIRE.md 9) end to end: a real redis-server, in-process caches that
//! follow pushes, and the `aci policy` command line as an operator runs it.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use aci_cache::policy::sha256_hex;
use aci_cache::{AciCache, CacheBuilder, PolicySource, Role, Strategy};
use aci_testkit::RedisServer;
use serde_json::Value;

fn aci(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_aci")).args(args).stdin(Stdio::null()).output().unwrap()
}

fn ok(out: Output) -> String {
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "aci failed: {text}");
    text
}

fn policy_file(name: &str) -> PathBuf {
    let p = aci_testkit::repo_root().join("target/policies").join(format!("{name}.wasm"));
    assert!(p.exists(), "{} (cargo xtask policies)", p.display());
    p
}

/// A fresh key pair in a temporary folder: (secret file, public hex).
fn keygen(dir: &Path) -> (PathBuf, String) {
    let secret = dir.join("fleet.key");
    ok(aci(&["policy", "keygen", "--out", secret.to_str().unwrap()]));
    let public = std::fs::read_to_string(dir.join("fleet.key.pub")).unwrap().trim().to_string();
    (secret, public)
}

fn tempdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("aci-rollout-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// The tests of this file compile components and run several caches each: run them one at a
/// time, so that a loaded machine does not turn the 2 s adoption bound into a test of the CPU.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn builder(url: &str, ns: &str, id: &str) -> CacheBuilder {
    AciCache::builder().redis_url(url).namespace(ns).instance_id(id).tick(Duration::from_millis(50))
}

fn status(url: &str, ns: &str) -> Value {
    let out = ok(aci(&["policy", "status", "--redis", url, "--namespace", ns, "--json"]));
    serde_json::from_str(out.lines().next().unwrap()).unwrap()
}

fn instance<'a>(st: &'a Value, id: &str) -> &'a Value {
    st["instances"].as_array().unwrap().iter().find(|s| s["id"] == id).unwrap_or(&Value::Null)
}

async fn wait_until(limit: Duration, what: &str, mut f: impl FnMut() -> bool) -> Duration {
    let t = Instant::now();
    while !f() {
        assert!(t.elapsed() < limit, "not within {limit:?}: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    t.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_push_reaches_every_trusting_instance_an_unsigned_one_is_refused_and_rollback_restores_adaptive() {
    let _serial = SERIAL.lock().await;
    let srv = RedisServer::start(&[]).unwrap();
    let url = srv.url();
    let dir = tempdir("signed");
    let (secret, public) = keygen(&dir);
    let ns = "shop";
    let a = builder(&url, ns, "a").role(Role::Controller).policy_public_key(&public).build().await.unwrap();
    let b = builder(&url, ns, "b").role(Role::Follower).policy_public_key(&public).build().await.unwrap();
    // Trusts nothing: keeps its local policy whatever is pushed.
    let c = builder(&url, ns, "c").role(Role::Follower).build().await.unwrap();
    let adaptive = sha256_hex(aci_cache::policy::ADAPTIVE_WASM);
    let fixed = policy_file("fixed");
    let fixed_hash = sha256_hex(&std::fs::read(&fixed).unwrap());
    for x in [&a, &b, &c] {
        assert_eq!(x.policy_hash(), (adaptive.clone(), false));
    }

    // Compiling a component is ~50 ms in a release build but seconds in this debug build on a
    // loaded 2-core machine; the 2 s bound is the protocol's (announce, fetch, verify, swap),
    // so the process's compile cache is warmed first (the hostile test below compiles cold).
    aci_cache::policy::PolicyModule::from_file(&fixed, Default::default()).unwrap();
    let out = ok(aci(&["policy", "push", fixed.to_str().unwrap(), "--redis", &url, "--namespace", ns, "--key", secret.to_str().unwrap(),
        "--config", r#"{"initial-strategy":"eager"}"#]));
    let pushed = Instant::now();
    assert!(out.contains("rollout 1") && out.contains("signed"), "{out}");
    let took = wait_until(Duration::from_secs(2), "a and b run the pushed fixed policy, eager", || {
        [&a, &b].iter().all(|x| x.policy_hash() == (fixed_hash.clone(), true) && x.strategy() == Strategy::Eager)
    })
    .await;
    eprintln!("signed push adopted by both instances {took:?} after the CLI returned ({:?} after push start)", pushed.elapsed());
    // The status records say so too (refreshed at the next tick after a change).
    let mut st = Value::Null;
    wait_until(Duration::from_secs(2), "the status records report fixed, eager", || {
        st = status(&url, ns);
        ["a", "b"].iter().all(|id| instance(&st, id)["strategy"] == "eager" && instance(&st, id)["sha256"] == fixed_hash.as_str())
    })
    .await;
    for id in ["a", "b"] {
        let s = instance(&st, id);
        assert_eq!((s["name"].as_str(), s["sha256"].as_str(), s["origin"].as_str(), s["strategy"].as_str(), s["trust"].as_str()),
            (Some("fixed"), Some(fixed_hash.as_str()), Some("pushed"), Some("eager"), Some("key")), "{s}");
        assert_eq!(s["host"], "rust");
    }
    let sc = instance(&st, "c");
    assert_eq!((sc["sha256"].as_str(), sc["trust"].as_str()), (Some(adaptive.as_str()), Some("none")), "{sc}");
    assert!(sc["rejected"]["reason"].as_str().unwrap().contains("no policy trust configured"), "{sc}");
    assert_eq!(c.policy_hash(), (adaptive.clone(), false));

    // Rollback: back to the local (adaptive) policies.
    let out = ok(aci(&["policy", "rollback", "--redis", &url, "--namespace", ns]));
    assert!(out.contains("rollout 2"), "{out}");
    wait_until(Duration::from_secs(2), "a and b back on adaptive", || [&a, &b].iter().all(|x| x.policy_hash() == (adaptive.clone(), false))).await;
    assert_eq!(a.policy_info().0, "adaptive");

    // An unsigned push: every instance refuses it, with the reason in its status record.
    let hostile = policy_file("hostile");
    let out = ok(aci(&["policy", "push", hostile.to_str().unwrap(), "--redis", &url, "--namespace", ns]));
    assert!(out.contains("unsigned"), "{out}");
    let mut st = Value::Null;
    wait_until(Duration::from_secs(3), "a and b report the unsigned rollout as refused", || {
        st = status(&url, ns);
        ["a", "b"].iter().all(|id| instance(&st, id)["rejected"]["rollout"] == 3)
    })
    .await;
    for id in ["a", "b"] {
        let s = instance(&st, id);
        assert!(s["rejected"]["reason"].as_str().unwrap().starts_with("unsigned"), "{s}");
        assert_eq!(s["sha256"].as_str(), Some(adaptive.as_str()), "{s}");
    }
    let human = ok(aci(&["policy", "status", "--redis", &url, "--namespace", ns]));
    assert!(human.contains("unsigned: this instance requires a signature"), "{human}");

    // A late joiner runs what the fleet runs: push fixed again (signed), then start one more.
    ok(aci(&["policy", "push", fixed.to_str().unwrap(), "--redis", &url, "--namespace", ns, "--key", secret.to_str().unwrap()]));
    let d = builder(&url, ns, "d").role(Role::Follower).policy_public_key(&public).build().await.unwrap();
    assert_eq!(d.policy_hash(), (fixed_hash.clone(), true), "a late joiner loads the fleet's policy before it serves");
    // A signature for another namespace does not verify here.
    let other = builder(&url, "other", "e").policy_public_key(&public).build().await.unwrap();
    let mut conn = redis::Client::open(url.as_str()).unwrap().get_multiplexed_async_connection().await.unwrap();
    let fields: std::collections::HashMap<String, String> = redis::cmd("HGETALL").arg("aci::shop:policy:current").query_async(&mut conn).await.unwrap();
    let mut copy = redis::cmd("HSET");
    copy.arg("aci::other:policy:current");
    for (k, v) in &fields {
        copy.arg(k).arg(v);
    }
    let _: () = copy.query_async(&mut conn).await.unwrap();
    let _: () = redis::cmd("SET").arg(format!("aci::other:policy:blob:{fixed_hash}")).arg(std::fs::read(&fixed).unwrap()).query_async(&mut conn).await.unwrap();
    let _: i64 = redis::cmd("PUBLISH").arg("aci:other:policy").arg(r#"{"action":"policy","rollout":99,"source":"replayer"}"#).query_async(&mut conn).await.unwrap();
    wait_until(Duration::from_secs(2), "e refuses a signature made for namespace shop", || {
        let st = status(&url, "other");
        instance(&st, "e")["rejected"]["reason"].as_str().is_some_and(|r| r.starts_with("bad signature"))
    })
    .await;
    assert_eq!(other.policy_hash(), (adaptive.clone(), false));
    for x in [a, b, c, d, other] {
        x.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_buffered_before_a_swap_are_published_not_lost() {
    let _serial = SERIAL.lock().await;
    let srv = RedisServer::start(&[]).unwrap();
    let url = srv.url();
    let dir = tempdir("buffered");
    let (secret, public) = keygen(&dir);
    let ns = "buf";
    // Batched with a 20 s interval and a 30 s local TTL: without the swap's drain, the reader
    // would stay stale for 20 s at least.
    let w = builder(&url, ns, "w").role(Role::Controller).policy(PolicySource::Fixed(Strategy::Batched)).batch_interval(Duration::from_secs(20))
        .local_ttl(Duration::from_secs(30)).policy_public_key(&public).build().await.unwrap();
    let r = builder(&url, ns, "r").role(Role::Follower).local_ttl(Duration::from_secs(30)).policy_public_key(&public).build().await.unwrap();
    wait_until(Duration::from_secs(2), "r follows batched", || r.strategy() == Strategy::Batched).await;
    let keys: Vec<String> = (0..50).map(|i| format!("k{i}")).collect();
    for k in &keys {
        w.set(k, "old", None).await.unwrap();
    }
    for k in &keys {
        assert_eq!(r.get_string(k).await.unwrap().as_deref(), Some("old"));
    }
    for k in &keys {
        w.set(k, "new", None).await.unwrap();
    }
    assert_eq!(r.get_string("k0").await.unwrap().as_deref(), Some("old"), "buffered, not yet published");
    let fixed = policy_file("fixed");
    ok(aci(&["policy", "push", fixed.to_str().unwrap(), "--redis", &url, "--namespace", ns, "--key", secret.to_str().unwrap(),
        "--config", r#"{"initial-strategy":"eager"}"#]));
    let t = Instant::now();
    loop {
        let mut stale = Vec::new();
        for k in &keys {
            if r.get_string(k).await.unwrap().as_deref() != Some("new") {
                stale.push(k.clone());
            }
        }
        if stale.is_empty() {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(3), "keys buffered before the swap never reached the reader: {stale:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!("all 50 keys buffered before the swap reached the reader {:?} after the push", t.elapsed());
    assert_eq!(w.policy_info().0, "fixed");
    // The swap keeps the strategy in force (WIRE 9.6); the new policy's own choice takes effect
    // at the controller's next tick, which may come after the reader has already caught up.
    wait_until(Duration::from_secs(2), "w switches to the fixed policy's eager", || w.strategy() == Strategy::Eager).await;
    w.shutdown().await.unwrap();
    r.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_canary_rolls_itself_and_the_fleet_back_and_never_reaches_the_rest() {
    let _serial = SERIAL.lock().await;
    let srv = RedisServer::start(&[]).unwrap();
    let url = srv.url();
    let dir = tempdir("canary");
    let (secret, public) = keygen(&dir);
    let ns = "can";
    // Ids sort so that `--canary 1` picks "a-canary".
    let canary = builder(&url, ns, "a-canary").role(Role::Follower).policy_public_key(&public).build().await.unwrap();
    let rest = builder(&url, ns, "b-rest").role(Role::Controller).policy_public_key(&public).build().await.unwrap();
    let adaptive = sha256_hex(aci_cache::policy::ADAPTIVE_WASM);
    let hostile = policy_file("hostile");
    let hostile_hash = sha256_hex(&std::fs::read(&hostile).unwrap());
    // Wait for both status records: the canary is picked from them.
    wait_until(Duration::from_secs(3), "both instances report", || status(&url, ns)["instances"].as_array().unwrap().len() == 2).await;
    // The pushing CLI waits for the canary (30 s), so it runs in the background; the fleet must
    // roll back without it.
    let mut push = Command::new(env!("CARGO_BIN_EXE_aci"))
        .args(["policy", "push", hostile.to_str().unwrap(), "--redis", &url, "--namespace", ns, "--key", secret.to_str().unwrap(),
            "--canary", "1", "--canary-secs", "30"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let never_rest = |rest: &AciCache| assert_eq!(rest.policy_hash(), (adaptive.clone(), false), "the hostile policy reached a non-canary instance");
    wait_until(Duration::from_secs(5), "the canary runs the hostile policy", || {
        never_rest(&rest);
        canary.policy_hash().0 == hostile_hash
    })
    .await;
    // Writes that make the hostile policy loop: each call is stopped by its fuel budget, the
    // write still succeeds (eager), and the third fault rolls back.
    for _ in 0..3 {
        canary.set("hostile:loop", "x", None).await.unwrap();
        never_rest(&rest);
    }
    wait_until(Duration::from_secs(3), "the canary reverted to adaptive", || canary.policy_hash() == (adaptive.clone(), false)).await;
    let mut st = Value::Null;
    wait_until(Duration::from_secs(3), "the record names the automatic rollback", || {
        st = status(&url, ns);
        st["record"]["reason"].as_str().is_some_and(|r| r.starts_with("auto-rollback: a-canary"))
    })
    .await;
    assert_eq!(st["record"]["target"]["sha256"], "", "{st}");
    assert_eq!(st["record"]["canary"], serde_json::json!([]), "{st}");
    assert!(st["bad"][&hostile_hash].as_str().is_some_and(|r| r.contains("faults")), "{st}");
    let c = instance(&st, "a-canary");
    assert_eq!(c["rejected"]["sha256"].as_str(), Some(hostile_hash.as_str()), "{c}");
    let code = {
        let t = Instant::now();
        loop {
            if let Some(s) = push.try_wait().unwrap() {
                break s.code();
            }
            assert!(t.elapsed() < Duration::from_secs(5), "the pushing CLI did not notice the rollback");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    let err = String::from_utf8_lossy(&push.wait_with_output().unwrap().stderr).to_string();
    assert_eq!(code, Some(1), "{err}");
    // The CLI sees the record replaced, or (reading in between) the canary's refusal first.
    assert!(err.contains("replaced before promotion") || err.contains("refused rollout 1"), "{err}");
    // Rolling back to the bad hash is refused: it is on the bad list.
    ok(aci(&["policy", "rollback", "--redis", &url, "--namespace", ns]));
    wait_until(Duration::from_secs(3), "both refuse the bad hash", || {
        let st = status(&url, ns);
        instance(&st, "a-canary")["rejected"]["reason"].as_str().is_some_and(|r| r.starts_with("marked bad"))
            && instance(&st, "b-rest")["rejected"]["reason"].as_str().is_some_and(|r| r.starts_with("marked bad"))
    })
    .await;
    never_rest(&rest);
    assert_eq!(canary.policy_hash(), (adaptive.clone(), false));
    canary.set("after", "ok", None).await.unwrap();
    canary.shutdown().await.unwrap();
    rest.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_reaches_a_cluster_fleet_through_its_sharded_announcement() {
    // docs/WIRE.md 10.1: on a cluster the announcement travels on `{P}:policy` by SPUBLISH
    // (the record script's own PUBLISH is classic); the status records spread over the slots.
    let _serial = SERIAL.lock().await;
    let c = aci_testkit::RedisCluster::start().expect("redis-server and redis-cli for the cluster");
    let seeds = c.urls();
    let cluster = seeds.join(",");
    let dir = tempdir("cluster");
    let (secret, public) = keygen(&dir);
    let ns = "cshop";
    let on_cluster = |id: &str| AciCache::builder().redis_cluster(seeds.clone()).namespace(ns).instance_id(id).tick(Duration::from_millis(50));
    let a = on_cluster("a").role(Role::Controller).policy_public_key(&public).build().await.unwrap();
    let b = on_cluster("b").role(Role::Follower).policy_public_key(&public).build().await.unwrap();
    let adaptive = sha256_hex(aci_cache::policy::ADAPTIVE_WASM);
    let fixed = policy_file("fixed");
    let fixed_hash = sha256_hex(&std::fs::read(&fixed).unwrap());
    aci_cache::policy::PolicyModule::from_file(&fixed, Default::default()).unwrap();
    let status = || -> Value {
        let out = ok(aci(&["policy", "status", "--cluster", &cluster, "--namespace", ns, "--json"]));
        serde_json::from_str(out.lines().next().unwrap()).unwrap()
    };
    wait_until(Duration::from_secs(3), "both status records listed (they live on several masters)", || {
        status()["instances"].as_array().is_some_and(|v| v.len() == 2)
    })
    .await;

    let out = ok(aci(&["policy", "push", fixed.to_str().unwrap(), "--cluster", &cluster, "--namespace", ns, "--key", secret.to_str().unwrap(),
        "--config", r#"{"initial-strategy":"eager"}"#]));
    assert!(out.contains("rollout 1") && out.contains("signed"), "{out}");
    // Well inside the 10 s periodic read: the sharded announcement is what the instances heard.
    let took = wait_until(Duration::from_secs(2), "a and b run the pushed policy", || {
        [&a, &b].iter().all(|x| x.policy_hash() == (fixed_hash.clone(), true) && x.strategy() == Strategy::Eager)
    })
    .await;
    eprintln!("cluster: signed push adopted {took:?} after the CLI returned");
    wait_until(Duration::from_secs(2), "the status records report the pushed policy", || {
        let st = status();
        ["a", "b"].iter().all(|id| instance(&st, id)["sha256"] == fixed_hash.as_str() && instance(&st, id)["origin"] == "pushed")
    })
    .await;

    let out = ok(aci(&["policy", "rollback", "--cluster", &cluster, "--namespace", ns]));
    assert!(out.contains("rollout 2"), "{out}");
    wait_until(Duration::from_secs(2), "a and b back on adaptive", || [&a, &b].iter().all(|x| x.policy_hash() == (adaptive.clone(), false))).await;
    assert!(a.stats().malformed == 0 && b.stats().malformed == 0, "announcements decode as announcements, not as fleet messages");
    for x in [a, b] {
        x.shutdown().await.unwrap();
    }
}
