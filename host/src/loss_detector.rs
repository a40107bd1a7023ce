//! Detects lost invalidations (docs/WIRE.md section 4; vectors: tests/vectors/wire/loss.json).
//! Pub/Sub is at-most-once: a subscriber that reconnects, falls behind or is dropped by the
//! server silently misses messages. Every sender numbers its invalidation messages (per epoch);
//! a hole in the numbers that is not filled within a short reorder allowance (messages of one
//! sender can be reordered by concurrent pipelines) means a message was lost, and the only safe
//! answer is to flush L1. After any loss the detector marks every sender's holes as filled:
//! what was missed is moot once L1 is empty.

use std::collections::HashMap;

/// Holes younger than this may still be filled by a message that was reordered.
pub const REORDER_ALLOWANCE_MS: u64 = 250;
/// Senders remembered at most; beyond that the least recently heard is forgotten (it will be
/// treated as new, which is safe: a new sender's first message is accepted as is).
const MAX_SENDERS: usize = 4096;
/// A jump this large is a loss at once.
const WINDOW: u64 = 64;

#[derive(Debug)]
struct SenderState {
    epoch: Option<String>,
    /// Highest seq or position seen.
    max: u64,
    /// Bit i set: seq `max - i` was received.
    received: u64,
    /// When the current hole appeared (ms), if any.
    hole_since: Option<u64>,
    last_heard: u64,
}

#[derive(Debug, Default)]
pub struct LossDetector {
    senders: HashMap<String, SenderState>,
}

/// What the caller must do after feeding an event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Ok,
    /// A loss is certain: flush L1 now.
    Lost,
}

impl LossDetector {
    /// An `invalidate` or `flush` numbered `seq`.
    pub fn message(&mut self, source: &str, epoch: Option<&str>, seq: u64, now: u64) -> Verdict {
        self.observe(source, epoch, seq, true, now)
    }

    /// A `mark`, `strategy_update` or `write_report` saying the sender's last invalidation was
    /// `inval_seq`.
    pub fn position(&mut self, source: &str, epoch: Option<&str>, inval_seq: u64, now: u64) -> Verdict {
        self.observe(source, epoch, inval_seq, false, now)
    }

    fn observe(&mut self, source: &str, epoch: Option<&str>, seq: u64, is_message: bool, now: u64) -> Verdict {
        let Some(st) = self.senders.get_mut(source) else {
            if self.senders.len() >= MAX_SENDERS {
                self.evict_least_recent();
            }
            // First contact: whatever it sent before we listened is not ours to judge.
            self.senders.insert(source.to_string(), SenderState {
                epoch: epoch.map(str::to_string),
                max: seq,
                received: u64::MAX,
                hole_since: None,
                last_heard: now,
            });
            return Verdict::Ok;
        };
        st.last_heard = now;
        if st.epoch.as_deref() != epoch {
            // The sender restarted: anything it wrote around the restart may be unannounced.
            st.epoch = epoch.map(str::to_string);
            st.max = seq;
            st.received = 1;
            st.hole_since = None;
            return self.lost();
        }
        if seq > st.max {
            let shift = seq - st.max;
            if shift >= WINDOW {
                st.max = seq;
                st.received = 1;
                st.hole_since = None;
                return self.lost();
            }
            st.received <<= shift;
            st.max = seq;
            // A position only moves `max`: the message numbered `seq` is still due.
            if is_message {
                st.received |= 1;
            }
        } else {
            let back = st.max - seq;
            if back >= WINDOW {
                return Verdict::Ok; // ancient
            }
            if is_message {
                st.received |= 1 << back;
            }
        }
        if has_hole(st) {
            st.hole_since.get_or_insert(now);
        } else {
            st.hole_since = None;
        }
        Verdict::Ok
    }

    /// Every tick: a hole at least the reorder allowance old is a loss.
    pub fn tick(&mut self, now: u64) -> Verdict {
        let expired = self.senders.values().any(|st| st.hole_since.is_some_and(|t| now.saturating_sub(t) >= REORDER_ALLOWANCE_MS));
        if expired { self.lost() } else { Verdict::Ok }
    }

    /// After our own subscription was down, positions are unknown: start over.
    pub fn resubscribed(&mut self) {
        self.senders.clear();
    }

    /// A loss: the host flushes L1, so every hole is moot.
    fn lost(&mut self) -> Verdict {
        for st in self.senders.values_mut() {
            st.received = u64::MAX;
            st.hole_since = None;
        }
        Verdict::Lost
    }

    fn evict_least_recent(&mut self) {
        if let Some(k) = self.senders.iter().min_by_key(|(_, s)| s.last_heard).map(|(k, _)| k.clone()) {
            self.senders.remove(&k);
        }
    }

    #[cfg(test)]
    fn sender_count(&self) -> usize {
        self.senders.len()
    }
}

/// Whether a bit for seqs 1..=max within the window is clear.
fn has_hole(st: &SenderState) -> bool {
    let span = st.max.min(WINDOW);
    let mask = if span >= 64 { u64::MAX } else { (1u64 << span) - 1 };
    st.received & mask != mask
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    #[test]
    fn every_loss_vector() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/vectors/wire/loss.json");
        let v: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let cases = v["cases"].as_array().unwrap();
        assert!(cases.len() >= 15);
        let mut failures = Vec::new();
        for case in cases {
            let mut d = LossDetector::default();
            for (i, e) in case["events"].as_array().unwrap().iter().enumerate() {
                let at = e["at"].as_u64().unwrap();
                let src = e["source"].as_str().unwrap_or("");
                let epoch = e["epoch"].as_str();
                let got = match e["do"].as_str().unwrap() {
                    "message" => d.message(src, epoch, e["seq"].as_u64().unwrap(), at),
                    "position" => d.position(src, epoch, e["inval_seq"].as_u64().unwrap(), at),
                    "tick" => d.tick(at),
                    "resubscribed" => {
                        d.resubscribed();
                        Verdict::Ok
                    }
                    other => panic!("unknown event {other}"),
                };
                let got = if got == Verdict::Lost { "lost" } else { "ok" };
                if got != e["expect"].as_str().unwrap() {
                    failures.push(format!("{}: event {i} {e}: got {got}", case["name"]));
                    break;
                }
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }

    #[test]
    fn memory_is_bounded() {
        let mut d = LossDetector::default();
        for i in 0..10_000 {
            d.message(&format!("s{i}"), None, 1, i);
        }
        assert!(d.sender_count() <= MAX_SENDERS);
    }
}
