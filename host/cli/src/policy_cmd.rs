//! `aci policy push|status|rollback|promote|keygen`: the operator's side of a policy rollout
//! (docs/WIRE.md 9). Thin: the library's `rollout` module does the work.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use aci_cache::policy::SandboxLimits;
use aci_cache::rollout::{self, Canary, PolicyAdmin, PushRequest, RolloutRecord};
use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use serde_json::Value;

#[derive(Args, Debug, Clone)]
pub struct Where {
    /// Redis URL of the fleet.
    #[arg(long, default_value = "redis://127.0.0.1:6379")]
    pub redis: String,
    /// Seed URLs of the fleet's Redis Cluster (comma-separated), instead of --redis; the fleet
    /// uses sharded Pub/Sub (the default of `aci node --cluster`).
    #[arg(long, value_delimiter = ',', conflicts_with = "redis")]
    pub cluster: Option<Vec<String>>,
    /// The fleet's namespace.
    #[arg(long)]
    pub namespace: Option<String>,
    /// The fleet's channel prefix.
    #[arg(long, default_value = "aci")]
    pub prefix: String,
}

#[derive(Subcommand, Debug)]
pub enum PolicyCommand {
    /// Validate a policy component, store it in Redis and announce it to the fleet.
    Push {
        /// The policy component (.wasm).
        file: PathBuf,
        #[command(flatten)]
        at: Where,
        /// Secret key file (from `aci policy keygen`) to sign the push with.
        #[arg(long)]
        key: Option<PathBuf>,
        /// Config overrides as a JSON object of WIT config fields, e.g. '{"initial-strategy":"eager"}'.
        #[arg(long, default_value = "")]
        config: String,
        /// Roll out to N instances (or N% of them) first; promote to all after --canary-secs
        /// without a fault.
        #[arg(long)]
        canary: Option<String>,
        /// How long the canary must run the policy without a fault before promotion.
        #[arg(long, default_value_t = 10.0)]
        canary_secs: f64,
        /// Leave the fleet split after a canary push (promote later with `aci policy promote`).
        #[arg(long)]
        no_promote: bool,
    },
    /// Show what every instance runs, and the fleet's rollout record.
    Status {
        #[command(flatten)]
        at: Where,
        /// Print one JSON object: {"record": ..., "instances": [...], "bad": {...}}.
        #[arg(long)]
        json: bool,
    },
    /// Return the fleet to the policy it ran before the current rollout.
    Rollback {
        #[command(flatten)]
        at: Where,
    },
    /// End a canary: every instance runs the pushed policy.
    Promote {
        #[command(flatten)]
        at: Where,
        /// The canary rollout to promote (default: the current one).
        #[arg(long)]
        rollout: Option<u64>,
    },
    /// Create a signing key: FILE (secret, mode 0600) and FILE.pub (public).
    Keygen {
        /// Where to write the secret key.
        #[arg(long)]
        out: PathBuf,
    },
}

impl Where {
    async fn admin(&self) -> Result<PolicyAdmin> {
        Ok(match &self.cluster {
            Some(seeds) => PolicyAdmin::connect_cluster(seeds, &self.prefix, self.namespace.as_deref()).await?,
            None => PolicyAdmin::connect(&self.redis, &self.prefix, self.namespace.as_deref()).await?,
        })
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread().enable_all().build()?)
}

fn short(h: &str) -> &str {
    if h.is_empty() { "local" } else { &h[..12.min(h.len())] }
}

fn describe(r: &RolloutRecord) -> String {
    let canary = if r.canary.is_empty() { String::new() } else { format!(" canary [{}] (others run {})", r.canary.join(","), short(&r.previous.sha256)) };
    let signed = if r.target.is_local() { "" } else if r.target.sig.is_empty() { " unsigned" } else { " signed" };
    format!("rollout {}: {} {} {}{signed}{canary}, previous {}; {} by {}", r.rollout, if r.name.is_empty() { "-" } else { &r.name },
        if r.version.is_empty() { "-" } else { &r.version }, short(&r.target.sha256), short(&r.previous.sha256), r.reason, r.by)
}

