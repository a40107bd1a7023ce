//! The cheapest strategy whose expected staleness stays within a budget, given the write rate
//! (the rule is in `wit/policy.wit`, policy `budget`): `high-threshold` is the budget in stale
//! key-seconds per second, `low-threshold` the seconds a write stays stale under ttl.
const KIND: aci_policy_core::Kind = aci_policy_core::Kind::Budget;
const NAME: &str = aci_policy_core::BUDGET_NAME;
fn hook_write(_key: &str) {}
fn hook_batch(_batch: &mut aci_policy_core::Batch) {}
include!("../../shim.rs");
