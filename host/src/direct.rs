//! The connections to one server: a small pool of plain connections for commands, each request
//! written and its replies read on the caller's own task, and the subscription ([`DirectSub`]),
//! read by the fleet task itself.
//!
//! Why: redis-rs's `MultiplexedConnection` (and the `ConnectionManager` over it) hands every
//! request to a driver task and the reply back, two cross-task wake-ups per round trip. On a
//! 2-core machine with a 2-worker runtime those cost as much as Redis itself: measured with
//! `examples/breakdown.rs`, a SET took ~27 us here and ~43 us through the multiplexed
//! connection, so every write and every L1 miss of the cache paid ~16 us for the hand-offs.
//!
//! What keeps it safe:
//! - a connection goes back to the idle list only after every reply it owes was read; a
//!   request that fails, times out or is cancelled (its future dropped mid-way) closes its
//!   connection, so no later request can read an earlier one's reply;
//! - at most [`MAX_DIRECT`] connections exist; a request beyond that waits for one (a burst of
//!   concurrency must not open unbounded connections on the server);
//! - an idle connection unused for a second or more is checked (a non-blocking peek) before
//!   use, as go-redis's pool does, so a server restart or an idle-timeout kill costs a
//!   reconnect, not a failed request;
//! - every request, waiting and connecting included, is bounded by the command timeout.
//!
//! RESP2 only. The pool's connections never subscribe, so replies are all they carry.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use redis::aio::ConnectionLike;
use redis::{Cmd, ConnectionAddr, ErrorKind, Pipeline, RedisError, RedisFuture, RedisResult, Value};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Connections per cache: Redis runs commands one at a time, so more connections than this
/// add no throughput on one server; few enough to be no burden on it.
pub(crate) const MAX_DIRECT: usize = 16;
/// An idle connection older than this is peeked at before use.
const CHECK_AFTER: Duration = Duration::from_secs(1);
/// A read buffer grown past this by a large reply is given back after the request.
const KEEP_BUFFER: usize = 64 * 1024;

enum Stream {
    Tcp(tokio::net::TcpStream),
    #[cfg(unix)]
    Unix(tokio::net::UnixStream),
}

impl Stream {
    async fn write_all(&mut self, b: &[u8]) -> std::io::Result<()> {
        match self {
            Stream::Tcp(s) => s.write_all(b).await,
            #[cfg(unix)]
            Stream::Unix(s) => s.write_all(b).await,
        }
    }

    async fn read_buf(&mut self, buf: &mut Vec<u8>) -> std::io::Result<usize> {
        match self {
            Stream::Tcp(s) => read_into(s, buf).await,
            #[cfg(unix)]
            Stream::Unix(s) => read_into(s, buf).await,
        }
    }

    /// False if the peer closed the connection or sent something unasked for.
    #[cfg(unix)]
    fn looks_alive(&self) -> bool {
        use std::os::fd::AsRawFd;
        let fd = match self {
            Stream::Tcp(s) => s.as_raw_fd(),
            Stream::Unix(s) => s.as_raw_fd(),
        };
        let mut b = [0u8; 1];
        // SAFETY: a valid fd owned by `self`, a 1-byte buffer; MSG_PEEK consumes nothing.
        let n = unsafe { libc::recv(fd, b.as_mut_ptr().cast(), 1, libc::MSG_PEEK | libc::MSG_DONTWAIT) };
        n < 0 && matches!(std::io::Error::last_os_error().kind(), std::io::ErrorKind::WouldBlock)
    }

    #[cfg(not(unix))]
    fn looks_alive(&self) -> bool {
        true
    }
}

async fn read_into<S: AsyncRead + Unpin + ?Sized>(s: &mut S, buf: &mut Vec<u8>) -> std::io::Result<usize> {
    if buf.capacity() - buf.len() < 4096 {
        buf.reserve(16 * 1024);
    }
    s.read_buf(buf).await
}

struct DirectConn {
    stream: Stream,
    buf: Vec<u8>,
    last_used: Instant,
}

struct Target {
    addr: ConnectionAddr,
    username: Option<String>,
    password: Option<String>,
    db: i64,
}

