//! Policy rollout (docs/WIRE.md section 9): following the fleet's rollout record, verifying
//! what it names (trust, bad list, size, SHA-256, sandbox), swapping it in atomically, rolling
//! the fleet back when a pushed policy faults, and publishing this instance's status record.
//! [`PolicyAdmin`] is the other side: what `aci policy push|promote|rollback|status` do.
//!
//! Everything a pushed record or component holds is untrusted input: each field is checked
//! before use, fetches are bounded, and a refusal is a reason in the status record, never a
//! panic and never a change of the running policy.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use redis::aio::ConnectionLike;
use serde::Serialize;
use serde_json::{json, Value};

use crate::error::{Error, Result};
use crate::policy::{sha256_hex, PolicyConfig, PolicyModule, SandboxLimits, Strategy};
use crate::shared::{lock, Shared, HEARTBEAT};
use crate::transport::Conn;
use crate::wire;

/// Largest component a host fetches or a pusher stores (section 9.1).
pub const MAX_COMPONENT_BYTES: usize = 4 << 20;
/// Largest `config` override (section 9.2).
pub const MAX_CONFIG_BYTES: usize = 4096;
const MAX_CANARY: usize = 1000;
/// Lifetime of a status record; refreshed every heartbeat (section 9.8).
const STATUS_TTL_MS: u64 = 3000;
/// Longest a host goes without checking the record (section 9.3).
const POLL_MS: u64 = 10_000;
const SIGNING_DOMAIN: &str = "aci-cache policy v1";

/// The compare-and-set every writer of the record uses (section 9.2), verbatim.
pub const WRITE_RECORD_LUA: &str = r"local cur = redis.call('HGET', KEYS[1], 'rollout')
if (cur or '0') ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], unpack(ARGV, 4))
redis.call('PUBLISH', ARGV[2], ARGV[3])
return 1";

// ---------------------------------------------------------------------------------------------
// small helpers

/// Lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    const D: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(D[(b >> 4) as usize] as char);
        s.push(D[(b & 15) as usize] as char);
    }
    s
}

/// Decodes exactly `N` bytes of lowercase hex (upper case is refused: section 9).
pub fn unhex<const N: usize>(s: &str) -> Option<[u8; N]> {
    let b = s.as_bytes();
    if b.len() != 2 * N {
        return None;
    }
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    let mut out = [0u8; N];
    for (i, o) in out.iter_mut().enumerate() {
        *o = digit(b[2 * i])? << 4 | digit(b[2 * i + 1])?;
    }
    Some(out)
}

/// A SHA-256 as 64 lowercase hex characters.
pub fn is_hash(s: &str) -> bool {
    unhex::<32>(s).is_some()
}

/// At most `n` characters of `s` (whole characters: never splits UTF-8).
pub(crate) fn clip(s: &str, n: usize) -> String {
    s.chars().take(n).collect()
}

/// An ed25519 public key given as 64 lowercase hex characters.
pub fn parse_public_key(s: &str) -> std::result::Result<VerifyingKey, String> {
    let b = unhex::<32>(s.trim()).ok_or("must be 64 lowercase hex characters (an ed25519 public key, as `aci policy keygen` prints it)")?;
    VerifyingKey::from_bytes(&b).map_err(|_| "is not a valid ed25519 public key".to_string())
}

/// A new signing key: (secret seed as 64 hex, public key as 64 hex).
pub fn keygen() -> (String, String) {
    use rand::RngCore;
    let mut seed = [0u8; 32];
    rand::rng().fill_bytes(&mut seed);
    let key = SigningKey::from_bytes(&seed);
    (hex(&seed), hex(key.verifying_key().as_bytes()))
}

/// The public key of a secret seed (64 hex), or why it is not one.
pub fn public_key_of(secret_hex: &str) -> std::result::Result<String, String> {
    let seed = unhex::<32>(secret_hex.trim()).ok_or("a secret key file holds 64 lowercase hex characters (the 32-byte ed25519 seed)")?;
    Ok(hex(SigningKey::from_bytes(&seed).verifying_key().as_bytes()))
}

/// The bytes a signature covers (section 9.5).
pub fn signed_message(prefix: &str, namespace: Option<&str>, sha256: &str, config: &str) -> Vec<u8> {
    format!("{SIGNING_DOMAIN}\n{prefix}\n{}\n{sha256}\n{config}", namespace.unwrap_or("")).into_bytes()
}

/// Signs a target with a secret seed (64 hex); the signature as 128 hex.
pub fn sign(secret_hex: &str, prefix: &str, namespace: Option<&str>, sha256: &str, config: &str) -> std::result::Result<String, String> {
    let seed = unhex::<32>(secret_hex.trim()).ok_or("a secret key file holds 64 lowercase hex characters (the 32-byte ed25519 seed)")?;
    let sig = SigningKey::from_bytes(&seed).sign(&signed_message(prefix, namespace, sha256, config));
    Ok(hex(&sig.to_bytes()))
}

// ---------------------------------------------------------------------------------------------
// the record

/// What to run: a component (by hash; empty = the instance's local policy), its config
/// overrides and its signature.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Target {
    pub sha256: String,
    pub config: String,
    pub sig: String,
}

impl Target {
    pub fn is_local(&self) -> bool {
        self.sha256.is_empty()
    }

    /// Same component and config (the signature does not change what runs).
    fn same_as(&self, other: &Target) -> bool {
        self.sha256 == other.sha256 && (self.is_local() || self.config == other.config)
    }
}

/// The fleet's rollout record `K policy:current` (section 9.2).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct RolloutRecord {
    pub rollout: u64,
    pub target: Target,
    pub previous: Target,
    /// Empty: every instance runs `target`.
    pub canary: Vec<String>,
    pub name: String,
    pub version: String,
    pub by: String,
    pub reason: String,
    pub at: f64,
}

