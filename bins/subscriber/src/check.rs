//! The verifier: what counts as distinct, duplicate, out of order. Pure, so it is unit-tested
//! without a broker.
//!
//! Rules (DESIGN.md, guarantees 3 and 4):
//! - A message's identity is its `Nats-Msg-Id`; a message without one is identified by its stream
//!   sequence, so only a redelivery of the same stored message counts as its duplicate.
//! - A delivery of a stream sequence already seen is a redelivery: the consumer's doing (after a
//!   server restart, or a missed ack), not a second copy in the stream, so it is counted apart.
//! - A duplicate is the same identity stored again at another stream sequence: what guarantee 3
//!   rules out within the dedup window. It is counted as such and not checked for order: a
//!   republish of an old message is not a reordering.
//! - The order key is the `Outbox-Key` header, else the payload's `customer_id`; the order value is
//!   the payload's `seq`. Within a key, `seq` must rise with the stream sequence: a message is an
//!   order violation when a message of its key stored before it has a `seq` at least as high, or
//!   one stored after it has a `seq` at most as high. For the default ephemeral consumer, which
//!   delivers in stream order, this is exactly "each `seq` is above the last one seen for its
//!   key"; checking against stream order also keeps a durable consumer's redeliveries (which
//!   arrive late) from being reported as the relay's fault.
//! - Messages without a key or a `seq` are counted as unchecked.
//! - Gaps count the `seq` values never seen for a key between its lowest (or 1, when the consumer
//!   reads from the stream's start) and its highest. They are reported, not failed: a missing
//!   message shows up as an incomplete `--expect` instead. A message whose `seq` jumps above the
//!   highest seen so far is marked as a gap when it arrives.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ops::Bound;

use serde::Serialize;

/// Header carrying the outbox message id; JetStream deduplicates on it.
pub(crate) const MSG_ID_HEADER: &str = "Nats-Msg-Id";
/// Header carrying the message's order key.
pub(crate) const KEY_HEADER: &str = "Outbox-Key";

/// What makes two deliveries the same message.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Identity {
    /// The `Nats-Msg-Id` header.
    MsgId(String),
    /// The stream sequence, for messages published without a `Nats-Msg-Id`.
    StreamSeq(u64),
    /// Neither is known: every such delivery counts as a new message.
    Unknown,
}

/// The parts of a delivered message the checks look at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Observation {
    pub(crate) identity: Identity,
    /// Stream sequence: where the message sits in the stream.
    pub(crate) position: Option<u64>,
    pub(crate) key: Option<String>,
    pub(crate) seq: Option<u64>,
}

impl Observation {
    /// Extracts identity, key and per-key sequence from a message's headers and JSON payload.
    /// A payload that is not a JSON object simply has no `seq` (and no `customer_id`).
    pub(crate) fn parse(
        msg_id: Option<&str>,
        key_header: Option<&str>,
        stream_seq: Option<u64>,
        payload: &[u8],
    ) -> Self {
        let json: Option<serde_json::Map<String, serde_json::Value>> =
            serde_json::from_slice(payload).ok();
        let seq = json
            .as_ref()
            .and_then(|o| o.get("seq"))
            .and_then(serde_json::Value::as_u64);
        let key = match key_header {
            Some(k) if !k.is_empty() => Some(k.to_owned()),
            _ => json
                .as_ref()
                .and_then(|o| o.get("customer_id"))
                .and_then(|v| match v {
                    serde_json::Value::String(s) => Some(s.clone()),
                    serde_json::Value::Number(n) => Some(n.to_string()),
                    _ => None,
                }),
        };
        let identity = match (msg_id, stream_seq) {
            (Some(id), _) if !id.is_empty() => Identity::MsgId(id.to_owned()),
            (_, Some(position)) => Identity::StreamSeq(position),
            _ => Identity::Unknown,
        };
        Self {
            identity,
            position: stream_seq,
            key,
            seq,
        }
    }
}

/// How one delivery was judged.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// A new message, in order for its key.
    InOrder,
    /// A new message whose order could not be checked (no key, `seq` or stream sequence).
    Unchecked,
    /// A new message, in order, but `missing` sequence numbers of its key were skipped before it.
    Gap { key: String, seq: u64, missing: u64 },
    /// A message already seen (same identity) stored again, at another stream sequence.
    Duplicate,
    /// A stream message already seen, delivered again.
    Redelivered,
    /// A new message whose `seq` contradicts `other`, the `seq` of a message of its key stored
    /// before it (`other_first`) or after it in the stream.
    OutOfOrder {
        key: String,
        seq: u64,
        other: u64,
        other_first: bool,
    },
}