/// The connection the cache sends its commands on, for one server.
#[derive(Clone)]
pub(crate) struct DirectPool {
    target: Arc<Target>,
    idle: Arc<Mutex<Vec<DirectConn>>>,
    /// One permit per connection that may exist; a request holds one throughout.
    permits: Arc<tokio::sync::Semaphore>,
    timeout: Duration,
}

fn timed_out() -> RedisError {
    RedisError::from(std::io::Error::new(std::io::ErrorKind::TimedOut, "Redis did not answer within the command timeout"))
}

fn closed() -> RedisError {
    RedisError::from(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "Redis closed the connection"))
}

impl Target {
    fn of(client: &redis::Client) -> Self {
        let info = client.get_connection_info();
        let r = info.redis_settings();
        Target { addr: info.addr().clone(), username: r.username().map(str::to_owned), password: r.password().map(str::to_owned), db: r.db() }
    }

    /// A new connection, authenticated and on the URL's database.
    async fn open(&self) -> RedisResult<DirectConn> {
        let stream = match &self.addr {
            ConnectionAddr::Tcp(host, port) => {
                let s = tokio::net::TcpStream::connect((host.as_str(), *port)).await?;
                s.set_nodelay(true)?;
                Stream::Tcp(s)
            }
            #[cfg(unix)]
            ConnectionAddr::Unix(path) => Stream::Unix(tokio::net::UnixStream::connect(path).await?),
            _ => return Err(RedisError::from((ErrorKind::InvalidClientConfig, "direct connections support tcp and unix addresses only"))),
        };
        let mut c = DirectConn { stream, buf: Vec::new(), last_used: Instant::now() };
        // AUTH and SELECT as the URL says, then a PING: a server that wants a password we do not
        // have says so here (NOAUTH), at connect time rather than on the first real command.
        let mut hello = Vec::new();
        if let Some(pw) = &self.password {
            let mut auth = redis::cmd("AUTH");
            if let Some(user) = &self.username {
                auth.arg(user);
            }
            hello.extend(auth.arg(pw).get_packed_command());
        }
        if self.db != 0 {
            hello.extend(redis::cmd("SELECT").arg(self.db).get_packed_command());
        }
        hello.extend(redis::cmd("PING").get_packed_command());
        let n = self.password.is_some() as usize + (self.db != 0) as usize + 1;
        let (replies, clean) = c.roundtrip(&hello, n).await?;
        for v in replies {
            if let Value::ServerError(e) = v {
                return Err(e.into());
            }
        }
        if !clean {
            return Err(RedisError::from((ErrorKind::Parse, "unexpected bytes after the handshake")));
        }
        Ok(c)
    }
}

impl DirectPool {
    /// Connects one connection (so that a wrong address or password fails here) and keeps it.
    pub(crate) async fn connect(client: &redis::Client, timeout: Duration) -> RedisResult<Self> {
        let pool = DirectPool {
            target: Arc::new(Target::of(client)),
            idle: Arc::new(Mutex::new(Vec::new())),
            permits: Arc::new(tokio::sync::Semaphore::new(MAX_DIRECT)),
            timeout,
        };
        let first = tokio::time::timeout(timeout, pool.target.open()).await.map_err(|_| timed_out())??;
        pool.put(first);
        Ok(pool)
    }

    /// An idle connection that looks alive, else a new one. The caller holds a permit, so the
    /// idle ones plus those in use never exceed [`MAX_DIRECT`].
    async fn take(&self) -> RedisResult<DirectConn> {
        loop {
            let c = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
            match c {
                Some(c) if c.last_used.elapsed() < CHECK_AFTER || c.stream.looks_alive() => return Ok(c),
                Some(_) => continue, // closed by the server while idle: dropped
                None => return self.target.open().await,
            }
        }
    }

    fn put(&self, mut c: DirectConn) {
        if c.buf.capacity() > KEEP_BUFFER {
            c.buf = Vec::new();
        }
        c.last_used = Instant::now();
        self.idle.lock().unwrap_or_else(|e| e.into_inner()).push(c);
    }

    /// Sends `packed` and returns its `n` replies.
    async fn request(&self, packed: &[u8], n: usize) -> RedisResult<Vec<Value>> {
        tokio::time::timeout(self.timeout, async {
            let _permit = self.permits.acquire().await.map_err(|_| closed())?;
            // `c` is owned by this future: if it is dropped (a timeout, a cancelled caller) or
            // anything fails, the connection closes with it.
            let mut c = self.take().await?;
            let (values, clean) = c.roundtrip(packed, n).await?;
            if clean {
                self.put(c);
            }
            Ok(values)
        })
        .await
        .map_err(|_| timed_out())?
    }
}

