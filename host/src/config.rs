//! The builder: every knob has a default that needs no tuning; every bad value is a typed
//! error naming the builder method (field) it came from.

use std::path::PathBuf;
use std::time::Duration;

use crate::error::ConfigError;
use crate::shared::HEARTBEAT;
use crate::policy::{PolicyConfig, SandboxLimits, Strategy};

/// Who decides the fleet's strategy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Always decides and broadcasts.
    Controller,
    /// Applies what a controller broadcasts; reports its writes.
    Follower,
    /// One instance per namespace is elected through a Redis lease; the others follow. If the
    /// controller dies, another takes over within `controller_timeout`.
    Auto,
}

/// Where the policy component comes from.
#[derive(Clone, Debug)]
pub enum PolicySource {
    /// The adaptive policy embedded in this library.
    Bundled,
    /// The bundled `fixed` policy, always answering this strategy.
    Fixed(Strategy),
    File(PathBuf),
    Bytes(Vec<u8>),
}

/// Everything the builder collected, validated.
#[derive(Clone, Debug)]
pub struct Settings {
    pub redis_url: Option<String>,
    /// Seed URLs of a Redis Cluster (docs/WIRE.md 10); exclusive with `redis_url`.
    pub redis_cluster: Option<Vec<String>>,
    /// How fleet messages travel on a cluster (default: sharded Pub/Sub).
    pub cluster_pubsub: crate::transport::ClusterPubSub,
    pub namespace: Option<String>,
    pub channel_prefix: String,
    pub policy: PolicySource,
    pub role: Role,
    pub instance_id: Option<String>,
    /// Redis TTL of `set` when none is given (the original's `default_ttl`).
    pub default_ttl: Duration,
    /// Longest an L1 entry lives; bounds staleness under `ttl`.
    pub local_ttl: Duration,
    pub l1_max_entries: u64,
    pub l1_max_bytes: u64,
    pub tick: Duration,
    pub controller_timeout: Duration,
    /// Without any message (our own heartbeats included) for this long, the subscription is
    /// presumed dead: L1 stops serving and we resubscribe.
    pub liveness_timeout: Duration,
    /// When our own messages come back later than this, the subscription is falling behind
    /// (the server is about to drop it, or the process is starved): L1 stops serving until
    /// the lag is under half of it again.
    pub max_lag: Duration,
    pub command_timeout: Duration,
    pub policy_config: PolicyConfig,
    pub sandbox: SandboxLimits,
    /// Policy rollout (docs/WIRE.md 9): the ed25519 public key (64 hex) whose signatures make
    /// a pushed policy trusted. With neither this nor `policy_allow_hashes`, pushes are ignored.
    pub policy_public_key: Option<String>,
    /// SHA-256 hashes (64 hex) of components trusted without a signature.
    pub policy_allow_hashes: Vec<String>,
    /// Faults of a pushed policy after which this instance rolls the fleet back (default 3).
    pub policy_rollback_faults: u32,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            redis_url: None,
            redis_cluster: None,
            cluster_pubsub: crate::transport::ClusterPubSub::Sharded,
            namespace: None,
            channel_prefix: "aci".into(),
            policy: PolicySource::Bundled,
            role: Role::Auto,
            instance_id: None,
            default_ttl: Duration::from_secs(10),
            local_ttl: Duration::from_secs(5),
            l1_max_entries: 10_000,
            l1_max_bytes: 64 << 20,
            tick: Duration::from_millis(250),
            controller_timeout: Duration::from_secs(3),
            liveness_timeout: Duration::from_secs(3),
            max_lag: Duration::from_millis(500),
            command_timeout: Duration::from_secs(2),
            policy_config: PolicyConfig::default(),
            sandbox: SandboxLimits::default(),
            policy_public_key: None,
            policy_allow_hashes: Vec::new(),
            policy_rollback_faults: 3,
        }
    }
}

fn positive(field: &str, d: Duration) -> Result<(), ConfigError> {
    if d.is_zero() {
        return Err(ConfigError::new(field, "must be greater than zero"));
    }
    Ok(())
}

fn ms(field: &str, d: Duration) -> Result<i32, ConfigError> {
    i32::try_from(d.as_millis()).map_err(|_| ConfigError::new(field, "must be under 24 days"))
}

