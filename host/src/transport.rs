//! How the cache reaches Redis: one server (direct connections, `direct.rs`, plus a Pub/Sub
//! connection) or
//! a Redis Cluster (docs/WIRE.md section 10). The cache and the fleet protocol talk to
//! [`Conn`] and [`Subscription`] only, so they are the same code on both.
//!
//! On a cluster:
//! - keys hash to their slots as usual; every fleet channel of a namespace carries the hash tag
//!   `{P}`, so all of them live in one slot: one subscription connection, one shard, the order
//!   of a sender's messages kept across channels, and our own heartbeat proves the whole
//!   subscription alive;
//! - fleet messages travel on sharded Pub/Sub (`SPUBLISH`/`SSUBSCRIBE`, Redis >= 7.0) by
//!   default: classic `PUBLISH` is copied to every node of the cluster;
//! - a pipeline whose commands fall in different slots is sent as consecutive single-slot
//!   pipelines, each after the previous one was answered: an eager `SET` is acknowledged before
//!   its `SPUBLISH` leaves, so no reader can hear the invalidation, re-read the old value and
//!   cache it (the single-server pipeline gives the same order for free);
//! - the subscription watches the topology: a node that becomes master (a promoted replica, a
//!   new node) or a dropped connection to any node (a crash, a restart) ends it, which suspends
//!   and flushes L1 until it is back: a promoted replica may lack writes its old master
//!   acknowledged, a restarted master without persistence is empty, and no L1 entry may keep
//!   serving a value Redis lost. Slots moving between existing masters (resharding) lose
//!   nothing (MIGRATE moves each key whole) and flush nothing, unless the channels' own slot
//!   moves (the server then ends the sharded subscription).

use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
use redis::{Cmd, Pipeline, PushInfo, PushKind, RedisFuture, RedisResult, Value};


/// How fleet messages travel on a Redis Cluster.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ClusterPubSub {
    /// `SPUBLISH`/`SSUBSCRIBE` (Redis >= 7.0): a message is handled by the shard that owns the
    /// namespace's channels only.
    #[default]
    Sharded,
    /// `PUBLISH`/`SUBSCRIBE`: every node of the cluster handles every message (the cluster bus
    /// copies it). For servers without sharded Pub/Sub, and as the baseline of `aci bench`.
    Classic,
}