impl DirectConn {
    /// Writes `packed` and reads exactly `n` replies. `clean` is false if more bytes followed
    /// them (the connection then cannot be reused).
    async fn roundtrip(&mut self, packed: &[u8], n: usize) -> RedisResult<(Vec<Value>, bool)> {
        self.buf.clear();
        self.stream.write_all(packed).await?;
        let mut values = Vec::with_capacity(n);
        let mut at = 0;
        while values.len() < n {
            match frame_len(&self.buf[at..])? {
                Some(len) => {
                    values.push(parse(&self.buf[at..at + len])?);
                    at += len;
                }
                None => {
                    if self.stream.read_buf(&mut self.buf).await? == 0 {
                        return Err(closed());
                    }
                }
            }
        }
        let clean = at == self.buf.len();
        self.buf.clear();
        Ok((values, clean))
    }
}

/// One reply as redis-rs would give it; the two most common ones without its parser.
fn parse(frame: &[u8]) -> RedisResult<Value> {
    match frame {
        b"+OK\r\n" => Ok(Value::Okay),
        [b':', digits @ .., b'\r', b'\n'] if !digits.is_empty() => match std::str::from_utf8(digits).ok().and_then(|d| d.parse().ok()) {
            Some(i) => Ok(Value::Int(i)),
            None => redis::parse_redis_value(frame),
        },
        _ => redis::parse_redis_value(frame),
    }
}

/// The channel and payload of a complete `message` push, without redis-rs's general parser
/// (one per message received, so it is worth the few lines); `None` for any other frame.
fn message(frame: &[u8]) -> Option<(&[u8], &[u8])> {
    fn bulk(b: &[u8]) -> Option<(&[u8], &[u8])> {
        let b = b.strip_prefix(b"$")?;
        let end = b.windows(2).position(|w| w == b"\r\n")?;
        let len: usize = std::str::from_utf8(&b[..end]).ok()?.parse().ok()?;
        let rest = b.get(end + 2..)?;
        let (data, rest) = (rest.get(..len)?, rest.get(len..)?);
        Some((data, rest.strip_prefix(b"\r\n")?))
    }
    let rest = frame.strip_prefix(b"*3\r\n$7\r\nmessage\r\n")?;
    let (channel, rest) = bulk(rest)?;
    let (payload, rest) = bulk(rest)?;
    rest.is_empty().then_some((channel, payload))
}

/// The length of the first complete RESP2 reply in `b`, `None` if more bytes are needed.
fn frame_len(b: &[u8]) -> RedisResult<Option<usize>> {
    fn line(b: &[u8]) -> Option<usize> {
        b.windows(2).position(|w| w == b"\r\n")
    }
    fn num(b: &[u8]) -> RedisResult<i64> {
        std::str::from_utf8(b).ok().and_then(|s| s.parse().ok()).ok_or_else(|| RedisError::from((ErrorKind::Parse, "invalid length in a reply")))
    }
    fn go(b: &[u8], depth: usize) -> RedisResult<Option<usize>> {
        if depth > 64 {
            return Err(RedisError::from((ErrorKind::Parse, "reply nested too deeply")));
        }
        let Some(&t) = b.first() else { return Ok(None) };
        let Some(end) = line(b) else { return Ok(None) };
        let head = end + 2;
        match t {
            b'+' | b'-' | b':' => Ok(Some(head)),
            b'$' => {
                let len = num(&b[1..end])?;
                if len < 0 {
                    return Ok(Some(head));
                }
                let total = head + len as usize + 2;
                Ok((b.len() >= total).then_some(total))
            }
            b'*' => {
                let count = num(&b[1..end])?;
                let mut at = head;
                for _ in 0..count.max(0) {
                    match go(&b[at..], depth + 1)? {
                        Some(len) => at += len,
                        None => return Ok(None),
                    }
                }
                Ok(Some(at))
            }
            _ => Err(RedisError::from((ErrorKind::Parse, "unexpected reply type byte"))),
        }
    }
    go(b, 0)
}