impl RolloutRecord {
    /// Checks every field of an `HGETALL`; the error names the first bad field.
    pub fn from_fields(f: &HashMap<String, String>) -> std::result::Result<RolloutRecord, &'static str> {
        let get = |k: &str| f.get(k).map(String::as_str).unwrap_or("");
        let r = get("rollout");
        // Canonical decimal only: the record script compares the text (`03` never equals `3`).
        let rollout = if !r.is_empty() && r.len() <= 16 && !r.starts_with('0') && r.bytes().all(|b| b.is_ascii_digit()) { r.parse::<u64>().ok() } else { None }
            .filter(|n| (1..=wire::MAX_SEQ).contains(n))
            .ok_or("rollout")?;
        let target = |h: &'static str, c: &'static str, s: &'static str| -> std::result::Result<Target, &'static str> {
            let sha256 = get(h);
            if !sha256.is_empty() && !is_hash(sha256) {
                return Err(h);
            }
            let config = get(c);
            if !config.is_empty() && (config.len() > MAX_CONFIG_BYTES || !matches!(serde_json::from_str::<Value>(config), Ok(Value::Object(_)))) {
                return Err(c);
            }
            let sig = get(s);
            if !sig.is_empty() && unhex::<64>(sig).is_none() {
                return Err(s);
            }
            Ok(Target { sha256: sha256.into(), config: config.into(), sig: sig.into() })
        };
        let canary: Vec<String> = match get("canary") {
            "" => Vec::new(),
            c => c.split(',').map(String::from).collect(),
        };
        if canary.len() > MAX_CANARY || !canary.iter().all(|id| wire::is_id(id)) {
            return Err("canary");
        }
        let text = |k: &'static str, max: usize| -> std::result::Result<String, &'static str> {
            let v = get(k);
            if v.chars().count() > max { Err(k) } else { Ok(v.to_string()) }
        };
        Ok(RolloutRecord {
            rollout,
            target: target("sha256", "config", "sig")?,
            previous: target("previous", "previous_config", "previous_sig")?,
            canary,
            name: text("name", 64)?,
            version: text("version", 64)?,
            by: text("by", 200)?,
            reason: text("reason", 200)?,
            at: get("at").parse::<f64>().ok().filter(|x| x.is_finite()).unwrap_or(0.0),
        })
    }

    fn to_fields(&self) -> Vec<(&'static str, String)> {
        vec![
            ("rollout", self.rollout.to_string()),
            ("sha256", self.target.sha256.clone()),
            ("config", self.target.config.clone()),
            ("sig", self.target.sig.clone()),
            ("previous", self.previous.sha256.clone()),
            ("previous_config", self.previous.config.clone()),
            ("previous_sig", self.previous.sig.clone()),
            ("canary", self.canary.join(",")),
            ("name", clip(&self.name, 64)),
            ("version", clip(&self.version, 64)),
            ("by", clip(&self.by, 200)),
            ("reason", clip(&self.reason, 200)),
            ("at", format!("{:.3}", wire::unix_now())),
        ]
    }

    /// What instance `id` runs under this record: the target if it is everyone's or `id` is in
    /// the canary, else `previous` (section 9.2).
    pub fn target_for(&self, id: &str) -> &Target {
        if self.canary.is_empty() || self.canary.iter().any(|c| c == id) {
            &self.target
        } else {
            &self.previous
        }
    }

    /// What the instances outside the canary run: the fleet's settled state.
    pub fn fleet_target(&self) -> &Target {
        if self.canary.is_empty() { &self.target } else { &self.previous }
    }
}

/// Writes `rec` (its `rollout` must be `expected + 1`) with the compare-and-set of section
/// 9.2 and announces it. False when the record changed meanwhile.
async fn write_record(conn: &mut Conn, keys: &str, channel: &str, source: &str, expected: u64, rec: &RolloutRecord) -> redis::RedisResult<bool> {
    let announcement = wire::policy_announcement(source, rec.rollout);
    let mut cmd = redis::cmd("EVAL");
    cmd.arg(WRITE_RECORD_LUA).arg(1).arg(format!("{keys}policy:current")).arg(expected.to_string()).arg(channel).arg(&announcement);
    for (k, v) in rec.to_fields() {
        cmd.arg(k).arg(v);
    }
    let written: i64 = cmd.query_async(conn).await?;
    if written == 1 && conn.sharded() {
        // The script's PUBLISH is classic (a script may not SPUBLISH outside its key's slot):
        // sharded subscribers hear the announcement from this one (docs/WIRE.md 10.1). It is
        // only a hint: a failure costs the fleet at most the 10 s periodic read.
        if let Err(e) = redis::cmd("SPUBLISH").arg(channel).arg(&announcement).query_async::<i64>(conn).await {
            tracing::warn!(rollout = rec.rollout, error = %e, "rollout written; its sharded announcement failed");
        }
    }
    Ok(written == 1)
}

async fn read_record<C: ConnectionLike + Send>(conn: &mut C, keys: &str) -> redis::RedisResult<Option<std::result::Result<RolloutRecord, &'static str>>> {
    let f: HashMap<String, String> = redis::cmd("HGETALL").arg(format!("{keys}policy:current")).query_async(conn).await?;
    Ok(if f.is_empty() { None } else { Some(RolloutRecord::from_fields(&f)) })
}

/// Applies a record's `config` overrides (section 9.4) on `base`; the error names the field.
pub fn apply_overrides(base: &PolicyConfig, config: &str) -> std::result::Result<PolicyConfig, String> {
    let mut c = base.clone();
    if config.is_empty() {
        return Ok(c);
    }
    let Ok(Value::Object(m)) = serde_json::from_str::<Value>(config) else {
        return Err("config: not a JSON object".into());
    };
    for (k, v) in &m {
        let bad = |what: &str| format!("config: {k}: {what}");
        let float = || v.as_f64().filter(|x| x.is_finite()).ok_or_else(|| bad("must be a finite number"));
        // An integer as section 2.1 defines it: `5.0` is 5 (as Python, JS and Go read it).
        let whole = |x: f64| (x.fract() == 0.0 && x.abs() <= i32::MAX as f64 + 1.0).then_some(x as i64);
        let int = || v.as_i64().or_else(|| v.as_f64().and_then(whole)).and_then(|x| i32::try_from(x).ok())
            .ok_or_else(|| bad("must be a whole number in the s32 range"));
        match k.as_str() {
            "low-threshold" => c.low_threshold = float()?,
            "high-threshold" => c.high_threshold = float()?,
            "window-ms" => c.window_ms = int()?,
            "hold-ms" => c.hold_ms = int()?,
            "batch-interval-ms" => c.batch_interval_ms = int()?,
            "batch-max-keys" => c.batch_max_keys = int()?,
            "batch-max-bytes" => c.batch_max_bytes = int()?,
            "initial-strategy" => {
                c.initial_strategy = v.as_str().and_then(Strategy::parse).ok_or_else(|| bad("must be ttl, batched or eager"))?
            }
            _ => return Err(format!("config: {}: not a field of the policy config", clip(k, 64))),
        }
    }
    Ok(c)
}