/// The hash slot of a key or channel (CRC16/XMODEM of the key or of its `{hash tag}`).
pub(crate) fn slot(key: &[u8]) -> u16 {
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

/// On a cluster every channel of a namespace is `{P}:<name>`: the hash tag puts them in one
/// slot (docs/WIRE.md 10.1). `P` is `<prefix>` or `<prefix>:<namespace>`.
pub(crate) fn cluster_channel_names(names: &mut crate::wire::Names, channel_prefix: &str, namespace: Option<&str>) {
    let p = match namespace {
        Some(ns) => format!("{channel_prefix}:{ns}"),
        None => channel_prefix.to_string(),
    };
    for ch in [&mut names.invalidation, &mut names.strategy, &mut names.reports, &mut names.liveness, &mut names.policy] {
        if let Some(rest) = ch.strip_prefix(p.as_str()) {
            *ch = format!("{{{p}}}{rest}");
        }
    }
}

/// A cluster connection that routes our pipelines slot by slot.
#[derive(Clone)]
pub(crate) struct ClusterConn {
    conn: ClusterConnection,
    pubsub: ClusterPubSub,
}

/// The command connection: cheap to clone, reconnects by itself.
#[derive(Clone)]
pub(crate) enum Conn {
    /// The cache's own commands to one server.
    Direct(crate::direct::DirectPool),
    /// One server, through redis-rs's multiplexed connection (the admin commands).
    Single(ConnectionManager),
    Cluster(ClusterConn),
}

fn upper_name(cmd: &Cmd) -> Vec<u8> {
    match cmd.args_iter().next() {
        Some(redis::Arg::Simple(n)) => n.to_ascii_uppercase(),
        _ => Vec::new(),
    }
}

fn arg(cmd: &Cmd, i: usize) -> Option<&[u8]> {
    match cmd.args_iter().nth(i) {
        Some(redis::Arg::Simple(a)) => Some(a),
        _ => None,
    }
}

impl ClusterConn {
    /// `PUBLISH` becomes `SPUBLISH` under sharded Pub/Sub: the fleet code publishes one way,
    /// the transport decides how the message travels.
    fn rewrite(&self, cmd: &Cmd) -> Option<Cmd> {
        if self.pubsub == ClusterPubSub::Sharded && upper_name(cmd) == b"PUBLISH" {
            let mut c = redis::cmd("SPUBLISH");
            for a in cmd.args_iter().skip(1) {
                if let redis::Arg::Simple(a) = a {
                    c.arg(a);
                }
            }
            return Some(c);
        }
        None
    }

    /// The slot a command must run in, or `None` if any node will do.
    fn slot_of(&self, cmd: &Cmd) -> Option<u16> {
        let name = upper_name(cmd);
        match name.as_slice() {
            // Classic Pub/Sub reaches every node: it joins whatever slot its pipeline goes to.
            b"PUBLISH" => None,
            b"PING" | b"ECHO" | b"INFO" | b"CLUSTER" => None,
            b"EVAL" | b"EVALSHA" => match arg(cmd, 2).and_then(|n| std::str::from_utf8(n).ok()?.parse::<u32>().ok()) {
                Some(n) if n > 0 => arg(cmd, 3).map(slot),
                _ => None,
            },
            _ => arg(cmd, 1).map(slot),
        }
    }

    async fn pipeline(&mut self, pipe: &Pipeline, offset: usize, count: usize) -> RedisResult<Vec<Value>> {
        if offset != 0 || count != pipe.len() {
            // A transaction (MULTI/EXEC): not something the cache sends; let the client route it.
            return self.conn.req_packed_commands(pipe, offset, count).await;
        }
        // Consecutive commands of one slot (or of none) form one segment; segments are sent in
        // order, each once the previous one is answered.
        let mut segments: Vec<(Option<u16>, Pipeline)> = Vec::new();
        for cmd in pipe.cmd_iter() {
            let cmd = self.rewrite(cmd).unwrap_or_else(|| cmd.clone());
            let s = self.slot_of(&cmd);
            match segments.last_mut() {
                Some((seg_slot, seg)) if s.is_none() || *seg_slot == s || seg_slot.is_none() => {
                    if seg_slot.is_none() {
                        *seg_slot = s;
                    }
                    seg.add_command(cmd);
                }
                _ => {
                    let mut seg = redis::pipe();
                    seg.add_command(cmd);
                    segments.push((s, seg));
                }
            }
        }
        let mut out = Vec::with_capacity(count);
        for (s, seg) in segments {
            let n = seg.len();
            let route = match s {
                Some(s) => SingleNodeRoutingInfo::SpecificNode(Route::new(s, SlotAddr::Master)),
                None => SingleNodeRoutingInfo::Random,
            };
            let values = self.conn.route_pipeline(seg, 0, n, route).await?;
            // A server error inside a segment stops the later ones: an eager invalidation must
            // not go out for a write that failed.
            let failed = values.iter().any(|v| matches!(v, Value::ServerError(_)));
            out.extend(values);
            if failed {
                break;
            }
        }
        // Commands after a failed segment were not sent; the error already in `out` is what the
        // pipeline reports.
        out.resize(count, Value::Nil);
        Ok(out)
    }
}

impl Conn {
    /// Whether a message must also go out by `SPUBLISH` after a script whose own `PUBLISH` is
    /// classic (docs/WIRE.md 10.1: the rollout record's script).
    pub(crate) fn sharded(&self) -> bool {
        matches!(self, Conn::Cluster(c) if c.pubsub == ClusterPubSub::Sharded)
    }
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Direct(c) => c.req_packed_command(cmd),
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => match c.rewrite(cmd) {
                Some(owned) => Box::pin(async move { c.conn.req_packed_command(&owned).await }),
                None => c.conn.req_packed_command(cmd),
            },
        }
    }

    fn req_packed_commands<'a>(&'a mut self, pipe: &'a Pipeline, offset: usize, count: usize) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Direct(c) => c.req_packed_commands(pipe, offset, count),
            Conn::Single(c) => c.req_packed_commands(pipe, offset, count),
            Conn::Cluster(c) => Box::pin(c.pipeline(pipe, offset, count)),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Direct(c) => c.get_db(),
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(_) => 0,
        }
    }
}

