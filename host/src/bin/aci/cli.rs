//! Subcommands that need Redis: demo, bench, node.

use std::process::ExitCode;

use aci_cache::policy::{PolicyConfig, Strategy};
use anyhow::{bail, Result};
use clap::Args;

/// Policy tunables shared by the subcommands; unset means the policy's default.
#[derive(Args, Clone, Debug, Default)]
pub struct Tuning {
    /// Writes/s below which the strategy is ttl.
    #[arg(long)]
    pub low_threshold: Option<f64>,
    /// Writes/s above which the strategy is eager.
    #[arg(long)]
    pub high_threshold: Option<f64>,
    /// Rate window in ms.
    #[arg(long)]
    pub window_ms: Option<i32>,
    /// Hold before a downward switch, in ms.
    #[arg(long)]
    pub hold_ms: Option<i32>,
    /// Batch interval in ms.
    #[arg(long)]
    pub batch_interval_ms: Option<i32>,
}

impl Tuning {
    pub fn policy_config(&self) -> PolicyConfig {
        let d = PolicyConfig::default();
        PolicyConfig {
            low_threshold: self.low_threshold.unwrap_or(d.low_threshold),
            high_threshold: self.high_threshold.unwrap_or(d.high_threshold),
            window_ms: self.window_ms.unwrap_or(d.window_ms),
            hold_ms: self.hold_ms.unwrap_or(d.hold_ms),
            batch_interval_ms: self.batch_interval_ms.unwrap_or(d.batch_interval_ms),
            ..d
        }
    }
}

#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Redis URL; default: start a private redis-server on a free loopback port.
    #[arg(long)]
    pub redis: Option<String>,
}

#[derive(Args, Debug)]
pub struct BenchArgs {
    #[arg(long)]
    pub redis: Option<String>,
}

#[derive(Args, Debug)]
pub struct NodeArgs {
    #[arg(long)]
    pub redis: String,
    #[arg(long)]
    pub namespace: Option<String>,
    #[arg(long)]
    pub strategy: Option<String>,
}

pub fn demo(_a: DemoArgs) -> Result<ExitCode> {
    bail!("not yet")
}
pub fn bench(_a: BenchArgs) -> Result<ExitCode> {
    bail!("not yet")
}
pub fn node(_a: NodeArgs) -> Result<ExitCode> {
    let _ = Strategy::Eager;
    bail!("not yet")
}
