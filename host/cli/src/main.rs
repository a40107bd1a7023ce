//! `aci`: the command-line face of the aci-cache library. Thin: parsing, printing, exit codes.

use std::path::PathBuf;
use std::process::ExitCode;

use aci_cache::policy::{PolicyConfig, PolicyModule, PolicyRuntime, SandboxLimits};
use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

mod cli;
mod policy_cmd;
mod cluster_cmd;
mod workload;

#[derive(Parser)]
#[command(name = "aci", version, about = "Adaptive cache invalidation for Redis")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Show a policy component's name, version and exported functions.
    Inspect {
        /// The policy component (.wasm).
        file: PathBuf,
    },
    /// Replay a write trace through a policy and print the strategy timeline.
    Simulate {
        /// The policy component; default: the bundled adaptive policy.
        #[arg(long)]
        policy: Option<PathBuf>,
        /// The trace file (see traces/ramp.trace for the format).
        #[arg(long)]
        trace: PathBuf,
        /// Host tick in milliseconds (how often batches are drained).
        #[arg(long, default_value_t = 250)]
        tick_ms: u64,
        #[command(flatten)]
        tuning: cli::Tuning,
        /// Also draw the write rate and the strategy timeline as an SVG file.
        #[arg(long)]
        svg: Option<PathBuf>,
    },
    /// Run several in-process instances on Redis through a write-rate ramp, live.
    Demo {
        #[command(flatten)]
        args: cli::DemoArgs,
        /// Start a private local Redis Cluster (3 masters + 3 replicas) and show the three
        /// strategies and a failover on it (no other flag needed).
        #[arg(long, conflicts_with = "redis")]
        cluster: bool,
    },
    /// Measure the cache against raw Redis on the same server (`bench workload`: a fleet
    /// through a write-rate trace, once per policy; `bench --cluster`: on a private cluster).
    Bench {
        #[command(subcommand)]
        sub: Option<workload::BenchSub>,
        #[command(flatten)]
        args: cli::BenchArgs,
        /// On a private local Redis Cluster: L1 hit vs cluster GET, set vs cluster SET per
        /// strategy, eager A->B latency, Pub/Sub load per node sharded vs classic.
        #[arg(long, conflicts_with = "redis")]
        cluster: bool,
    },
    /// Roll a policy out to a running fleet: push, status, rollback, promote, keygen
    /// (docs/WIRE.md section 9).
    #[command(subcommand)]
    Policy(policy_cmd::PolicyCommand),
    /// One cache instance driven by line commands on stdin (docs/NODE.md).
    Node {
        /// --redis URL | --cluster URL[,URL...] --namespace NS --role auto|controller|follower --strategy S --tick-ms N
        /// --instance-id ID --local-ttl-ms N --policy-public-key HEX --policy-allow-hashes H,H
        /// --policy-rollback-faults N
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("ACI_LOG").unwrap_or_else(|_| "warn,redis=error".into()))
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            // One line, the whole cause chain: what a user can act on.
            eprintln!("aci: error: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Inspect { file } => {
            let module = PolicyModule::from_file(&file, SandboxLimits::default())
                .with_context(|| format!("{}", file.display()))?;
            let d = module.describe();
            println!("policy:    {} {}", d.name, d.version);
            println!("interface: {}", aci_cache::policy::INTERFACE);
            println!("size:      {} bytes", d.size_bytes);
            println!("imports:   none");
            println!("exports:");
            for f in d.functions {
                println!("  {f}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Simulate { policy, trace, tick_ms, tuning, svg } => {
            let module = match &policy {
                Some(p) => PolicyModule::from_file(p, SandboxLimits::default()).with_context(|| format!("{}", p.display()))?,
                None => PolicyModule::try_adaptive()?,
            };
            let text = std::fs::read_to_string(&trace).with_context(|| format!("reading {}", trace.display()))?;
            let writes = aci_cache::simulate::parse_trace(&text).with_context(|| format!("{}", trace.display()))?;
            let cfg: PolicyConfig = tuning.policy_config();
            anyhow::ensure!(tick_ms > 0, "--tick-ms must be > 0");
            let mut rt = PolicyRuntime::new(module.clone(), cfg.clone(), 0)?;
            let sim = aci_cache::simulate::run(&mut rt, &writes, tick_ms, cfg.window_ms as u64 + cfg.hold_ms as u64);
            print!("{}", aci_cache::simulate::report(&sim, module.name(), module.version(), &cfg));
            if let Some(path) = &svg {
                let label = format!("{} {}", module.name(), module.version());
                workload::simulate_svg(path, &writes, &sim, cfg.initial_strategy, &label)?;
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Policy(cmd) => policy_cmd::run(cmd),
        Command::Demo { cluster: true, .. } => cluster_cmd::demo(),
        Command::Demo { args, .. } => cli::demo(args),
        Command::Bench { cluster: true, args, .. } => cluster_cmd::bench(args.scale),
        Command::Bench { sub, args, .. } => {
            let b = workload::BenchCmd { sub, args };
            match b.sub {
                Some(workload::BenchSub::Workload(w)) => workload::bench_workload(w),
                None => cli::bench(b.args),
            }
        }
        Command::Node { args } => match cli::NodeArgs::parse(&args) {
            Ok(a) => cli::node(a),
            Err(why) => {
                eprintln!("aci node: {why}");
                Ok(ExitCode::from(2))
            }
        },
    }
}