/// Where subscriptions come from.
#[derive(Clone)]
pub(crate) enum PubSubSource {
    Single(redis::Client),
    Cluster { seeds: Vec<String>, pubsub: ClusterPubSub, timeout: Duration, data: ClusterConn, poll: Duration },
}

/// Connects the command connection (and checks that it is what the settings say).
pub(crate) async fn connect(settings: &crate::config::Settings) -> Result<(Conn, PubSubSource), crate::error::Error> {
    match &settings.redis_cluster {
        None => {
            let url = settings.redis_url.clone().unwrap_or_else(|| "redis://127.0.0.1:6379".to_string());
            let client = redis::Client::open(url.as_str())?;
            let direct = crate::direct::DirectPool::connect(&client, settings.command_timeout).await.map_err(crate::cache::auth_error)?;
            Ok((Conn::Direct(direct), PubSubSource::Single(client)))
        }
        Some(seeds) => {
            let Conn::Cluster(data) = connect_cluster(seeds, settings.command_timeout, settings.cluster_pubsub).await? else { unreachable!() };
            let source = PubSubSource::Cluster {
                seeds: seeds.clone(),
                pubsub: settings.cluster_pubsub,
                timeout: settings.command_timeout,
                data: data.clone(),
                poll: settings.tick,
            };
            Ok((Conn::Cluster(data), source))
        }
    }
}

/// A command connection to a cluster.
pub(crate) async fn connect_cluster(seeds: &[String], timeout: Duration, pubsub: ClusterPubSub) -> Result<Conn, crate::error::Error> {
    let client = cluster_client(seeds, timeout, None)?;
    let conn = client.get_async_connection().await.map_err(cluster_error)?;
    Ok(Conn::Cluster(ClusterConn { conn, pubsub }))
}

/// `SCAN MATCH pattern` over the whole key space: every master of a cluster. At most about
/// `limit` names, sorted, without duplicates (SCAN may return a key twice).
pub(crate) async fn scan_all(conn: &mut Conn, pattern: &str, limit: usize) -> RedisResult<Vec<String>> {
    async fn scan(conn: &mut Conn, route: Option<RoutingInfo>, pattern: &str, limit: usize, names: &mut Vec<String>) -> RedisResult<()> {
        let mut cursor: u64 = 0;
        loop {
            let mut cmd = redis::cmd("SCAN");
            cmd.arg(cursor).arg("MATCH").arg(pattern).arg("COUNT").arg(1000);
            let (next, batch): (u64, Vec<String>) = match (&mut *conn, &route) {
                (Conn::Cluster(c), Some(r)) => redis::from_redis_value(c.conn.route_command(cmd, r.clone()).await?)?,
                _ => cmd.query_async(conn).await?,
            };
            names.extend(batch);
            cursor = next;
            if cursor == 0 || names.len() > limit {
                return Ok(());
            }
        }
    }
    let mut names = Vec::new();
    let nodes = match conn {
        Conn::Single(_) | Conn::Direct(_) => Vec::new(),
        Conn::Cluster(c) => {
            let v = c.conn.route_command(redis::cmd("CLUSTER").arg("SLOTS").clone(), RoutingInfo::SingleNode(SingleNodeRoutingInfo::RandomPrimary)).await?;
            let mut nodes = Vec::new();
            if let Value::Array(ranges) = v {
                for r in ranges {
                    let Value::Array(items) = r else { continue };
                    let Some(Value::Array(master)) = items.get(2) else { continue };
                    if let (Some(Value::BulkString(h)), Some(Value::Int(p))) = (master.first(), master.get(1)) {
                        nodes.push((String::from_utf8_lossy(h).into_owned(), *p as u16));
                    }
                }
            }
            nodes.sort();
            nodes.dedup();
            nodes
        }
    };
    if nodes.is_empty() {
        scan(conn, None, pattern, limit, &mut names).await?;
    }
    for (host, port) in nodes {
        let route = RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress { host, port });
        scan(conn, Some(route), pattern, limit, &mut names).await?;
    }
    names.sort();
    names.dedup();
    Ok(names)
}

