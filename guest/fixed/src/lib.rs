//! Always the configured `initial-strategy`: a baseline for benchmarks and a tool for tests.
const KIND: aci_policy_core::Kind = aci_policy_core::Kind::Fixed;
const NAME: &str = aci_policy_core::FIXED_NAME;
include!("../../shim.rs");
