//! The wire format (docs/WIRE.md): the original product's JSON messages plus extra fields, so
//! original and new instances can share a namespace during a migration.
//!
//! Decoding is the network path: it must never panic and must do bounded work on any input,
//! since any client of the Redis server can publish on these channels.

use serde::{Deserialize, Serialize};

use crate::policy::Strategy;

/// Payloads over this size are refused before parsing.
pub const MAX_PAYLOAD_BYTES: usize = 1 << 20;
/// Invalidations naming more keys than this are refused (a flush is the way to say "all").
pub const MAX_KEYS: usize = 100_000;

/// Channel and key names of one namespace.
#[derive(Clone, Debug)]
pub struct Names {
    key_prefix: String,
    pub invalidation: String,
    pub strategy: String,
    pub reports: String,
    pub controller_lease: String,
}

impl Names {
    pub fn new(channel_prefix: &str, namespace: Option<&str>) -> Self {
        let prefix = match namespace {
            Some(ns) => format!("{channel_prefix}:{ns}"),
            None => channel_prefix.to_string(),
        };
        let key_prefix = match namespace {
            Some(_) => format!("{prefix}:"),
            None => String::new(),
        };
        Names {
            invalidation: format!("{prefix}:invalidation"),
            strategy: format!("{prefix}:strategy"),
            reports: format!("{prefix}:reports"),
            controller_lease: format!("{prefix}:controller"),
            key_prefix,
        }
    }

    /// Runs `f` on the Redis key of `key` without allocating (a reused per-thread buffer):
    /// the L1 hit path calls this on every `get`.
    pub fn with_redis_key<R>(&self, key: &str, f: impl FnOnce(&str) -> R) -> R {
        if self.key_prefix.is_empty() {
            return f(key);
        }
        thread_local! {
            static BUF: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
        }
        BUF.with(|b| match b.try_borrow_mut() {
            Ok(mut buf) => {
                buf.clear();
                buf.push_str(&self.key_prefix);
                buf.push_str(key);
                f(&buf)
            }
            // Re-entered from inside `f`: fall back to a fresh string.
            Err(_) => f(&self.redis_key(key)),
        })
    }

    /// The Redis key of a user key: namespaced as the original stores it.
    pub fn redis_key(&self, key: &str) -> String {
        let mut s = String::with_capacity(self.key_prefix.len() + key.len());
        s.push_str(&self.key_prefix);
        s.push_str(key);
        s
    }
}

/// Fields every message carries.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Origin {
    pub source: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<String>,
    #[serde(default)]
    pub timestamp: f64,
}

/// A decoded message.
#[derive(Clone, Debug, PartialEq)]
pub enum Message {
    Invalidate { origin: Origin, keys: Vec<String>, strategy: Option<Strategy>, seq: Option<u64> },
    Flush { origin: Origin, seq: Option<u64> },
    StrategyUpdate { origin: Origin, strategy: Strategy, write_rate: f64, inval_seq: Option<u64> },
    WriteReport { origin: Origin, count: u64, inval_seq: Option<u64> },
}

impl Message {
    pub fn origin(&self) -> &Origin {
        match self {
            Message::Invalidate { origin, .. }
            | Message::Flush { origin, .. }
            | Message::StrategyUpdate { origin, .. }
            | Message::WriteReport { origin, .. } => origin,
        }
    }
}

/// Why a payload was refused; counted per kind in stats.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Malformed {
    TooLarge,
    NotJson,
    UnknownAction,
    BadField,
    TooManyKeys,
}

impl Malformed {
    pub fn as_str(self) -> &'static str {
        match self {
            Malformed::TooLarge => "too-large",
            Malformed::NotJson => "not-json",
            Malformed::UnknownAction => "unknown-action",
            Malformed::BadField => "bad-field",
            Malformed::TooManyKeys => "too-many-keys",
        }
    }
}

/// Only `action` first: an unknown action is refused without typing the rest.
#[derive(Deserialize)]
struct Head<'a> {
    #[serde(borrow)]
    action: std::borrow::Cow<'a, str>,
}