/// The values of `keys` (`MGET` on one server; on a cluster, one `GET` each, grouped by slot).
pub(crate) async fn get_many(conn: &mut Conn, keys: &[String]) -> RedisResult<Vec<Option<String>>> {
    match conn {
        Conn::Single(_) | Conn::Direct(_) => redis::cmd("MGET").arg(keys).query_async(conn).await,
        Conn::Cluster(_) => {
            let mut p = redis::pipe();
            for k in keys {
                p.cmd("GET").arg(k);
            }
            p.query_async(conn).await
        }
    }
}

fn cluster_client(seeds: &[String], timeout: Duration, push: Option<tokio::sync::mpsc::UnboundedSender<PushInfo>>) -> RedisResult<ClusterClient> {
    let mut b = redis::cluster::ClusterClientBuilder::new(seeds.to_vec())
        .connection_timeout(timeout)
        .response_timeout(timeout)
        // A failover takes about node-timeout + an election: retry briefly, then let the
        // caller see the error (a write that fails is not acknowledged, and a publish that
        // fails makes the next invalidation a flush).
        .retries(3)
        .min_retry_wait(50)
        .max_retry_wait(500);
    if let Some(tx) = push {
        b = b.use_protocol(redis::ProtocolVersion::RESP3).push_sender(tx);
    }
    b.build()
}

/// A server without cluster support answers with an error that names it: a config error, not
/// a network one.
fn cluster_error(e: redis::RedisError) -> crate::error::Error {
    let text = e.to_string();
    if text.contains("cluster support disabled") || text.contains("cluster mode is not enabled") {
        return crate::error::ConfigError::new("redis_cluster", format!("the server is not a cluster node ({text}); use redis_url for a single server")).into();
    }
    crate::cache::auth_error(e)
}

/// Where a subscription's messages end: the sink changes what we listen to, the stream yields
/// payloads until the subscription can no longer be trusted.
pub(crate) enum SubSink {
    Single(crate::direct::DirectSubSink),
    Cluster(ClusterConnection, ClusterPubSub),
}

pub(crate) enum SubStream {
    Single(crate::direct::DirectSub),
    Cluster(Box<ClusterStream>),
}

pub(crate) struct ClusterStream {
    rx: tokio::sync::mpsc::UnboundedReceiver<PushInfo>,
    data: ClusterConn,
    channel_slot: u16,
    topology: Topology,
    poll: tokio::time::Interval,
    /// Why the stream ended, for the log.
    pub ended: Option<&'static str>,
}

/// One payload received.
pub(crate) enum Payload {
    /// A message: its channel and payload.
    Push(Value, Value),
}

impl Payload {
    /// The channel it came on (policy announcements are told apart by it, docs/WIRE.md 9.3).
    pub fn channel(&self) -> Option<&str> {
        match self {
            Payload::Push(Value::BulkString(c), _) => std::str::from_utf8(c).ok(),
            Payload::Push(..) => None,
        }
    }

    pub fn bytes(&self) -> &[u8] {
        match self {
            Payload::Push(_, Value::BulkString(b)) => b,
            Payload::Push(..) => b"",
        }
    }
}

impl SubSink {
    pub async fn subscribe(&mut self, channels: &[&str]) -> RedisResult<()> {
        match self {
            SubSink::Single(s) => s.send("SUBSCRIBE", channels).await,
            SubSink::Cluster(c, ClusterPubSub::Sharded) => c.ssubscribe(channels).await,
            SubSink::Cluster(c, ClusterPubSub::Classic) => c.subscribe(channels).await,
        }
    }

