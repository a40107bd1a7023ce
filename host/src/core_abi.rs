//! The canonical ABI of `aci:cache/policy@0.1.0`, written out for the policy's core module.
//!
//! Why this exists: wasmtime 48 re-resolves a component function's core function reference on
//! every call, and once more for its post-return (`Func::lifted_core_func`, which re-initializes
//! the funcref each time). That made a `current-strategy` call cost ~270-360 ns here where the
//! same export called on the core module costs ~45 ns, and a `status` ~460 ns against ~55 ns.
//! The policy runs on every cache write, so the host calls the core module directly when the
//! component has the layout `wit-component` gives a world that imports nothing (one core module,
//! UTF-8 strings, the interface's functions exported under their canonical names with their
//! canonical signatures), and keeps wasmtime's component calls for anything else. The Go host
//! does the same on wazero (go/policy/abi.go); the layouts below are the ones spelled out there.
//!
//! What is guaranteed: the sandbox is the one the component path has (same engine config, same
//! store, fuel per call and memory limiter), a result the guest hands back is checked where the
//! canonical ABI would trap (pointer alignment and bounds, enum discriminants, UTF-8), and a
//! module is only used after it answered a short call script exactly as the component did
//! ([`agrees`]). What is not: that a component whose lifts wrap other functions than its
//! canonically named exports behaves the same here; `wit-component` never builds one, and the
//! script catches the plain cases.

use wasmtime::{AsContextMut, Instance, Memory, Store, TypedFunc};

use crate::policy::{Batch, PolicyConfig, Status, Strategy};

/// Where the interface's functions live in the core module.
const IFACE: &str = "aci:cache/policy@0.1.0";

/// The one core module of a component, if the component has exactly the layout the fast path
/// understands; `None` sends the caller to the component path. Only the section framing and the
/// canonical section are decoded: everything else a no-import component holds (instances,
/// aliases, types, exports) restates what the canonical ABI fixes for this interface.
pub(crate) fn single_core_module(component: &[u8]) -> Option<&[u8]> {
    let mut module = None;
    for (id, body) in sections(component.get(8..)?)? {
        match id {
            // A core module: the guest. A second one (an adapter, the shim that runs a
            // reactor's `_initialize`) means another layout.
            1 if module.is_none() => module = Some(body),
            1 => return None,
            // wit-component wraps the exported interface in a nested component that only
            // re-exports it with its types; one that holds code is another layout.
            4 if !sections(body.get(8..)?)?.iter().all(|(id, _)| !matches!(id, 1 | 2 | 4 | 8 | 9)) => return None,
            8 if !plain_lifts(body)? => return None,
            // A start function runs guest code at instantiation that the core path would not.
            9 => return None,
            _ => {}
        }
    }
    module
}

/// (id, body) of each section of a component's body (after its 8-byte preamble).
fn sections(mut rest: &[u8]) -> Option<Vec<(u8, &[u8])>> {
    let mut out = Vec::new();
    while !rest.is_empty() {
        let id = rest[0];
        let (size, n) = leb_u32(&rest[1..])?;
        let end = (1 + n).checked_add(size as usize)?;
        out.push((id, rest.get(1 + n..end)?));
        rest = &rest[end..];
    }
    Some(out)
}

/// Whether a canonical section holds only `lift`s whose options are UTF-8 strings, a memory, a
/// realloc and a post-return: no lowered imports, no resources, no async, no UTF-16.
fn plain_lifts(mut b: &[u8]) -> Option<bool> {
    let (count, n) = leb_u32(b)?;
    b = &b[n..];
    for _ in 0..count {
        // lift: 0x00 0x00 core-func opts type
        if b.get(..2)? != [0, 0] {
            return Some(false);
        }
        let (_, n) = leb_u32(&b[2..])?;
        b = &b[2 + n..];
        let (opts, n) = leb_u32(b)?;
        b = &b[n..];
        for _ in 0..opts {
            match *b.first()? {
                0x00 => b = &b[1..],
                0x03..=0x05 => {
                    let (_, n) = leb_u32(&b[1..])?;
                    b = &b[1 + n..];
                }
                _ => return Some(false),
            }
        }
        let (_, n) = leb_u32(b)?;
        b = &b[n..];
    }
    Some(b.is_empty())
}