#[derive(Deserialize)]
struct InvalidateBody {
    #[serde(flatten)]
    origin: Origin,
    keys: Vec<String>,
    #[serde(default)]
    strategy: Option<String>,
    #[serde(default)]
    seq: Option<u64>,
}

#[derive(Deserialize)]
struct FlushBody {
    #[serde(flatten)]
    origin: Origin,
    #[serde(default)]
    seq: Option<u64>,
}

#[derive(Deserialize)]
struct StrategyBody {
    #[serde(flatten)]
    origin: Origin,
    strategy: String,
    #[serde(default)]
    write_rate: f64,
    #[serde(default)]
    inval_seq: Option<u64>,
}

#[derive(Deserialize)]
struct ReportBody {
    #[serde(flatten)]
    origin: Origin,
    count: u64,
    #[serde(default)]
    inval_seq: Option<u64>,
}

/// Decodes one payload. Bounded: size is checked first, serde_json's recursion limit (128)
/// stops deep nesting, and key lists are capped.
pub fn decode(payload: &[u8]) -> Result<Message, Malformed> {
    if payload.len() > MAX_PAYLOAD_BYTES {
        return Err(Malformed::TooLarge);
    }
    let head: Head = serde_json::from_slice(payload).map_err(|e| {
        if e.is_data() { Malformed::BadField } else { Malformed::NotJson }
    })?;
    let field = |_| Malformed::BadField;
    match head.action.as_ref() {
        "invalidate" => {
            let b: InvalidateBody = serde_json::from_slice(payload).map_err(field)?;
            if b.keys.len() > MAX_KEYS {
                return Err(Malformed::TooManyKeys);
            }
            let strategy = match b.strategy.as_deref() {
                None => None,
                Some(s) => Some(Strategy::parse(s).ok_or(Malformed::BadField)?),
            };
            Ok(Message::Invalidate { origin: b.origin, keys: b.keys, strategy, seq: b.seq })
        }
        "flush" => {
            let b: FlushBody = serde_json::from_slice(payload).map_err(field)?;
            Ok(Message::Flush { origin: b.origin, seq: b.seq })
        }
        "strategy_update" => {
            let b: StrategyBody = serde_json::from_slice(payload).map_err(field)?;
            let strategy = Strategy::parse(&b.strategy).ok_or(Malformed::BadField)?;
            if !b.write_rate.is_finite() {
                return Err(Malformed::BadField);
            }
            Ok(Message::StrategyUpdate { origin: b.origin, strategy, write_rate: b.write_rate, inval_seq: b.inval_seq })
        }
        "write_report" => {
            let b: ReportBody = serde_json::from_slice(payload).map_err(field)?;
            Ok(Message::WriteReport { origin: b.origin, count: b.count, inval_seq: b.inval_seq })
        }
        _ => Err(Malformed::UnknownAction),
    }
}

#[derive(Serialize)]
struct OutInvalidate<'a> {
    action: &'static str,
    keys: &'a [String],
    strategy: &'static str,
    timestamp: f64,
    source: &'a str,
    epoch: &'a str,
    seq: u64,
}

#[derive(Serialize)]
struct OutFlush<'a> {
    action: &'static str,
    strategy: &'static str,
    timestamp: f64,
    source: &'a str,
    epoch: &'a str,
    seq: u64,
}

#[derive(Serialize)]
struct OutStrategy<'a> {
    action: &'static str,
    strategy: &'static str,
    write_rate: f64,
    timestamp: f64,
    source: &'a str,
    epoch: &'a str,
    inval_seq: u64,
}

