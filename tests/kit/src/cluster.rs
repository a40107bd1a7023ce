//! A private Redis Cluster on loopback: 3 masters + 3 replicas (by default), each a
//! `redis-server --cluster-enabled yes` process, joined with `redis-cli --cluster create`, with a
//! low `cluster-node-timeout` so a killed master's replica is promoted within seconds. What the
//! cluster tests, `aci demo --cluster` and `aci bench --cluster` run against. Every process is
//! stopped and every folder removed on drop.
//!
//! The binaries come from `ACI_REDIS_SERVER` / `ACI_REDIS_CLI` when set (Valkey's
//! `valkey-server` and `valkey-cli` create clusters the same way), else `redis-server` /
//! `redis-cli` on PATH.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::redis_server::server_binary;

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("cannot start {binary} (set ACI_REDIS_SERVER / ACI_REDIS_CLI, or install redis-server): {detail}")]
    NotInstalled { binary: String, detail: String },
    #[error("cluster node on port {port} did not start: {detail}")]
    NoStart { port: u16, detail: String },
    #[error("`{cli} --cluster create` failed: {detail}")]
    Create { cli: String, detail: String },
    #[error("cluster not ready: {0}")]
    NotReady(String),
    #[error("node {port}: {detail}")]
    Node { port: u16, detail: String },
}

/// The CLI that creates and reshards clusters.
pub fn cli_binary() -> String {
    std::env::var("ACI_REDIS_CLI").ok().filter(|s| !s.is_empty()).unwrap_or_else(|| "redis-cli".to_string())
}

/// A reply of the tiny RESP2 client below (enough for CLUSTER INFO/SLOTS/NODES, INFO, PING).
#[derive(Clone, Debug, PartialEq)]
pub enum Reply {
    Status(String),
    Error(String),
    Int(i64),
    Bulk(Option<Vec<u8>>),
    Array(Option<Vec<Reply>>),
}

impl Reply {
    pub fn text(&self) -> String {
        match self {
            Reply::Status(s) | Reply::Error(s) => s.clone(),
            Reply::Int(i) => i.to_string(),
            Reply::Bulk(Some(b)) => String::from_utf8_lossy(b).into_owned(),
            Reply::Bulk(None) | Reply::Array(None) => String::new(),
            Reply::Array(Some(v)) => v.iter().map(Reply::text).collect::<Vec<_>>().join(" "),
        }
    }
}

fn read_reply(r: &mut impl BufRead) -> std::io::Result<Reply> {
    let mut line = String::new();
    r.read_line(&mut line)?;
    let line = line.trim_end_matches(['\r', '\n']);
    let bad = || std::io::Error::new(std::io::ErrorKind::InvalidData, format!("bad reply line {line:?}"));
    let (kind, rest) = line.split_at_checked(1).ok_or_else(bad)?;
    Ok(match kind {
        "+" => Reply::Status(rest.to_string()),
        "-" => Reply::Error(rest.to_string()),
        ":" => Reply::Int(rest.parse().map_err(|_| bad())?),
        "$" => {
            let n: i64 = rest.parse().map_err(|_| bad())?;
            if n < 0 {
                Reply::Bulk(None)
            } else {
                let mut buf = vec![0u8; n as usize + 2];
                r.read_exact(&mut buf)?;
                buf.truncate(n as usize);
                Reply::Bulk(Some(buf))
            }
        }
        "*" => {
            let n: i64 = rest.parse().map_err(|_| bad())?;
            if n < 0 {
                Reply::Array(None)
            } else {
                let mut v = Vec::with_capacity(n as usize);
                for _ in 0..n {
                    v.push(read_reply(r)?);
                }
                Reply::Array(Some(v))
            }
        }
        _ => return Err(bad()),
    })
}

/// One command on a fresh connection to `127.0.0.1:port` (a test tool: no pooling).
pub fn command(port: u16, args: &[&str]) -> std::io::Result<Reply> {
    let mut s = TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut req = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        req.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        req.extend_from_slice(a.as_bytes());
        req.extend_from_slice(b"\r\n");
    }
    s.write_all(&req)?;
    read_reply(&mut BufReader::new(s))
}

