//! Policy runtime: loads a strategy-engine component, runs it sandboxed, and survives it.
//!
//! A policy is untrusted code chosen by configuration, so every call runs under a fuel budget
//! (a loop cannot hang the cache) and a memory cap, the component gets no imports (no
//! capabilities), and a fault never reaches the caller as a panic: [`PolicyRuntime`] falls back
//! to `eager` (the strategy that can never leave a reader stale), counts the fault, and replaces
//! the instance with a fresh one.
//!
//! Calls go to the component's core module directly where its layout allows
//! (`crate::core_abi`: 3-5x cheaper than wasmtime 48's component calls), else through
//! wasmtime's component model; both paths share one store, so one sandbox.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};

use wasmtime::component::{Component, Linker, types::ComponentItem};
use wasmtime::{ResourceLimiter, Store};

pub use aci_policy_core::{Batch, Config as PolicyConfig, Status, Strategy};

use crate::error::PolicyError;

mod bindings {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "engine",
    });
}

use bindings::exports::aci::cache::policy as wit;

/// The WIT interface a policy component must export.
pub const INTERFACE: &str = "aci:cache/policy@0.1.0";

/// The default policy, built from `guest/adaptive` by build.rs and embedded here.
pub static ADAPTIVE_WASM: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/adaptive.wasm"));
/// Always one configured strategy; a baseline for benchmarks and a tool for tests.
pub static FIXED_WASM: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/fixed.wasm"));

/// Resource bounds for one policy instance.
#[derive(Clone, Copy, Debug)]
pub struct SandboxLimits {
    /// Wasm instructions (roughly) one call may execute before it is stopped.
    pub fuel_per_call: u64,
    /// Linear memory the instance may grow to, in bytes.
    pub max_memory_bytes: usize,
}

impl Default for SandboxLimits {
    fn default() -> Self {
        // 20M fuel is ~10-40 ms of wasm: far above what recording a 10,000-key batch costs, far
        // below what a user would notice as a hang. 32 MiB holds a full default batch (1 MiB)
        // many times over.
        SandboxLimits { fuel_per_call: 20_000_000, max_memory_bytes: 32 << 20 }
    }
}

/// Extra address space a policy's linear memory reserves past its current size, to grow into
/// without moving.
const MEMORY_GROWTH_RESERVE: u64 = 1 << 20;
/// Unmapped bytes after (and before) a policy's linear memory.
const MEMORY_GUARD: u64 = 64 << 10;

/// Upper bound on the address space one policy instance reserves for its linear memory, for
/// sizing `ulimit -v` / `prlimit --as`: while memory grows past its reservation it is copied to a
/// new one, so for a moment two copies exist, each at most the cap plus the growth reserve and
/// the guards. Code, tables and the host's own allocations come on top (a few MiB per process).
pub fn reserved_address_space(limits: &SandboxLimits) -> u64 {
    2 * (limits.max_memory_bytes as u64 + MEMORY_GROWTH_RESERVE + 2 * MEMORY_GUARD)
}

/// The one engine every policy is compiled for. Built once; a failure (which a valid static
/// config should never produce) is kept and returned to every caller, never a panic.
fn engine() -> Result<&'static wasmtime::Engine, PolicyError> {
    static ENGINE: OnceLock<Result<wasmtime::Engine, String>> = OnceLock::new();
    ENGINE
        .get_or_init(|| {
            let mut cfg = wasmtime::Config::new();
            // Plain synchronous calls: ~0.3 us each instead of ~0.8 us with async support.
            cfg.concurrency_support(false);
            cfg.consume_fuel(true);
            cfg.max_wasm_stack(512 << 10);
            // wasmtime's defaults reserve 4 GiB of address space per linear memory plus two 32 MiB
            // guards (0x104000000 bytes), so that compiled code can skip bounds checks. For a memory
            // capped at 32 MiB that is 130 times the cap, and a host under `ulimit -v` or
            // `prlimit --as` of a few GiB cannot create a single instance. Here a memory reserves
            // what it holds plus MEMORY_GROWTH_RESERVE (the values wasmtime itself uses where there
            // is no virtual memory) and moves (one copy) when it grows past that, so its reservation
            // follows its size, which the limiter caps at SandboxLimits::max_memory_bytes. The cost
            // is an explicit bounds check on each load and store in the policy's code: measured
            // with `aci bench --engine-only` (release, best of 5), a record-write or status call
            // is unchanged (402 vs 393 ns, 303 vs 299 ns); a tick's 100-key record-writes +
            // pending-batch takes 117 us instead of 93 us, half of it Spectre masking of the checks.
            cfg.memory_reservation(0);
            cfg.memory_reservation_for_growth(MEMORY_GROWTH_RESERVE);
            cfg.memory_may_move(true);
            // A guard still lets the compiler fold the bounds checks of nearby offsets into one.
            cfg.memory_guard_size(MEMORY_GUARD);
            wasmtime::Engine::new(&cfg).map_err(|e| one_line(&e))
        })
        .as_ref()
        .map_err(|e| PolicyError::Resources(format!("cannot create the wasm engine: {e}")))
}

