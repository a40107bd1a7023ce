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
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