// ---------------------------------------------------------------------------------------------
// the host side

/// Which pushed components this instance runs (section 9.5).
pub(crate) struct Trust {
    key: Option<VerifyingKey>,
    allow: HashSet<String>,
}

impl Trust {
    pub fn new(key: Option<&str>, allow: &[String]) -> Trust {
        // Settings were validated: a key that does not parse cannot reach here.
        Trust { key: key.and_then(|k| parse_public_key(k).ok()), allow: allow.iter().cloned().collect() }
    }

    fn label(&self) -> &'static str {
        match (self.key.is_some(), !self.allow.is_empty()) {
            (true, true) => "key+allow-list",
            (true, false) => "key",
            (false, true) => "allow-list",
            (false, false) => "none",
        }
    }

    fn check(&self, prefix: &str, namespace: Option<&str>, t: &Target) -> std::result::Result<(), String> {
        if t.is_local() {
            return Ok(());
        }
        if self.key.is_none() && self.allow.is_empty() {
            return Err("no policy trust configured (policy_public_key or policy_allow_hashes)".into());
        }
        // Either way of trusting suffices (docs/WIRE.md 9.5): an allow-listed hash runs with the
        // host's own config; a config override needs the signature.
        let listed = self.allow.contains(&t.sha256);
        if listed && t.config.is_empty() {
            return Ok(());
        }
        let Some(key) = &self.key else {
            return Err(if listed {
                "allow-listed hash pushed with a config override (only a signed push may override the config)".into()
            } else {
                "not in the allow-list".into()
            });
        };
        if t.sig.is_empty() {
            return Err("unsigned: this instance requires a signature by its policy_public_key".into());
        }
        let sig = unhex::<64>(&t.sig).map(|b| Signature::from_bytes(&b)).ok_or("bad signature")?;
        key.verify_strict(&signed_message(prefix, namespace, &t.sha256, &t.config), &sig)
            .map_err(|_| "bad signature: not made by this instance's policy_public_key for this namespace".to_string())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Origin {
    Local,
    Pushed,
}

/// A policy this instance can run: compiled, with the config it runs with.
#[derive(Clone)]
pub(crate) struct Installed {
    module: PolicyModule,
    config: PolicyConfig,
    target: Target,
    /// SHA-256 of the component's bytes (of a local one too).
    hash: String,
    origin: Origin,
}

impl Installed {
    pub fn local(module: PolicyModule, config: PolicyConfig, hash: String) -> Installed {
        Installed { module, config, target: Target::default(), hash, origin: Origin::Local }
    }
}

#[derive(Clone, Debug, Serialize)]
struct Rejected {
    rollout: u64,
    sha256: String,
    reason: String,
}

pub(crate) struct State {
    /// The configured policy (what an empty target means).
    local: Installed,
    current: Installed,
    /// What ran before `current`: where an automatic rollback returns.
    previous: Option<Installed>,
    /// The last rollout acted on.
    acted: u64,
    rejected: Option<Rejected>,
}

/// The rollout state of one cache.
pub(crate) struct Rollout {
    trust: Trust,
    state: Mutex<State>,
    /// Highest rollout announced on `P:policy`.
    heard: AtomicU64,
    /// Set on (re)subscription: an announcement may have been missed.
    resync: AtomicBool,
    /// Wakes the rollout task (an announcement, a change to report).
    wake: tokio::sync::Notify,
}

impl Rollout {
    pub fn new(trust: Trust, local: Installed) -> Rollout {
        Rollout {
            trust,
            state: Mutex::new(State { current: local.clone(), local, previous: None, acted: 0, rejected: None }),
            heard: AtomicU64::new(0),
            resync: AtomicBool::new(true),
            wake: tokio::sync::Notify::new(),
        }
    }

    /// A local swap through the API: it becomes the local policy too (what an empty target
    /// returns to).
    pub fn local_swapped(&self, inst: Installed) {
        let mut st = lock(&self.state);
        st.previous = Some(std::mem::replace(&mut st.current, inst.clone()));
        st.local = inst;
        self.wake.notify_one();
    }

    pub fn resubscribed(&self) {
        self.resync.store(true, Ordering::Release);
        self.wake.notify_one();
    }

    /// The running policy's hash and whether it was pushed.
    pub fn running(&self) -> (String, bool) {
        let st = lock(&self.state);
        (st.current.hash.clone(), st.current.origin == Origin::Pushed)
    }
}

/// A payload from `P:policy`.
pub(crate) fn on_announcement(s: &Shared, payload: &[u8]) {
    match wire::decode_policy(payload) {
        Ok(a) => {
            if s.rollout.heard.fetch_max(a.rollout, Ordering::AcqRel) < a.rollout {
                s.rollout.wake.notify_one();
            }
        }
        Err(kind) => crate::fleet::malformed(s, kind, payload.len()),
    }
}

fn reject(s: &Shared, rollout: u64, t: &Target, reason: String) {
    tracing::warn!(instance = s.id(), rollout, sha256 = t.sha256.as_str(), reason = reason.as_str(), "policy rollout refused; keeping the running policy");
    lock(&s.rollout.state).rejected = Some(Rejected { rollout, sha256: t.sha256.clone(), reason });
}

async fn fetch(s: &Shared, hash: &str) -> std::result::Result<Vec<u8>, String> {
    let mut conn = s.conn.clone();
    let key = format!("{}policy:blob:{hash}", s.names.policy_keys);
    let bytes: Vec<u8> = redis::cmd("GETRANGE").arg(&key).arg(0).arg(MAX_COMPONENT_BYTES).query_async(&mut conn).await.map_err(|e| format!("fetch: {e}"))?;
    if bytes.is_empty() {
        return Err("missing: no component stored under this hash".into());
    }
    if bytes.len() > MAX_COMPONENT_BYTES {
        return Err(format!("too large: over {MAX_COMPONENT_BYTES} bytes"));
    }
    if sha256_hex(&bytes) != hash {
        return Err("hash mismatch: the stored bytes do not have this SHA-256".into());
    }
    Ok(bytes)
}

/// Steps 1-4 of section 9.6: a target made runnable, or the reason it is refused.
async fn prepare(s: &Shared, t: &Target) -> std::result::Result<Installed, String> {
    if t.is_local() {
        return Ok(lock(&s.rollout.state).local.clone());
    }
    s.rollout.trust.check(&s.settings.channel_prefix, s.settings.namespace.as_deref(), t)?;
    let mut conn = s.conn.clone();
    let bad: Option<String> = redis::cmd("HGET").arg(format!("{}policy:bad", s.names.policy_keys)).arg(&t.sha256)
        .query_async(&mut conn).await.map_err(|e| format!("bad list: {e}"))?;
    if let Some(why) = bad {
        return Err(format!("marked bad: {}", clip(&why, 160)));
    }
    let config = apply_overrides(&s.settings.policy_config, &t.config)?;
    let known = {
        let st = lock(&s.rollout.state);
        let found = [Some(&st.current), st.previous.as_ref()].into_iter().flatten().find(|i| i.hash == t.sha256).map(|i| i.module.clone());
        found
    };
    let module = match known {
        Some(m) => m,
        None => {
            let bytes = fetch(s, &t.sha256).await?;
            let limits = s.settings.sandbox;
            // Compiling takes tens of ms: off the async workers, so writes and ticks go on.
            tokio::task::spawn_blocking(move || PolicyModule::from_bytes(&bytes, limits))
                .await
                .map_err(|e| format!("invalid component: {e}"))?
                .map_err(|e| format!("invalid component: {e}"))?
        }
    };
    Ok(Installed { module, config, target: t.clone(), hash: t.sha256.clone(), origin: Origin::Pushed })
}

/// Step 5 of section 9.6: swap, keeping what ran before for an automatic rollback.
async fn install(s: &Shared, inst: Installed) -> std::result::Result<(), String> {
    crate::fleet::swap(s, inst.module.clone(), inst.config.clone()).await.map_err(|e| match e {
        Error::Config(c) => format!("config: {}: {}", c.field, c.message),
        other => clip(&other.to_string(), 200),
    })?;
    tracing::info!(instance = s.id(), policy = inst.module.name(), sha256 = inst.hash.as_str(), "policy rollout: swapped");
    let mut st = lock(&s.rollout.state);
    st.previous = Some(std::mem::replace(&mut st.current, inst));
    Ok(())
}

/// Reads the record and acts on it (section 9.3).
async fn sync(s: &Shared) -> redis::RedisResult<()> {
    let mut conn = s.conn.clone();
    let heard_before = s.rollout.heard.load(Ordering::Acquire);
    let Some(rec) = read_record(&mut conn, &s.names.policy_keys).await? else { return Ok(()) };
    let heard = s.rollout.heard.load(Ordering::Acquire);
    if let Ok(r) = &rec {
        // An announcement of a rollout the record does not have (forged, or from a record
        // since deleted) must not make us read again at every tick; one heard during the read
        // is kept, and read next tick.
        if heard == heard_before && heard > r.rollout {
            let _ = s.rollout.heard.compare_exchange(heard, r.rollout, Ordering::AcqRel, Ordering::Acquire);
        }
    }
    let acted = lock(&s.rollout.state).acted;
    let rec = match rec {
        Ok(r) => r,
        Err(field) => {
            if heard > acted {
                lock(&s.rollout.state).acted = heard;
                reject(s, heard, &Target::default(), format!("malformed record: {field}"));
            }
            return Ok(());
        }
    };
    s.rollout.heard.fetch_max(rec.rollout, Ordering::AcqRel);
    if rec.rollout <= acted {
        return Ok(());
    }
    let target = rec.target_for(s.id()).clone();
    let same = lock(&s.rollout.state).current.target.same_as(&target);
    if !same {
        match prepare(s, &target).await {
            Ok(inst) => {
                if let Err(why) = install(s, inst).await {
                    reject(s, rec.rollout, &target, why);
                }
            }
            Err(why) => reject(s, rec.rollout, &target, why),
        }
    }
    let mut st = lock(&s.rollout.state);
    st.acted = st.acted.max(rec.rollout);
    Ok(())
}

/// The automatic rollback of section 9.7, decided by this instance.
async fn check_faults(s: &Shared) -> redis::RedisResult<()> {
    let (faults, last) = {
        let p = lock(&s.policy);
        (p.fault_stats().faults, p.last_fault().unwrap_or("").to_string())
    };
    let (bad, back, from) = {
        let st = lock(&s.rollout.state);
        if st.current.origin != Origin::Pushed || faults < s.settings.policy_rollback_faults as u64 {
            return Ok(());
        }
        (st.current.target.clone(), st.previous.clone().unwrap_or_else(|| st.local.clone()), st.acted)
    };
    let reason = clip(&format!("auto-rollback: {}: {faults} faults: {last}", s.id()), 200);
    tracing::error!(instance = s.id(), sha256 = bad.sha256.as_str(), reason = reason.as_str(), "pushed policy faults: reverting and rolling the fleet back");
    // Locally first: nothing below depends on Redis answering.
    if let Err(why) = install(s, back).await {
        tracing::error!(instance = s.id(), error = why.as_str(), "revert failed; returning to the local policy");
        let local = lock(&s.rollout.state).local.clone();
        let _ = install(s, local).await;
    }
    {
        let mut st = lock(&s.rollout.state);
        // Never revert into the policy that just faulted.
        st.previous = None;
        st.rejected = Some(Rejected { rollout: from, sha256: bad.sha256.clone(), reason: reason.clone() });
    }
    let mut conn = s.conn.clone();
    let _: i64 = redis::cmd("HSET").arg(format!("{}policy:bad", s.names.policy_keys)).arg(&bad.sha256).arg(&reason).query_async(&mut conn).await?;
    if let Some(Ok(rec)) = read_record(&mut conn, &s.names.policy_keys).await? {
        if rec.rollout == from && rec.target_for(s.id()).same_as(&bad) {
            let next = RolloutRecord {
                rollout: from + 1,
                target: rec.previous.clone(),
                previous: rec.target_for(s.id()).clone(),
                canary: Vec::new(),
                name: String::new(),
                version: String::new(),
                by: s.id().to_string(),
                reason,
                at: 0.0,
            };
            if write_record(&mut conn, &s.names.policy_keys, &s.names.policy, s.id(), from, &next).await? {
                tracing::warn!(instance = s.id(), rollout = next.rollout, "fleet rolled back");
            }
        }
    }
    Ok(())
}

fn status_json(s: &Shared) -> String {
    let (faults, strategy) = {
        let p = lock(&s.policy);
        (p.fault_stats().faults, s.strategy())
    };
    let st = lock(&s.rollout.state);
    json!({
        "id": s.id(),
        "host": "rust",
        "name": st.current.module.name(),
        "version": st.current.module.version(),
        "sha256": st.current.hash,
        "origin": if st.current.origin == Origin::Pushed { "pushed" } else { "local" },
        "rollout": st.acted,
        "strategy": strategy.as_str(),
        "controller": s.is_controller.load(Ordering::Acquire),
        "faults": faults,
        "trust": s.rollout.trust.label(),
        "rejected": st.rejected,
        "timestamp": wire::unix_now(),
    })
    .to_string()
}

async fn write_status(s: &Shared) -> redis::RedisResult<()> {
    let mut conn = s.conn.clone();
    redis::cmd("SET").arg(format!("{}policy:status:{}", s.names.policy_keys, s.id())).arg(status_json(s)).arg("PX").arg(STATUS_TTL_MS)
        .query_async(&mut conn).await
}

/// At start, before serving: a late joiner runs the fleet's current policy (section 9.3).
pub(crate) async fn start(s: &Shared) {
    s.rollout.resync.store(false, Ordering::Release);
    match tokio::time::timeout(s.settings.command_timeout * 2, sync(s)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(instance = s.id(), error = %e, "policy rollout: cannot read the fleet's record at start; running the local policy"),
        Err(_) => tracing::warn!(instance = s.id(), "policy rollout: reading the fleet's record timed out at start; running the local policy"),
    }
}

/// The rollout task: follows announcements, polls, rolls back, reports status.
pub(crate) async fn task(s: std::sync::Arc<Shared>) {
    let mut shutdown = s.shutdown.subscribe();
    let mut interval = tokio::time::interval(s.settings.tick);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let (mut last_read, mut last_status) = (0u64, 0u64);
    let mut reported: Option<String> = None;
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            _ = s.rollout.wake.notified() => {}
            _ = shutdown.changed() => break,
        }
        let now = s.now_ms();
        if let Err(e) = check_faults(&s).await {
            tracing::warn!(instance = s.id(), error = %e, "policy rollout: rollback could not reach Redis");
        }
        let heard = s.rollout.heard.load(Ordering::Acquire);
        let acted = lock(&s.rollout.state).acted;
        let tick_ms = s.settings.tick.as_millis() as u64;
        // At most one read per tick because of announcements (section 9.3).
        let due = (heard > acted && now.saturating_sub(last_read) >= tick_ms)
            || s.rollout.resync.swap(false, Ordering::AcqRel)
            || now.saturating_sub(last_read) >= POLL_MS;
        if due {
            last_read = now;
            let r = tokio::time::timeout(s.settings.command_timeout * 4, sync(&s)).await;
            match r {
                Ok(Err(e)) => tracing::warn!(instance = s.id(), error = %e, "policy rollout: cannot read the record"),
                Err(_) => tracing::warn!(instance = s.id(), "policy rollout: reading the record timed out"),
                Ok(Ok(())) => {}
            }
        }
        let body = status_json(&s);
        // A change is reported at once; otherwise once per heartbeat. Compared without the
        // timestamp, which changes every time.
        let key = body.split(",\"timestamp\"").next().unwrap_or("").to_string();
        if reported.as_deref() != Some(key.as_str()) || now.saturating_sub(last_status) >= HEARTBEAT.as_millis() as u64 {
            if write_status(&s).await.is_ok() {
                reported = Some(key);
                last_status = now;
            }
        }
    }
    // A stopped instance leaves the listing at once, not after the record's TTL.
    let mut conn = s.conn.clone();
    let mut del = redis::cmd("DEL");
    del.arg(format!("{}policy:status:{}", s.names.policy_keys, s.id()));
    let _ = tokio::time::timeout(Duration::from_millis(500), del.query_async::<i64>(&mut conn)).await;
}