/// Instantiation fails either because the policy trapped while starting (its fault) or because
/// the host could not allocate the sandbox: address space under a `ulimit -v`, or an initial
/// memory above the cap. Only the first is reported as a trap.
fn instantiate_error(e: &wasmtime::Error) -> PolicyError {
    if e.downcast_ref::<wasmtime::Trap>().is_some() {
        PolicyError::Trap(one_line(e))
    } else {
        PolicyError::Resources(one_line(e))
    }
}

/// What `aci inspect` shows of a policy.
#[derive(Clone, Debug)]
pub struct PolicyDescription {
    pub name: String,
    pub version: String,
    /// `name(param, ...) -> n results`, in export order.
    pub functions: Vec<String>,
    pub size_bytes: usize,
}

/// A compiled, validated policy component. Cheap to clone; instantiate per cache.
#[derive(Clone)]
pub struct PolicyModule {
    /// The component ready to instantiate. Compiled at load, except for a bundled policy that
    /// runs on its core module: then only when something asks for the component itself.
    pre: Arc<OnceLock<Result<bindings::EnginePre<StoreState>, PolicyError>>>,
    bytes: Arc<[u8]>,
    /// The component's core module, when its layout lets the host call it directly
    /// (`crate::core_abi`): the same code, 3-5x cheaper calls.
    core: Option<wasmtime::InstancePre<StoreState>>,
    limits: SandboxLimits,
    info: (String, String),
    size_bytes: usize,
}

/// The store's limiter: caps linear memory and tables, and remembers the largest memory the
/// instance asked for (what `aci inspect` and the memory-bound test report).
struct StoreState {
    max_memory: usize,
    peak_memory: usize,
}

impl ResourceLimiter for StoreState {
    fn memory_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        if desired > self.max_memory {
            // An error (not Ok(false)) so the call traps here instead of the guest seeing a
            // failed allocation it may mishandle.
            return Err(wasmtime::format_err!("policy memory cap of {} bytes exceeded", self.max_memory));
        }
        self.peak_memory = self.peak_memory.max(desired);
        Ok(true)
    }

    fn table_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        Ok(desired <= 100_000)
    }
}

impl PolicyModule {
    /// Compiles and validates `bytes`: it must be a component that exports [`INTERFACE`] and
    /// imports nothing, and whose `describe` runs. Compiled components are cached per process
    /// by content, so many caches sharing one policy compile it once.
    pub fn from_bytes(bytes: &[u8], limits: SandboxLimits) -> Result<Self, PolicyError> {
        if bytes.len() < 8 || &bytes[0..4] != b"\0asm" {
            return Err(PolicyError::NotWasm);
        }
        // Layer 0x01 marks a core module, 0x0d (with version 0x0d/0x0e..) a component.
        if bytes[4..8] == [1, 0, 0, 0] {
            return Err(PolicyError::CoreModule);
        }
        let engine = engine()?;
        let pre = component_pre(engine, bytes)?;
        let core = compiled_core(engine, bytes);
        let mut module = PolicyModule {
            pre: Arc::new(OnceLock::from(Ok(pre))),
            bytes: bytes.into(),
            core: None,
            limits,
            info: (String::new(), String::new()),
            size_bytes: bytes.len(),
        };
        module.describe_self()?;
        if let Some(core) = core {
            let fast = PolicyModule { core: Some(core), ..module.clone() };
            if core_agrees(&fast) {
                return Ok(fast);
            }
            tracing::debug!(policy = %module.info.0, "the core module answered differently from the component: calling through the component");
        }
        Ok(module)
    }

