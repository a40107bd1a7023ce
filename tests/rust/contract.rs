//! The policy contract, checked on the built components: every trace vector replays identically
//! through wasmtime and through the native engine; the components import nothing; the adaptive
//! policy's memory stays bounded; `aci inspect` and `aci simulate` behave on good and bad input.

use std::path::{Path, PathBuf};
use std::process::Command;

use aci_cache::policy::{Batch, PolicyConfig, PolicyInstance, PolicyModule, SandboxLimits, Status, Strategy};
use aci_cache::ConfigError;
use aci_policy_core::{Engine, Kind};
use serde_json::{json, Value};

fn root() -> PathBuf {
    aci_testkit::repo_root()
}

fn policy_file(name: &str) -> PathBuf {
    root().join("target").join("policies").join(format!("{name}.wasm"))
}

/// The operations a vector drives; implemented by the wasm instance and the native engine.
trait Subject {
    fn describe(&mut self) -> Value;
    fn default_config(&mut self) -> PolicyConfig;
    fn configure(&mut self, c: &PolicyConfig, now: u64) -> Result<(), ConfigError>;
    fn record_write(&mut self, k: &str, now: u64) -> Strategy;
    fn record_writes(&mut self, k: &[String], now: u64) -> Strategy;
    fn record_remote_writes(&mut self, n: u32, now: u64) -> Strategy;
    fn current_strategy(&mut self, now: u64) -> Strategy;
    fn write_rate(&mut self, now: u64) -> f64;
    fn pending_batch(&mut self, now: u64) -> Batch;
    fn status(&mut self, now: u64) -> Status;
    fn follow(&mut self, s: Strategy, now: u64);
    fn lead(&mut self, now: u64);
}

impl Subject for PolicyInstance {
    fn describe(&mut self) -> Value {
        let i = PolicyInstance::describe(self).unwrap();
        json!({"name": i.name, "version": i.version})
    }
    fn default_config(&mut self) -> PolicyConfig { PolicyInstance::default_config(self).unwrap() }
    fn configure(&mut self, c: &PolicyConfig, now: u64) -> Result<(), ConfigError> { PolicyInstance::configure(self, c, now).unwrap() }
    fn record_write(&mut self, k: &str, now: u64) -> Strategy { PolicyInstance::record_write(self, k, now).unwrap() }
    fn record_writes(&mut self, k: &[String], now: u64) -> Strategy { PolicyInstance::record_writes(self, k, now).unwrap() }
    fn record_remote_writes(&mut self, n: u32, now: u64) -> Strategy { PolicyInstance::record_remote_writes(self, n, now).unwrap() }
    fn current_strategy(&mut self, now: u64) -> Strategy { PolicyInstance::current_strategy(self, now).unwrap() }
    fn write_rate(&mut self, now: u64) -> f64 { PolicyInstance::write_rate(self, now).unwrap() }
    fn pending_batch(&mut self, now: u64) -> Batch { PolicyInstance::pending_batch(self, now).unwrap() }
    fn status(&mut self, now: u64) -> Status { PolicyInstance::status(self, now).unwrap() }
    fn follow(&mut self, s: Strategy, now: u64) { PolicyInstance::follow(self, s, now).unwrap() }
    fn lead(&mut self, now: u64) { PolicyInstance::lead(self, now).unwrap() }
}

impl Subject for Engine {
    fn describe(&mut self) -> Value {
        let name = match self.kind() {
            Kind::Fixed => "fixed",
            Kind::Budget => "budget",
            Kind::Adaptive => "adaptive",
        };
        json!({"name": name, "version": aci_policy_core::logic_version(self.kind())})
    }
    fn default_config(&mut self) -> PolicyConfig { PolicyConfig::default() }
    fn configure(&mut self, c: &PolicyConfig, now: u64) -> Result<(), ConfigError> {
        Engine::configure(self, c.clone(), now).map_err(|e| ConfigError { field: e.field, message: e.message })
    }
    fn record_write(&mut self, k: &str, now: u64) -> Strategy { Engine::record_write(self, k, now) }
    fn record_writes(&mut self, k: &[String], now: u64) -> Strategy { Engine::record_writes(self, k, now) }
    fn record_remote_writes(&mut self, n: u32, now: u64) -> Strategy { Engine::record_remote_writes(self, n, now) }
    fn current_strategy(&mut self, now: u64) -> Strategy { Engine::current_strategy(self, now) }
    fn write_rate(&mut self, now: u64) -> f64 { Engine::write_rate(self, now) }
    fn pending_batch(&mut self, now: u64) -> Batch { Engine::pending_batch(self, now) }
    fn status(&mut self, now: u64) -> Status { Engine::status(self, now) }
    fn follow(&mut self, s: Strategy, now: u64) { Engine::follow(self, s, now) }
    fn lead(&mut self, now: u64) { Engine::lead(self, now) }
}

