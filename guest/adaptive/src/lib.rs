//! The default policy: tiers by fleet write rate, up at once, down after a hold.
const KIND: aci_policy_core::Kind = aci_policy_core::Kind::Adaptive;
const NAME: &str = aci_policy_core::ADAPTIVE_NAME;
fn hook_write(_key: &str) {}
fn hook_batch(_batch: &mut aci_policy_core::Batch) {}
include!("../../shim.rs");
