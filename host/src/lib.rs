//! aci-cache: a near cache over Redis whose fleet-wide invalidation strategy (ttl, batched or
//! eager) a sandboxed WebAssembly policy picks from the live write rate.

pub mod error;
pub mod policy;
pub mod simulate;

pub use error::{ConfigError, Error, PolicyError, Result};
pub use policy::{PolicyModule, SandboxLimits, Strategy};