pub fn run(cmd: PolicyCommand) -> Result<ExitCode> {
    match cmd {
        PolicyCommand::Keygen { out } => keygen(&out),
        PolicyCommand::Push { file, at, key, config, canary, canary_secs, no_promote } => {
            let bytes = std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
            let (name, version) = rollout::check_component(&bytes, &config, SandboxLimits::default()).with_context(|| format!("{} refused", file.display()))?;
            let secret_key = match &key {
                Some(k) => {
                    let text = std::fs::read_to_string(k).with_context(|| format!("reading {}", k.display()))?;
                    rollout::public_key_of(&text).map_err(anyhow::Error::msg).with_context(|| format!("{}", k.display()))?;
                    Some(text.trim().to_string())
                }
                None => None,
            };
            let canary = canary.as_deref().map(Canary::parse).transpose().map_err(anyhow::Error::msg)?.unwrap_or(Canary::All);
            anyhow::ensure!(canary_secs > 0.0 && canary_secs <= 86_400.0, "--canary-secs must be in (0, 86400]");
            runtime()?.block_on(async move {
                let mut admin = at.admin().await?;
                let req = PushRequest { component: &bytes, config, secret_key, canary };
                let rec = admin.push(req, &name, &version).await?;
                println!("pushed {}", describe(&rec));
                if rec.canary.is_empty() || no_promote {
                    return Ok(ExitCode::SUCCESS);
                }
                watch_canary(&mut admin, &rec, Duration::from_secs_f64(canary_secs)).await
            })
        }
        PolicyCommand::Status { at, json } => runtime()?.block_on(async move {
            let mut admin = at.admin().await?;
            let rec = admin.current().await?;
            let instances = admin.statuses().await?;
            let bad = admin.bad_hashes().await?;
            if json {
                println!("{}", serde_json::json!({"record": rec, "instances": instances, "bad": bad}));
                return Ok(ExitCode::SUCCESS);
            }
            match &rec {
                Some(r) => println!("{}", describe(r)),
                None => println!("no rollout yet: every instance runs its local policy"),
            }
            println!("{:<16} {:<7} {:<10} {:<8} {:<12} {:<7} {:>7} {:<8} {:>6} {:<15} rejected", "instance", "host", "policy", "version", "sha256", "origin", "rollout", "strategy", "faults", "trust");
            for s in &instances {
                let t = |k: &str| s[k].as_str().unwrap_or("-").to_string();
                let rejected = match &s["rejected"] {
                    Value::Object(r) => format!("rollout {}: {}", r.get("rollout").cloned().unwrap_or(Value::Null), r.get("reason").and_then(Value::as_str).unwrap_or("")),
                    _ => "-".into(),
                };
                let ctl = if s["controller"].as_bool() == Some(true) { "*" } else { "" };
                println!("{:<16} {:<7} {:<10} {:<8} {:<12} {:<7} {:>7} {:<8} {:>6} {:<15} {rejected}", format!("{}{ctl}", t("id")), t("host"), t("name"), t("version"),
                    short(&t("sha256")), t("origin"), s["rollout"], t("strategy"), s["faults"], t("trust"));
            }
            if instances.is_empty() {
                println!("(no instance that follows pushes is running in this namespace)");
            }
            for (h, why) in &bad {
                println!("bad: {} {why}", short(h));
            }
            Ok(ExitCode::SUCCESS)
        }),
        PolicyCommand::Rollback { at } => runtime()?.block_on(async move {
            let mut admin = at.admin().await?;
            let rec = admin.rollback().await?;
            println!("rolled back: {}", describe(&rec));
            Ok(ExitCode::SUCCESS)
        }),
        PolicyCommand::Promote { at, rollout } => runtime()?.block_on(async move {
            let mut admin = at.admin().await?;
            let n = match rollout {
                Some(n) => n,
                None => admin.current().await?.map(|r| r.rollout).context("nothing to promote: no rollout record")?,
            };
            let rec = admin.promote(n).await?;
            println!("promoted: {}", describe(&rec));
            Ok(ExitCode::SUCCESS)
        }),
    }
}

fn keygen(out: &PathBuf) -> Result<ExitCode> {
    let (secret, public) = rollout::keygen();
    let pubfile = PathBuf::from(format!("{}.pub", out.display()));
    if out.exists() {
        bail!("{} exists: refusing to overwrite a key", out.display());
    }
    {
        use std::io::Write;
        let mut o = std::fs::OpenOptions::new();
        o.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            o.mode(0o600);
        }
        let mut f = o.open(out).with_context(|| format!("creating {}", out.display()))?;
        writeln!(f, "{secret}")?;
    }
    std::fs::write(&pubfile, format!("{public}\n")).with_context(|| format!("writing {}", pubfile.display()))?;
    println!("secret key: {} (keep it private)", out.display());
    println!("public key: {public} (also in {}; give it to every instance: policy_public_key / --policy-public-key)", pubfile.display());
    Ok(ExitCode::SUCCESS)
}

/// Waits until every canary instance has run the pushed policy for `period` without a fault
/// or a refusal, then promotes. Exits non-zero when the canary refuses or the fleet rolled
/// back (the fleet does that without us: section 9.7).
async fn watch_canary(admin: &mut PolicyAdmin, rec: &RolloutRecord, period: Duration) -> Result<ExitCode> {
    let started = Instant::now();
    let give_up = period + Duration::from_secs(30);
    let mut healthy_since: Option<Instant> = None;
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let cur = admin.current().await?;
        if cur.as_ref().map(|c| c.rollout) != Some(rec.rollout) {
            let why = cur.map(|c| describe(&c)).unwrap_or_else(|| "record deleted".into());
            eprintln!("aci policy push: rollout {} was replaced before promotion: {why}", rec.rollout);
            return Ok(ExitCode::from(1));
        }
        let statuses = admin.statuses().await?;
        let mut all = true;
        for id in &rec.canary {
            let Some(s) = statuses.iter().find(|s| s["id"].as_str() == Some(id.as_str())) else {
                all = false;
                continue;
            };
            if s["rejected"]["rollout"].as_u64() == Some(rec.rollout) {
                eprintln!("aci policy push: canary {id} refused rollout {}: {}", rec.rollout, s["rejected"]["reason"].as_str().unwrap_or("?"));
                return Ok(ExitCode::from(1));
            }
            if s["sha256"].as_str() != Some(rec.target.sha256.as_str()) || s["faults"].as_u64() != Some(0) {
                all = false;
            }
        }
        if !all {
            healthy_since = None;
        } else if healthy_since.get_or_insert_with(Instant::now).elapsed() >= period {
            let p = admin.promote(rec.rollout).await?;
            println!("promoted: {}", describe(&p));
            return Ok(ExitCode::SUCCESS);
        }
        if started.elapsed() > give_up {
            eprintln!("aci policy push: the canary did not run rollout {} cleanly within {:?}; left as canary (promote or roll back)", rec.rollout, give_up);
            return Ok(ExitCode::from(1));
        }
    }
}
