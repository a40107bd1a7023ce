//! The wire format, fleet protocol v2 (docs/WIRE.md sections 1 and 2): names, message decoding
//! with its malformed kinds, and the messages this host sends.
//!
//! Decoding is the network path: it must never panic and must do bounded work on any input,
//! since any client of the Redis server can publish on these channels. Every number that leaves
//! the decoder is range-checked, so nothing downstream can be made to loop or allocate in
//! proportion to a value taken from the wire.

use serde::Serialize;
use serde_json::{Map, Value};

use crate::error::{ConfigError, Error};
use crate::policy::Strategy;

/// Payloads over this size are refused before parsing.
pub const MAX_PAYLOAD_BYTES: usize = 1 << 20;
/// Invalidations naming more keys than this are refused (a flush is the way to say "all").
pub const MAX_KEYS: usize = 100_000;
/// Keys per message a sender puts in one `invalidate` (section 2.4).
pub const KEYS_PER_MESSAGE: usize = 10_000;
/// The largest `seq`/`inval_seq`: the largest integer every host's JSON number holds exactly.
pub const MAX_SEQ: u64 = (1 << 53) - 1;
/// The largest `count` of a `write_report`.
pub const MAX_COUNT: u64 = u32::MAX as u64;

/// `^[A-Za-z0-9._-]{1,64}$`: channel prefixes and namespaces (section 1.1).
fn is_name(s: &str) -> bool {
    (1..=64).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
}