/// `field:value` lines of an INFO-style reply.
pub fn info_field(text: &str, field: &str) -> Option<String> {
    text.lines().find_map(|l| l.strip_prefix(field).and_then(|r| r.strip_prefix(':')).map(|v| v.trim().to_string()))
}

/// The hash slot of a key (CRC16/XMODEM of the key, or of its `{hash tag}`, mod 16384).
pub fn key_slot(key: &[u8]) -> u16 {
    let k = match key.iter().position(|&b| b == b'{') {
        Some(open) => match key[open + 1..].iter().position(|&b| b == b'}') {
            Some(len) if len > 0 => &key[open + 1..open + 1 + len],
            _ => key,
        },
        None => key,
    };
    let mut crc: u16 = 0;
    for &b in k {
        crc ^= (b as u16) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 { (crc << 1) ^ 0x1021 } else { crc << 1 };
        }
    }
    crc % 16384
}

struct Node {
    port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

pub struct RedisCluster {
    nodes: Vec<Node>,
    node_timeout_ms: u64,
    replicas_per_master: usize,
    root: PathBuf,
}

/// A port whose cluster bus port (port + 10000) is free as well.
fn free_pair(taken: &[u16]) -> Option<u16> {
    for _ in 0..200 {
        let l = TcpListener::bind("127.0.0.1:0").ok()?;
        let p = l.local_addr().ok()?.port();
        drop(l);
        // Ephemeral ports can be above 55535: take a port in 20000..45000 near it instead.
        let p = 20000 + (p as u32 * 7919 % 25000) as u16;
        if taken.contains(&p) {
            continue;
        }
        if TcpListener::bind(("127.0.0.1", p)).is_ok() && TcpListener::bind(("127.0.0.1", p + 10000)).is_ok() {
            return Some(p);
        }
    }
    None
}

impl RedisCluster {
    /// 3 masters + 3 replicas, node timeout 1000 ms.
    pub fn start() -> Result<RedisCluster, ClusterError> {
        Self::start_with(3, 1, 1000)
    }

