//! Detects lost invalidations. Pub/Sub is at-most-once: a subscriber that reconnects, falls
//! behind or is dropped by the server silently misses messages. Every sender numbers its
//! invalidation messages (per epoch); a hole in the numbers that is not filled within a short
//! reorder allowance (messages of one sender can be reordered by concurrent pipelines) means a
//! message was lost, and the only safe answer is to flush L1.

use std::collections::HashMap;

/// Holes younger than this may still be filled by a message that was reordered.
pub const REORDER_ALLOWANCE_MS: u64 = 250;
/// Senders remembered at most; beyond that the oldest-seen is forgotten (it will be treated
/// as new, which is safe: a new sender's first message is accepted as is).
const MAX_SENDERS: usize = 4096;
/// A jump larger than the window is a loss at once.
const WINDOW: u64 = 64;

#[derive(Debug)]
struct SenderState {
    epoch: Option<String>,
    /// Highest seq seen.
    max_seen: u64,
    /// Bit i set: seq `max_seen - i` was received (bit 0 is max_seen itself).
    received: u64,
    /// When the oldest unfilled hole appeared (ms), if any.
    hole_since: Option<u64>,
    last_heard: u64,
}

#[derive(Debug, Default)]
pub struct LossDetector {
    senders: HashMap<String, SenderState>,
}

/// What the caller must do after feeding a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Ok,
    /// A loss is certain: flush L1 now.
    Lost,
}

impl LossDetector {
    /// An invalidation (or flush) numbered `seq` from `source`/`epoch`, seen at `now_ms`.
    pub fn on_message(&mut self, source: &str, epoch: Option<&str>, seq: u64, now_ms: u64) -> Verdict {
        self.observe(source, epoch, seq, true, now_ms)
    }

    /// A heartbeat saying the sender's last invalidation was `inval_seq`.
    pub fn on_heartbeat(&mut self, source: &str, epoch: Option<&str>, inval_seq: u64, now_ms: u64) -> Verdict {
        self.observe(source, epoch, inval_seq, false, now_ms)
    }

    fn observe(&mut self, source: &str, epoch: Option<&str>, seq: u64, is_message: bool, now: u64) -> Verdict {
        if !self.senders.contains_key(source) {
            if self.senders.len() >= MAX_SENDERS {
                self.evict_oldest();
            }
            // First contact: whatever it sent before we listened is not ours to judge. A
            // heartbeat announces its position, so messages after it are checked.
            self.senders.insert(source.to_string(), SenderState {
                epoch: epoch.map(str::to_string),
                max_seen: seq,
                // Everything up to the first seq seen counts as received.
                received: u64::MAX,
                hole_since: None,
                last_heard: now,
            });
            return Verdict::Ok;
        }
        let st = self.senders.get_mut(source).expect("checked above");
        st.last_heard = now;
        if st.epoch.as_deref() != epoch {
            // The sender restarted: anything it wrote around the restart may be unannounced.
            st.epoch = epoch.map(str::to_string);
            st.max_seen = seq;
            st.received = 1;
            st.hole_since = None;
            return Verdict::Lost;
        }
        if seq > st.max_seen {
            let shift = seq - st.max_seen;
            if shift >= WINDOW {
                st.max_seen = seq;
                st.received = 1;
                st.hole_since = None;
                return Verdict::Lost;
            }
            st.received <<= shift;
            st.max_seen = seq;
            // A heartbeat only tells the position; the message numbered `seq` is still due.
            if is_message {
                st.received |= 1;
            }
        } else {
            let back = st.max_seen - seq;
            if back >= WINDOW {
                return Verdict::Ok; // ancient duplicate
            }
            if is_message {
                st.received |= 1 << back;
            }
        }
        if Self::has_hole(st) {
            st.hole_since.get_or_insert(now);
        } else {
            st.hole_since = None;
        }
        Verdict::Ok
    }

    fn has_hole(st: &SenderState) -> bool {
        // Bits for seqs 1..=max_seen within the window must all be set.
        let span = st.max_seen.min(WINDOW);
        let mask = if span >= 64 { u64::MAX } else { (1u64 << span) - 1 };
        st.received & mask != mask
    }

    /// Called on every tick: holes older than the reorder allowance are losses. Clears them.
    pub fn expire(&mut self, now_ms: u64) -> Verdict {
        let mut lost = false;
        for st in self.senders.values_mut() {
            if let Some(since) = st.hole_since {
                if now_ms.saturating_sub(since) >= REORDER_ALLOWANCE_MS {
                    lost = true;
                    st.received = u64::MAX;
                    st.hole_since = None;
                }
            }
        }
        if lost { Verdict::Lost } else { Verdict::Ok }
    }

    /// After a flush everything before now is moot.
    pub fn reset_holes(&mut self) {
        for st in self.senders.values_mut() {
            st.received = u64::MAX;
            st.hole_since = None;
        }
    }

    /// After our own subscription was down, sequence positions are unknown: start over.
    pub fn forget_all(&mut self) {
        self.senders.clear();
    }

    fn evict_oldest(&mut self) {
        if let Some(k) = self.senders.iter().min_by_key(|(_, s)| s.last_heard).map(|(k, _)| k.clone()) {
            self.senders.remove(&k);
        }
    }

    #[cfg(test)]
    pub fn sender_count(&self) -> usize {
        self.senders.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_order_and_reordered_messages_are_fine() {
        let mut d = LossDetector::default();
        for s in 1..=10 {
            assert_eq!(d.on_message("a", Some("e"), s, 0), Verdict::Ok);
        }
        assert_eq!(d.on_message("a", Some("e"), 12, 0), Verdict::Ok);
        assert_eq!(d.on_message("a", Some("e"), 11, 100), Verdict::Ok);
        assert_eq!(d.expire(1000), Verdict::Ok);
    }

    #[test]
    fn a_hole_that_stays_is_a_loss() {
        let mut d = LossDetector::default();
        d.on_message("a", Some("e"), 1, 0);
        d.on_message("a", Some("e"), 3, 10);
        assert_eq!(d.expire(100), Verdict::Ok, "still within the reorder allowance");
        assert_eq!(d.expire(10 + REORDER_ALLOWANCE_MS), Verdict::Lost);
        assert_eq!(d.expire(10_000), Verdict::Ok, "reported once");
    }

    #[test]
    fn a_heartbeat_reveals_a_lost_last_message() {
        let mut d = LossDetector::default();
        d.on_message("a", Some("e"), 1, 0);
        d.on_heartbeat("a", Some("e"), 2, 10);
        assert_eq!(d.expire(10 + REORDER_ALLOWANCE_MS), Verdict::Lost);
        // A heartbeat in step with the messages is no hole.
        d.on_message("a", Some("e"), 3, 20);
        d.on_heartbeat("a", Some("e"), 3, 30);
        assert_eq!(d.expire(10_000), Verdict::Ok);
    }

    #[test]
    fn new_epoch_and_big_jumps_are_losses_at_once() {
        let mut d = LossDetector::default();
        d.on_message("a", Some("e1"), 5, 0);
        assert_eq!(d.on_message("a", Some("e2"), 1, 0), Verdict::Lost);
        assert_eq!(d.on_message("a", Some("e2"), 1000, 0), Verdict::Lost);
        assert_eq!(d.on_message("b", Some("x"), 77, 0), Verdict::Ok, "first contact");
    }

    #[test]
    fn memory_is_bounded() {
        let mut d = LossDetector::default();
        for i in 0..10_000 {
            d.on_message(&format!("s{i}"), None, 1, i);
        }
        assert!(d.sender_count() <= MAX_SENDERS);
    }
}
