//! The `aci` command line, run as a user would: the demo, and the node driver (docs/NODE.md)
//! against a real redis-server.

#[test]
fn demo_starts_its_own_redis_shows_all_three_strategies_and_exits() {
    // No --redis: the demo starts (and stops) a private redis-server. No terminal: plain lines.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_aci"))
        .args(["demo", "--speed", "0.6"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("strategies seen: batched, eager, ttl"), "{stdout}\n{stderr}");
    assert!(!stdout.contains('\x1b'), "escape codes without a terminal");
    assert!(stdout.lines().filter(|l| l.starts_with("t=")).count() >= 10, "{stdout}");
    // The measured ending: all-ttl, all-eager and adaptive on the same ramp.
    for run in ["ttl", "eager", "adaptive"] {
        assert!(stdout.lines().any(|l| l.trim_start().starts_with(run) && l.contains("messages") && l.contains("staleness p99")), "{stdout}");
    }
    assert!(stdout.contains("adaptive sent") && stdout.contains("of all-eager's messages"), "{stdout}");
}


use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use aci_cache::{AciCache, Role};
use aci_testkit::RedisServer;
use serde_json::Value;

/// An `aci node` process and its pipes.
struct Node {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    ready: Value,
}

impl Node {
    fn start(args: &[&str]) -> Node {
        let mut child = Command::new(env!("CARGO_BIN_EXE_aci"))
            .arg("node")
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        let ready: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("ready line `{line}`: {e}"));
        Node { child, stdin, stdout, ready }
    }

    fn cmd(&mut self, line: &str) -> Value {
        writeln!(self.stdin, "{line}").unwrap();
        self.stdin.flush().unwrap();
        let mut out = String::new();
        self.stdout.read_line(&mut out).unwrap();
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("answer to `{line}`: `{out}`: {e}"))
    }

    fn wait(&mut self, limit: Duration) -> i32 {
        let end = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code().unwrap_or(-1);
            }
            assert!(Instant::now() < end, "the node did not exit within {limit:?}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn node_speaks_the_driver_protocol() {
    let srv = RedisServer::start(&[]).unwrap();
    let mut n = Node::start(&["--redis", &srv.url(), "--namespace", "drv", "--role", "controller", "--instance-id", "node-1",
        "--tick-ms", "100", "--local-ttl-ms", "3000"]);
    assert_eq!(n.ready, serde_json::json!({"ready": true, "instance_id": "node-1", "host": "rust", "protocol": 2}));
    assert_eq!(n.cmd("set k v1"), serde_json::json!({"ok": true}));
    assert_eq!(n.cmd("set t v2 150"), serde_json::json!({"ok": true}));
    assert_eq!(n.cmd("get k"), serde_json::json!({"value": "v1"}));
    std::thread::sleep(Duration::from_millis(250));
    assert_eq!(n.cmd("get t"), serde_json::json!({"value": null}), "TTL_MS is the Redis TTL");
    assert_eq!(n.cmd("del k"), serde_json::json!({"ok": true}));
    assert_eq!(n.cmd("get k"), serde_json::json!({"value": null}));
    assert_eq!(n.cmd("strategy"), serde_json::json!({"strategy": "ttl"}));
    assert!(n.cmd("set k v 0")["error"].is_string());
    assert!(n.cmd("frobnicate")["error"].is_string());
    let st = n.cmd("stats");
    for f in ["reads", "l1_hits", "l1_misses", "writes", "messages_sent", "pubsub_received", "messages_received",
        "invalidations_applied", "gaps", "malformed", "is_controller", "strategy"] {
        assert!(st.get(f).is_some(), "stats lacks {f}: {st}");
    }
    assert_eq!(st["is_controller"], true);
    assert!(st["pubsub_received"].as_u64().unwrap() >= 1, "its own heartbeat at least: {st}");
    assert_eq!(n.cmd("quit"), serde_json::json!({"bye": true}));
    assert_eq!(n.wait(Duration::from_secs(5)), 0);
}

#[test]
fn a_bad_node_flag_is_one_line_and_exit_code_2() {
    for args in [&["--role", "boss"][..], &["--tick-ms", "0"], &["--bogus", "1"], &["--strategy", "lazy"], &["--redis"]] {
        let out = Command::new(env!("CARGO_BIN_EXE_aci")).arg("node").args(args).stdin(Stdio::null()).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: {err}");
        assert!(out.stdout.is_empty(), "{args:?}");
    }
}