    pub async fn unsubscribe(&mut self, channel: &str) -> RedisResult<()> {
        match self {
            SubSink::Single(s) => s.send("UNSUBSCRIBE", &[channel]).await,
            SubSink::Cluster(c, ClusterPubSub::Sharded) => c.sunsubscribe(channel).await,
            SubSink::Cluster(c, ClusterPubSub::Classic) => c.unsubscribe(channel).await,
        }
    }
}

impl SubStream {
    /// The next payload; `None` when the subscription ended: the connection closed, a node's
    /// connection dropped, the server unsubscribed us, or the cluster's slot map changed.
    pub async fn next(&mut self) -> Option<Payload> {
        match self {
            SubStream::Single(s) => s.next().await,
            SubStream::Cluster(c) => c.next().await,
        }
    }

    /// Whether the stream may be left unread for a moment: only our own socket is (a cluster's
    /// pushes are read by redis-rs's task anyway), and only with nothing already read waiting.
    pub fn can_pause(&self) -> bool {
        matches!(self, SubStream::Single(s) if !s.buffered())
    }

    /// Socket reads since the last call (our own socket only).
    pub fn take_reads(&mut self) -> u64 {
        match self {
            SubStream::Single(s) => s.take_reads(),
            SubStream::Cluster(_) => 0,
        }
    }

    pub fn end_reason(&self) -> Option<&'static str> {
        match self {
            SubStream::Single(s) => s.ended,
            SubStream::Cluster(c) => c.ended,
        }
    }
}

impl ClusterStream {
    async fn next(&mut self) -> Option<Payload> {
        if self.ended.is_some() {
            return None;
        }
        loop {
            tokio::select! {
                push = self.rx.recv() => {
                    let Some(push) = push else {
                        self.ended = Some("cluster subscription connection closed");
                        return None;
                    };
                    match push.kind {
                        PushKind::Message | PushKind::SMessage => {
                            let mut data = push.data.into_iter();
                            if let (Some(channel), Some(payload)) = (data.next(), data.next()) {
                                return Some(Payload::Push(channel, payload));
                            }
                        }
                        PushKind::Disconnection => {
                            self.ended = Some("connection to a cluster node dropped");
                            return None;
                        }
                        // The server drops sharded subscriptions when their slot moves or the
                        // node stops being the slot's master.
                        PushKind::SUnsubscribe => {
                            self.ended = Some("the server ended the sharded subscription (slot moved)");
                            return None;
                        }
                        _ => {}
                    }
                }
                _ = self.poll.tick() => {
                    if let Ok(now) = Topology::fetch(&mut self.data, self.channel_slot).await {
                        if now == self.topology {
                            continue;
                        }
                        if let Some(id) = now.new_master_since(&self.topology) {
                            tracing::warn!(node = %id, "cluster: a node became master (failover or a new node): writes its old master acknowledged may be gone");
                            self.ended = Some("cluster topology changed: new master");
                            return None;
                        }
                        // Slots moved between masters that were masters already (resharding):
                        // MIGRATE moves each key whole, nothing is lost, L1 stays right.
                        tracing::info!(ranges = now.0.len(), "cluster slot map changed between existing masters (migration)");
                        self.topology = now;
                    }
                }
            }
        }
    }
}

/// The slot map: (first slot, last slot, master node id), sorted. Replication offsets, flags
/// and replicas are left out: only who serves what matters to a reader.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Topology(Vec<(i64, i64, Arc<str>)>);

impl Topology {
    /// A master of this map that was not a master in `before`: a promoted replica (async
    /// replication: it may lack acknowledged writes) or a new node.
    fn new_master_since(&self, before: &Topology) -> Option<Arc<str>> {
        self.0.iter().map(|(_, _, id)| id).find(|id| !before.0.iter().any(|(_, _, b)| b == *id)).cloned()
    }