/// `^[A-Za-z0-9_-]{1,64}$`: instance ids, `source` and `epoch` (section 1.4).
pub(crate) fn is_id(s: &str) -> bool {
    (1..=64).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Checks the naming rules of section 1; the error names the field.
pub(crate) fn validate_names(prefix: &str, namespace: Option<&str>, instance_id: Option<&str>) -> Result<(), ConfigError> {
    if !is_name(prefix) {
        return Err(ConfigError::new("channel_prefix", "must be 1-64 characters of [A-Za-z0-9._-]"));
    }
    if let Some(ns) = namespace {
        if !is_name(ns) {
            return Err(ConfigError::new("namespace", "must be 1-64 characters of [A-Za-z0-9._-] (no `:`, white space or glob characters)"));
        }
    }
    if let Some(id) = instance_id {
        if !is_id(id) {
            return Err(ConfigError::new("instance_id", "must be 1-64 characters of [A-Za-z0-9_-]"));
        }
    }
    Ok(())
}

/// `K` of section 9: the protocol key space of a namespace, with its trailing separator.
pub(crate) fn protocol_keys(channel_prefix: &str, namespace: Option<&str>) -> String {
    match namespace {
        Some(ns) => format!("{channel_prefix}::{ns}:"),
        None => format!("{channel_prefix}::"),
    }
}

/// Channel and key names of one instance (section 1).
#[derive(Clone, Debug)]
pub struct Names {
    /// Prepended to user keys: `P:` with a namespace, nothing without.
    key_prefix: String,
    /// `<prefix>::`: the protocol key space, which a namespace-less user key must not enter.
    protocol_prefix: String,
    pub invalidation: String,
    pub strategy: String,
    pub reports: String,
    pub liveness: String,
    pub controller_lease: String,
    /// `P:policy`: rollout announcements (section 9.3).
    pub policy: String,
    /// `K` of section 9: `<prefix>::<namespace>:` or `<prefix>::`, the rollout keys' prefix.
    pub policy_keys: String,
}

impl Names {
    /// Names of a validated configuration (see [`validate_names`]).
    pub fn new(channel_prefix: &str, namespace: Option<&str>, instance_id: &str) -> Self {
        let p = match namespace {
            Some(ns) => format!("{channel_prefix}:{ns}"),
            None => channel_prefix.to_string(),
        };
        let lease = match namespace {
            Some(ns) => format!("{channel_prefix}::{ns}:controller"),
            None => format!("{channel_prefix}::controller"),
        };
        Names {
            key_prefix: if namespace.is_some() { format!("{p}:") } else { String::new() },
            protocol_prefix: format!("{channel_prefix}::"),
            invalidation: format!("{p}:invalidation"),
            strategy: format!("{p}:strategy"),
            reports: format!("{p}:reports"),
            liveness: format!("{p}:liveness:{instance_id}"),
            controller_lease: lease,
            policy: format!("{p}:policy"),
            policy_keys: protocol_keys(channel_prefix, namespace),
        }
    }

    fn check(&self, key: &str) -> Result<(), Error> {
        // A namespaced key always starts with `P:`, never with `<prefix>::`; only a key stored
        // as given can reach the protocol key space.
        if self.key_prefix.is_empty() && key.starts_with(&self.protocol_prefix) {
            return Err(Error::ReservedKey(format!(
                "`{}...` is the protocol key space (keys starting with `{}` are reserved)",
                key.chars().take(40).collect::<String>(),
                self.protocol_prefix
            )));
        }
        Ok(())
    }

    /// Runs `f` on the Redis key of `key` without allocating (a reused per-thread buffer). The
    /// L1 is keyed by the user key now, so only the tests use it, to pin the spelling.
    #[cfg(test)]
    pub fn with_redis_key<R>(&self, key: &str, f: impl FnOnce(&str) -> R) -> Result<R, Error> {
        if self.key_prefix.is_empty() {
            self.check(key)?;
            return Ok(f(key));
        }
        thread_local! {
            static BUF: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
        }
        Ok(BUF.with(|b| match b.try_borrow_mut() {
            Ok(mut buf) => {
                buf.clear();
                buf.push_str(&self.key_prefix);
                buf.push_str(key);
                f(&buf)
            }
            // Re-entered from inside `f`: fall back to a fresh string.
            Err(_) => {
                let mut s = self.key_prefix.clone();
                s.push_str(key);
                f(&s)
            }
        }))
    }

    /// The Redis key of a user key: namespaced as the original stores it, or as given without
    /// a namespace (refused if it would enter the protocol key space).
    pub fn redis_key(&self, key: &str) -> Result<String, Error> {
        self.check(key)?;
        let mut s = String::with_capacity(self.key_prefix.len() + key.len());
        s.push_str(&self.key_prefix);
        s.push_str(key);
        Ok(s)
    }
}

/// Fields every message carries.
#[derive(Clone, Debug, PartialEq)]
pub struct Origin {
    pub source: String,
    pub epoch: Option<String>,
    pub timestamp: f64,
}

/// A decoded message (section 2.2).
#[derive(Clone, Debug, PartialEq)]
pub enum Message {
    Invalidate { origin: Origin, keys: Vec<String>, strategy: Option<Strategy>, seq: Option<u64> },
    Flush { origin: Origin, seq: Option<u64> },
    Mark { origin: Origin, inval_seq: u64 },
    StrategyUpdate { origin: Origin, strategy: Strategy, write_rate: f64, inval_seq: Option<u64> },
    WriteReport { origin: Origin, count: u32, inval_seq: Option<u64> },
    Heartbeat { origin: Origin },
}

impl Message {
    pub fn origin(&self) -> &Origin {
        match self {
            Message::Invalidate { origin, .. }
            | Message::Flush { origin, .. }
            | Message::Mark { origin, .. }
            | Message::StrategyUpdate { origin, .. }
            | Message::WriteReport { origin, .. }
            | Message::Heartbeat { origin } => origin,
        }
    }
}

/// Why a payload was refused (section 2.3); counted per kind in stats.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Malformed {
    TooLarge,
    NotJson,
    NotObject,
    UnknownAction,
    TooManyKeys,
    BadField,
}

impl Malformed {
    pub fn as_str(self) -> &'static str {
        match self {
            Malformed::TooLarge => "too-large",
            Malformed::NotJson => "not-json",
            Malformed::NotObject => "not-object",
            Malformed::UnknownAction => "unknown-action",
            Malformed::TooManyKeys => "too-many-keys",
            Malformed::BadField => "bad-field",
        }
    }
}

const ACTIONS: [&str; 6] = ["invalidate", "flush", "mark", "strategy_update", "write_report", "heartbeat"];

type Fields = Map<String, Value>;

/// An integer field (section 2.1): a JSON number whose value is a whole number in `lo..=hi`
/// (`17.0` and `1.7e1` are 17). Absent: `None`; anything else: bad-field.
fn integer(f: &Fields, name: &str, lo: u64, hi: u64) -> Result<Option<u64>, Malformed> {
    let Some(v) = f.get(name) else { return Ok(None) };
    let Value::Number(n) = v else { return Err(Malformed::BadField) };
    let value = if let Some(u) = n.as_u64() {
        u
    } else if let Some(x) = n.as_f64() {
        // Negative integers (as_i64) and fractions land here too. `hi` is at most 2^53-1, so
        // every accepted value is exact in an f64.
        if x.fract() != 0.0 || x < lo as f64 || x > hi as f64 {
            return Err(Malformed::BadField);
        }
        x as u64
    } else {
        return Err(Malformed::BadField);
    };
    if value < lo || value > hi {
        return Err(Malformed::BadField);
    }
    Ok(Some(value))
}