impl ConnectionLike for DirectPool {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        Box::pin(async move { Ok(self.request(&cmd.get_packed_command(), 1).await?.pop().unwrap_or(Value::Nil)) })
    }

    fn req_packed_commands<'a>(&'a mut self, pipe: &'a Pipeline, offset: usize, count: usize) -> RedisFuture<'a, Vec<Value>> {
        Box::pin(async move {
            let mut values = self.request(&pipe.get_packed_pipeline(), offset + count).await?;
            // A transaction's queued commands (skipped) can fail on their own.
            if let Some(Value::ServerError(e)) = values[..offset].iter().find(|v| matches!(v, Value::ServerError(_))) {
                return Err(e.clone().into());
            }
            Ok(values.split_off(offset))
        })
    }

    fn get_db(&self) -> i64 {
        self.target.db
    }
}

/// One frame read from a subscription.
enum Frame {
    /// A `message` push: channel and payload.
    Message(Vec<u8>, Vec<u8>),
    Other(Value),
}

/// A subscription on a connection of our own, for one server.
///
/// redis-rs's Pub/Sub connection reads in a driver task that wakes for every message and
/// forwards each through a channel to the fleet task: two wake-ups per message. Under eager
/// every write comes back to its writer, so that was paid once per `set`. Here the fleet task
/// reads the socket itself, and may leave it unread for a few milliseconds after a read that
/// brought only its own messages (`fleet.rs`), so the kernel batches them and the task wakes
/// once per batch.
pub(crate) struct DirectSub {
    read: Box<dyn AsyncRead + Send + Unpin>,
    buf: Vec<u8>,
    at: usize,
    /// Socket reads not yet counted in the stats.
    reads: u64,
    /// Why the stream ended, for the log.
    pub ended: Option<&'static str>,
}

/// Changes what a [`DirectSub`] listens to; confirmations arrive on the stream (and are
/// skipped there).
pub(crate) struct DirectSubSink {
    write: Box<dyn AsyncWrite + Send + Unpin>,
}

impl DirectSubSink {
    pub(crate) async fn send(&mut self, command: &str, channels: &[&str]) -> RedisResult<()> {
        let mut cmd = redis::cmd(command);
        for c in channels {
            cmd.arg(*c);
        }
        self.write.write_all(&cmd.get_packed_command()).await?;
        Ok(())
    }
}

/// Subscribes to `channels` on a new connection; returns once the server confirmed them all.
pub(crate) async fn subscribe(client: &redis::Client, channels: &[&str]) -> RedisResult<(DirectSubSink, DirectSub)> {
    let c = Target::of(client).open().await?;
    let (read, write): (Box<dyn AsyncRead + Send + Unpin>, Box<dyn AsyncWrite + Send + Unpin>) = match c.stream {
        Stream::Tcp(s) => {
            let (r, w) = s.into_split();
            (Box::new(r), Box::new(w))
        }
        #[cfg(unix)]
        Stream::Unix(s) => {
            let (r, w) = s.into_split();
            (Box::new(r), Box::new(w))
        }
    };
    let mut sink = DirectSubSink { write };
    let mut sub = DirectSub { read, buf: Vec::new(), at: 0, reads: 0, ended: None };
    sink.send("SUBSCRIBE", channels).await?;
    let mut confirmed = 0;
    while confirmed < channels.len() {
        match sub.frame().await? {
            Frame::Other(Value::Array(items)) if matches!(items.first(), Some(Value::BulkString(k)) if k.as_slice() == b"subscribe") => confirmed += 1,
            Frame::Other(Value::ServerError(e)) => return Err(e.into()),
            _ => {}
        }
    }
    Ok((sink, sub))
}

impl DirectSub {
    /// Socket reads since the last call.
    pub(crate) fn take_reads(&mut self) -> u64 {
        std::mem::take(&mut self.reads)
    }

    /// Whether a whole or partial frame is already read and waiting.
    pub(crate) fn buffered(&self) -> bool {
        self.at < self.buf.len()
    }

