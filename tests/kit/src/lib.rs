//! The test kit of aci-cache: shared by the integration tests (`tests/rust/`) and by the CLI's
//! `demo` and `bench`, never shipped with the library.
//!
//! - [`redis_server::RedisServer`]: a private `redis-server` on a free loopback port.
//! - [`cluster::RedisCluster`]: a private Redis Cluster (3 masters + 3 replicas) on loopback.
//! - [`history`]: the history checker that judges every read of a run against the staleness
//!   bound of the strategy its newer write was made under.

pub mod cluster;
pub mod history;
pub mod redis_server;

pub use cluster::{ClusterError, RedisCluster};
pub use history::{History, Read, Verdict, Write};
pub use redis_server::{RedisServer, RedisServerError};

/// The repository's root folder (where `guest/policies.txt` lives).
pub fn repo_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .find(|p| p.join("guest").join("policies.txt").exists())
        .expect("the test kit lives inside the aci-cache repository")
        .to_path_buf()
}