fn leb_u32(b: &[u8]) -> Option<(u32, usize)> {
    let mut v: u64 = 0;
    for (i, byte) in b.iter().take(5).enumerate() {
        v |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return u32::try_from(v).ok().map(|v| (v, i + 1));
        }
    }
    None
}

type Fault = wasmtime::Error;

fn fault(what: impl std::fmt::Display) -> Fault {
    wasmtime::format_err!("policy broke the canonical ABI: {what}")
}

/// A core export and its optional post-return.
struct Export<P, R> {
    f: TypedFunc<P, R>,
    post: Option<TypedFunc<R, ()>>,
}

impl<P: wasmtime::WasmParams, R: wasmtime::WasmResults + wasmtime::WasmParams + Copy> Export<P, R> {
    fn get<T>(inst: &Instance, store: &mut Store<T>, name: &str) -> wasmtime::Result<Self> {
        let full = format!("{IFACE}#{name}");
        let f = inst.get_typed_func::<P, R>(&mut *store, &full)?;
        let post = match inst.get_func(&mut *store, &format!("cabi_post_{full}")) {
            Some(p) => Some(p.typed::<R, ()>(&*store)?),
            None => None,
        };
        Ok(Export { f, post })
    }

    fn call<T>(&self, store: &mut Store<T>, params: P) -> Result<R, Fault> {
        self.f.call(store, params)
    }

    /// Lets the guest free what it allocated for a result that has been copied out.
    fn done<T>(&self, store: &mut Store<T>, ret: R) -> Result<(), Fault> {
        match &self.post {
            Some(p) => p.call(store, ret),
            None => Ok(()),
        }
    }
}

/// `configure`'s flat parameters: the config record's eight fields, then `now-ms`.
type ConfigParams = (f64, f64, i32, i32, i32, i32, i32, i32, i64);

/// The interface's functions on one core instance.
pub(crate) struct CoreCalls {
    memory: Memory,
    realloc: TypedFunc<(i32, i32, i32, i32), i32>,
    describe: Export<(), i32>,
    default_config: Export<(), i32>,
    configure: Export<ConfigParams, i32>,
    record_write: Export<(i32, i32, i64), i32>,
    record_writes: Export<(i32, i32, i64), i32>,
    record_remote_writes: Export<(i32, i64), i32>,
    current_strategy: Export<i64, i32>,
    write_rate: Export<i64, f64>,
    pending_batch: Export<i64, i32>,
    status: Export<i64, i32>,
    follow: Export<(i32, i64), ()>,
    lead: Export<i64, ()>,
}

// Sizes and alignments of the records read from return areas (go/policy/abi.go spells out each).
const POLICY_INFO: (u32, u32) = (16, 4);
const CONFIG: (u32, u32) = (40, 8);
const CONFIG_RESULT: (u32, u32) = (20, 4);
const BATCH: (u32, u32) = (12, 4);
const SNAPSHOT: (u32, u32) = (40, 8);

fn strategy(v: u32) -> Result<Strategy, Fault> {
    match v {
        0 => Ok(Strategy::Ttl),
        1 => Ok(Strategy::Batched),
        2 => Ok(Strategy::Eager),
        _ => Err(fault(format_args!("strategy discriminant {v} out of range"))),
    }
}

fn strategy_code(s: Strategy) -> i32 {
    match s {
        Strategy::Ttl => 0,
        Strategy::Batched => 1,
        Strategy::Eager => 2,
    }
}

/// `size` bytes of `mem` at `ptr`, where the canonical ABI would otherwise trap.
fn region(mem: &[u8], ptr: u32, size: u32, align: u32) -> Result<&[u8], Fault> {
    if !ptr.is_multiple_of(align) {
        return Err(fault(format_args!("pointer {ptr:#x} is not {align}-byte aligned")));
    }
    let end = ptr as u64 + size as u64;
    mem.get(ptr as usize..end as usize)
        .ok_or_else(|| fault(format_args!("{size} bytes at {ptr:#x} are outside linear memory ({} bytes)", mem.len())))
}

fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(b[off..off + 4].try_into().unwrap_or_default())
}

fn u64_at(b: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(b[off..off + 8].try_into().unwrap_or_default())
}

fn string_at(mem: &[u8], b: &[u8], off: usize) -> Result<String, Fault> {
    let (ptr, len) = (u32_at(b, off), u32_at(b, off + 4));
    let bytes = region(mem, ptr, len, 1)?;
    std::str::from_utf8(bytes).map(str::to_owned).map_err(|_| fault(format_args!("string at {ptr:#x} is not UTF-8")))
}

impl CoreCalls {
    pub(crate) fn new<T>(inst: &Instance, store: &mut Store<T>) -> wasmtime::Result<Self> {
        Ok(CoreCalls {
            memory: inst.get_memory(&mut *store, "memory").ok_or_else(|| wasmtime::format_err!("no memory export"))?,
            realloc: inst.get_typed_func(&mut *store, "cabi_realloc")?,
            describe: Export::get(inst, store, "describe")?,
            default_config: Export::get(inst, store, "default-config")?,
            configure: Export::get(inst, store, "configure")?,
            record_write: Export::get(inst, store, "record-write")?,
            record_writes: Export::get(inst, store, "record-writes")?,
            record_remote_writes: Export::get(inst, store, "record-remote-writes")?,
            current_strategy: Export::get(inst, store, "current-strategy")?,
            write_rate: Export::get(inst, store, "write-rate")?,
            pending_batch: Export::get(inst, store, "pending-batch")?,
            status: Export::get(inst, store, "status")?,
            follow: Export::get(inst, store, "follow")?,
            lead: Export::get(inst, store, "lead")?,
        })
    }

    /// Asks the guest for `size` bytes; the guest owns them once passed as an argument.
    fn alloc<T>(&self, store: &mut Store<T>, align: u32, size: u32) -> Result<u32, Fault> {
        let ptr = self.realloc.call(&mut *store, (0, 0, align as i32, size as i32))? as u32;
        region(self.memory.data(&*store), ptr, size, align).map_err(|e| fault(format_args!("cabi_realloc: {e}")))?;
        Ok(ptr)
    }

    fn lower_str<T>(&self, store: &mut Store<T>, s: &str) -> Result<(u32, u32), Fault> {
        let len = u32::try_from(s.len()).map_err(|_| fault("a string longer than 32-bit memory"))?;
        let ptr = self.alloc(store, 1, len)?;
        self.memory.data_mut(store.as_context_mut())[ptr as usize..(ptr + len) as usize].copy_from_slice(s.as_bytes());
        Ok((ptr, len))
    }

    fn lower_strs<T>(&self, store: &mut Store<T>, keys: &[String]) -> Result<(u32, u32), Fault> {
        let n = u32::try_from(keys.len()).ok().filter(|n| n.checked_mul(8).is_some()).ok_or_else(|| fault("a list longer than 32-bit memory"))?;
        let list = self.alloc(store, 4, n * 8)?;
        for (i, k) in keys.iter().enumerate() {
            let (p, l) = self.lower_str(store, k)?;
            let at = list as usize + i * 8;
            let mem = self.memory.data_mut(store.as_context_mut());
            mem[at..at + 4].copy_from_slice(&p.to_le_bytes());
            mem[at + 4..at + 8].copy_from_slice(&l.to_le_bytes());
        }
        Ok((list, n))
    }

    /// The return area at `ret`, copied out (the guest may reuse it once post-return ran).
    fn area<T>(&self, store: &Store<T>, ret: i32, (size, align): (u32, u32)) -> Result<Vec<u8>, Fault> {
        region(self.memory.data(store), ret as u32, size, align).map(<[u8]>::to_vec)
    }