    /// The next frame, reading as needed: a message's channel and payload, or any other frame.
    async fn frame(&mut self) -> RedisResult<Frame> {
        loop {
            if let Some(len) = frame_len(&self.buf[self.at..])? {
                let frame = &self.buf[self.at..self.at + len];
                let f = match message(frame) {
                    Some((channel, payload)) => Frame::Message(channel.to_vec(), payload.to_vec()),
                    None => Frame::Other(redis::parse_redis_value(frame)?),
                };
                self.at += len;
                return Ok(f);
            }
            // Keep only the unread part; give back what a large frame made the buffer grow to.
            self.buf.drain(..self.at);
            self.at = 0;
            if self.buf.is_empty() && self.buf.capacity() > KEEP_BUFFER {
                self.buf = Vec::new();
            }
            self.reads += 1;
            if read_into(&mut self.read, &mut self.buf).await? == 0 {
                return Err(closed());
            }
        }
    }

    /// The next message; `None` once the subscription ended (the connection closed, or the
    /// server sent an error or something that is not RESP).
    pub(crate) async fn next(&mut self) -> Option<crate::transport::Payload> {
        if self.ended.is_some() {
            return None;
        }
        loop {
            match self.frame().await {
                Ok(Frame::Message(channel, payload)) => {
                    return Some(crate::transport::Payload::Push(Value::BulkString(channel), Value::BulkString(payload)));
                }
                Ok(Frame::Other(Value::ServerError(_))) => {
                    self.ended = Some("the server answered the subscription with an error");
                    return None;
                }
                Ok(Frame::Other(_)) => {} // (un)subscribe confirmations, pong
                Err(e) => {
                    self.ended = Some(if e.kind() == ErrorKind::Parse { "unreadable data on the subscription" } else { "connection closed" });
                    return None;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_measured_whole_or_not_at_all() {
        let whole: &[&[u8]] = &[b"+OK\r\n", b"-ERR no\r\n", b":42\r\n", b"$-1\r\n", b"$3\r\nabc\r\n", b"$0\r\n\r\n", b"*-1\r\n", b"*0\r\n", b"*2\r\n$1\r\na\r\n:1\r\n", b"*1\r\n*1\r\n+x\r\n"];
        for f in whole {
            assert_eq!(frame_len(f).unwrap(), Some(f.len()), "{}", String::from_utf8_lossy(f));
            for cut in 0..f.len() {
                assert_eq!(frame_len(&f[..cut]).unwrap(), None, "{} cut at {cut}", String::from_utf8_lossy(f));
            }
            let mut two = f.to_vec();
            two.extend_from_slice(b":7\r\n");
            assert_eq!(frame_len(&two).unwrap(), Some(f.len()));
        }
        // "\r\n" inside a bulk string is data, not a frame end.
        assert_eq!(frame_len(b"$4\r\na\r\nb\r\n").unwrap(), Some(10));
        assert!(frame_len(b"?x\r\n").is_err());
        assert!(frame_len(b"$x\r\n").is_err());
    }

    #[test]
    fn messages_parse_as_redis_rs_parses_them() {
        let frames: &[&[u8]] = &[b"*3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$5\r\nhe\r\no\r\n", b"*3\r\n$7\r\nmessage\r\n$0\r\n\r\n$0\r\n\r\n"];
        for f in frames {
            let (c, p) = message(f).unwrap();
            let v = Value::Array(vec![Value::BulkString(b"message".to_vec()), Value::BulkString(c.to_vec()), Value::BulkString(p.to_vec())]);
            assert_eq!(v, redis::parse_redis_value(f).unwrap());
        }
        // Anything else, or a frame with bytes past the message, goes to the general parser.
        for f in [&b"*3\r\n$9\r\nsubscribe\r\n$2\r\nch\r\n:1\r\n"[..], b"*3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$1\r\nxy\r\n", b"+OK\r\n"] {
            assert_eq!(message(f), None);
        }
    }

    #[test]
    fn replies_parse_as_redis_rs_parses_them() {
        for f in [&b"+OK\r\n"[..], b":42\r\n", b":-3\r\n", b"$-1\r\n", b"$3\r\nabc\r\n", b"*2\r\n$1\r\na\r\n:1\r\n", b"+PONG\r\n"] {
            assert_eq!(parse(f).unwrap(), redis::parse_redis_value(f).unwrap());
        }
        assert!(matches!(parse(b"-WRONGTYPE nope\r\n").unwrap(), Value::ServerError(_)));
    }
}
