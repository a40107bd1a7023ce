//! `aci bench workload`, `aci simulate --svg` and the measured comparison that ends `aci demo`:
//! thin layers over `aci_cache::workload` and `aci_cache::plot`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use aci_cache::plot::{self, Band, TimelineRow};
use aci_cache::simulate::{self, Simulation, Trace};
use aci_cache::workload::{self, Contender, RunReport, Workload};
use aci_cache::{PolicySource, Strategy};

use anyhow::{Context, Result};
use clap::{Args, Subcommand};

/// The bundled trace: a day compressed to 36 s (traces/diurnal.trace).
pub const DIURNAL: &str = include_str!("../../../traces/diurnal.trace");

/// `aci bench` and its subcommands: no subcommand is the micro-benchmark of `cli::bench`.
#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
pub struct BenchCmd {
    #[command(subcommand)]
    pub sub: Option<BenchSub>,
    #[command(flatten)]
    pub args: crate::cli::BenchArgs,
}

#[derive(Subcommand, Debug)]
pub enum BenchSub {
    /// A fleet on one Redis through a write-rate trace, once per policy: messages, Redis
    /// commands, L1 hits, staleness per read. No arguments: private redis-server, bundled trace.
    Workload(WorkloadArgs),
}

#[derive(Args, Debug)]
pub struct WorkloadArgs {
    /// Redis URL; default: start a private redis-server on a free loopback port.
    #[arg(long)]
    pub redis: Option<String>,
    /// The write trace (format of traces/ramp.trace); default: the bundled traces/diurnal.trace.
    #[arg(long)]
    pub trace: Option<PathBuf>,
    /// Also run this policy component (repeatable).
    #[arg(long)]
    pub policy: Vec<PathBuf>,
    /// Only the runs named here (ttl, batched, eager, adaptive), comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,
    /// Instances in the fleet.
    #[arg(long, default_value_t = 3)]
    pub instances: usize,
    /// Keys read and written (Zipf popularity).
    #[arg(long, default_value_t = 1000)]
    pub keys: usize,
    /// Zipf exponent (0 = uniform).
    #[arg(long, default_value_t = 1.0)]
    pub zipf: f64,
    /// Reads per second per instance.
    #[arg(long, default_value_t = 1000)]
    pub reads_per_sec: u32,
    /// Multiply trace time by this (0.5 = twice as fast and twice the rates).
    #[arg(long, default_value_t = 1.0)]
    pub time_scale: f64,
    /// Policy rate window in ms (compressed with the bundled day; production default 5000).
    #[arg(long, default_value_t = 2000)]
    pub window_ms: u64,
    /// Hold before a downward switch, ms (production default 3000).
    #[arg(long, default_value_t = 1000)]
    pub hold_ms: u64,
    /// Batch interval, ms.
    #[arg(long, default_value_t = 2500)]
    pub batch_interval_ms: u64,
    /// Local (L1) TTL, ms: the staleness bound under ttl.
    #[arg(long, default_value_t = 5000)]
    pub local_ttl_ms: u64,
    /// Writes/s below which the policy picks ttl (default: the policy's, 10).
    #[arg(long)]
    pub low_threshold: Option<f64>,
    /// Writes/s above which the policy picks eager (default: the policy's, 50).
    #[arg(long)]
    pub high_threshold: Option<f64>,
    /// Write the frontier and the timeline as one SVG file.
    #[arg(long)]
    pub svg: Option<PathBuf>,
    /// Write a self-contained HTML page (table, frontier, timeline).
    #[arg(long)]
    pub html: Option<PathBuf>,
}

/// A Redis to talk to: the given URL, or a private server that lives as long as this value.
pub struct Target {
    pub url: String,
    _server: Option<aci_testkit::RedisServer>,
}

pub fn redis_target(url: Option<String>) -> Result<Target> {
    match url {
        Some(url) => Ok(Target { url, _server: None }),
        None => {
            let server = aci_testkit::RedisServer::start(&[]).context("starting a private redis-server (pass --redis URL to use yours)")?;
            Ok(Target { url: server.url(), _server: Some(server) })
        }
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?)
}

fn ms(v: u64) -> Duration {
    Duration::from_millis(v)
}

/// The trace's rate in bins, on the workload's (scaled) clock.
fn scaled_rate(trace: &Trace<'_>, scale: f64) -> Vec<(u64, f64)> {
    let end = trace.last_at_ms().unwrap_or(0);
    let bin = (end / 200).max(250);
    simulate::rate_series(trace, bin, end + bin)
        .into_iter()
        .map(|(t, r)| ((t as f64 * scale) as u64, r / scale))
        .collect()
}