fn float(v: &Value) -> f64 {
    match v.as_str() {
        Some("NaN") => f64::NAN,
        Some("Infinity") => f64::INFINITY,
        Some("-Infinity") => f64::NEG_INFINITY,
        _ => v.as_f64().expect("a number"),
    }
}

fn strategy(v: &Value) -> Strategy {
    Strategy::parse(v.as_str().expect("a strategy string")).expect("a known strategy")
}

fn config_from(v: &Value) -> PolicyConfig {
    let int = |f: &str| v[f].as_i64().unwrap_or_else(|| panic!("{f}")) as i32;
    PolicyConfig {
        low_threshold: float(&v["low-threshold"]),
        high_threshold: float(&v["high-threshold"]),
        window_ms: int("window-ms"),
        hold_ms: int("hold-ms"),
        batch_interval_ms: int("batch-interval-ms"),
        batch_max_keys: int("batch-max-keys"),
        batch_max_bytes: int("batch-max-bytes"),
        initial_strategy: strategy(&v["initial-strategy"]),
    }
}

fn config_json(c: &PolicyConfig) -> Value {
    json!({"low-threshold": c.low_threshold, "high-threshold": c.high_threshold, "window-ms": c.window_ms,
        "hold-ms": c.hold_ms, "batch-interval-ms": c.batch_interval_ms, "batch-max-keys": c.batch_max_keys,
        "batch-max-bytes": c.batch_max_bytes, "initial-strategy": c.initial_strategy.as_str()})
}

fn step(p: &mut dyn Subject, s: &Value) -> Value {
    let now = s["now"].as_u64().unwrap_or(0);
    let strat = |x: Strategy| json!(x.as_str());
    match s["op"].as_str().unwrap() {
        "describe" => p.describe(),
        "default-config" => config_json(&p.default_config()),
        "configure" => match p.configure(&config_from(&s["config"]), now) {
            Ok(()) => json!({"ok": null}),
            Err(e) => json!({"err": {"field": e.field, "message": e.message}}),
        },
        "record-write" => strat(p.record_write(s["key"].as_str().unwrap(), now)),
        "record-writes" => {
            let keys: Vec<String> = serde_json::from_value(s["keys"].clone()).unwrap();
            strat(p.record_writes(&keys, now))
        }
        "record-remote-writes" => strat(p.record_remote_writes(s["count"].as_u64().unwrap() as u32, now)),
        "current-strategy" => strat(p.current_strategy(now)),
        "write-rate" => json!(p.write_rate(now)),
        "pending-batch" => {
            let b = p.pending_batch(now);
            json!({"keys": b.keys, "flush-all": b.flush_all})
        }
        "status" => {
            let st = p.status(now);
            json!({"strategy": st.strategy.as_str(), "write-rate": st.write_rate, "buffered-keys": st.buffered_keys,
                "batch-due": st.batch_due, "switches": st.switches, "following": st.following})
        }
        "follow" => {
            p.follow(strategy(&s["strategy"]), now);
            Value::Null
        }
        "lead" => {
            p.lead(now);
            Value::Null
        }
        op => panic!("unknown op {op}"),
    }
}