/// Running totals, as printed in the summary.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub(crate) struct Summary {
    /// Deliveries, duplicates and redeliveries included.
    pub(crate) received: u64,
    /// Distinct messages (by identity).
    pub(crate) distinct: u64,
    /// Copies of an already seen message stored at another stream sequence.
    pub(crate) duplicates: u64,
    /// Deliveries of an already seen stream sequence.
    pub(crate) redelivered: u64,
    /// Distinct messages whose `seq` contradicts the stream order of their key.
    pub(crate) violations: u64,
    /// Sequence numbers skipped within keys.
    pub(crate) gaps: u64,
    /// Keys seen.
    pub(crate) keys: u64,
    /// Distinct messages without a key, a `seq` or a stream sequence.
    pub(crate) unchecked: u64,
}

/// What is known of one key's messages.
#[derive(Debug, Default)]
struct KeyState {
    /// Stream sequence -> `seq`: the key's messages in stream order.
    by_position: BTreeMap<u64, u64>,
    /// Distinct `seq` values seen, for counting the missing ones.
    seqs: HashSet<u64>,
    lowest: u64,
    highest: u64,
}

impl KeyState {
    /// `seq` values missing between `start` (or the lowest seen) and the highest seen.
    fn missing(&self, from_start: bool) -> u64 {
        let start = if from_start { 1 } else { self.lowest };
        self.highest
            .saturating_add(1)
            .saturating_sub(start)
            .saturating_sub(self.seqs.len() as u64)
    }
}

/// Judges deliveries one by one and keeps the totals.
#[derive(Debug, Default)]
pub(crate) struct Checker {
    seen: HashSet<Identity>,
    positions: HashSet<u64>,
    keys: HashMap<String, KeyState>,
    from_start: bool,
    counts: Summary,
}

impl Checker {
    /// A checker; `from_start` says the consumer reads the stream from its first message, so each
    /// key is expected to start at `seq` 1.
    pub(crate) fn new(from_start: bool) -> Self {
        Self {
            from_start,
            ..Self::default()
        }
    }

    /// Judges one delivery and updates the totals.
    pub(crate) fn observe(&mut self, observation: Observation) -> Verdict {
        self.counts.received += 1;
        if let Some(position) = observation.position
            && !self.positions.insert(position)
        {
            self.counts.redelivered += 1;
            return Verdict::Redelivered;
        }
        if observation.identity != Identity::Unknown && !self.seen.insert(observation.identity) {
            self.counts.duplicates += 1;
            return Verdict::Duplicate;
        }
        self.counts.distinct += 1;
        let (Some(key), Some(seq), Some(position)) =
            (observation.key, observation.seq, observation.position)
        else {
            self.counts.unchecked += 1;
            return Verdict::Unchecked;
        };
        let state = self.keys.entry(key.clone()).or_default();
        let first = state.seqs.is_empty();
        let before = state
            .by_position
            .range(..position)
            .next_back()
            .map(|(_, &s)| s);
        let after = state
            .by_position
            .range((Bound::Excluded(position), Bound::Unbounded))
            .next()
            .map(|(_, &s)| s);
        let highest_before = if first { None } else { Some(state.highest) };
        state.by_position.insert(position, seq);
        state.seqs.insert(seq);
        state.lowest = if first { seq } else { state.lowest.min(seq) };
        state.highest = state.highest.max(seq);
        if let Some(other) = before.filter(|&b| seq <= b) {
            self.counts.violations += 1;
            return Verdict::OutOfOrder {
                key,
                seq,
                other,
                other_first: true,
            };
        }
        if let Some(other) = after.filter(|&a| seq >= a) {
            self.counts.violations += 1;
            return Verdict::OutOfOrder {
                key,
                seq,
                other,
                other_first: false,
            };
        }
        let expected = match highest_before {
            Some(highest) => highest.saturating_add(1),
            None if self.from_start => 1,
            None => seq,
        };
        if seq > expected {
            Verdict::Gap {
                key,
                seq,
                missing: seq - expected,
            }
        } else {
            Verdict::InOrder
        }
    }

    /// Distinct messages so far.
    pub(crate) fn distinct(&self) -> u64 {
        self.counts.distinct
    }