    /// A policy this crate built and tested (`guest/`, tests/rust/contract.rs replays the vectors
    /// on both paths): when its core module can be called directly, the component is not
    /// compiled at load, which halves the load time.
    fn from_bundled(bytes: &'static [u8], limits: SandboxLimits) -> Result<Self, PolicyError> {
        let Some(core) = compiled_core(engine()?, bytes) else {
            return Self::from_bytes(bytes, limits);
        };
        let mut module = PolicyModule {
            pre: Arc::new(OnceLock::new()),
            bytes: bytes.into(),
            core: Some(core),
            limits,
            info: (String::new(), String::new()),
            size_bytes: bytes.len(),
        };
        module.describe_self()?;
        Ok(module)
    }

    fn describe_self(&mut self) -> Result<(), PolicyError> {
        let mut inst = self.instantiate()?;
        let info = inst.describe().map_err(|e| PolicyError::Trap(format!("describe: {}", one_line(&e))))?;
        self.info = (info.name, info.version);
        Ok(())
    }

    fn component(&self) -> Result<&bindings::EnginePre<StoreState>, PolicyError> {
        self.pre.get_or_init(|| component_pre(engine()?, &self.bytes)).as_ref().map_err(Clone::clone)
    }

    pub fn from_file(path: &Path, limits: SandboxLimits) -> Result<Self, PolicyError> {
        let bytes = std::fs::read(path).map_err(|e| PolicyError::Io(path.display().to_string(), e.to_string()))?;
        Self::from_bytes(&bytes, limits)
    }

    /// The bundled adaptive policy. Fails only when the process cannot allocate the sandbox
    /// (e.g. under an address-space limit): a typed error, never a panic.
    pub fn try_adaptive() -> Result<Self, PolicyError> {
        static M: OnceLock<PolicyModule> = OnceLock::new();
        bundled(&M, ADAPTIVE_WASM)
    }

    /// The bundled fixed policy; fails like [`PolicyModule::try_adaptive`].
    pub fn try_fixed() -> Result<Self, PolicyError> {
        static M: OnceLock<PolicyModule> = OnceLock::new();
        bundled(&M, FIXED_WASM)
    }

    pub fn with_limits(mut self, limits: SandboxLimits) -> Self {
        self.limits = limits;
        self
    }

    pub fn name(&self) -> &str {
        &self.info.0
    }

    pub fn version(&self) -> &str {
        &self.info.1
    }

    pub fn describe(&self) -> PolicyDescription {
        let mut functions = Vec::new();
        let component = self.component().ok().map(|pre| pre.instance_pre().component());
        let ty = component.map(|c| (c.component_type(), c.engine()));
        if let Some((ext, engine)) = ty.as_ref().and_then(|(ty, engine)| Some((ty.get_export(engine, INTERFACE)?, *engine))) {
            if let ComponentItem::ComponentInstance(inst) = ext.ty {
                for (name, item) in inst.exports(engine) {
                    if let ComponentItem::ComponentFunc(f) = item.ty {
                        let params: Vec<&str> = f.params().map(|(p, _)| p).collect();
                        let results = f.results().len();
                        let arrow = if results == 0 { String::new() } else { " -> 1 result".to_string() };
                        functions.push(format!("{name}({}){arrow}", params.join(", ")));
                    }
                }
            }
        }
        PolicyDescription {
            name: self.info.0.clone(),
            version: self.info.1.clone(),
            functions,
            size_bytes: self.size_bytes,
        }
    }

    /// A fresh instance in its own store: nothing measured, default config. Its calls go to the
    /// core module directly where the component's layout allows (`crate::core_abi`).
    pub fn instantiate(&self) -> Result<PolicyInstance, PolicyError> {
        match &self.core {
            Some(core) => {
                let mut store = self.store()?;
                let inst = core.instantiate(&mut store).map_err(|e| instantiate_error(&e))?;
                let calls = crate::core_abi::CoreCalls::new(&inst, &mut store).map_err(|e| PolicyError::Invalid(one_line(&e)))?;
                Ok(PolicyInstance { store, calls: Calls::Core(Box::new(calls)), fuel: self.limits.fuel_per_call })
            }
            None => self.instantiate_component(),
        }
    }

    /// A fresh instance whose calls all go through wasmtime's component model, the reference
    /// implementation of the canonical ABI (tests compare the two paths).
    pub fn instantiate_component(&self) -> Result<PolicyInstance, PolicyError> {
        let mut store = self.store()?;
        let bindings = self.component()?.instantiate(&mut store).map_err(|e| instantiate_error(&e))?;
        Ok(PolicyInstance { store, calls: Calls::Component(Box::new(bindings)), fuel: self.limits.fuel_per_call })
    }

