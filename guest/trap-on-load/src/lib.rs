//! Test-only: a policy whose instantiation traps (wit-component runs `_initialize` on load).
const KIND: aci_policy_core::Kind = aci_policy_core::Kind::Adaptive;
const NAME: &str = "trap-on-load";
fn hook_write(_key: &str) {}
fn hook_batch(_batch: &mut aci_policy_core::Batch) {}

#[no_mangle]
pub extern "C" fn _initialize() {
    core::arch::wasm32::unreachable();
}

include!("../../shim.rs");