// ---------------------------------------------------------------------------------------------
// the operator side

/// How much of the fleet a push reaches first (section 9.7).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Canary {
    All,
    Count(u32),
    Percent(u32),
}

impl Canary {
    /// `N` or `N%`.
    pub fn parse(s: &str) -> std::result::Result<Canary, String> {
        let bad = || format!("--canary: `{}` is not N or N% (N a positive whole number, at most 100%)", clip(s, 40));
        match s.strip_suffix('%') {
            Some(p) => p.parse::<u32>().ok().filter(|n| (1..=100).contains(n)).map(Canary::Percent).ok_or_else(bad),
            None => s.parse::<u32>().ok().filter(|n| *n > 0).map(Canary::Count).ok_or_else(bad),
        }
    }
}

/// What `aci policy push` sends.
pub struct PushRequest<'a> {
    pub component: &'a [u8],
    /// Config overrides (section 9.4), or empty.
    pub config: String,
    /// The secret seed (64 hex); none: an unsigned push.
    pub secret_key: Option<String>,
    pub canary: Canary,
}

/// The rollout record and keys of one namespace, for an operator.
pub struct PolicyAdmin {
    conn: Conn,
    prefix: String,
    namespace: Option<String>,
    keys: String,
    channel: String,
    source: String,
    by: String,
}