    /// Whether [`PolicyModule::instantiate`] calls the core module directly.
    pub fn calls_core_module(&self) -> bool {
        self.core.is_some()
    }

    fn store(&self) -> Result<Store<StoreState>, PolicyError> {
        let state = StoreState { max_memory: self.limits.max_memory_bytes, peak_memory: 0 };
        let mut store = Store::new(engine()?, state);
        store.limiter(|s| s as &mut dyn ResourceLimiter);
        store.set_fuel(self.limits.fuel_per_call).map_err(|e| PolicyError::Trap(e.to_string()))?;
        Ok(store)
    }
}

/// Loads a bundled policy once per process. Only a success is kept: a failure to allocate may
/// be transient, and the next caller retries.
fn bundled(cell: &OnceLock<PolicyModule>, wasm: &'static [u8]) -> Result<PolicyModule, PolicyError> {
    if let Some(m) = cell.get() {
        return Ok(m.clone());
    }
    let m = PolicyModule::from_bundled(wasm, SandboxLimits::default())?;
    Ok(cell.get_or_init(|| m).clone())
}

/// A wasm fault as one line: the trap's name when there is one (the wasm backtrace that
/// wasmtime attaches is for policy authors, not for the cache's logs).
pub(crate) fn one_line(e: &wasmtime::Error) -> String {
    if let Some(trap) = e.downcast_ref::<wasmtime::Trap>() {
        return format!("wasm trap: {trap}").replace("wasm trap: wasm trap:", "wasm trap:");
    }
    let text = format!("{e:#}");
    text.lines().map(str::trim).filter(|l| !l.is_empty()).collect::<Vec<_>>().join("; ")
}

/// Compiles (or finds compiled) the component `bytes` and checks that it is a policy: it
/// imports nothing and exports [`INTERFACE`] with the WIT's types.
fn component_pre(engine: &wasmtime::Engine, bytes: &[u8]) -> Result<bindings::EnginePre<StoreState>, PolicyError> {
    let component = compiled(bytes, |b| Component::new(engine, b).map_err(|e| PolicyError::Invalid(one_line(&e))))?;
    let ty = component.component_type();
    let imports: Vec<String> = ty.imports(engine).map(|(n, _)| n.to_string()).collect();
    if !imports.is_empty() {
        return Err(PolicyError::HasImports(imports));
    }
    if ty.get_export(engine, INTERFACE).is_none() {
        let exports: Vec<String> = ty.exports(engine).map(|(n, _)| n.to_string()).collect();
        return Err(PolicyError::WrongInterface { expected: INTERFACE, found: exports });
    }
    let linker: Linker<StoreState> = Linker::new(engine);
    linker
        .instantiate_pre(&component)
        .and_then(bindings::EnginePre::new)
        .map_err(|e| PolicyError::WrongInterface { expected: INTERFACE, found: vec![one_line(&e)] })
}

/// The component's core module compiled and ready to instantiate with no imports, if the
/// component has the layout `crate::core_abi` calls directly. The exports are checked against
/// the canonical signatures when an instance is made.
fn compiled_core(engine: &wasmtime::Engine, bytes: &[u8]) -> Option<wasmtime::InstancePre<StoreState>> {
    let m = crate::core_abi::single_core_module(bytes)?;
    // wasmtime does not hand out the component's own compiled core module, so it is compiled
    // on its own; a module that does not compile is left to the component path to report.
    let module = compiled(bytes, |_| wasmtime::Module::new(engine, m).map_err(|e| PolicyError::Invalid(one_line(&e)))).ok()?;
    wasmtime::Linker::<StoreState>::new(engine).instantiate_pre(&module).ok()
}

