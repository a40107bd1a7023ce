//! aci-cache: a near cache over Redis whose fleet-wide invalidation strategy (ttl, batched or
//! eager) a sandboxed WebAssembly policy picks from the live write rate.
//!
//! ```no_run
//! # async fn demo() -> aci_cache::Result<()> {
//! let cache = aci_cache::AciCache::builder().redis_url("redis://127.0.0.1:6379").namespace("shop").build().await?;
//! cache.set("user:1", "alice", None).await?;
//! assert_eq!(cache.get_string("user:1").await?.as_deref(), Some("alice"));
//! cache.shutdown().await?;
//! # Ok(()) }
//! ```
//!
//! The public surface is the cache ([`AciCache`], its builder, [`Stats`]), its configuration
//! and errors, and the [`policy`] module (loading, sandboxing and running policy components).
//! The fleet protocol (docs/WIRE.md) is internal.

mod bundled;
mod cache;
mod config;
mod core_abi;
mod counter;
mod direct;
mod error;
mod fleet;
mod loss_detector;
mod near_cache;
pub mod policy;
pub mod rollout;
mod shared;
mod transport;
pub mod plot;
pub mod simulate;
pub mod workload;
mod wire;

pub use bundled::{bundled_policy, bundled_policy_names};
pub use cache::{termination_signal, AciCache, Stats, SwitchEvent};
pub use config::{CacheBuilder, PolicySource, Role, Settings};
pub use error::{ConfigError, Error, PolicyError, Result};
pub use policy::{PolicyModule, SandboxLimits, Strategy};
pub use transport::ClusterPubSub;