/// The two figures side by side in one SVG document.
fn combined_svg(reports: &[RunReport], rate: &[(u64, f64)]) -> String {
    let a = plot::frontier_svg(reports);
    let b = plot::workload_timeline_svg(reports, rate);
    let height = |s: &str| s.split("height=\"").nth(1).and_then(|h| h.split('"').next()).and_then(|h| h.parse::<f64>().ok()).unwrap_or(400.0);
    let (ha, hb) = (height(&a), height(&b));
    format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"760\" height=\"{}\" viewBox=\"0 0 760 {}\">\n<g>{a}</g>\n<g transform=\"translate(0 {ha})\">{b}</g>\n</svg>\n",
        ha + hb, ha + hb
    )
}

pub fn bench_workload(a: WorkloadArgs) -> Result<ExitCode> {
    let text = match &a.trace {
        Some(p) => std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?,
        None => DIURNAL.to_string(),
    };
    let trace_name = a.trace.as_ref().map_or("traces/diurnal.trace (bundled)".to_string(), |p| p.display().to_string());
    let trace = simulate::parse_trace(&text).with_context(|| trace_name.clone())?;
    let w = Workload {
        instances: a.instances,
        keys: a.keys,
        zipf_exponent: a.zipf,
        reads_per_sec: a.reads_per_sec,
        time_scale: a.time_scale,
        window: ms(a.window_ms),
        hold: ms(a.hold_ms),
        batch_interval: ms(a.batch_interval_ms),
        local_ttl: ms(a.local_ttl_ms),
        low_threshold: a.low_threshold,
        high_threshold: a.high_threshold,
        ..Workload::default()
    };
    w.validate()?;
    let mut contenders: Vec<Contender> = Contender::standard();
    if !a.only.is_empty() {
        for o in &a.only {
            anyhow::ensure!(contenders.iter().any(|c| &c.label == o), "--only: `{o}` is not ttl, batched, eager or adaptive");
        }
        contenders.retain(|c| a.only.contains(&c.label));
    }
    for p in &a.policy {
        // The file name, extension included, so a file never takes a built-in run's label.
        let label = p.file_name().map_or("policy.wasm".into(), |s| s.to_string_lossy().into_owned());
        // Load it now: a bad file is an error before any run, naming the file.
        aci_cache::PolicyModule::from_file(p, aci_cache::SandboxLimits::default()).with_context(|| format!("{}", p.display()))?;
        contenders.push(Contender { label, source: PolicySource::File(p.clone()) });
    }
    let target = redis_target(a.redis.clone())?;
    let secs = trace.last_at_ms().unwrap_or(0) as f64 * a.time_scale / 1000.0;
    println!("# aci bench workload: {trace_name}, {} writes over {secs:.1} s; {} instances, {} keys (Zipf s={}), {} reads/s per instance",
        trace.len(), w.instances, w.keys, w.zipf_exponent, w.reads_per_sec);
    println!("# policy window {} ms, hold {} ms, batch interval {} ms, local TTL {} ms, tick {} ms",
        a.window_ms, a.hold_ms, a.batch_interval_ms, a.local_ttl_ms, w.tick.as_millis());
    println!("# published: PUBLISH calls (server INFO commandstats); delivered: messages the instances' subscriptions received");
    println!("# (Redis 7.0 has no server delivery counter); cmds/s: all commands (commandstats) over the run; staleness per read,");
    println!("# 0 when fresh, else how long the value read had been superseded by an acknowledged write.");
    let started = Instant::now();
    let reports = runtime()?.block_on(workload::run_all(&target.url, &trace, &contenders, &w, |r| {
        eprintln!("  {} done: {} writes, {} reads, {} published ({:.0} s)", r.label, r.writes, r.reads, r.published, r.wall.as_secs_f64());
    }))?;
    print!("{}", workload::table(&reports));
    println!("# whole run {:.0} s", started.elapsed().as_secs_f64());
    for r in &reports {
        if r.write_errors + r.read_errors > 0 || r.max_write_lag > Duration::from_millis(200) {
            println!("# {}: {} write errors, {} read errors, writer at worst {} ms behind the trace",
                r.label, r.write_errors, r.read_errors, r.max_write_lag.as_millis());
        }
    }
    if let (Some(ad), Some(eager)) = (reports.iter().find(|r| r.label == "adaptive"), reports.iter().find(|r| r.label == "eager")) {
        let front = workload::on_frontier(&reports);
        let on = reports.iter().zip(&front).any(|(r, f)| r.label == "adaptive" && *f);
        println!("adaptive published {:.0}% of eager's messages ({} vs {}); on the staleness-vs-messages frontier: {}",
            100.0 * ad.published as f64 / eager.published.max(1) as f64, ad.published, eager.published, if on { "yes" } else { "no" });
    }
    let rate = scaled_rate(&trace, a.time_scale);
    if let Some(p) = &a.svg {
        std::fs::write(p, combined_svg(&reports, &rate)).with_context(|| format!("writing {}", p.display()))?;
        println!("wrote {}", p.display());
    }
    if let Some(p) = &a.html {
        let title = format!("aci bench workload: {trace_name}");
        std::fs::write(p, plot::workload_html(&reports, &rate, &title)).with_context(|| format!("writing {}", p.display()))?;
        println!("wrote {}", p.display());
    }
    Ok(ExitCode::SUCCESS)
}

