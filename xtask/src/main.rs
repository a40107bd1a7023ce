//! Project chores: `cargo xtask policies` builds the policy components into target/policies/;
//! `cargo xtask vectors` regenerates the random trace vectors (tests/vectors/random-*.json)
//! from the native engine, which the wasm policies must then match in every host.

use std::path::PathBuf;

use aci_policy_core::{Config, Engine, Kind, Strategy};
use anyhow::{bail, Context, Result};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("policies") => {
            let written = policy_build::build(&policy_build::Layout::new(root())).map_err(anyhow::Error::msg)?;
            // The bundled ones (guest/policies.txt); the test-only ones land beside them.
            for (_, p) in written {
                let len = std::fs::metadata(&p)?.len();
                println!("{} ({len} bytes)", p.display());
            }
            Ok(())
        }
        Some("vectors") => write_random_vectors(),
        _ => bail!("usage: cargo xtask policies | vectors"),
    }
}

pub fn config_json(c: &Config) -> Value {
    json!({
        "low-threshold": c.low_threshold,
        "high-threshold": c.high_threshold,
        "window-ms": c.window_ms,
        "hold-ms": c.hold_ms,
        "batch-interval-ms": c.batch_interval_ms,
        "batch-max-keys": c.batch_max_keys,
        "batch-max-bytes": c.batch_max_bytes,
        "initial-strategy": c.initial_strategy.as_str(),
    })
}

const KEYS: &[&str] = &["user:1", "user:2", "user:3", "", "ключ", "键:🔑", "order:42", "a b c", "x"];

fn random_trace(seed: u64, kind: Kind, steps: usize) -> Value {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut e = Engine::new(kind);
    let mut now: u64 = 1_700_000_000_000;
    let cfg = Config {
        low_threshold: 5.0,
        high_threshold: 20.0,
        window_ms: 1000,
        hold_ms: 300,
        batch_interval_ms: 200,
        batch_max_keys: 6,
        batch_max_bytes: 64,
        initial_strategy: if kind == Kind::Fixed { Strategy::Batched } else { Strategy::Ttl },
    };
    let mut out = Vec::new();
    e.configure(cfg.clone(), now).unwrap();
    out.push(json!({"op": "configure", "config": config_json(&cfg), "now": now, "expect": {"ok": null}}));
    // Phases of write intensity make the trace visit every tier and both directions.
    let mut intensity = 0u32;
    for i in 0..steps {
        if i % 150 == 0 {
            intensity = rng.random_range(0..4);
        }
        let gap = match intensity {
            0 => rng.random_range(50..600),
            1 => rng.random_range(20..120),
            2 => rng.random_range(1..40),
            _ => rng.random_range(0..10),
        };
        now += gap;
        if rng.random_ratio(1, 200) {
            now += rng.random_range(1000..5000); // idle period
        }
        let roll = rng.random_range(0..100);
        let step = if roll < 45 {
            let k = KEYS[rng.random_range(0..KEYS.len())];
            let s = e.record_write(k, now);
            json!({"op": "record-write", "key": k, "now": now, "expect": s.as_str()})
        } else if roll < 55 {
            let n = rng.random_range(0..8);
            let ks: Vec<String> = (0..n).map(|_| KEYS[rng.random_range(0..KEYS.len())].to_string()).collect();
            let s = e.record_writes(&ks, now);
            json!({"op": "record-writes", "keys": ks, "now": now, "expect": s.as_str()})
        } else if roll < 62 {
            let n = rng.random_range(0..6);
            let s = e.record_remote_writes(n, now);
            json!({"op": "record-remote-writes", "count": n, "now": now, "expect": s.as_str()})
        } else if roll < 72 {
            let b = e.pending_batch(now);
            json!({"op": "pending-batch", "now": now, "expect": {"keys": b.keys, "flush-all": b.flush_all}})
        } else if roll < 80 {
            let s = e.current_strategy(now);
            json!({"op": "current-strategy", "now": now, "expect": s.as_str()})
        } else if roll < 86 {
            let r = e.write_rate(now);
            json!({"op": "write-rate", "now": now, "expect": r})
        } else if roll < 95 {
            let s = e.status(now);
            json!({"op": "status", "now": now, "expect": {
                "strategy": s.strategy.as_str(), "write-rate": s.write_rate,
                "buffered-keys": s.buffered_keys, "batch-due": s.batch_due,
                "switches": s.switches, "following": s.following}})
        } else if roll < 97 {
            let s = [Strategy::Ttl, Strategy::Batched, Strategy::Eager][rng.random_range(0..3)];
            e.follow(s, now);
            json!({"op": "follow", "strategy": s.as_str(), "now": now})
        } else if roll < 99 {
            e.lead(now);
            json!({"op": "lead", "now": now})
        } else {
            // Clock stepping back: the engine must treat it as the latest time seen.
            let back = now.saturating_sub(rng.random_range(1..500));
            let s = e.current_strategy(back);
            json!({"op": "current-strategy", "now": back, "expect": s.as_str()})
        };
        out.push(step);
    }
    json!({
        "name": format!("random-{}-{seed}", if kind == Kind::Fixed { "fixed" } else { "adaptive" }),
        "description": "Generated by `cargo xtask vectors` from the native engine (guest/core): phases of write intensity, idle gaps, follow/lead, a clock that steps back.",
        "policy": if kind == Kind::Fixed { "fixed" } else { "adaptive" },
        "steps": out,
    })
}

fn write_random_vectors() -> Result<()> {
    let dir = root().join("tests").join("vectors");
    std::fs::create_dir_all(&dir)?;
    for (seed, kind, steps) in [(1u64, Kind::Adaptive, 3000usize), (2, Kind::Adaptive, 3000), (3, Kind::Fixed, 800)] {
        let v = random_trace(seed, kind, steps);
        let path = dir.join(format!("{}.json", v["name"].as_str().unwrap()));
        let text = serde_json::to_string(&v)?;
        std::fs::write(&path, text + "\n").with_context(|| format!("writing {}", path.display()))?;
        println!("{}", path.display());
    }
    Ok(())
}