#[test]
fn sigterm_publishes_the_pending_batch() {
    // A node under the fixed batched policy holds a batch (interval 2.5 s); SIGTERM must
    // publish it, so a reader elsewhere sees the new value within the batched bound, not after
    // its local TTL (60 s here).
    let srv = RedisServer::start(&[]).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let reader = rt
        .block_on(AciCache::builder().redis_url(srv.url()).namespace("term").role(Role::Follower).local_ttl(Duration::from_secs(60)).build())
        .unwrap();
    let mut n = Node::start(&["--redis", &srv.url(), "--namespace", "term", "--role", "controller", "--strategy", "batched"]);
    assert_eq!(n.cmd("set k old"), serde_json::json!({"ok": true}));
    std::thread::sleep(Duration::from_millis(3000)); // the old value's batch goes out
    assert_eq!(rt.block_on(reader.get_string("k")).unwrap().as_deref(), Some("old"));
    assert_eq!(n.cmd("set k new"), serde_json::json!({"ok": true}));
    let written = Instant::now();
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(rt.block_on(reader.get_string("k")).unwrap().as_deref(), Some("old"), "still buffered");
    let killed = Command::new("kill").arg("-TERM").arg(n.child.id().to_string()).status().unwrap();
    assert!(killed.success());
    assert_eq!(n.wait(Duration::from_secs(5)), 0, "a graceful exit");
    let bound = Duration::from_millis(2500 + 250 + 300);
    loop {
        if rt.block_on(reader.get_string("k")).unwrap().as_deref() == Some("new") {
            break;
        }
        assert!(written.elapsed() < bound, "reader still stale {:?} after the write", written.elapsed());
        std::thread::sleep(Duration::from_millis(10));
    }
    eprintln!("reader saw the value {:?} after the write (SIGTERM at ~100 ms)", written.elapsed());
    rt.block_on(reader.shutdown()).unwrap();
}

#[test]
fn two_nodes_on_a_cluster_see_each_others_writes() {
    let c = aci_testkit::RedisCluster::start().expect("redis-server and redis-cli for the cluster");
    // Two seeds are enough: the rest of the cluster is discovered.
    let seeds = c.urls()[..2].join(",");
    let args = |id: &str| -> Vec<String> {
        ["--cluster", &seeds, "--namespace", "drvc", "--strategy", "eager", "--tick-ms", "100", "--instance-id", id]
            .iter().map(|s| s.to_string()).collect()
    };
    let a_args = args("node-a");
    let b_args = args("node-b");
    let mut a = Node::start(&a_args.iter().map(String::as_str).collect::<Vec<_>>());
    let mut b = Node::start(&b_args.iter().map(String::as_str).collect::<Vec<_>>());
    for k in 0..10 {
        assert_eq!(a.cmd(&format!("set k{k} v1")), serde_json::json!({"ok": true}));
        assert_eq!(b.cmd(&format!("get k{k}")), serde_json::json!({"value": "v1"}));
        assert_eq!(a.cmd(&format!("set k{k} v2")), serde_json::json!({"ok": true}));
        let end = Instant::now() + Duration::from_secs(1);
        while b.cmd(&format!("get k{k}")) != serde_json::json!({"value": "v2"}) {
            assert!(Instant::now() < end, "node-b never saw k{k}=v2");
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    assert!(b.cmd("stats")["invalidations_applied"].as_u64().unwrap() >= 10);
    assert_eq!(a.cmd("quit"), serde_json::json!({"bye": true}));
    assert_eq!(b.cmd("quit"), serde_json::json!({"bye": true}));
}

#[test]
fn demo_cluster_starts_its_own_cluster_shows_the_strategies_and_a_failover_and_exits() {
    let t = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_aci")).args(["demo", "--cluster"]).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("strategies seen: batched, eager, ttl"), "{stdout}\n{stderr}");
    assert!(stdout.contains(">>> killed master"), "{stdout}");
    assert!(stdout.contains("failover: replica"), "the failover completed: {stdout}");
    assert!(t.elapsed() < Duration::from_secs(90), "ends by itself: {:?}", t.elapsed());
}