    pub fn start_with(masters: usize, replicas_per_master: usize, node_timeout_ms: u64) -> Result<RedisCluster, ClusterError> {
        let n = masters * (1 + replicas_per_master);
        let root = std::env::temp_dir().join(format!("aci-cluster-{}-{}", std::process::id(), Instant::now().elapsed().as_nanos() ^ rand_ish()));
        let mut c = RedisCluster { nodes: Vec::new(), node_timeout_ms, replicas_per_master, root };
        let mut taken = Vec::new();
        for _ in 0..n {
            let port = free_pair(&taken).ok_or_else(|| ClusterError::NoStart { port: 0, detail: "no free port pair".into() })?;
            taken.push(port);
            let dir = c.root.join(port.to_string());
            std::fs::create_dir_all(&dir).map_err(|e| ClusterError::NoStart { port, detail: e.to_string() })?;
            c.nodes.push(Node { port, dir, child: None });
        }
        for i in 0..n {
            c.spawn(i)?;
        }
        for i in 0..n {
            c.wait_up(i)?;
        }
        let cli = cli_binary();
        let addrs: Vec<String> = c.nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)).collect();
        let out = Command::new(&cli)
            .arg("--cluster")
            .arg("create")
            .args(&addrs)
            .args(["--cluster-replicas", &replicas_per_master.to_string(), "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| ClusterError::NotInstalled { binary: cli.clone(), detail: e.to_string() })?;
        if !out.status.success() {
            let detail = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
            return Err(ClusterError::Create { cli, detail: detail.chars().rev().take(600).collect::<String>().chars().rev().collect() });
        }
        // Ready in 2-5 s when the machine is quiet; the margin is for a CI machine that is not.
        c.wait_ok(Duration::from_secs(60))?;
        Ok(c)
    }

    fn spawn(&mut self, i: usize) -> Result<(), ClusterError> {
        let bin = server_binary();
        let node = &mut self.nodes[i];
        let child = Command::new(&bin)
            .args(["--port", &node.port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"])
            .args(["--cluster-node-timeout", &self.node_timeout_ms.to_string()])
            // A replica syncs at once, not after the default 5 s wait for other replicas to
            // share the transfer: each master here has its own few replicas.
            .args(["--repl-diskless-sync-delay", "0"])
            // ... and loads it from the socket: no temp file and fsync on a disk that a parallel
            // build may be saturating.
            .args(["--repl-diskless-load", "on-empty-db"])
            // The log is what explains a node that never became ready (see `wait_ok`).
            .args(["--loglevel", "notice", "--logfile"])
            .arg(node.dir.join("node.log"))
            .arg("--dir")
            .arg(&node.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| ClusterError::NotInstalled { binary: bin, detail: e.to_string() })?;
        node.child = Some(child);
        Ok(())
    }

    fn wait_up(&mut self, i: usize) -> Result<(), ClusterError> {
        let port = self.nodes[i].port;
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if matches!(command(port, &["PING"]), Ok(Reply::Status(_))) {
                return Ok(());
            }
            if let Some(Ok(Some(status))) = self.nodes[i].child.as_mut().map(|c| c.try_wait()) {
                return Err(ClusterError::NoStart { port, detail: format!("exited with {status}") });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err(ClusterError::NoStart { port, detail: "not answering PING after 10 s".into() })
    }

    /// Until every running node reports `cluster_state:ok`, all 16384 slots served, and the
    /// same view of which node serves each slot.
    pub fn wait_ok(&self, timeout: Duration) -> Result<(), ClusterError> {
        let deadline = Instant::now() + timeout;
        let mut last = String::new();
        while Instant::now() < deadline {
            match self.check_ok(true) {
                Ok(()) => return Ok(()),
                Err(why) => last = why,
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(ClusterError::NotReady(format!("{last} (after {timeout:?}){}", self.log_tails(8))))
    }

    /// The last `lines` lines of every node's log, for an error that must explain itself: a
    /// cluster that did not become ready on a CI machine cannot be looked at afterwards.
    fn log_tails(&self, lines: usize) -> String {
        let mut out = String::new();
        for n in &self.nodes {
            let log = std::fs::read_to_string(n.dir.join("node.log")).unwrap_or_default();
            let all: Vec<&str> = log.lines().collect();
            out.push_str(&format!("\n--- node {} ({}) log:", n.port, if n.child.is_some() { "running" } else { "stopped" }));
            for l in &all[all.len().saturating_sub(lines)..] {
                out.push_str("\n    ");
                out.push_str(l);
            }
        }
        out
    }

    /// With `replicas`, every master must also have its replicas attached.
    fn check_ok(&self, replicas: bool) -> Result<(), String> {
        let mut views = Vec::new();
        for n in self.nodes.iter().filter(|n| n.child.is_some()) {
            let info = command(n.port, &["CLUSTER", "INFO"]).map_err(|e| format!("{}: {e}", n.port))?.text();
            if info_field(&info, "cluster_state").as_deref() != Some("ok") || info_field(&info, "cluster_slots_ok").as_deref() != Some("16384") {
                return Err(format!("{}: {}", n.port, info.lines().take(3).collect::<Vec<_>>().join(" ")));
            }
            let role = command(n.port, &["INFO", "replication"]).map_err(|e| format!("{}: {e}", n.port))?.text();
            if !replicas {
            } else if info_field(&role, "role").as_deref() == Some("master") {
                let have: usize = info_field(&role, "connected_slaves").and_then(|v| v.parse().ok()).unwrap_or(0);
                if have < self.replicas_per_master {
                    return Err(format!("{}: {have} replicas connected", n.port));
                }
            } else if info_field(&role, "master_link_status").as_deref() != Some("up") {
                return Err(format!("{}: replica link down", n.port));
            }
            // The node must also be serving (not loading) and agree with the others.
            views.push(self.slot_masters_seen_by(n.port).map_err(|e| e.to_string())?);
        }
        if views.windows(2).any(|w| w[0] != w[1]) {
            return Err("nodes disagree on slot owners".into());
        }
        Ok(())
    }

    /// (first slot, last slot, master port) as `port` sees it, sorted.
    pub fn slot_masters_seen_by(&self, port: u16) -> Result<Vec<(u16, u16, u16)>, ClusterError> {
        let r = command(port, &["CLUSTER", "SLOTS"]).map_err(|e| ClusterError::Node { port, detail: e.to_string() })?;
        let Reply::Array(Some(ranges)) = r else {
            return Err(ClusterError::Node { port, detail: format!("CLUSTER SLOTS: {r:?}") });
        };
        let mut v = Vec::new();
        for range in ranges {
            if let Reply::Array(Some(items)) = range {
                if let (Some(Reply::Int(a)), Some(Reply::Int(b)), Some(Reply::Array(Some(m)))) = (items.first(), items.get(1), items.get(2)) {
                    if let Some(Reply::Int(p)) = m.get(1) {
                        v.push((*a as u16, *b as u16, *p as u16));
                    }
                }
            }
        }
        v.sort();
        Ok(v)
    }

    pub fn ports(&self) -> Vec<u16> {
        self.nodes.iter().map(|n| n.port).collect()
    }

    /// `redis://127.0.0.1:P` of every node: seed URLs for a cluster client.
    pub fn urls(&self) -> Vec<String> {
        self.ports().into_iter().map(|p| format!("redis://127.0.0.1:{p}")).collect()
    }

    /// The node timeout this cluster runs with.
    pub fn node_timeout(&self) -> Duration {
        Duration::from_millis(self.node_timeout_ms)
    }

    /// Ports of the running masters (as a running node sees them).
    pub fn masters(&self) -> Result<Vec<u16>, ClusterError> {
        let port = self.any_running()?;
        let mut m: Vec<u16> = self.slot_masters_seen_by(port)?.into_iter().map(|(_, _, p)| p).collect();
        m.sort();
        m.dedup();
        Ok(m)
    }

    fn any_running(&self) -> Result<u16, ClusterError> {
        self.nodes.iter().find(|n| n.child.is_some()).map(|n| n.port).ok_or_else(|| ClusterError::NotReady("no node running".into()))
    }

    /// The port of the master serving `key`'s slot.
    pub fn master_of(&self, key: &str) -> Result<u16, ClusterError> {
        let slot = key_slot(key.as_bytes());
        let port = self.any_running()?;
        self.slot_masters_seen_by(port)?
            .into_iter()
            .find(|(a, b, _)| (*a..=*b).contains(&slot))
            .map(|(_, _, p)| p)
            .ok_or_else(|| ClusterError::NotReady(format!("slot {slot} is not served")))
    }

    fn index(&self, port: u16) -> Result<usize, ClusterError> {
        self.nodes.iter().position(|n| n.port == port).ok_or(ClusterError::Node { port, detail: "not a node of this cluster".into() })
    }

    /// SIGKILL: a crash. The node's data is gone (no persistence).
    pub fn kill(&mut self, port: u16) -> Result<(), ClusterError> {
        let i = self.index(port)?;
        if let Some(mut c) = self.nodes[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        Ok(())
    }

    /// The process id of a running node.
    fn pid(&self, port: u16) -> Result<u32, ClusterError> {
        let i = self.index(port)?;
        self.nodes[i].child.as_ref().map(|c| c.id()).ok_or(ClusterError::Node { port, detail: "not running".into() })
    }

    fn signal(&self, port: u16, sig: &str) -> Result<(), ClusterError> {
        let pid = self.pid(port)?;
        let ok = Command::new("kill").args([sig, &pid.to_string()]).status().map(|s| s.success()).unwrap_or(false);
        if ok { Ok(()) } else { Err(ClusterError::Node { port, detail: format!("kill {sig} {pid} failed") }) }
    }

    /// SIGSTOP: the node stops reading anything, replication included (a replica that falls
    /// behind its master).
    pub fn pause(&self, port: u16) -> Result<(), ClusterError> {
        self.signal(port, "-STOP")
    }

    /// SIGCONT after [`pause`](Self::pause).
    pub fn resume(&self, port: u16) -> Result<(), ClusterError> {
        self.signal(port, "-CONT")
    }

    /// The port of a replica of the master on `master` (from `CLUSTER NODES`).
    pub fn replica_of(&self, master: u16) -> Result<u16, ClusterError> {
        let err = |e: std::io::Error| ClusterError::Node { port: master, detail: e.to_string() };
        let id = command(master, &["CLUSTER", "MYID"]).map_err(err)?.text();
        let nodes = command(master, &["CLUSTER", "NODES"]).map_err(err)?.text();
        nodes
            .lines()
            .map(|l| l.split(' ').collect::<Vec<_>>())
            .find(|f| f.len() > 3 && f[2].contains("slave") && f[3] == id)
            .and_then(|f| f[1].split('@').next()?.rsplit(':').next()?.parse().ok())
            .ok_or_else(|| ClusterError::NotReady(format!("no replica of {master}")))
    }

    /// Starts a killed node again (same port, same nodes.conf: it rejoins with its old id,
    /// empty, as a replica if it was failed over meanwhile).
    pub fn restart(&mut self, port: u16) -> Result<(), ClusterError> {
        let i = self.index(port)?;
        self.kill(port)?;
        self.spawn(i)?;
        self.wait_up(i)
    }

    /// Waits until `slot`'s master is a node other than `old` and every running node agrees
    /// and is ok; returns the new master's port.
    pub fn wait_new_master(&self, key: &str, old: u16, timeout: Duration) -> Result<u16, ClusterError> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(m) = self.master_of(key) {
                if m != old && self.check_ok(false).is_ok() {
                    return Ok(m);
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err(ClusterError::NotReady(format!("no replica of {old} was promoted within {timeout:?}")))
    }

    /// Moves `slots` slots from the master `from` to the master `to` with
    /// `redis-cli --cluster reshard` (keys migrate with MIGRATE; clients see ASK/MOVED).
    pub fn reshard(&self, from: u16, to: u16, slots: u32) -> Result<(), ClusterError> {
        let id = |port: u16| -> Result<String, ClusterError> {
            Ok(command(port, &["CLUSTER", "MYID"]).map_err(|e| ClusterError::Node { port, detail: e.to_string() })?.text())
        };
        let cli = cli_binary();
        let out = Command::new(&cli)
            .args(["--cluster", "reshard", &format!("127.0.0.1:{from}")])
            .args(["--cluster-from", &id(from)?, "--cluster-to", &id(to)?])
            .args(["--cluster-slots", &slots.to_string(), "--cluster-yes", "--cluster-pipeline", "100"])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| ClusterError::NotInstalled { binary: cli.clone(), detail: e.to_string() })?;
        if !out.status.success() {
            return Err(ClusterError::Node { port: from, detail: format!("reshard: {}", String::from_utf8_lossy(&out.stdout).lines().rev().take(5).collect::<Vec<_>>().join(" | ")) });
        }
        Ok(())
    }

    /// A field of `INFO <section>` on one node.
    pub fn info(&self, port: u16, section: &str, field: &str) -> Option<String> {
        let text = command(port, &["INFO", section]).ok()?.text();
        info_field(&text, field)
    }

    /// A field of `CLUSTER INFO` on one node.
    pub fn cluster_info(&self, port: u16, field: &str) -> Option<String> {
        let text = command(port, &["CLUSTER", "INFO"]).ok()?.text();
        info_field(&text, field)
    }
}

fn rand_ish() -> u128 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0)
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            if let Some(mut c) = n.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_slots_match_redis() {
        // Values from the Redis Cluster spec and `CLUSTER KEYSLOT`.
        assert_eq!(key_slot(b"123456789"), 12739);
        assert_eq!(key_slot(b"foo"), 12182);
        assert_eq!(key_slot(b"{user1000}.following"), key_slot(b"user1000"));
        assert_eq!(key_slot(b"foo{}{bar}"), key_slot(b"foo{}{bar}"));
        assert_ne!(key_slot(b"foo{}{bar}"), key_slot(b"bar"));
    }

    #[test]
    fn not_ready_says_which_node_and_shows_the_logs() {
        let mut c = RedisCluster::start().expect("redis-server and redis-cli must be installed");
        let master = c.masters().unwrap()[0];
        let replica = c.replica_of(master).unwrap();
        c.kill(replica).unwrap();
        let err = c.wait_ok(Duration::from_millis(300)).unwrap_err().to_string();
        // The master lost its replica (or the cluster state changed first); either way the
        // error names a node, and carries every node's log, the killed one's included.
        assert!(err.contains(&format!("--- node {replica} (stopped) log:")), "{err}");
        assert!(err.contains(&format!("--- node {master} (running) log:")), "{err}");
        assert!(err.to_lowercase().contains("sync"), "the logs are the nodes' own: {err}");
    }
}