fn number(f: &Fields, name: &str) -> Result<Option<f64>, Malformed> {
    match f.get(name) {
        None => Ok(None),
        Some(Value::Number(n)) => n.as_f64().filter(|x| x.is_finite()).map(Some).ok_or(Malformed::BadField),
        Some(_) => Err(Malformed::BadField),
    }
}

fn strategy(f: &Fields, name: &str) -> Result<Option<Strategy>, Malformed> {
    match f.get(name) {
        None => Ok(None),
        Some(Value::String(s)) => Strategy::parse(s).map(Some).ok_or(Malformed::BadField),
        Some(_) => Err(Malformed::BadField),
    }
}

fn id(f: &mut Fields, name: &str) -> Result<Option<String>, Malformed> {
    match f.remove(name) {
        None => Ok(None),
        Some(Value::String(s)) if is_id(&s) => Ok(Some(s)),
        Some(_) => Err(Malformed::BadField),
    }
}

/// Decodes one payload per section 2.3, checking in the spec's order. Bounded: the size is
/// checked first, serde_json's recursion limit (128) stops deep nesting, key lists are capped.
/// Arrays and objects nested deeper than this are `not-json` (section 2.3): one number every
/// host checks, well below serde_json's own recursion limit.
pub(crate) const MAX_DEPTH: usize = 64;