/// Compiles `bytes` with `compile` once per process: compiled artifacts (components and core
/// modules each in a cache of their own) are kept by SHA-256 of the component.
fn compiled<A: Clone + Send + 'static>(bytes: &[u8], compile: impl FnOnce(&[u8]) -> Result<A, PolicyError>) -> Result<A, PolicyError> {
    // Keyed by SHA-256: components pushed over Redis (docs/WIRE.md 9) are compiled here too,
    // and a weaker key would let one component be served for another. Bounded: a fleet that
    // goes through many rollouts must not keep every compiled component for ever.
    const MAX_CACHED: usize = 16;
    type Cache = Mutex<HashMap<([u8; 32], std::any::TypeId), Box<dyn std::any::Any + Send>>>;
    static CACHE: OnceLock<Cache> = OnceLock::new();
    let key = (sha256(bytes), std::any::TypeId::of::<A>());
    let cache = CACHE.get_or_init(Default::default);
    let cached = |c: &Cache| c.lock().unwrap_or_else(|p| p.into_inner()).get(&key).and_then(|a| a.downcast_ref::<A>()).cloned();
    if let Some(c) = cached(cache) {
        return Ok(c);
    }
    // One compile at a time per process: caches of one process that adopt the same pushed
    // component at once compile it once, not once each (compiling is the slow part of a swap).
    static COMPILING: Mutex<()> = Mutex::new(());
    let _one = COMPILING.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(c) = cached(cache) {
        return Ok(c);
    }
    let c = compile(bytes)?;
    let mut cache = cache.lock().unwrap_or_else(|p| p.into_inner());
    if cache.len() >= 2 * MAX_CACHED {
        cache.clear();
    }
    cache.insert(key, Box::new(c.clone()));
    Ok(c)
}

/// Whether a fresh instance on the core path answers a short call script exactly as one on the
/// component path does (results, refused configs, and where a call faults). A core module that
/// does not is not used, whatever the reason (e.g. a component whose lifts wrap other functions
/// than the canonically named exports).
fn core_agrees(fast: &PolicyModule) -> bool {
    fn script(p: Result<PolicyInstance, PolicyError>) -> Vec<String> {
        let Ok(mut p) = p else { return vec!["no instance".into()] };
        let t = 1_700_000_000_000u64;
        let batched = PolicyConfig { initial_strategy: Strategy::Batched, batch_max_keys: 3, low_threshold: 0.0, high_threshold: 1e12, ..PolicyConfig::default() };
        let bad = PolicyConfig { low_threshold: 5.0, high_threshold: 1.0, ..PolicyConfig::default() };
        let keys: Vec<String> = ["a", "b", "\u{e9}t\u{e9}", "", "d"].iter().map(|k| k.to_string()).collect();
        let mut out = Vec::new();
        macro_rules! step {
            ($e:expr) => {
                match $e {
                    Ok(v) => out.push(format!("{v:?}")),
                    Err(_) => {
                        out.push("fault".into());
                        return out;
                    }
                }
            };
        }
        step!(p.describe().map(|i| (i.name, i.version)));
        step!(p.default_config());
        step!(p.record_write("aci:ns:k", t));
        step!(p.record_writes(&keys, t + 1));
        step!(p.record_remote_writes(500, t + 2));
        step!(p.current_strategy(t + 3));
        step!(p.write_rate(t + 4).map(f64::to_bits));
        step!(p.status(t + 5));
        step!(p.configure(&bad, t + 6));
        step!(p.configure(&batched, t + 7));
        step!(p.record_writes(&keys, t + 8));
        step!(p.status(t + 9));
        step!(p.pending_batch(t + 10));
        step!(p.pending_batch(t + 11));
        step!(p.follow(Strategy::Eager, t + 12));
        step!(p.record_write("aci:ns:\u{1F600}", t + 13));
        step!(p.status(t + 14));
        step!(p.lead(t + 15));
        step!(p.status(t + 60_000));
        step!(p.pending_batch(t + 60_001));
        out
    }
    script(fast.instantiate()) == script(fast.instantiate_component())
}

/// SHA-256 of `bytes`.
pub(crate) fn sha256(bytes: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).into()
}

/// SHA-256 of `bytes` as 64 lowercase hex characters: how docs/WIRE.md 9 names a component.
pub fn sha256_hex(bytes: &[u8]) -> String {
    crate::rollout::hex(&sha256(bytes))
}

fn to_wit(s: Strategy) -> wit::Strategy {
    match s {
        Strategy::Ttl => wit::Strategy::Ttl,
        Strategy::Batched => wit::Strategy::Batched,
        Strategy::Eager => wit::Strategy::Eager,
    }
}

fn from_wit(s: wit::Strategy) -> Strategy {
    match s {
        wit::Strategy::Ttl => Strategy::Ttl,
        wit::Strategy::Batched => Strategy::Batched,
        wit::Strategy::Eager => Strategy::Eager,
    }
}