    fn strategy_call<T, P: wasmtime::WasmParams>(&self, store: &mut Store<T>, e: &Export<P, i32>, p: P) -> Result<Strategy, Fault> {
        let ret = e.call(store, p)?;
        let s = strategy(ret as u32)?;
        e.done(store, ret)?;
        Ok(s)
    }

    pub(crate) fn describe<T>(&self, store: &mut Store<T>) -> Result<(String, String), Fault> {
        let ret = self.describe.call(store, ())?;
        let a = self.area(store, ret, POLICY_INFO)?;
        let mem = self.memory.data(&*store);
        let out = (string_at(mem, &a, 0)?, string_at(mem, &a, 8)?);
        self.describe.done(store, ret)?;
        Ok(out)
    }

    pub(crate) fn default_config<T>(&self, store: &mut Store<T>) -> Result<PolicyConfig, Fault> {
        let ret = self.default_config.call(store, ())?;
        let a = self.area(store, ret, CONFIG)?;
        let cfg = PolicyConfig {
            low_threshold: f64::from_bits(u64_at(&a, 0)),
            high_threshold: f64::from_bits(u64_at(&a, 8)),
            window_ms: u32_at(&a, 16) as i32,
            hold_ms: u32_at(&a, 20) as i32,
            batch_interval_ms: u32_at(&a, 24) as i32,
            batch_max_keys: u32_at(&a, 28) as i32,
            batch_max_bytes: u32_at(&a, 32) as i32,
            initial_strategy: strategy(a[36] as u32)?,
        };
        self.default_config.done(store, ret)?;
        Ok(cfg)
    }

    pub(crate) fn configure<T>(&self, store: &mut Store<T>, c: &PolicyConfig, now_ms: u64) -> Result<Result<(), crate::ConfigError>, Fault> {
        let p = (
            c.low_threshold,
            c.high_threshold,
            c.window_ms,
            c.hold_ms,
            c.batch_interval_ms,
            c.batch_max_keys,
            c.batch_max_bytes,
            strategy_code(c.initial_strategy),
            now_ms as i64,
        );
        let ret = self.configure.call(store, p)?;
        let a = self.area(store, ret, CONFIG_RESULT)?;
        let out = match a[0] {
            0 => Ok(()),
            1 => {
                let mem = self.memory.data(&*store);
                Err(crate::ConfigError { field: string_at(mem, &a, 4)?, message: string_at(mem, &a, 12)? })
            }
            d => return Err(fault(format_args!("result discriminant {d} out of range"))),
        };
        self.configure.done(store, ret)?;
        Ok(out)
    }

    pub(crate) fn record_write<T>(&self, store: &mut Store<T>, key: &str, now_ms: u64) -> Result<Strategy, Fault> {
        let (p, l) = self.lower_str(store, key)?;
        self.strategy_call(store, &self.record_write, (p as i32, l as i32, now_ms as i64))
    }

    pub(crate) fn record_writes<T>(&self, store: &mut Store<T>, keys: &[String], now_ms: u64) -> Result<Strategy, Fault> {
        let (p, n) = self.lower_strs(store, keys)?;
        self.strategy_call(store, &self.record_writes, (p as i32, n as i32, now_ms as i64))
    }

    pub(crate) fn record_remote_writes<T>(&self, store: &mut Store<T>, count: u32, now_ms: u64) -> Result<Strategy, Fault> {
        self.strategy_call(store, &self.record_remote_writes, (count as i32, now_ms as i64))
    }

    pub(crate) fn current_strategy<T>(&self, store: &mut Store<T>, now_ms: u64) -> Result<Strategy, Fault> {
        self.strategy_call(store, &self.current_strategy, now_ms as i64)
    }

    pub(crate) fn write_rate<T>(&self, store: &mut Store<T>, now_ms: u64) -> Result<f64, Fault> {
        let ret = self.write_rate.call(store, now_ms as i64)?;
        self.write_rate.done(store, ret)?;
        Ok(ret)
    }

