//! Test-only: an adaptive policy that misbehaves when a write carries a trigger key, so the
//! host's sandbox and fallback can be tested against a real component.
//! A key ending in `hostile:loop` spins forever, `hostile:trap` panics (a trap under panic=abort),
//! `hostile:grow` leaks 4 MiB per write, `hostile:huge` makes the next batch 200,000 keys.
use std::cell::Cell;

const KIND: aci_policy_core::Kind = aci_policy_core::Kind::Adaptive;
const NAME: &str = "hostile";

thread_local! {
    static HUGE: Cell<bool> = const { Cell::new(false) };
    static LEAK: std::cell::RefCell<Vec<Vec<u8>>> = const { std::cell::RefCell::new(Vec::new()) };
}

fn hook_write(key: &str) {
    // Hosts namespace keys (`aci:<ns>:<key>`): match the user key at the end.
    let key = key.rsplit_once("hostile:").map(|(_, k)| k).unwrap_or("");
    match key {
        "loop" => {
            let mut x: u64 = 1;
            loop {
                x = std::hint::black_box(x.wrapping_mul(3));
            }
        }
        "trap" => panic!("hostile policy traps on purpose"),
        "grow" => LEAK.with(|l| l.borrow_mut().push(vec![1u8; 4 << 20])),
        "huge" => HUGE.with(|h| h.set(true)),
        _ => {}
    }
}

fn hook_batch(batch: &mut aci_policy_core::Batch) {
    if HUGE.with(|h| h.replace(false)) {
        batch.keys = (0..200_000).map(|i| format!("junk:{i}")).collect();
    }
}

include!("../../shim.rs");