fn config_to_wit(c: &PolicyConfig) -> wit::Config {
    wit::Config {
        low_threshold: c.low_threshold,
        high_threshold: c.high_threshold,
        window_ms: c.window_ms,
        hold_ms: c.hold_ms,
        batch_interval_ms: c.batch_interval_ms,
        batch_max_keys: c.batch_max_keys,
        batch_max_bytes: c.batch_max_bytes,
        initial_strategy: to_wit(c.initial_strategy),
    }
}

fn config_from_wit(c: wit::Config) -> PolicyConfig {
    PolicyConfig {
        low_threshold: c.low_threshold,
        high_threshold: c.high_threshold,
        window_ms: c.window_ms,
        hold_ms: c.hold_ms,
        batch_interval_ms: c.batch_interval_ms,
        batch_max_keys: c.batch_max_keys,
        batch_max_bytes: c.batch_max_bytes,
        initial_strategy: from_wit(c.initial_strategy),
    }
}

/// One running policy. Every method is one call across the component boundary, with the fuel
/// budget refilled first. Errors are wasm faults (trap, fuel exhausted, memory cap).
pub struct PolicyInstance {
    store: Store<StoreState>,
    calls: Calls,
    fuel: u64,
}

/// How an instance's calls reach the guest.
enum Calls {
    /// Through wasmtime's component model.
    Component(Box<bindings::Engine>),
    /// Directly into the core module (`crate::core_abi`).
    Core(Box<crate::core_abi::CoreCalls>),
}

type Fault = wasmtime::Error;

/// Runs one method on whichever path the instance has, with the fuel budget refilled first:
/// `$component` gets the bindings' interface and the store, `$core` the core calls and the store.
macro_rules! dispatch {
    ($self:ident, |$p:ident, $s:ident| $component:expr, |$c:ident| $core:expr) => {{
        $self.store.set_fuel($self.fuel)?;
        let $s = &mut $self.store;
        match &$self.calls {
            Calls::Component(b) => {
                let $p = b.aci_cache_policy();
                $component
            }
            Calls::Core($c) => $core,
        }
    }};
}

impl PolicyInstance {
    pub fn describe(&mut self) -> Result<wit::PolicyInfo, Fault> {
        dispatch!(self, |p, s| p.call_describe(s), |c| c.describe(s).map(|(name, version)| wit::PolicyInfo { name, version }))
    }

    pub fn default_config(&mut self) -> Result<PolicyConfig, Fault> {
        dispatch!(self, |p, s| p.call_default_config(s).map(config_from_wit), |c| c.default_config(s))
    }

    /// Outer error: a fault; inner error: the policy refused the config.
    pub fn configure(&mut self, cfg: &PolicyConfig, now_ms: u64) -> Result<Result<(), crate::ConfigError>, Fault> {
        dispatch!(
            self,
            |p, s| Ok(p.call_configure(s, config_to_wit(cfg), now_ms)?.map_err(|e| crate::ConfigError { field: e.field, message: e.message })),
            |c| c.configure(s, cfg, now_ms)
        )
    }

    pub fn record_write(&mut self, key: &str, now_ms: u64) -> Result<Strategy, Fault> {
        dispatch!(self, |p, s| p.call_record_write(s, key, now_ms).map(from_wit), |c| c.record_write(s, key, now_ms))
    }

    pub fn record_writes(&mut self, keys: &[String], now_ms: u64) -> Result<Strategy, Fault> {
        dispatch!(self, |p, s| p.call_record_writes(s, keys, now_ms).map(from_wit), |c| c.record_writes(s, keys, now_ms))
    }

    pub fn record_remote_writes(&mut self, count: u32, now_ms: u64) -> Result<Strategy, Fault> {
        dispatch!(self, |p, s| p.call_record_remote_writes(s, count, now_ms).map(from_wit), |c| c.record_remote_writes(s, count, now_ms))
    }

    pub fn current_strategy(&mut self, now_ms: u64) -> Result<Strategy, Fault> {
        dispatch!(self, |p, s| p.call_current_strategy(s, now_ms).map(from_wit), |c| c.current_strategy(s, now_ms))
    }

    pub fn write_rate(&mut self, now_ms: u64) -> Result<f64, Fault> {
        dispatch!(self, |p, s| p.call_write_rate(s, now_ms), |c| c.write_rate(s, now_ms))
    }

    pub fn pending_batch(&mut self, now_ms: u64) -> Result<Batch, Fault> {
        dispatch!(
            self,
            |p, s| p.call_pending_batch(s, now_ms).map(|b| Batch { keys: b.keys, flush_all: b.flush_all }),
            |c| c.pending_batch(s, now_ms)
        )
    }