    pub(crate) fn pending_batch<T>(&self, store: &mut Store<T>, now_ms: u64) -> Result<Batch, Fault> {
        let ret = self.pending_batch.call(store, now_ms as i64)?;
        let a = self.area(store, ret, BATCH)?;
        let mem = self.memory.data(&*store);
        let (ptr, n) = (u32_at(&a, 0), u32_at(&a, 4));
        let size = n.checked_mul(8).ok_or_else(|| fault(format_args!("a list of {n} strings exceeds 32-bit memory")))?;
        let elems = region(mem, ptr, size, 4)?;
        let keys = (0..n as usize).map(|i| string_at(mem, elems, i * 8)).collect::<Result<Vec<_>, _>>()?;
        let batch = Batch { keys, flush_all: a[8] != 0 };
        self.pending_batch.done(store, ret)?;
        Ok(batch)
    }

    pub(crate) fn status<T>(&self, store: &mut Store<T>, now_ms: u64) -> Result<Status, Fault> {
        let ret = self.status.call(store, now_ms as i64)?;
        let a = self.area(store, ret, SNAPSHOT)?;
        let st = Status {
            strategy: strategy(a[0] as u32)?,
            write_rate: f64::from_bits(u64_at(&a, 8)),
            buffered_keys: u32_at(&a, 16),
            batch_due: a[20] != 0,
            switches: u64_at(&a, 24),
            following: a[32] != 0,
        };
        self.status.done(store, ret)?;
        Ok(st)
    }

    pub(crate) fn follow<T>(&self, store: &mut Store<T>, s: Strategy, now_ms: u64) -> Result<(), Fault> {
        self.follow.call(store, (strategy_code(s), now_ms as i64))
    }

