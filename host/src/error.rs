//! Typed errors of the library. The binary turns them into one-line messages with `anyhow`.

use thiserror::Error;

/// A configuration value was refused; `field` names it (the builder's or the policy's name).
#[derive(Clone, Debug, Error, PartialEq, Eq)]
#[error("invalid config: {field}: {message}")]
pub struct ConfigError {
    pub field: String,
    pub message: String,
}

impl ConfigError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError { field: field.into(), message: message.into() }
    }
}

/// Why a policy component could not be loaded or run.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum PolicyError {
    #[error("cannot read policy file {0}: {1}")]
    Io(String, String),
    #[error("not a WebAssembly file (no \\0asm header)")]
    NotWasm,
    #[error("this is a core WebAssembly module, not a component: build it with `cargo xtask policies` (wit-component) first")]
    CoreModule,
    #[error("not a valid component: {0}")]
    Invalid(String),
    #[error("the policy imports {0:?}: a policy gets no capabilities, it must import nothing")]
    HasImports(Vec<String>),
    #[error("the component does not export `{expected}` (it exports {found:?})")]
    WrongInterface { expected: &'static str, found: Vec<String> },
    #[error("the policy trapped: {0}")]
    Trap(String),
    /// The host could not allocate the policy's sandbox (address space under `ulimit -v`, or an
    /// initial memory above the cap): not the policy's fault, and not a panic.
    #[error("cannot allocate the policy sandbox: {0}")]
    Resources(String),
}

/// Every error the library returns.
#[derive(Debug, Error)]
pub enum Error {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Policy(#[from] PolicyError),
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// Redis refused us at start: no password given to a server that requires one, or a wrong
    /// one. Caught by `build()`, so a cache never starts only to fail every command.
    #[error("redis authentication failed: {0} (give the password in the URL: redis://:PASSWORD@host:port, or redis://USER:PASSWORD@host:port)")]
    Auth(String),
    /// A key that a namespace-less instance must not use: it is in the protocol key space
    /// (docs/WIRE.md 1.2). The message names the reserved prefix.
    #[error("key: reserved: {0}")]
    ReservedKey(String),
    /// A policy rollout operation failed (docs/WIRE.md 9): a push that does not pass the
    /// checks, a record that changed meanwhile, a malformed record.
    #[error("policy rollout: {0}")]
    Rollout(String),
    /// The termination signal handlers could not be installed.
    #[error("cannot listen for termination signals: {0}")]
    Signal(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