#[derive(Serialize)]
struct OutReport<'a> {
    action: &'static str,
    count: u64,
    timestamp: f64,
    source: &'a str,
    epoch: &'a str,
    inval_seq: u64,
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
    pub fn invalidate(&self, keys: &[String], strategy: Strategy, seq: u64) -> String {
        serde_json::to_string(&OutInvalidate {
            action: "invalidate",
            keys,
            strategy: strategy.as_str(),
            timestamp: unix_now(),
            source: &self.source,
            epoch: &self.epoch,
            seq,
        })
        .expect("plain struct serializes")
    }

    pub fn flush(&self, strategy: Strategy, seq: u64) -> String {
        serde_json::to_string(&OutFlush {
            action: "flush",
            strategy: strategy.as_str(),
            timestamp: unix_now(),
            source: &self.source,
            epoch: &self.epoch,
            seq,
        })
        .expect("plain struct serializes")
    }

    pub fn strategy_update(&self, strategy: Strategy, write_rate: f64, inval_seq: u64) -> String {
        serde_json::to_string(&OutStrategy {
            action: "strategy_update",
            strategy: strategy.as_str(),
            write_rate: if write_rate.is_finite() { write_rate } else { 0.0 },
            timestamp: unix_now(),
            source: &self.source,
            epoch: &self.epoch,
            inval_seq,
        })
        .expect("plain struct serializes")
    }

    pub fn write_report(&self, count: u64, inval_seq: u64) -> String {
        serde_json::to_string(&OutReport {
            action: "write_report",
            count,
            timestamp: unix_now(),
            source: &self.source,
            epoch: &self.epoch,
            inval_seq,
        })
        .expect("plain struct serializes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::{any, proptest, ProptestConfig};

    #[test]
    fn reads_the_original_products_messages() {
        let m = decode(br#"{"action":"invalidate","keys":["aci:ns:a","b"],"strategy":"eager","timestamp":1.5,"source":"abcdefabcdef"}"#).unwrap();
        assert_eq!(m, Message::Invalidate {
            origin: Origin { source: "abcdefabcdef".into(), epoch: None, timestamp: 1.5 },
            keys: vec!["aci:ns:a".into(), "b".into()],
            strategy: Some(Strategy::Eager),
            seq: None,
        });
        let m = decode(br#"{"action":"strategy_update","strategy":"batched","write_rate":12.5,"timestamp":2,"source":"x","extra":[1,2]}"#).unwrap();
        assert!(matches!(m, Message::StrategyUpdate { strategy: Strategy::Batched, write_rate, .. } if write_rate == 12.5));
    }

    #[test]
    fn round_trips_our_messages() {
        let s = Sender { source: "0123456789ab".into(), epoch: "e".into() };
        let keys = vec!["k1".to_string(), "ключ".to_string()];
        match decode(s.invalidate(&keys, Strategy::Batched, 7).as_bytes()).unwrap() {
            Message::Invalidate { keys: k, seq: Some(7), strategy: Some(Strategy::Batched), origin } => {
                assert_eq!(k, keys);
                assert_eq!(origin.epoch.as_deref(), Some("e"));
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(decode(s.flush(Strategy::Eager, 8).as_bytes()).unwrap(), Message::Flush { seq: Some(8), .. }));
        assert!(matches!(decode(s.write_report(3, 8).as_bytes()).unwrap(), Message::WriteReport { count: 3, inval_seq: Some(8), .. }));
    }

    #[test]
    fn refuses_bad_input_by_kind() {
        assert_eq!(decode(b"not json"), Err(Malformed::NotJson));
        assert_eq!(decode(b"[1,2]"), Err(Malformed::BadField));
        assert_eq!(decode(br#"{"action":"reboot"}"#), Err(Malformed::UnknownAction));
        assert_eq!(decode(br#"{"action":"invalidate","keys":"k","source":"x"}"#), Err(Malformed::BadField));
        assert_eq!(decode(br#"{"action":"invalidate","keys":["k"]}"#), Err(Malformed::BadField));
        assert_eq!(decode(br#"{"action":"strategy_update","strategy":"sometimes","source":"x"}"#), Err(Malformed::BadField));
        let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
        assert!(decode(deep.as_bytes()).is_err());
        let big = vec![b' '; MAX_PAYLOAD_BYTES + 1];
        assert_eq!(decode(&big), Err(Malformed::TooLarge));
        let many = format!(r#"{{"action":"invalidate","source":"x","keys":[{}]}}"#, vec!["\"k\""; MAX_KEYS + 1].join(","));
        assert_eq!(decode(many.as_bytes()), Err(Malformed::TooManyKeys));
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