fn rollout_error(msg: impl Into<String>) -> Error {
    Error::Rollout(msg.into())
}

impl PolicyAdmin {
    pub async fn connect(url: &str, prefix: &str, namespace: Option<&str>) -> Result<PolicyAdmin> {
        wire::validate_names(prefix, namespace, None)?;
        let client = redis::Client::open(url)?;
        let conn = redis::aio::ConnectionManager::new(client).await.map_err(crate::cache::auth_error)?;
        Ok(Self::new(Conn::Single(conn), prefix, namespace, false))
    }

    /// The same on a Redis Cluster whose fleet uses sharded Pub/Sub (the default of
    /// `CacheBuilder::redis_cluster`): the announcement channel is `{P}:policy` (docs/WIRE.md 10.1).
    pub async fn connect_cluster(seeds: &[String], prefix: &str, namespace: Option<&str>) -> Result<PolicyAdmin> {
        wire::validate_names(prefix, namespace, None)?;
        let conn = crate::transport::connect_cluster(seeds, Duration::from_secs(5), crate::transport::ClusterPubSub::Sharded).await?;
        Ok(Self::new(conn, prefix, namespace, true))
    }

    fn new(conn: Conn, prefix: &str, namespace: Option<&str>, cluster: bool) -> PolicyAdmin {
        let p = match namespace {
            Some(ns) => format!("{prefix}:{ns}"),
            None => prefix.to_string(),
        };
        let host = std::env::var("HOSTNAME").ok().filter(|h| wire::is_id(h)).unwrap_or_else(|| "localhost".into());
        PolicyAdmin {
            conn,
            prefix: prefix.into(),
            namespace: namespace.map(String::from),
            keys: wire::protocol_keys(prefix, namespace),
            channel: if cluster { format!("{{{p}}}:policy") } else { format!("{p}:policy") },
            source: format!("cli-{:x}", std::process::id()),
            by: format!("cli@{host}"),
        }
    }