    /// The totals so far.
    pub(crate) fn summary(&self) -> Summary {
        let mut summary = self.counts;
        summary.keys = self.keys.len() as u64;
        summary.gaps = self
            .keys
            .values()
            .map(|state| state.missing(self.from_start))
            .fold(0, u64::saturating_add);
        summary
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A message with id `id`, stored at stream sequence `at`.
    fn msg(id: &str, at: u64, key: &str, seq: u64) -> Observation {
        Observation {
            identity: Identity::MsgId(id.to_owned()),
            position: Some(at),
            key: Some(key.to_owned()),
            seq: Some(seq),
        }
    }

    fn counts(c: &Checker) -> (u64, u64, u64, u64, u64) {
        let s = c.summary();
        (s.received, s.distinct, s.duplicates, s.violations, s.gaps)
    }

    #[test]
    fn in_order_messages_of_interleaved_keys_pass() {
        let mut c = Checker::new(true);
        for (at, key, seq) in [(1, "k1", 1), (2, "k2", 1), (3, "k1", 2), (4, "k2", 2)] {
            assert_eq!(
                c.observe(msg(&at.to_string(), at, key, seq)),
                Verdict::InOrder
            );
        }
        assert_eq!(counts(&c), (4, 4, 0, 0, 0));
        assert_eq!((c.summary().keys, c.summary().unchecked), (2, 0));
    }

    #[test]
    fn the_largest_seq_and_stream_position_do_not_overflow() {
        // Found by fuzzing: `seq` and the stream sequence are only bounded by u64.
        let mut c = Checker::new(true);
        c.observe(msg("a", u64::MAX, "k", u64::MAX));
        c.observe(msg("b", u64::MAX - 1, "k", u64::MAX));
        c.observe(msg("c", 1, "j", u64::MAX));
        let summary = c.summary();
        assert_eq!(summary.keys, 2);
        assert_eq!(summary.gaps, u64::MAX);
    }

    #[test]
    fn same_msg_id_again_is_a_duplicate_not_a_violation() {
        let mut c = Checker::new(true);
        c.observe(msg("a", 1, "k", 1));
        c.observe(msg("b", 2, "k", 2));
        // Republished after the dedup window: stored again, at a later position.
        assert_eq!(c.observe(msg("a", 3, "k", 1)), Verdict::Duplicate);
        assert_eq!(counts(&c), (3, 2, 1, 0, 0));
        assert_eq!(c.summary().redelivered, 0);
    }

    #[test]
    fn the_same_stream_sequence_again_is_a_redelivery_not_a_duplicate() {
        let mut c = Checker::new(true);
        c.observe(msg("a", 1, "k", 1));
        c.observe(msg("b", 2, "k", 2));
        assert_eq!(c.observe(msg("b", 2, "k", 2)), Verdict::Redelivered);
        let without_id = Observation::parse(None, Some("j"), Some(3), br#"{"seq":1}"#);
        assert_eq!(c.observe(without_id.clone()), Verdict::InOrder);
        assert_eq!(c.observe(without_id), Verdict::Redelivered);
        assert_eq!(counts(&c), (5, 3, 0, 0, 0));
        assert_eq!(c.summary().redelivered, 2);
    }

    #[test]
    fn lower_or_equal_seq_with_a_new_id_is_a_violation() {
        let mut c = Checker::new(true);
        c.observe(msg("a", 1, "k", 1));
        c.observe(msg("b", 2, "k", 2));
        assert_eq!(
            c.observe(msg("c", 3, "k", 2)),
            Verdict::OutOfOrder {
                key: "k".into(),
                seq: 2,
                other: 2,
                other_first: true
            }
        );
        assert!(matches!(
            c.observe(msg("d", 4, "k", 1)),
            Verdict::OutOfOrder { other: 2, .. }
        ));
        assert_eq!(counts(&c), (4, 4, 0, 2, 0));
    }

    #[test]
    fn without_msg_ids_the_same_key_and_seq_twice_is_a_violation() {
        let mut c = Checker::new(true);
        let first = Observation::parse(None, Some("k"), Some(1), br#"{"seq":1}"#);
        let again = Observation::parse(None, Some("k"), Some(2), br#"{"seq":1}"#);
        assert_eq!(c.observe(first), Verdict::InOrder);
        assert!(matches!(c.observe(again), Verdict::OutOfOrder { .. }));
        assert_eq!(counts(&c), (2, 2, 0, 1, 0));
    }

    #[test]
    fn a_skipped_seq_stored_later_is_a_violation_that_fills_the_gap() {
        let mut c = Checker::new(true);
        c.observe(msg("a", 1, "k", 1));
        assert_eq!(
            c.observe(msg("c", 2, "k", 3)),
            Verdict::Gap {
                key: "k".into(),
                seq: 3,
                missing: 1
            }
        );
        assert!(matches!(
            c.observe(msg("b", 3, "k", 2)),
            Verdict::OutOfOrder { other: 3, .. }
        ));
        // The late message does not make the next one look out of order or gapped.
        assert_eq!(c.observe(msg("d", 4, "k", 4)), Verdict::InOrder);
        // Every seq from 1 to 4 arrived: no gap left, one violation.
        assert_eq!(counts(&c), (4, 4, 0, 1, 0));
    }

    #[test]
    fn late_redelivery_in_stream_order_is_not_a_violation() {
        // A durable consumer redelivers stream message 2 after 3: the stream is in order.
        let mut c = Checker::new(false);
        c.observe(msg("a", 1, "k", 1));
        assert!(matches!(
            c.observe(msg("c", 3, "k", 3)),
            Verdict::Gap { missing: 1, .. }
        ));
        assert_eq!(c.observe(msg("b", 2, "k", 2)), Verdict::InOrder);
        // The gap is filled, so the summary has none.
        assert_eq!(counts(&c), (3, 3, 0, 0, 0));
    }

    #[test]
    fn late_arrival_that_contradicts_a_later_stored_message_is_a_violation() {
        // Stored: 1 (seq 1), 2 (seq 3), 3 (seq 2); delivered 1, 3, 2.
        let mut c = Checker::new(false);
        c.observe(msg("a", 1, "k", 1));
        assert_eq!(c.observe(msg("c", 3, "k", 2)), Verdict::InOrder);
        assert_eq!(
            c.observe(msg("b", 2, "k", 3)),
            Verdict::OutOfOrder {
                key: "k".into(),
                seq: 3,
                other: 2,
                other_first: false
            }
        );
        assert_eq!(c.summary().violations, 1);
    }

    #[test]
    fn gaps_count_the_seqs_never_seen() {
        let mut c = Checker::new(true);
        for (at, seq) in [(1, 1), (2, 4), (3, 5), (4, 8)] {
            c.observe(msg(&at.to_string(), at, "k", seq));
        }
        // Missing: 2, 3, 6, 7.
        assert_eq!(c.summary().gaps, 4);
    }

    #[test]
    fn first_seq_above_one_is_a_gap_only_when_reading_from_the_start() {
        let mut from_start = Checker::new(true);
        assert!(matches!(
            from_start.observe(msg("a", 1, "k", 3)),
            Verdict::Gap { missing: 2, .. }
        ));
        assert_eq!(from_start.summary().gaps, 2);
        let mut from_now = Checker::new(false);
        assert_eq!(from_now.observe(msg("a", 1, "k", 3)), Verdict::InOrder);
        assert_eq!(from_now.summary().gaps, 0);
    }

    #[test]
    fn messages_without_key_seq_or_position_are_unchecked_but_distinct() {
        let mut c = Checker::new(true);
        let no_key = Observation::parse(None, None, Some(1), br#"{"seq":1}"#);
        let no_seq = Observation::parse(None, Some("k"), Some(2), b"plain text");
        let nowhere = Observation::parse(None, Some("k"), None, br#"{"seq":1}"#);
        assert_eq!(c.observe(no_key.clone()), Verdict::Unchecked);
        assert_eq!(c.observe(no_seq), Verdict::Unchecked);
        assert_eq!(c.observe(nowhere.clone()), Verdict::Unchecked);
        // Without any identity a message cannot be recognised again: it counts as new.
        assert_eq!(c.observe(nowhere), Verdict::Unchecked);
        assert_eq!(c.observe(no_key), Verdict::Redelivered);
        let s = c.summary();
        assert_eq!(
            (s.distinct, s.unchecked, s.redelivered, s.keys),
            (4, 4, 1, 0)
        );
    }

    #[test]
    fn parse_reads_headers_first_then_the_payload() {
        let payload = br#"{"event_type":"order_created","customer_id":"c-7","seq":3}"#;
        let o = Observation::parse(Some("id-1"), Some("k-1"), Some(9), payload);
        assert_eq!(o.identity, Identity::MsgId("id-1".into()));
        assert_eq!(o.position, Some(9));
        assert_eq!(o.key.as_deref(), Some("k-1"));
        assert_eq!(o.seq, Some(3));

        let o = Observation::parse(None, None, Some(9), payload);
        assert_eq!(o.identity, Identity::StreamSeq(9));
        assert_eq!(o.key.as_deref(), Some("c-7"));

        let o = Observation::parse(
            Some(""),
            Some(""),
            Some(4),
            br#"{"customer_id":42,"seq":1}"#,
        );
        assert_eq!(o.identity, Identity::StreamSeq(4));
        assert_eq!(o.key.as_deref(), Some("42"));
    }

    #[test]
    fn parse_tolerates_payloads_that_are_not_json_objects() {
        for payload in [
            &b"hello"[..],
            b"[1,2]",
            b"",
            br#"{"seq":"1"}"#,
            br#"{"seq":-1}"#,
        ] {
            let o = Observation::parse(Some("x"), Some("k"), Some(1), payload);
            assert_eq!(
                o.seq,
                None,
                "payload {:?}",
                String::from_utf8_lossy(payload)
            );
            assert_eq!(o.key.as_deref(), Some("k"));
        }
    }
}
