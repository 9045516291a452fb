use std::collections::{HashMap, HashSet};

use outbox_core::{ClaimRequest, Message, Store};

use crate::Received;

/// Asserts that `got` (what a consumer read from the stream) holds every message of `sent`
/// exactly once, nothing else, with its key and payload, and the messages of each key in the
/// order of `sent`.
///
/// # Panics
///
/// On the first violation, naming it.
pub fn assert_exactly_once_in_key_order(sent: &[Message], got: &[Received]) {
    let position: HashMap<String, usize> = sent
        .iter()
        .enumerate()
        .map(|(i, m)| (m.id().to_string(), i))
        .collect();
    let ids: HashSet<&str> = got
        .iter()
        .map(|r| {
            r.msg_id()
                .unwrap_or_else(|| panic!("no Nats-Msg-Id: {r:?}"))
        })
        .collect();
    assert_eq!(ids.len(), got.len(), "duplicates in the stream");
    assert_eq!(got.len(), sent.len(), "stream length");
    let mut last: HashMap<&str, usize> = HashMap::new();
    for r in got {
        let id = r.msg_id().unwrap_or_default();
        let pos = *position
            .get(id)
            .unwrap_or_else(|| panic!("unknown message {id} in the stream"));
        assert_eq!(r.key(), sent[pos].key(), "key of {id}");
        assert_eq!(r.payload, sent[pos].payload(), "payload of {id}");
        if let Some(key) = r.key()
            && let Some(prev) = last.insert(key, pos)
        {
            assert!(prev < pos, "key {key}: message {pos} stored after {prev}");
        }
    }
}

/// Asserts that `published` (what a broker accepted) holds every message of `sent` exactly once
/// and the messages of each key in the order of `sent`.
///
/// # Panics
///
/// On the first violation, naming it.
pub fn assert_published_once_in_key_order(sent: &[Message], published: &[Message]) {
    let got: Vec<Received> = published.iter().map(Received::from_message).collect();
    assert_exactly_once_in_key_order(sent, &got);
}

/// Asserts that a claim on `store` gets nothing: no committed message is pending and due.
///
/// # Panics
///
/// When a claim fails, or claims something (naming the seqs).
pub async fn assert_nothing_to_claim<S: Store>(store: &S) {
    let claimed = store
        .claim(ClaimRequest::new(10, &[]))
        .await
        .unwrap_or_else(|e| panic!("claim: {e}"));
    let seqs: Vec<i64> = claimed.iter().map(|c| c.seq).collect();
    assert!(
        seqs.is_empty(),
        "nothing to claim, but claimed seqs {seqs:?}"
    );
}