    /// Asked of the master of our channels' slot: one consistent observer, so nodes that learn
    /// of a change at different moments do not make the map flap.
    async fn fetch(data: &mut ClusterConn, channel_slot: u16) -> RedisResult<Topology> {
        let route = RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(Route::new(channel_slot, SlotAddr::Master)));
        let v = data.conn.route_command(redis::cmd("CLUSTER").arg("SLOTS").clone(), route).await?;
        let mut map = Vec::new();
        if let Value::Array(ranges) = v {
            for r in ranges {
                let Value::Array(items) = r else { continue };
                let (Some(Value::Int(a)), Some(Value::Int(b)), Some(Value::Array(master))) = (items.first(), items.get(1), items.get(2)) else { continue };
                let id = match master.get(2) {
                    Some(Value::BulkString(id)) => String::from_utf8_lossy(id).into(),
                    _ => match (master.first(), master.get(1)) {
                        (Some(Value::BulkString(h)), Some(Value::Int(p))) => format!("{}:{p}", String::from_utf8_lossy(h)).into(),
                        _ => continue,
                    },
                };
                map.push((*a, *b, id));
            }
        }
        if map.is_empty() {
            return Err(redis::RedisError::from((redis::ErrorKind::Client, "CLUSTER SLOTS: empty slot map")));
        }
        map.sort();
        Ok(Topology(map))
    }
}

/// Opens a subscription to `channels` on a fresh connection.
pub(crate) async fn subscribe(source: &PubSubSource, channels: &[&str]) -> RedisResult<(SubSink, SubStream)> {
    match source {
        PubSubSource::Single(client) => {
            let (sink, stream) = crate::direct::subscribe(client, channels).await?;
            Ok((SubSink::Single(sink), SubStream::Single(stream)))
        }
        PubSubSource::Cluster { seeds, pubsub, timeout, data, poll } => {
            let channel_slot = channels.first().map(|c| slot(c.as_bytes())).unwrap_or(0);
            let mut data = data.clone();
            // The map before subscribing: a change while we subscribe is then caught at the
            // first poll rather than taken as the baseline.
            let t = std::time::Instant::now();
            let topology = Topology::fetch(&mut data, channel_slot).await?;
            let fetched = t.elapsed();
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
            let client = cluster_client(seeds, *timeout, Some(tx))?;
            let conn = client.get_async_connection().await?;
            let connected = t.elapsed();
            let mut sink = SubSink::Cluster(conn, *pubsub);
            sink.subscribe(channels).await?;
            tracing::debug!(?fetched, ?connected, subscribed = ?t.elapsed(), "cluster subscription open");
            let mut poll = tokio::time::interval(*poll);
            poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            poll.reset();
            Ok((sink, SubStream::Cluster(Box::new(ClusterStream { rx, data, channel_slot, topology, poll, ended: None }))))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_and_hash_tags() {
        assert_eq!(slot(b"123456789"), 12739);
        assert_eq!(slot(b"{aci:shop}:invalidation"), slot(b"aci:shop"));
        assert_eq!(slot(b"{aci:shop}:liveness:abc"), slot(b"{aci:shop}:strategy"));
    }

    #[test]
    fn channel_names_share_one_slot() {
        let mut n = crate::wire::Names::new("aci", Some("shop"), "abc");
        cluster_channel_names(&mut n, "aci", Some("shop"));
        assert_eq!(n.invalidation, "{aci:shop}:invalidation");
        assert_eq!(n.liveness, "{aci:shop}:liveness:abc");
        assert_eq!(n.policy, "{aci:shop}:policy");
        assert_eq!(n.policy_keys, "aci::shop:", "the rollout keys are keys: spread over the slots");
        assert_eq!(n.controller_lease, "aci::shop:controller");
        let mut n = crate::wire::Names::new("aci", None, "abc");
        cluster_channel_names(&mut n, "aci", None);
        assert_eq!(n.reports, "{aci}:reports");
        assert_eq!(n.redis_key("k").unwrap(), "k");
    }
}