    pub(crate) fn lead<T>(&self, store: &mut Store<T>, now_ms: u64) -> Result<(), Fault> {
        self.lead.call(store, now_ms as i64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{PolicyModule, SandboxLimits};

    /// A built policy: the bundled ones and the test-only ones (`hostile`, `trap-on-load`).
    fn bundled(name: &str) -> &'static [u8] {
        if let Some(b) = crate::bundled_policy(name) {
            return b;
        }
        let path = format!("{}/../target/policies/{name}.wasm", env!("CARGO_MANIFEST_DIR"));
        Vec::leak(std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e} (built with the host)")))
    }

    #[test]
    fn the_bundled_layout_is_found_and_others_are_left_to_the_component_path() {
        for name in ["adaptive", "fixed", "budget", "hostile"] {
            let m = single_core_module(bundled(name)).unwrap_or_else(|| panic!("{name}: no single core module"));
            assert_eq!(&m[..4], b"\0asm", "{name}");
            let module = PolicyModule::from_bytes(bundled(name), SandboxLimits::default()).unwrap();
            assert!(module.calls_core_module(), "{name} is not called on its core module");
        }
        // wit-component adds a second module to run a reactor's `_initialize`.
        assert!(single_core_module(bundled("trap-on-load")).is_none());
        // Anything cut short, or not framed as sections, is not read as a layout.
        let adaptive = bundled("adaptive");
        for cut in [0, 7, 8, 9, 20, adaptive.len() / 2, adaptive.len() - 1] {
            assert!(single_core_module(&adaptive[..cut]).is_none(), "cut at {cut}");
        }
        // A start section (id 9) would run guest code the core path does not run.
        let mut with_start = adaptive.to_vec();
        with_start.extend_from_slice(&[9, 3, 0, 0, 0]);
        assert!(single_core_module(&with_start).is_none());
        // Canonical options other than UTF-8, memory, realloc and post-return.
        assert_eq!(plain_lifts(&[1, 0, 0, 0, 1, 0x01, 0]), Some(false), "UTF-16 strings");
        assert_eq!(plain_lifts(&[1, 0, 0, 0, 2, 0x00, 0x03, 0, 0]), Some(true));
        assert_eq!(plain_lifts(&[1, 1, 0, 0, 0, 0]), Some(false), "a lowered import");
    }

    /// The same calls on the two paths of one policy, results compared one by one, including
    /// arguments the guest must copy (long and non-ASCII keys, empty lists) and refused configs.
    #[test]
    fn core_calls_answer_as_the_component_does() {
        let module = PolicyModule::from_bytes(bundled("adaptive"), SandboxLimits::default()).unwrap();
        let (mut fast, mut slow) = (module.instantiate().unwrap(), module.instantiate_component().unwrap());
        let t = 1_700_000_000_000u64;
        let long = "k".repeat(70_000);
        let keys: Vec<String> = vec!["a".into(), long.clone(), "ключ".into(), String::new()];
        let bad = PolicyConfig { window_ms: 0, ..PolicyConfig::default() };
        let batched = PolicyConfig { initial_strategy: Strategy::Batched, low_threshold: 0.0, high_threshold: 1e12, ..PolicyConfig::default() };
        macro_rules! same {
            ($($call:tt)*) => {{
                let (a, b) = (fast.$($call)*.unwrap(), slow.$($call)*.unwrap());
                assert_eq!(format!("{a:?}"), format!("{b:?}"), "{}", stringify!($($call)*));
            }};
        }
        same!(describe());
        same!(default_config());
        same!(configure(&bad, t));
        same!(configure(&batched, t));
        for i in 0..200u64 {
            same!(record_write(&format!("aci:ns:{}", i % 7), t + i));
            if i % 50 == 0 {
                same!(record_writes(&keys, t + i));
                same!(record_writes(&[], t + i));
                same!(status(t + i));
                same!(write_rate(t + i));
            }
        }
        same!(record_write(&long, t + 300));
        same!(pending_batch(t + 10_000));
        same!(pending_batch(t + 10_001));
        same!(record_remote_writes(10_000, t + 10_002));
        same!(current_strategy(t + 10_003));
        same!(follow(Strategy::Ttl, t + 10_004));
        same!(status(t + 10_005));
        same!(lead(t + 10_006));
        same!(status(t + 60_000));
    }

    /// The sandbox is the same on the core path: a loop runs out of fuel, a leak hits the memory
    /// cap, a panic traps, and each comes back as a fault, not a hang or a host panic.
    #[test]
    fn hostile_guests_fault_on_the_core_path() {
        let limits = SandboxLimits { fuel_per_call: 5_000_000, max_memory_bytes: 16 << 20 };
        let module = PolicyModule::from_bytes(bundled("hostile"), limits).unwrap();
        assert!(module.calls_core_module());
        let t = 1_700_000_000_000u64;
        let mut p = module.instantiate().unwrap();
        let e = p.record_write("aci:ns:hostile:loop", t).unwrap_err();
        assert!(format!("{e:?}").contains("fuel"), "{e:?}");
        let mut p = module.instantiate().unwrap();
        assert!(p.record_write("aci:ns:hostile:trap", t).is_err());
        let mut p = module.instantiate().unwrap();
        let grew = (0..8).map(|i| p.record_write("aci:ns:hostile:grow", t + i)).find_map(Result::err);
        let e = grew.expect("4 MiB a write passes a 16 MiB cap within 8 writes");
        assert!(format!("{e:?}").contains("memory cap"), "{e:?}");
        assert!(p.peak_memory_bytes() <= 16 << 20);
        // Building 200,000 keys runs out of the default fuel on both paths alike.
        let module = PolicyModule::from_bytes(bundled("hostile"), SandboxLimits::default()).unwrap();
        let batched = PolicyConfig { initial_strategy: Strategy::Batched, low_threshold: 0.0, high_threshold: 1e12, ..PolicyConfig::default() };
        for mut p in [module.instantiate().unwrap(), module.instantiate_component().unwrap()] {
            p.configure(&batched, t).unwrap().unwrap();
            p.record_write("aci:ns:hostile:huge", t).unwrap();
            let e = p.pending_batch(t + 60_000).unwrap_err();
            assert!(format!("{e:?}").contains("fuel"), "{e:?}");
        }
    }
}