/// `aci simulate --svg FILE`: the trace's rate and the replay's strategy timeline.
pub fn simulate_svg(path: &std::path::Path, trace: &Trace<'_>, sim: &Simulation, initial: Strategy, policy: &str) -> Result<()> {
    let end = sim.duration_ms;
    let bin = (end / 300).max(250);
    let rate = simulate::rate_series(trace, bin, end);
    let mut samples = vec![(0u64, initial)];
    samples.extend(sim.switches.iter().map(|s| (s.at_ms, s.to)));
    let bands: Vec<Band> = plot::bands_from_samples(samples, end);
    let rows = [TimelineRow { label: policy, bands }];
    let title = format!("aci simulate: write rate ({} ms bins) and strategy", bin);
    std::fs::write(path, plot::timeline_svg(&title, &rate, &rows, end)).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// A short ramp for the demo's closing comparison: idle, medium, burst, medium, idle (8 s).
const DEMO_RAMP: &str = "2/s for 1.5s\n25/s for 2s\n200/s for 1s\n25/s for 2s\n2/s for 1.5s\n";

/// The demo's last word: the same short ramp under all-ttl, all-eager and adaptive, measured.
/// The three fleets run at once (separate namespaces) to keep the demo short, so messages are
/// the instances' own counts (`sent`), not the server's, which sees all three.
/// `speed` scales the ramp's time as the demo's `--speed` scales its phases.
pub async fn demo_comparison(redis_url: &str, speed: f64) -> Result<String> {
    let trace = simulate::parse_trace(DEMO_RAMP)?;
    let w = Workload {
        instances: 3,
        keys: 200,
        reads_per_sec: 300,
        window: ms(1000),
        hold: ms(500),
        batch_interval: ms(500),
        local_ttl: ms(3000),
        tick: ms(100),
        tail: ms(500),
        time_scale: speed,
        ..Workload::default()
    };
    let c = Contender::standard();
    let pick = |l: &str| c.iter().find(|x| x.label == l).cloned().ok_or_else(|| anyhow::anyhow!("no {l} run"));
    let (ttl, eager, ad) = (pick("ttl")?, pick("eager")?, pick("adaptive")?);
    let (ttl, eager, ad) = tokio::join!(
        workload::run(redis_url, &trace, &ttl, &w),
        workload::run(redis_url, &trace, &eager, &w),
        workload::run(redis_url, &trace, &ad, &w)
    );
    let (ttl, eager, ad) = (ttl?, eager?, ad?);
    let line = |r: &RunReport| format!("  {:<9} {:>5} messages   stale reads {:>5.2}%   staleness p99 {:>5.0} ms, max {:>5.0} ms",
        r.label, r.sent, 100.0 * r.stale_ratio(), r.staleness_ms(0.99), r.staleness_ms(1.0));
    Ok(format!(
        "\nthe same {:.0} s ramp ({} writes, same reads) run by three fleets at once, measured:\n{}\n{}\n{}\nadaptive sent {:.0}% of all-eager's messages and had {:.0}% of all-ttl's stale reads\n",
        8.0 * speed, ad.writes, line(&ttl), line(&eager), line(&ad),
        100.0 * ad.sent as f64 / eager.sent.max(1) as f64,
        100.0 * ad.stale_reads as f64 / ttl.stale_reads.max(1) as f64,
    ))
}