impl Settings {
    /// Checks the host-side knobs; the policy validates its own config on top.
    pub fn validate(&self) -> Result<(), ConfigError> {
        // docs/WIRE.md 1.1 and 1.4, checked byte for byte as every host does; never repaired.
        crate::wire::validate_names(&self.channel_prefix, self.namespace.as_deref(), self.instance_id.as_deref())?;
        if let Some(seeds) = &self.redis_cluster {
            if self.redis_url.is_some() {
                return Err(ConfigError::new("redis_cluster", "give either redis_url (one server) or redis_cluster (seed URLs), not both"));
            }
            if seeds.is_empty() {
                return Err(ConfigError::new("redis_cluster", "needs at least one seed URL"));
            }
            for url in seeds {
                if let Err(e) = redis::IntoConnectionInfo::into_connection_info(url.as_str()) {
                    return Err(ConfigError::new("redis_cluster", format!("`{url}` is not a Redis URL: {e}")));
                }
            }
        }
        positive("default_ttl", self.default_ttl)?;
        positive("local_ttl", self.local_ttl)?;
        positive("tick", self.tick)?;
        positive("controller_timeout", self.controller_timeout)?;
        positive("liveness_timeout", self.liveness_timeout)?;
        positive("max_lag", self.max_lag)?;
        positive("command_timeout", self.command_timeout)?;
        if self.controller_timeout < self.tick * 2 {
            return Err(ConfigError::new("controller_timeout", "must be at least two ticks"));
        }
        if self.liveness_timeout < self.tick * 2 + HEARTBEAT {
            return Err(ConfigError::new("liveness_timeout", "must be at least two ticks plus one second (heartbeats come every second)"));
        }
        if self.l1_max_entries == 0 {
            return Err(ConfigError::new("l1_max_entries", "must be greater than zero"));
        }
        if self.l1_max_bytes < 1024 {
            return Err(ConfigError::new("l1_max_bytes", "must be at least 1024"));
        }
        if self.sandbox.fuel_per_call == 0 {
            return Err(ConfigError::new("sandbox.fuel_per_call", "must be greater than zero"));
        }
        if self.sandbox.max_memory_bytes < 1 << 16 {
            return Err(ConfigError::new("sandbox.max_memory_bytes", "must be at least one wasm page (65536)"));
        }
        if let Some(k) = &self.policy_public_key {
            crate::rollout::parse_public_key(k).map_err(|why| ConfigError::new("policy_public_key", why))?;
        }
        for h in &self.policy_allow_hashes {
            if !crate::rollout::is_hash(h) {
                return Err(ConfigError::new("policy_allow_hashes", format!("`{}` is not a SHA-256 as 64 lowercase hex characters", crate::rollout::clip(h, 80))));
            }
        }
        if self.policy_rollback_faults == 0 {
            return Err(ConfigError::new("policy_rollback_faults", "must be greater than zero"));
        }
        let p = &self.policy_config;
        let names = [
            ("low_threshold", "low-threshold"),
            ("high_threshold", "high-threshold"),
            ("window", "window-ms"),
            ("hold", "hold-ms"),
            ("batch_interval", "batch-interval-ms"),
            ("batch_max_keys", "batch-max-keys"),
            ("batch_max_bytes", "batch-max-bytes"),
        ];
        // The policy's own rules, reported under the builder's names.
        p.validate().map_err(|e| {
            let field = names.iter().find(|(_, wit)| *wit == e.field).map(|(b, _)| *b).unwrap_or("policy");
            ConfigError::new(field, e.message)
        })
    }
}

/// Builder for [`crate::AciCache`]. `AciCache::builder().redis_url("redis://..").build().await`.
#[derive(Clone, Debug, Default)]
pub struct CacheBuilder {
    pub(crate) settings: Settings,
    pub(crate) errors: Vec<ConfigError>,
}

