//! Always the configured `initial-strategy`: a baseline for benchmarks and a tool for tests.
const KIND: aci_policy_core::Kind = aci_policy_core::Kind::Fixed;
const NAME: &str = aci_policy_core::FIXED_NAME;
fn hook_write(_key: &str) {}
fn hook_batch(_batch: &mut aci_policy_core::Batch) {}
include!("../../shim.rs");
