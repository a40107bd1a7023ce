//! Replays every vector in tests/vectors/ against the native engine: the hand-written ones check
//! the logic against the spec; the random ones check that they still match what generated them.

use aci_policy_core::{Config, Engine, Kind, Strategy};
use serde_json::{json, Value};

fn float(v: &Value) -> f64 {
    match v {
        Value::String(s) if s == "NaN" => f64::NAN,
        Value::String(s) if s == "Infinity" => f64::INFINITY,
        Value::String(s) if s == "-Infinity" => f64::NEG_INFINITY,
        _ => v.as_f64().expect("float field"),
    }
}

fn strat(v: &Value) -> Strategy {
    Strategy::parse(v.as_str().unwrap()).unwrap()
}

fn config(v: &Value) -> Config {
    Config {
        low_threshold: float(&v["low-threshold"]),
        high_threshold: float(&v["high-threshold"]),
        window_ms: v["window-ms"].as_i64().unwrap() as i32,
        hold_ms: v["hold-ms"].as_i64().unwrap() as i32,
        batch_interval_ms: v["batch-interval-ms"].as_i64().unwrap() as i32,
        batch_max_keys: v["batch-max-keys"].as_i64().unwrap() as i32,
        batch_max_bytes: v["batch-max-bytes"].as_i64().unwrap() as i32,
        initial_strategy: strat(&v["initial-strategy"]),
    }
}

fn run(e: &mut Engine, step: &Value) -> Value {
    let now = step["now"].as_u64().unwrap_or(0);
    match step["op"].as_str().unwrap() {
        "describe" => json!({"name": match e.kind() { Kind::Adaptive => "adaptive", Kind::Fixed => "fixed" }, "version": aci_policy_core::LOGIC_VERSION}),
        "default-config" => {
            let c = Config::default();
            json!({"low-threshold": c.low_threshold, "high-threshold": c.high_threshold, "window-ms": c.window_ms,
                "hold-ms": c.hold_ms, "batch-interval-ms": c.batch_interval_ms, "batch-max-keys": c.batch_max_keys,
                "batch-max-bytes": c.batch_max_bytes, "initial-strategy": c.initial_strategy.as_str()})
        }
        "configure" => match e.configure(config(&step["config"]), now) {
            Ok(()) => json!({"ok": null}),
            Err(err) => json!({"err": {"field": err.field, "message": err.message}}),
        },
        "record-write" => json!(e.record_write(step["key"].as_str().unwrap(), now).as_str()),
        "record-writes" => {
            let keys: Vec<&str> = step["keys"].as_array().unwrap().iter().map(|k| k.as_str().unwrap()).collect();
            json!(e.record_writes(&keys, now).as_str())
        }
        "record-remote-writes" => json!(e.record_remote_writes(step["count"].as_u64().unwrap() as u32, now).as_str()),
        "current-strategy" => json!(e.current_strategy(now).as_str()),
        "write-rate" => json!(e.write_rate(now)),
        "pending-batch" => {
            let b = e.pending_batch(now);
            json!({"keys": b.keys, "flush-all": b.flush_all})
        }
        "status" => {
            let s = e.status(now);
            json!({"strategy": s.strategy.as_str(), "write-rate": s.write_rate, "buffered-keys": s.buffered_keys,
                "batch-due": s.batch_due, "switches": s.switches, "following": s.following})
        }
        "follow" => {
            e.follow(strat(&step["strategy"]), now);
            Value::Null
        }
        "lead" => {
            e.lead(now);
            Value::Null
        }
        op => panic!("unknown op {op}"),
    }
}

#[test]
fn native_engine_matches_every_vector() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/vectors");
    let mut files: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "json")).collect();
    files.sort();
    assert!(files.len() >= 13, "vectors missing in {}", dir.display());
    let mut failures = Vec::new();
    for f in &files {
        let v: Value = serde_json::from_str(&std::fs::read_to_string(f).unwrap()).unwrap();
        let kind = if v["policy"] == "fixed" { Kind::Fixed } else { Kind::Adaptive };
        let mut e = Engine::new(kind);
        for (i, step) in v["steps"].as_array().unwrap().iter().enumerate() {
            let got = run(&mut e, step);
            if let Some(want) = step.get("expect") {
                if &got != want {
                    failures.push(format!("{} step {i} ({}): want {want}, got {got}", v["name"], step["op"]));
                    break;
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
