// Shared by every policy crate: exports the WIT `policy` interface over an
// `aci_policy_core::Engine` of kind `KIND`. Included, not a crate, because wit-bindgen's
// `export!` must expand in the cdylib that owns the component.

wit_bindgen::generate!({
    path: "../../wit",
    world: "engine",
});

use std::cell::RefCell;

use aci_policy_core as core_engine;
use exports::aci::cache::policy as wit;

thread_local! {
    // A component instance is single-threaded and owns exactly one engine.
    static ENGINE: RefCell<core_engine::Engine> = RefCell::new(core_engine::Engine::new(KIND));
}

fn with<R>(f: impl FnOnce(&mut core_engine::Engine) -> R) -> R {
    ENGINE.with(|e| f(&mut e.borrow_mut()))
}

fn to_wit(s: core_engine::Strategy) -> wit::Strategy {
    match s {
        core_engine::Strategy::Ttl => wit::Strategy::Ttl,
        core_engine::Strategy::Batched => wit::Strategy::Batched,
        core_engine::Strategy::Eager => wit::Strategy::Eager,
    }
}

fn from_wit(s: wit::Strategy) -> core_engine::Strategy {
    match s {
        wit::Strategy::Ttl => core_engine::Strategy::Ttl,
        wit::Strategy::Batched => core_engine::Strategy::Batched,
        wit::Strategy::Eager => core_engine::Strategy::Eager,
    }
}

struct Policy;

impl wit::Guest for Policy {
    fn describe() -> wit::PolicyInfo {
        wit::PolicyInfo { name: NAME.to_string(), version: core_engine::logic_version(KIND).to_string() }
    }

    fn default_config() -> wit::Config {
        let c = core_engine::Config::default();
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

    fn configure(cfg: wit::Config, now_ms: u64) -> Result<(), wit::ConfigError> {
        let c = core_engine::Config {
            low_threshold: cfg.low_threshold,
            high_threshold: cfg.high_threshold,
            window_ms: cfg.window_ms,
            hold_ms: cfg.hold_ms,
            batch_interval_ms: cfg.batch_interval_ms,
            batch_max_keys: cfg.batch_max_keys,
            batch_max_bytes: cfg.batch_max_bytes,
            initial_strategy: from_wit(cfg.initial_strategy),
        };
        with(|e| e.configure(c, now_ms))
            .map_err(|err| wit::ConfigError { field: err.field, message: err.message })
    }

    fn record_write(key: String, now_ms: u64) -> wit::Strategy {
        hook_write(&key);
        to_wit(with(|e| e.record_write(&key, now_ms)))
    }

    fn record_writes(keys: Vec<String>, now_ms: u64) -> wit::Strategy {
        // Hosts that batch their calls per tick only ever call this one: the test hooks must
        // see its keys too.
        for key in &keys {
            hook_write(key);
        }
        to_wit(with(|e| e.record_writes(&keys, now_ms)))
    }

    fn record_remote_writes(count: u32, now_ms: u64) -> wit::Strategy {
        to_wit(with(|e| e.record_remote_writes(count, now_ms)))
    }

    fn current_strategy(now_ms: u64) -> wit::Strategy {
        to_wit(with(|e| e.current_strategy(now_ms)))
    }

    fn write_rate(now_ms: u64) -> f64 {
        with(|e| e.write_rate(now_ms))
    }

    fn pending_batch(now_ms: u64) -> wit::Batch {
        let mut b = with(|e| e.pending_batch(now_ms));
        hook_batch(&mut b);
        wit::Batch { keys: b.keys, flush_all: b.flush_all }
    }

    fn status(now_ms: u64) -> wit::Snapshot {
        let s = with(|e| e.status(now_ms));
        wit::Snapshot {
            strategy: to_wit(s.strategy),
            write_rate: s.write_rate,
            buffered_keys: s.buffered_keys,
            batch_due: s.batch_due,
            switches: s.switches,
            following: s.following,
        }
    }

    fn follow(strategy: wit::Strategy, now_ms: u64) {
        with(|e| e.follow(from_wit(strategy), now_ms))
    }

    fn lead(now_ms: u64) {
        with(|e| e.lead(now_ms))
    }
}

export!(Policy);