    /// The current record; an error names a malformed field.
    pub async fn current(&mut self) -> Result<Option<RolloutRecord>> {
        match read_record(&mut self.conn, &self.keys).await? {
            None => Ok(None),
            Some(Ok(r)) => Ok(Some(r)),
            Some(Err(field)) => Err(rollout_error(format!("the rollout record is malformed: field `{field}`"))),
        }
    }

    /// Every live instance's status record (section 9.8), by id.
    pub async fn statuses(&mut self) -> Result<Vec<Value>> {
        let pattern = format!("{}policy:status:*", self.keys);
        // On a cluster the records spread over the slots: every master is scanned.
        let names = crate::transport::scan_all(&mut self.conn, &pattern, 100_000).await?;
        let mut out = Vec::new();
        for chunk in names.chunks(500) {
            let values: Vec<Option<String>> = crate::transport::get_many(&mut self.conn, chunk).await?;
            out.extend(values.into_iter().flatten().filter_map(|v| serde_json::from_str::<Value>(&v).ok()).filter(Value::is_object));
        }
        out.sort_by(|a, b| a["id"].as_str().cmp(&b["id"].as_str()));
        Ok(out)
    }

    /// Writes `make(current)` with the compare-and-set, retrying when another writer won.
    async fn write(&mut self, mut make: impl FnMut(Option<&RolloutRecord>) -> Result<RolloutRecord>) -> Result<RolloutRecord> {
        for _ in 0..10 {
            let cur = self.current().await?;
            let expected = cur.as_ref().map_or(0, |r| r.rollout);
            let mut rec = make(cur.as_ref())?;
            rec.rollout = expected + 1;
            if rec.by.is_empty() {
                rec.by = self.by.clone();
            }
            if write_record(&mut self.conn, &self.keys, &self.channel, &self.source, expected, &rec).await? {
                return Ok(rec);
            }
        }
        Err(rollout_error("the rollout record kept changing under us (10 attempts); try again"))
    }

    /// Stores the component, then writes and announces a record naming it (section 9.7).
    /// Validate it first with [`check_component`].
    pub async fn push(&mut self, req: PushRequest<'_>, name: &str, version: &str) -> Result<RolloutRecord> {
        if req.component.len() > MAX_COMPONENT_BYTES {
            return Err(rollout_error(format!("the component is {} bytes: the limit is {MAX_COMPONENT_BYTES}", req.component.len())));
        }
        if req.config.len() > MAX_CONFIG_BYTES {
            return Err(rollout_error(format!("--config: over {MAX_CONFIG_BYTES} bytes")));
        }
        let hash = sha256_hex(req.component);
        let sig = match &req.secret_key {
            Some(k) => sign(k, &self.prefix, self.namespace.as_deref(), &hash, &req.config).map_err(rollout_error)?,
            None => String::new(),
        };
        let _: () = redis::cmd("SET").arg(format!("{}policy:blob:{hash}", self.keys)).arg(req.component).arg("NX").query_async(&mut self.conn).await?;
        let _: i64 = redis::cmd("HDEL").arg(format!("{}policy:bad", self.keys)).arg(&hash).query_async(&mut self.conn).await?;
        let canary = match req.canary {
            Canary::All => Vec::new(),
            c => {
                let mut ids: Vec<String> = self.statuses().await?.iter().filter_map(|v| v["id"].as_str().map(String::from)).collect();
                ids.sort();
                if ids.is_empty() {
                    return Err(rollout_error("--canary: no live instance reports a status in this namespace"));
                }
                let n = match c {
                    Canary::Count(n) => n as usize,
                    Canary::Percent(p) => (ids.len() * p as usize).div_ceil(100),
                    Canary::All => unreachable!(),
                };
                ids.truncate(n.clamp(1, MAX_CANARY));
                ids
            }
        };
        let target = Target { sha256: hash, config: req.config.clone(), sig };
        self.write(|cur| {
            Ok(RolloutRecord {
                target: target.clone(),
                previous: cur.map(|r| r.fleet_target().clone()).unwrap_or_default(),
                canary: canary.clone(),
                name: name.into(),
                version: version.into(),
                reason: "push".into(),
                ..Default::default()
            })
        })
        .await
    }