macro_rules! duration_setter {
    ($(#[$doc:meta])* $name:ident, $field:ident) => {
        $(#[$doc])*
        pub fn $name(mut self, d: Duration) -> Self {
            self.settings.$field = d;
            self
        }
    };
}

impl CacheBuilder {
    pub fn redis_url(mut self, url: impl Into<String>) -> Self {
        self.settings.redis_url = Some(url.into());
        self
    }

    /// Connects to a Redis Cluster through these seed URLs (any reachable node; the rest of the
    /// cluster is discovered). Keys spread over the slots; fleet messages use sharded Pub/Sub
    /// on one slot per namespace (docs/WIRE.md 10).
    pub fn redis_cluster<I, S>(mut self, seed_urls: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.settings.redis_cluster = Some(seed_urls.into_iter().map(Into::into).collect());
        self
    }

    /// On a cluster: sharded (default) or classic Pub/Sub for the fleet's messages.
    pub fn cluster_pubsub(mut self, mode: crate::transport::ClusterPubSub) -> Self {
        self.settings.cluster_pubsub = mode;
        self
    }

    /// Keys are stored as `aci:<namespace>:<key>` and channels are `aci:<namespace>:*`. 1-64
    /// characters of `[A-Za-z0-9._-]` (no `:`: it is the separator).
    pub fn namespace(mut self, ns: impl Into<String>) -> Self {
        self.settings.namespace = Some(ns.into());
        self
    }

    pub fn channel_prefix(mut self, p: impl Into<String>) -> Self {
        self.settings.channel_prefix = p.into();
        self
    }

    pub fn policy(mut self, source: PolicySource) -> Self {
        self.settings.policy = source;
        self
    }

    pub fn policy_file(self, path: impl Into<PathBuf>) -> Self {
        self.policy(PolicySource::File(path.into()))
    }

    /// Uses the bundled `fixed` policy: the fleet always runs `strategy`.
    pub fn fixed_strategy(self, strategy: Strategy) -> Self {
        self.policy(PolicySource::Fixed(strategy))
    }

    pub fn role(mut self, role: Role) -> Self {
        self.settings.role = role;
        self
    }

    /// Defaults to 12 random hex characters, new on every start (as the original).
    pub fn instance_id(mut self, id: impl Into<String>) -> Self {
        self.settings.instance_id = Some(id.into());
        self
    }

    duration_setter!(
        /// Redis TTL of `set` without an explicit TTL (default 10 s).
        default_ttl, default_ttl);
    duration_setter!(
        /// Longest life of an L1 entry (default 5 s): the staleness bound under `ttl`.
        local_ttl, local_ttl);
    duration_setter!(
        /// Period of the background work: batch drains, reports, heartbeats (default 250 ms).
        tick, tick);
    duration_setter!(
        /// A follower without controller news for this long runs `eager` (default 3 s); also
        /// the controller lease length under `Role::Auto`.
        controller_timeout, controller_timeout);
    duration_setter!(
        /// Silence on the subscription after which it is presumed dead (default 3 s).
        liveness_timeout, liveness_timeout);
    duration_setter!(
        /// Lag of our own messages past which L1 stops serving (default 500 ms).
        max_lag, max_lag);
    duration_setter!(
        /// Redis command timeout (default 2 s).
        command_timeout, command_timeout);

    pub fn l1_max_entries(mut self, n: u64) -> Self {
        self.settings.l1_max_entries = n;
        self
    }

    pub fn l1_max_bytes(mut self, n: u64) -> Self {
        self.settings.l1_max_bytes = n;
        self
    }

    /// Fleet writes/s up to which writes need no prompt invalidation (default 10): the bundled
    /// `adaptive` policy picks `ttl` below a quarter of it and full batches up to it.
    pub fn low_threshold(mut self, v: f64) -> Self {
        self.settings.policy_config.low_threshold = v;
        self
    }

    /// Fleet writes/s above which the strategy is `eager` (default 50).
    pub fn high_threshold(mut self, v: f64) -> Self {
        self.settings.policy_config.high_threshold = v;
        self
    }

    fn policy_ms(mut self, field: &'static str, d: Duration, set: impl FnOnce(&mut PolicyConfig, i32)) -> Self {
        match ms(field, d) {
            Ok(v) => set(&mut self.settings.policy_config, v),
            Err(e) => self.errors.push(e),
        }
        self
    }

    /// Rate window (default 5 s).
    pub fn window(self, d: Duration) -> Self {
        self.policy_ms("window", d, |c, v| c.window_ms = v)
    }

    /// Hold before switching to a cheaper strategy (default 3 s).
    pub fn hold(self, d: Duration) -> Self {
        self.policy_ms("hold", d, |c, v| c.hold_ms = v)
    }

    /// Longest wait of a batched invalidation (default 2.5 s).
    pub fn batch_interval(self, d: Duration) -> Self {
        self.policy_ms("batch_interval", d, |c, v| c.batch_interval_ms = v)
    }

    /// Keys per batch before it is sent early (default 1000).
    pub fn batch_max_keys(mut self, n: u32) -> Self {
        match i32::try_from(n) {
            Ok(v) => self.settings.policy_config.batch_max_keys = v,
            Err(_) => self.errors.push(ConfigError::new("batch_max_keys", "too large")),
        }
        self
    }

    /// Sandbox limits of the policy (fuel per call, memory cap).
    pub fn sandbox(mut self, limits: SandboxLimits) -> Self {
        self.settings.sandbox = limits;
        self
    }

    /// Trust pushed policies signed by this ed25519 public key (64 lowercase hex characters,
    /// as `aci policy keygen` prints it). docs/WIRE.md 9.5.
    pub fn policy_public_key(mut self, hex: impl Into<String>) -> Self {
        self.settings.policy_public_key = Some(hex.into());
        self
    }

    /// Trust pushed components with these SHA-256 hashes (64 lowercase hex each), signed or not.
    pub fn policy_allow_hashes<I, S>(mut self, hashes: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.settings.policy_allow_hashes = hashes.into_iter().map(Into::into).collect();
        self
    }

    /// Faults of a pushed policy after which this instance reverts and rolls the fleet back
    /// (default 3).
    pub fn policy_rollback_faults(mut self, n: u32) -> Self {
        self.settings.policy_rollback_faults = n;
        self
    }

    /// The settings as validated; errors name the field.
    pub fn settings(&self) -> Result<Settings, ConfigError> {
        if let Some(e) = self.errors.first() {
            return Err(e.clone());
        }
        self.settings.validate()?;
        Ok(self.settings.clone())
    }
}
