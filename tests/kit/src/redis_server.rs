//! A private `redis-server` on a free loopback port: what `aci demo`/`aci bench` use when no
//! `--redis` is given, and what the integration tests run against. Stopped on drop.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct RedisServer {
    child: Child,
    pub port: u16,
    dir: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum RedisServerError {
    #[error("redis-server is not installed (on Debian: apt-get install redis-server), or not on PATH: {0}")]
    NotInstalled(String),
    #[error("redis-server did not start on port {port}: {detail}")]
    NoStart { port: u16, detail: String },
}

fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// The server binary: `ACI_REDIS_SERVER` when set (e.g. Valkey's `valkey-server`), else
/// `redis-server` on PATH.
pub fn server_binary() -> String {
    std::env::var("ACI_REDIS_SERVER").ok().filter(|s| !s.is_empty()).unwrap_or_else(|| "redis-server".to_string())
}

fn spawn(port: u16, dir: &std::path::Path, extra: &[&str]) -> Result<Child, RedisServerError> {
    Command::new(server_binary())
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        .arg("--dir")
        .arg(dir)
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| RedisServerError::NotInstalled(e.to_string()))
}

impl RedisServer {
    /// Starts one with persistence off; `extra` are more `--name value` arguments.
    pub fn start(extra: &[&str]) -> Result<RedisServer, RedisServerError> {
        let mut last = String::new();
        // The port is free when probed but could be taken before redis binds it: retry.
        for _ in 0..5 {
            let port = free_port().map_err(|e| RedisServerError::NoStart { port: 0, detail: e.to_string() })?;
            let dir = std::env::temp_dir().join(format!("aci-redis-{}-{port}", std::process::id()));
            let _ = std::fs::create_dir_all(&dir);
            let child = spawn(port, &dir, extra)?;
            let mut server = RedisServer { child, port, dir };
            match server.wait_ready() {
                Ok(()) => return Ok(server),
                Err(detail) => last = detail,
            }
        }
        Err(RedisServerError::NoStart { port: 0, detail: last })
    }

    /// Waits until the server accepts connections, or says why not.
    fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return Ok(());
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!("exited with {status}"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err("not accepting connections after 5 s".into())
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Stops the server abruptly (SIGKILL): a crash, for fault tests.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts the server again on the same port and folder (after `kill`).
    pub fn restart(&mut self, extra: &[&str]) -> Result<(), RedisServerError> {
        self.kill();
        self.child = spawn(self.port, &self.dir, extra)?;
        self.wait_ready().map_err(|detail| RedisServerError::NoStart { port: self.port, detail })
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