    /// Ends a canary: the same target for everyone, if `rollout` is still the current record.
    pub async fn promote(&mut self, rollout: u64) -> Result<RolloutRecord> {
        let cur = self.current().await?.ok_or_else(|| rollout_error("nothing to promote: no rollout record"))?;
        if cur.rollout != rollout {
            return Err(rollout_error(format!("rollout {rollout} is no longer current (now {}: {} by {})", cur.rollout, cur.reason, cur.by)));
        }
        if cur.canary.is_empty() {
            return Ok(cur);
        }
        let rec = RolloutRecord { canary: Vec::new(), reason: "promote".into(), by: String::new(), ..cur.clone() };
        if write_record(&mut self.conn, &self.keys, &self.channel, &self.source, rollout, &RolloutRecord { rollout: rollout + 1, by: self.by.clone(), ..rec.clone() }).await? {
            Ok(RolloutRecord { rollout: rollout + 1, by: self.by.clone(), ..rec })
        } else {
            Err(rollout_error(format!("rollout {rollout} changed while promoting it")))
        }
    }

    /// Returns the fleet to the previous target (section 9.7).
    pub async fn rollback(&mut self) -> Result<RolloutRecord> {
        self.write(|cur| {
            let cur = cur.ok_or_else(|| rollout_error("nothing to roll back: no rollout record"))?;
            Ok(RolloutRecord {
                target: cur.previous.clone(),
                previous: cur.target.clone(),
                canary: Vec::new(),
                reason: "rollback".into(),
                ..Default::default()
            })
        })
        .await
    }

    /// The bad list: hash → reason.
    pub async fn bad_hashes(&mut self) -> Result<HashMap<String, String>> {
        Ok(redis::cmd("HGETALL").arg(format!("{}policy:bad", self.keys)).query_async(&mut self.conn).await?)
    }
}