    pub fn status(&mut self, now_ms: u64) -> Result<Status, Fault> {
        dispatch!(
            self,
            |p, s| p.call_status(s, now_ms).map(|st| Status {
                strategy: from_wit(st.strategy),
                write_rate: st.write_rate,
                buffered_keys: st.buffered_keys,
                batch_due: st.batch_due,
                switches: st.switches,
                following: st.following,
            }),
            |c| c.status(s, now_ms)
        )
    }

    pub fn follow(&mut self, strategy: Strategy, now_ms: u64) -> Result<(), Fault> {
        dispatch!(self, |p, s| p.call_follow(s, to_wit(strategy), now_ms), |c| c.follow(s, strategy, now_ms))
    }

    pub fn lead(&mut self, now_ms: u64) -> Result<(), Fault> {
        dispatch!(self, |p, s| p.call_lead(s, now_ms), |c| c.lead(s, now_ms))
    }

    /// The largest linear memory the instance has grown to, in bytes.
    pub fn peak_memory_bytes(&self) -> usize {
        self.store.data().peak_memory
    }
}

/// What the runtime reports about faults, for stats.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FaultStats {
    pub faults: u64,
    pub reinstantiations: u64,
}

/// A policy instance wrapped with the fault rules: any fault (trap, fuel exhausted, memory cap,
/// or an output that breaks the contract) makes it answer `eager` for one window, re-create the
/// instance with the last good config, and report that buffered keys were lost so the caller
/// publishes a flush.
pub struct PolicyRuntime {
    module: PolicyModule,
    instance: Option<PolicyInstance>,
    config: PolicyConfig,
    following: Option<Strategy>,
    eager_until: u64,
    lost_buffer: bool,
    consecutive: u32,
    retry_at: u64,
    stats: FaultStats,
    /// The last fault, one line: what a status record reports.
    last_fault: Option<String>,
    /// The strategy last answered, so readers of `strategy()` need not call into wasm.
    last_known: Strategy,
}

impl PolicyRuntime {
    /// Instantiates and configures. A config the policy refuses is a typed error.
    pub fn new(module: PolicyModule, config: PolicyConfig, now_ms: u64) -> Result<Self, crate::Error> {
        let mut inst = module.instantiate()?;
        match inst.configure(&config, now_ms) {
            Err(fault) => return Err(PolicyError::Trap(format!("configure: {}", one_line(&fault))).into()),
            Ok(Err(cfg_err)) => return Err(crate::Error::Config(cfg_err)),
            Ok(Ok(())) => {}
        }
        Ok(PolicyRuntime {
            module,
            instance: Some(inst),
            last_known: config.initial_strategy,
            config,
            following: None,
            eager_until: 0,
            lost_buffer: false,
            consecutive: 0,
            retry_at: 0,
            stats: FaultStats::default(),
            last_fault: None,
        })
    }

    pub fn module(&self) -> &PolicyModule {
        &self.module
    }

    pub fn fault_stats(&self) -> FaultStats {
        self.stats
    }

    /// The last fault (`call: error`, one line), if any.
    pub fn last_fault(&self) -> Option<&str> {
        self.last_fault.as_deref()
    }

    /// The time from which the fault rules (the eager window, the re-instantiation back-off)
    /// no longer change what this runtime answers; 0 when no fault happened. Lets a replay skip
    /// idle time without skipping a recovery.
    pub fn settles_at(&self) -> u64 {
        self.eager_until.max(self.retry_at)
    }

    fn fault(&mut self, what: &str, err: impl std::fmt::Display, now_ms: u64) {
        self.stats.faults += 1;
        self.consecutive += 1;
        self.lost_buffer = true;
        self.instance = None;
        self.last_fault = Some(crate::rollout::clip(&format!("{what}: {err}"), 160));
        let window = self.config.window_ms.max(1) as u64;
        self.eager_until = now_ms.saturating_add(window);
        // A policy that faults on every call would cost a re-instantiation per write: back off.
        let backoff = window.saturating_mul(1 << self.consecutive.min(6));
        self.retry_at = now_ms.saturating_add(if self.consecutive >= 3 { backoff } else { 0 });
        tracing::warn!(policy = self.module.name(), call = what, error = %err, faults = self.stats.faults,
            "policy fault: answering eager and re-instantiating");
    }