/// Whether brackets outside strings nest deeper than `max`: one pass, no allocation.
fn nesting_exceeds(payload: &[u8], max: usize) -> bool {
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for &b in payload {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > max {
                    return true;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

pub fn decode(payload: &[u8]) -> Result<Message, Malformed> {
    if payload.len() > MAX_PAYLOAD_BYTES {
        return Err(Malformed::TooLarge);
    }
    if nesting_exceeds(payload, MAX_DEPTH) {
        return Err(Malformed::NotJson);
    }
    let value: Value = serde_json::from_slice(payload).map_err(|_| Malformed::NotJson)?;
    let Value::Object(mut f) = value else { return Err(Malformed::NotObject) };
    // A member whose value is null is absent (section 2.1): fine when optional, bad-field when
    // required.
    f.retain(|_, v| !v.is_null());
    let action = match f.get("action") {
        Some(Value::String(a)) => match ACTIONS.iter().find(|x| **x == a.as_str()) {
            Some(a) => Some(*a),
            None => return Err(Malformed::UnknownAction),
        },
        _ => None,
    };
    // `keys` counts only where it is read: on invalidate.
    if let (Some("invalidate"), Some(Value::Array(keys))) = (action, f.get("keys")) {
        if keys.len() > MAX_KEYS {
            return Err(Malformed::TooManyKeys);
        }
    }
    let action = action.ok_or(Malformed::BadField)?;
    let source = id(&mut f, "source")?.ok_or(Malformed::BadField)?;
    let epoch = id(&mut f, "epoch")?;
    let timestamp = number(&f, "timestamp")?.unwrap_or(0.0);
    let origin = Origin { source, epoch, timestamp };
    Ok(match action {
        "invalidate" => {
            let keys = match f.remove("keys") {
                Some(Value::Array(items)) => items
                    .into_iter()
                    .map(|k| match k {
                        Value::String(s) => Ok(s),
                        _ => Err(Malformed::BadField),
                    })
                    .collect::<Result<Vec<String>, _>>()?,
                _ => return Err(Malformed::BadField),
            };
            let strategy = strategy(&f, "strategy")?;
            let seq = integer(&f, "seq", 1, MAX_SEQ)?;
            Message::Invalidate { origin, keys, strategy, seq }
        }
        "flush" => Message::Flush { origin, seq: integer(&f, "seq", 1, MAX_SEQ)? },
        "mark" => Message::Mark { origin, inval_seq: integer(&f, "inval_seq", 0, MAX_SEQ)?.ok_or(Malformed::BadField)? },
        "strategy_update" => {
            let strategy = strategy(&f, "strategy")?.ok_or(Malformed::BadField)?;
            let write_rate = number(&f, "write_rate")?.unwrap_or(0.0).max(0.0);
            Message::StrategyUpdate { origin, strategy, write_rate, inval_seq: integer(&f, "inval_seq", 0, MAX_SEQ)? }
        }
        "write_report" => {
            let count = integer(&f, "count", 0, MAX_COUNT)?.ok_or(Malformed::BadField)? as u32;
            Message::WriteReport { origin, count, inval_seq: integer(&f, "inval_seq", 0, MAX_SEQ)? }
        }
        _ => Message::Heartbeat { origin },
    })
}

/// A `policy` announcement on `P:policy` (section 9.3): only a hint to read the record again.
#[derive(Clone, Debug, PartialEq)]
pub struct PolicyAnnouncement {
    pub origin: Origin,
    pub rollout: u64,
}

/// Decodes a payload of `P:policy` with the checks of section 2.3 in their order; on this
/// channel every action but `policy` is `unknown-action`.
pub fn decode_policy(payload: &[u8]) -> Result<PolicyAnnouncement, Malformed> {
    if payload.len() > MAX_PAYLOAD_BYTES {
        return Err(Malformed::TooLarge);
    }
    if nesting_exceeds(payload, MAX_DEPTH) {
        return Err(Malformed::NotJson);
    }
    let value: Value = serde_json::from_slice(payload).map_err(|_| Malformed::NotJson)?;
    let Value::Object(mut f) = value else { return Err(Malformed::NotObject) };
    f.retain(|_, v| !v.is_null());
    match f.get("action") {
        Some(Value::String(a)) if a == "policy" => {}
        Some(Value::String(_)) => return Err(Malformed::UnknownAction),
        _ => return Err(Malformed::BadField),
    }
    let source = id(&mut f, "source")?.ok_or(Malformed::BadField)?;
    let epoch = id(&mut f, "epoch")?;
    let timestamp = number(&f, "timestamp")?.unwrap_or(0.0);
    let rollout = integer(&f, "rollout", 1, MAX_SEQ)?.ok_or(Malformed::BadField)?;
    Ok(PolicyAnnouncement { origin: Origin { source, epoch, timestamp }, rollout })
}

/// The announcement a writer of the rollout record publishes (section 9.3).
pub(crate) fn policy_announcement(source: &str, rollout: u64) -> String {
    serde_json::json!({"action": "policy", "rollout": rollout, "timestamp": unix_now(), "source": source, "v": 2}).to_string()
}

#[derive(Serialize)]
struct Out<'a> {
    action: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    keys: Option<&'a [String]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    strategy: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    write_rate: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    count: Option<u32>,
    timestamp: f64,
    source: &'a str,
    epoch: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    seq: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    inval_seq: Option<u64>,
    v: u8,
}

/// Who is sending: the instance's identity, stamped on every message.
#[derive(Clone, Debug)]
pub struct Sender {
    pub source: String,
    pub epoch: String,
}

pub(crate) fn unix_now() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

impl Sender {
    fn out(&self, action: &'static str) -> Out<'_> {
        Out {
            action,
            keys: None,
            strategy: None,
            write_rate: None,
            count: None,
            timestamp: unix_now(),
            source: &self.source,
            epoch: &self.epoch,
            seq: None,
            inval_seq: None,
            v: 2,
        }
    }

    fn encode(o: Out<'_>) -> String {
        serde_json::to_string(&o).expect("plain struct serializes")
    }

    pub fn invalidate(&self, keys: &[String], strategy: Strategy, seq: u64) -> String {
        Self::encode(Out { keys: Some(keys), strategy: Some(strategy.as_str()), seq: Some(seq), ..self.out("invalidate") })
    }

    pub fn flush(&self, strategy: Strategy, seq: u64) -> String {
        Self::encode(Out { strategy: Some(strategy.as_str()), seq: Some(seq), ..self.out("flush") })
    }

    pub fn mark(&self, inval_seq: u64) -> String {
        Self::encode(Out { inval_seq: Some(inval_seq), ..self.out("mark") })
    }

    pub fn strategy_update(&self, strategy: Strategy, write_rate: f64, inval_seq: u64) -> String {
        let write_rate = if write_rate.is_finite() { write_rate.max(0.0) } else { 0.0 };
        Self::encode(Out {
            strategy: Some(strategy.as_str()),
            write_rate: Some(write_rate),
            inval_seq: Some(inval_seq),
            ..self.out("strategy_update")
        })
    }

    /// `count` is clamped to 2^32-1 (section 2.4): the excess only makes the rate look lower
    /// for one tick.
    pub fn write_report(&self, count: u64, inval_seq: u64) -> String {
        let count = count.min(MAX_COUNT) as u32;
        Self::encode(Out { count: Some(count), inval_seq: Some(inval_seq), ..self.out("write_report") })
    }

    pub fn heartbeat(&self) -> String {
        Self::encode(self.out("heartbeat"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::{any, proptest, ProptestConfig};

    fn vectors(name: &str) -> Value {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/vectors/wire").join(name);
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        serde_json::from_str(&text).unwrap()
    }

    fn payload(case: &Value) -> Vec<u8> {
        let mut p = match (case.get("payload"), case.get("payload_hex")) {
            (Some(Value::String(s)), _) => s.clone().into_bytes(),
            (_, Some(Value::String(h))) => (0..h.len()).step_by(2).map(|i| u8::from_str_radix(&h[i..i + 2], 16).unwrap()).collect(),
            _ => panic!("case without payload: {case}"),
        };
        if let Some(n) = case.get("expand_keys").and_then(Value::as_u64) {
            let keys = vec!["\"k\""; n as usize].join(",");
            let text = String::from_utf8(p).unwrap().replace("\"@KEYS@\"", &keys);
            p = text.into_bytes();
        }
        if let Some(n) = case.get("pad_to").and_then(Value::as_u64) {
            p.resize(n as usize, b' ');
        }
        p
    }

    /// The canonical form of make.py: exactly these fields per action, absent optionals null.
    fn canonical(m: &Message) -> Value {
        let o = m.origin();
        let mut v = serde_json::json!({"source": o.source, "epoch": o.epoch, "timestamp": o.timestamp});
        let s = |x: Option<Strategy>| x.map(|x| x.as_str());
        let extra = match m {
            Message::Invalidate { keys, strategy, seq, .. } => {
                serde_json::json!({"action": "invalidate", "keys": keys, "strategy": s(*strategy), "seq": seq})
            }
            Message::Flush { seq, .. } => serde_json::json!({"action": "flush", "seq": seq}),
            Message::Mark { inval_seq, .. } => serde_json::json!({"action": "mark", "inval_seq": inval_seq}),
            Message::StrategyUpdate { strategy, write_rate, inval_seq, .. } => serde_json::json!({
                "action": "strategy_update", "strategy": strategy.as_str(), "write_rate": write_rate, "inval_seq": inval_seq}),
            Message::WriteReport { count, inval_seq, .. } => {
                serde_json::json!({"action": "write_report", "count": count, "inval_seq": inval_seq})
            }
            Message::Heartbeat { .. } => serde_json::json!({"action": "heartbeat"}),
        };
        for (k, x) in extra.as_object().unwrap() {
            v[k] = x.clone();
        }
        v
    }

    /// Numbers compare by value (12 and 12.0 are equal), everything else exactly.
    fn same(a: &Value, b: &Value) -> bool {
        match (a, b) {
            (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
            (Value::Object(x), Value::Object(y)) => x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| same(v, w))),
            (Value::Array(x), Value::Array(y)) => x.len() == y.len() && x.iter().zip(y).all(|(v, w)| same(v, w)),
            _ => a == b,
        }
    }

    #[test]
    fn every_decode_vector() {
        let v = vectors("decode.json");
        let cases = v["cases"].as_array().unwrap();
        assert!(cases.len() > 50, "{} cases", cases.len());
        let mut failures = Vec::new();
        for case in cases {
            let name = case["name"].as_str().unwrap();
            let got = decode(&payload(case));
            let want = &case["expect"];
            let ok = match (&got, want.get("malformed")) {
                (Err(kind), Some(Value::String(k))) => kind.as_str() == k,
                (Ok(m), None) if want.get("keys_count").is_some() => {
                    let n = match m {
                        Message::Invalidate { keys, .. } => keys.len() as u64,
                        _ => u64::MAX,
                    };
                    canonical(m)["action"] == want["action"] && Some(n) == want["keys_count"].as_u64()
                }
                (Ok(m), None) => same(&canonical(m), want),
                _ => false,
            };
            if !ok {
                failures.push(format!("{name}: got {:?}, want {want}", got.map(|m| canonical(&m)).map_err(Malformed::as_str)));
            }
        }
        assert!(failures.is_empty(), "{} of {} decode vectors fail:\n{}", failures.len(), cases.len(), failures.join("\n"));
    }

    #[test]
    fn every_naming_vector() {
        let v = vectors("naming.json");
        let cases = v["cases"].as_array().unwrap();
        let mut failures = Vec::new();
        for case in cases {
            let name = case["name"].as_str().unwrap();
            let prefix = case["channel_prefix"].as_str().unwrap();
            let ns = case["namespace"].as_str();
            let iid = case["instance_id"].as_str().unwrap();
            let key = case["key"].as_str().unwrap();
            let got: Result<Value, String> = validate_names(prefix, ns, Some(iid)).map_err(|e| e.field).and_then(|()| {
                let n = Names::new(prefix, ns, iid);
                let rkey = n.redis_key(key).map_err(|e| match e {
                    Error::ReservedKey(_) => "key".to_string(),
                    other => format!("unexpected {other}"),
                })?;
                // The hot path's spelling must agree with the allocating one.
                assert_eq!(n.with_redis_key(key, str::to_string).unwrap(), rkey, "{name}");
                Ok(serde_json::json!({"invalidation": n.invalidation, "strategy": n.strategy, "reports": n.reports,
                    "liveness": n.liveness, "lease": n.controller_lease, "redis_key": rkey}))
            });
            let want = &case["expect"];
            let ok = match (&got, want.get("error")) {
                (Err(field), Some(Value::String(w))) => field == w,
                (Ok(g), None) => g == want,
                _ => false,
            };
            if !ok {
                failures.push(format!("{name}: got {got:?}, want {want}"));
            }
        }
        assert!(failures.is_empty(), "{} naming vectors fail:\n{}", failures.len(), failures.join("\n"));
    }

    #[test]
    fn our_messages_decode_to_themselves_and_carry_v2() {
        let s = Sender { source: "0123456789ab".into(), epoch: "00112233aabbccdd".into() };
        let keys = vec!["k1".to_string(), "ключ".to_string()];
        let msgs = [
            s.invalidate(&keys, Strategy::Batched, 7),
            s.flush(Strategy::Eager, 8),
            s.mark(8),
            s.strategy_update(Strategy::Ttl, f64::NAN, 8),
            s.write_report(u64::MAX, 8),
            s.heartbeat(),
        ];
        for m in &msgs {
            assert!(m.contains("\"v\":2"), "{m}");
            let d = decode(m.as_bytes()).unwrap_or_else(|k| panic!("{m}: {}", k.as_str()));
            assert_eq!(d.origin().epoch.as_deref(), Some("00112233aabbccdd"));
        }
        assert!(matches!(decode(msgs[0].as_bytes()).unwrap(), Message::Invalidate { seq: Some(7), strategy: Some(Strategy::Batched), ref keys, .. } if *keys == keys_vec(&keys)));
        assert!(matches!(decode(msgs[4].as_bytes()).unwrap(), Message::WriteReport { count: u32::MAX, inval_seq: Some(8), .. }));
        assert!(matches!(decode(msgs[3].as_bytes()).unwrap(), Message::StrategyUpdate { write_rate, .. } if write_rate == 0.0));
    }

    fn keys_vec(k: &[String]) -> Vec<String> {
        k.to_vec()
    }

    proptest! {
        // The decoder on arbitrary bytes and on mutated valid messages: never panics.
        #![proptest_config(ProptestConfig { cases: std::env::var("ACI_FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(2000), ..ProptestConfig::default() })]
        #[test]
        fn decode_never_panics_on_random_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode(&bytes);
        }

        #[test]
        fn decode_never_panics_on_mutated_messages(pos in 0usize..200, byte in any::<u8>(), cut in 0usize..200) {
            let s = Sender { source: "0123456789ab".into(), epoch: "e".into() };
            let mut m = s.invalidate(&["a".into(), "b".into()], Strategy::Eager, 1).into_bytes();
            if !m.is_empty() { let p = pos % m.len(); m[p] = byte; }
            m.truncate(cut.max(1));
            let _ = decode(&m);
        }
    }
}