/// What `aci policy push` checks before storing anything: the component is this interface,
/// imports nothing and loads in the sandbox, accepts the config (with `config` overrides),
/// refuses an invalid one, and survives a synthetic trace that any policy must get through:
/// no trap or exhausted bound, batches within their cap, each buffered key returned once,
/// everything buffered drained once the strategy leaves `batched`. Returns (name, version).
pub fn check_component(bytes: &[u8], config: &str, limits: SandboxLimits) -> Result<(String, String)> {
    if bytes.len() > MAX_COMPONENT_BYTES {
        return Err(rollout_error(format!("the component is {} bytes: the limit is {MAX_COMPONENT_BYTES}", bytes.len())));
    }
    let module = PolicyModule::from_bytes(bytes, limits)?;
    let cfg = apply_overrides(&PolicyConfig::default(), config).map_err(rollout_error)?;
    let mut p = module.instantiate()?;
    let fail = |what: &str, now: u64, e: &dyn std::fmt::Display| rollout_error(format!("semantic check: {what} at {now} ms: {e}"));
    p.configure(&cfg, 0).map_err(|e| fail("configure", 0, &crate::policy::one_line(&e)))?
        .map_err(|e| fail("configure", 0, &format!("refused the config: {}: {}", e.field, e.message)))?;
    let mut probe = module.instantiate()?;
    let invalid = PolicyConfig { window_ms: 0, ..cfg.clone() };
    match probe.configure(&invalid, 0) {
        Ok(Err(_)) => {}
        Ok(Ok(())) => return Err(fail("configure", 0, &"accepted window-ms = 0 (an invalid config must be refused)")),
        Err(e) => return Err(fail("configure", 0, &crate::policy::one_line(&e))),
    }
    let cap = cfg.batch_max_keys.max(1) as usize;
    let mut written: HashSet<String> = HashSet::new();
    let mut n = 0u64;
    // Idle, a ramp through every tier, a burst, idle again; 250 ms ticks.
    let phases: [(u64, u64); 6] = [(0, 8), (2, 20), (6, 20), (25, 20), (100, 12), (0, 60)];
    let mut now = 0u64;
    let check_batch = |b: crate::policy::Batch, written: &HashSet<String>, now: u64| -> Result<()> {
        if b.keys.len() > cap {
            return Err(fail("pending-batch", now, &format!("returned {} keys, over batch-max-keys {cap}", b.keys.len())));
        }
        let mut seen = HashSet::new();
        for k in &b.keys {
            if !written.contains(k) || !seen.insert(k) {
                return Err(fail("pending-batch", now, &format!("returned `{}`, never written or twice in one batch", clip(k, 40))));
            }
        }
        Ok(())
    };
    let trap = |what: &'static str, now: u64| move |e: wasmtime::Error| fail(what, now, &crate::policy::one_line(&e));
    for (i, (per_tick, ticks)) in phases.iter().enumerate() {
        for t in 0..*ticks {
            now += 250;
            let keys: Vec<String> = (0..*per_tick).map(|_| { n += 1; format!("check:{}", n % 500) }).collect();
            p.record_writes(&keys, now).map_err(trap("record-writes", now))?;
            written.extend(keys);
            if t % 4 == 0 {
                p.record_remote_writes((*per_tick * 3) as u32, now).map_err(trap("record-remote-writes", now))?;
            }
            p.status(now).map_err(trap("status", now))?;
            let b = p.pending_batch(now).map_err(trap("pending-batch", now))?;
            check_batch(b, &written, now)?;
            p.write_rate(now).map_err(trap("write-rate", now))?;
        }
        if i == 3 {
            p.follow(Strategy::Batched, now).map_err(trap("follow", now))?;
            p.lead(now).map_err(trap("lead", now))?;
        }
    }
    // Leaving batched must drain everything (WIT `pending-batch`): within a bounded number of
    // calls, after which nothing is buffered.
    p.follow(Strategy::Eager, now).map_err(trap("follow", now))?;
    for _ in 0..(written.len() / cap + 2) {
        let b = p.pending_batch(now).map_err(trap("pending-batch", now))?;
        check_batch(b, &written, now)?;
    }
    let st = p.status(now).map_err(trap("status", now))?;
    if st.buffered_keys != 0 {
        return Err(fail("pending-batch", now, &format!("{} buffered keys never drained after a switch to eager", st.buffered_keys)));
    }
    Ok((module.name().to_string(), module.version().to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// tests/vectors/wire/policy.json: the vectors of section 9 every following host replays.
    #[test]
    fn every_policy_vector() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/vectors/wire/policy.json");
        let v: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let cases = v["cases"].as_array().unwrap();
        let mut failures = Vec::new();
        let mut kinds = HashSet::new();
        for c in cases {
            let name = c["name"].as_str().unwrap();
            kinds.insert(c["kind"].as_str().unwrap().to_string());
            match c["kind"].as_str().unwrap() {
                "announcement" => {
                    let mut p = c["payload"].as_str().unwrap().as_bytes().to_vec();
                    if let Some(n) = c["pad_to"].as_u64() {
                        p.resize(n as usize, b' ');
                    }
                    let got = match wire::decode_policy(&p) {
                        Ok(a) => json!({"rollout": a.rollout, "source": a.origin.source}),
                        Err(k) => json!({"malformed": k.as_str()}),
                    };
                    if got != c["expect"] {
                        failures.push(format!("{name}: want {}, got {got}", c["expect"]));
                    }
                }
                "signature" => {
                    let seed = c["seed"].as_str().unwrap();
                    let (prefix, ns) = (c["prefix"].as_str().unwrap(), c["namespace"].as_str());
                    let (sha, config) = (c["sha256"].as_str().unwrap(), c["config"].as_str().unwrap());
                    assert_eq!(public_key_of(seed).unwrap(), c["public_key"].as_str().unwrap(), "{name}");
                    assert_eq!(String::from_utf8(signed_message(prefix, ns, sha, config)).unwrap(), c["message"].as_str().unwrap(), "{name}");
                    let sig = sign(seed, prefix, ns, sha, config).unwrap();
                    assert_eq!(sig, c["sig"].as_str().unwrap(), "{name}");
                    let trust = Trust::new(c["public_key"].as_str(), &[]);
                    for var in c["verifies"].as_array().unwrap() {
                        let t = Target { sha256: var["sha256"].as_str().unwrap().into(), config: var["config"].as_str().unwrap().into(), sig: sig.clone() };
                        let ok = trust.check(var["prefix"].as_str().unwrap(), var["namespace"].as_str(), &t).is_ok();
                        if ok != var["verifies"].as_bool().unwrap() {
                            failures.push(format!("{name}: variant {var}: verifies {ok}"));
                        }
                    }
                }
                "record" => {
                    let fields: HashMap<String, String> = serde_json::from_value(c["fields"].clone()).unwrap();
                    let got = match RolloutRecord::from_fields(&fields) {
                        Ok(r) => serde_json::to_value(r.target_for(c["instance"].as_str().unwrap())).unwrap(),
                        Err(f) => json!({"malformed": f}),
                    };
                    if got != c["expect"] {
                        failures.push(format!("{name}: want {}, got {got}", c["expect"]));
                    }
                }
                k => failures.push(format!("{name}: unknown kind {k}")),
            }
        }
        assert_eq!(kinds.len(), 3);
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }

    #[test]
    fn overrides_name_the_field() {
        let base = PolicyConfig::default();
        assert_eq!(apply_overrides(&base, r#"{"initial-strategy":"eager"}"#).unwrap().initial_strategy, Strategy::Eager);
        assert!(apply_overrides(&base, r#"{"window-ms":1.5}"#).unwrap_err().starts_with("config: window-ms:"));
        assert_eq!(apply_overrides(&base, r#"{"window-ms":5.0}"#).unwrap().window_ms, 5, "an integer as WIRE.md 2.1 defines it");
        assert!(apply_overrides(&base, r#"{"window-ms":3e9}"#).unwrap_err().starts_with("config: window-ms:"));
        assert!(apply_overrides(&base, r#"{"bogus":1}"#).unwrap_err().starts_with("config: bogus:"));
        assert!(apply_overrides(&base, r#"{"initial-strategy":"lazy"}"#).unwrap_err().starts_with("config: initial-strategy:"));
    }

    #[test]
    fn trust_rules() {
        let (seed, public) = keygen();
        let h = "ab".repeat(32);
        let signed = Target { sha256: h.clone(), config: String::new(), sig: sign(&seed, "aci", Some("ns"), &h, "").unwrap() };
        let none = Trust::new(None, &[]);
        assert!(none.check("aci", Some("ns"), &signed).unwrap_err().starts_with("no policy trust configured"));
        assert!(none.check("aci", Some("ns"), &Target::default()).is_ok(), "returning to the local policy needs no trust");
        let key = Trust::new(Some(&public), &[]);
        assert!(key.check("aci", Some("ns"), &signed).is_ok());
        assert!(key.check("aci", Some("other"), &signed).unwrap_err().starts_with("bad signature"));
        assert!(key.check("aci", Some("ns"), &Target { sig: String::new(), ..signed.clone() }).unwrap_err().starts_with("unsigned"));
        let allow = Trust::new(None, std::slice::from_ref(&h));
        assert!(allow.check("aci", Some("ns"), &Target { sig: String::new(), ..signed.clone() }).is_ok());
        assert!(allow.check("aci", Some("ns"), &Target { sha256: "cd".repeat(32), ..signed.clone() }).unwrap_err().starts_with("not in the allow-list"));
        assert!(allow.check("aci", Some("ns"), &Target { config: "{}".into(), sig: String::new(), ..signed.clone() }).is_err());
        // Allow-listed and signed with a config: the signature is the trust that covers the config.
        let both = Trust::new(Some(&public), std::slice::from_ref(&h));
        let with_config = Target { config: "{}".into(), sig: sign(&seed, "aci", Some("ns"), &h, "{}").unwrap(), ..signed };
        assert!(both.check("aci", Some("ns"), &with_config).is_ok());
        assert!(both.check("aci", Some("ns"), &Target { sig: String::new(), ..with_config }).unwrap_err().starts_with("unsigned"));
    }

    #[test]
    fn the_bundled_policies_pass_the_push_checks_and_a_broken_one_does_not() {
        for name in crate::bundled_policy_names() {
            let bytes = crate::bundled_policy(name).unwrap();
            assert_eq!(check_component(bytes, "", SandboxLimits::default()).unwrap().0, name);
        }
        assert!(check_component(b"\0asm\x01\0\0\0", "", SandboxLimits::default()).is_err());
        let e = check_component(crate::policy::FIXED_WASM, r#"{"window-ms":-1}"#, SandboxLimits::default()).unwrap_err().to_string();
        assert!(e.contains("window-ms"), "{e}");
    }
}