fn vectors() -> Vec<Value> {
    let dir = root().join("tests").join("vectors");
    // The budget policy's vectors are made by tests/vectors/budget/make.py.
    let mut files: Vec<PathBuf> = [dir.clone()].iter().flat_map(|d| std::fs::read_dir(d).unwrap().map(|e| e.unwrap().path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json")).collect();
    files.sort();
    files.iter().map(|f| serde_json::from_str(&std::fs::read_to_string(f).unwrap()).unwrap()).collect()
}

/// Replays a vector; returns the first mismatch.
fn replay(v: &Value, p: &mut dyn Subject) -> Result<usize, String> {
    let steps = v["steps"].as_array().unwrap();
    for (i, s) in steps.iter().enumerate() {
        let got = step(p, s);
        if let Some(want) = s.get("expect") {
            if &got != want {
                return Err(format!("{} step {i} ({}): want {want}, got {got}", v["name"], s["op"]));
            }
        }
    }
    Ok(steps.len())
}

#[test]
fn every_vector_replays_identically_in_wasm_and_native() {
    let adaptive = PolicyModule::from_file(&policy_file("adaptive"), SandboxLimits::default()).unwrap();
    let fixed = PolicyModule::from_file(&policy_file("fixed"), SandboxLimits::default()).unwrap();
    let budget = PolicyModule::from_file(&policy_file("budget"), SandboxLimits::default()).unwrap();
    for m in [&adaptive, &fixed, &budget] {
        assert!(m.calls_core_module(), "{} is called through the component, not its core module", m.name());
    }
    let all = vectors();
    assert!(all.iter().any(|v| v["policy"] == "budget"), "the budget vectors (tests/vectors/budget)");
    assert!(all.len() >= 16, "expected the hand-written and random vectors, found {}", all.len());
    let mut failures = Vec::new();
    let mut steps = 0;
    for v in &all {
        let (module, kind) = match v["policy"].as_str() {
            Some("fixed") => (&fixed, Kind::Fixed),
            Some("budget") => (&budget, Kind::Budget),
            _ => (&adaptive, Kind::Adaptive),
        };
        // The core module called directly (what caches run) and the same component through
        // wasmtime's component model (the reference canonical ABI).
        match replay(v, &mut module.instantiate().unwrap()) {
            Ok(n) => steps += n,
            Err(e) => failures.push(format!("wasm (core module): {e}")),
        }
        if let Err(e) = replay(v, &mut module.instantiate_component().unwrap()) {
            failures.push(format!("wasm (component): {e}"));
        }
        if let Err(e) = replay(v, &mut Engine::new(kind)) {
            failures.push(format!("native: {e}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(steps > 5000, "only {steps} steps replayed");
}

#[test]
fn bundled_policies_import_nothing_and_are_small() {
    let names: Vec<&str> = aci_cache::bundled_policy_names().collect();
    assert!(names.contains(&"adaptive") && names.contains(&"fixed"), "{names:?}");
    for name in names {
        let bytes = std::fs::read(policy_file(name)).unwrap();
        assert_eq!(aci_cache::bundled_policy(name), Some(&bytes[..]), "{name}: the embedded copy is the built one");
        assert!(bytes.len() < 200_000, "{name} is {} bytes", bytes.len());
        let engine = wasmtime::Engine::default();
        let c = wasmtime::component::Component::new(&engine, &bytes).unwrap();
        let imports: Vec<String> = c.component_type().imports(&engine).map(|(n, _)| n.to_string()).collect();
        assert!(imports.is_empty(), "{name} imports {imports:?}");
        let exports: Vec<String> = c.component_type().exports(&engine).map(|(n, _)| n.to_string()).collect();
        assert_eq!(exports, vec![aci_cache::policy::INTERFACE.to_string()]);
    }
    // The copies embedded in the library are the same bytes.
    assert_eq!(aci_cache::policy::ADAPTIVE_WASM, &std::fs::read(policy_file("adaptive")).unwrap()[..]);
}

#[test]
fn a_million_writes_in_one_window_leave_memory_bounded() {
    for (module, initial) in [(PolicyModule::try_adaptive().unwrap(), Strategy::Ttl), (PolicyModule::try_fixed().unwrap(), Strategy::Batched)] {
        let mut p = module.instantiate().unwrap();
        let cfg = PolicyConfig { initial_strategy: initial, ..PolicyConfig::default() };
        p.configure(&cfg, 0).unwrap().unwrap();
        let baseline = p.peak_memory_bytes();
        // Distinct keys, all inside one 5 s window, never drained: the worst case for memory.
        let mut n = 0u64;
        for chunk in 0..1000u64 {
            let keys: Vec<String> = (0..1000).map(|i| format!("user:{}:{}", chunk, i)).collect();
            p.record_writes(&keys, chunk * 4).unwrap();
            n += keys.len() as u64;
        }
        assert_eq!(n, 1_000_000);
        let rate = p.write_rate(4000).unwrap();
        assert_eq!(rate, 200_000.0, "1M writes / 5 s");
        let peak = p.peak_memory_bytes();
        assert!(peak <= 2 << 20, "{}: peak linear memory {peak} bytes (baseline {baseline})", module.name());
        let st = p.status(4000).unwrap();
        assert!(st.buffered_keys <= cfg.batch_max_keys as u32);
    }
}

fn aci(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_aci")).args(args).output().unwrap();
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

/// A valid component of some other interface, made the way wit-bindgen + wit-component would.
fn other_interface_component(dir: &Path) -> PathBuf {
    let mut resolve = wit_parser::Resolve::default();
    let pkg = resolve
        .push_str("other.wit", "package other:thing@1.0.0;\ninterface api { get: func() -> u32; }\nworld w { export api; }\n")
        .unwrap();
    let world = resolve.select_world(&[pkg], Some("w")).unwrap();
    let mut module = wit_component::dummy_module(&resolve, world, wit_parser::ManglingAndAbi::Standard32);
    wit_component::embed_component_metadata(&mut module, &resolve, world, wit_component::StringEncoding::UTF8, false).unwrap();
    let component = wit_component::ComponentEncoder::default().module(&module).unwrap().validate(true).encode().unwrap();
    let path = dir.join("other.wasm");
    std::fs::write(&path, component).unwrap();
    path
}

#[test]
fn inspect_describes_good_policies_and_refuses_bad_files_in_one_line() {
    let (code, out, err) = aci(&["inspect", policy_file("adaptive").to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("policy:    adaptive 0.3.0"), "{out}");
    for f in ["record-write(key, now-ms)", "pending-batch(now-ms)", "current-strategy(now-ms)", "configure(cfg, now-ms)"] {
        assert!(out.contains(f), "missing {f} in {out}");
    }

    let dir = std::env::temp_dir().join(format!("aci-inspect-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let text = dir.join("notes.txt");
    std::fs::write(&text, "hello").unwrap();
    let core = dir.join("core.wasm");
    std::fs::write(&core, wat_core_module()).unwrap();
    let other = other_interface_component(&dir);
    let cases = [
        (text, "not a WebAssembly file"),
        (core, "core WebAssembly module, not a component"),
        (other, "does not export `aci:cache/policy@0.1.0`"),
        (policy_file("trap-on-load"), "trapped"),
        (dir.join("missing.wasm"), "cannot read"),
    ];
    for (file, want) in cases {
        let (code, out, err) = aci(&["inspect", file.to_str().unwrap()]);
        assert_eq!(code, 1, "{}: {out} {err}", file.display());
        assert!(err.contains(want), "{}: want `{want}` in `{err}`", file.display());
        assert_eq!(err.trim_end().lines().count(), 1, "not one line: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// The smallest valid core module (magic + version 1).
fn wat_core_module() -> Vec<u8> {
    vec![0, b'a', b's', b'm', 1, 0, 0, 0]
}

#[test]
fn simulate_prints_a_timeline_through_all_three_strategies() {
    let trace = root().join("traces").join("ramp.trace");
    let (code, out, err) = aci(&["simulate", "--trace", trace.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    for want in ["ttl -> batched", "batched -> eager", "eager -> batched", "batched -> ttl"] {
        assert!(out.contains(want), "missing `{want}`:\n{out}");
    }
    // The eager phase is 10 s at 200/s: about 2,000 messages, while batched sends a handful.
    let line = |s: &str| out.lines().find(|l| l.starts_with(s)).unwrap().split_whitespace().map(String::from).collect::<Vec<_>>();
    let eager_msgs: u64 = line("eager")[3].parse().unwrap();
    let batched_msgs: u64 = line("batched")[3].parse().unwrap();
    let ttl_msgs: u64 = line("ttl")[3].parse().unwrap();
    assert!(eager_msgs > 1000, "{out}");
    assert!(batched_msgs > 0 && batched_msgs < 100, "{out}");
    assert_eq!(ttl_msgs, 0, "{out}");

    let bad = std::env::temp_dir().join(format!("aci-bad-{}.trace", std::process::id()));
    std::fs::write(&bad, "10/s for 1s\nnonsense here\n").unwrap();
    let (code, _, err) = aci(&["simulate", "--trace", bad.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(err.contains("trace line 2"), "{err}");
    let _ = std::fs::remove_file(&bad);
}