    fn instance(&mut self, now_ms: u64) -> Option<&mut PolicyInstance> {
        if self.instance.is_none() && now_ms >= self.retry_at {
            match self.module.instantiate() {
                Ok(mut inst) => {
                    self.stats.reinstantiations += 1;
                    let ok = matches!(inst.configure(&self.config, now_ms), Ok(Ok(())))
                        && self.following.map_or(true, |s| inst.follow(s, now_ms).is_ok());
                    if ok {
                        self.instance = Some(inst);
                    } else {
                        self.fault("re-instantiate", "configure or follow failed", now_ms);
                    }
                }
                Err(e) => self.fault("instantiate", e, now_ms),
            }
        }
        self.instance.as_mut()
    }

    fn run<R>(&mut self, what: &str, now_ms: u64, f: impl FnOnce(&mut PolicyInstance) -> Result<R, Fault>) -> Option<R> {
        let inst = self.instance(now_ms)?;
        match f(inst) {
            Ok(r) => {
                self.consecutive = 0;
                Some(r)
            }
            Err(e) => {
                self.fault(what, one_line(&e), now_ms);
                None
            }
        }
    }

    fn guard(&mut self, s: Option<Strategy>, now_ms: u64) -> Strategy {
        let s = match s {
            Some(s) if now_ms >= self.eager_until => s,
            _ => Strategy::Eager,
        };
        self.last_known = s;
        s
    }

    pub fn record_write(&mut self, key: &str, now_ms: u64) -> Strategy {
        let s = self.run("record-write", now_ms, |i| i.record_write(key, now_ms));
        self.guard(s, now_ms)
    }

    pub fn record_writes(&mut self, keys: &[String], now_ms: u64) -> Strategy {
        let s = self.run("record-writes", now_ms, |i| i.record_writes(keys, now_ms));
        self.guard(s, now_ms)
    }

    pub fn record_remote_writes(&mut self, count: u32, now_ms: u64) -> Strategy {
        let s = self.run("record-remote-writes", now_ms, |i| i.record_remote_writes(count, now_ms));
        self.guard(s, now_ms)
    }

    /// The strategy in force, as last returned; no call into the policy.
    pub fn last_strategy(&self) -> Strategy {
        self.last_known
    }

    pub fn status(&mut self, now_ms: u64) -> Status {
        let st = self.run("status", now_ms, |i| i.status(now_ms));
        let strategy = self.guard(st.as_ref().map(|s| s.strategy), now_ms);
        match st {
            Some(mut s) => {
                s.strategy = strategy;
                s.batch_due |= self.lost_buffer;
                s
            }
            None => Status {
                strategy,
                write_rate: 0.0,
                buffered_keys: 0,
                batch_due: self.lost_buffer,
                switches: 0,
                following: self.following.is_some(),
            },
        }
    }

    /// Drains a due batch. After a fault the buffered keys died with the instance, so the next
    /// drain reports `flush_all`.
    pub fn pending_batch(&mut self, now_ms: u64, max_keys: usize) -> Batch {
        let mut b = self.run("pending-batch", now_ms, |i| i.pending_batch(now_ms)).unwrap_or_default();
        if b.keys.len() > max_keys {
            // More keys than the policy's own cap allows: broken output. Flushing is safe.
            self.fault("pending-batch", format!("returned {} keys (cap {max_keys})", b.keys.len()), now_ms);
            b.keys.clear();
        }
        if std::mem::take(&mut self.lost_buffer) {
            b.flush_all = true;
        }
        b
    }

    /// The next drain reports `flush_all`: used when a drained batch could not be published.
    pub fn force_flush_next(&mut self) {
        self.lost_buffer = true;
    }

    pub fn follow(&mut self, strategy: Strategy, now_ms: u64) {
        self.following = Some(strategy);
        self.run("follow", now_ms, |i| i.follow(strategy, now_ms));
        self.guard(Some(strategy), now_ms);
    }

    pub fn lead(&mut self, now_ms: u64) {
        self.following = None;
        let s = self.run("lead", now_ms, |i| {
            i.lead(now_ms)?;
            i.current_strategy(now_ms)
        });
        self.guard(s, now_ms);
    }

    pub fn is_following(&self) -> bool {
        self.following.is_some()
    }

    pub fn config(&self) -> &PolicyConfig {
        &self.config
    }
}

/// Shared handle used by the cache's write path and its tick task.
pub type SharedPolicy = Arc<Mutex<PolicyRuntime>>;
