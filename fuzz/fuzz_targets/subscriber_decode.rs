//! The subscriber's decoding and checking (`bins/subscriber/src/check.rs`, included as it is)
//! fed arbitrary deliveries: any header values, stream sequences and payloads, JSON or not.
//!
//! Never a panic (the subscriber runs against streams it does not control), and the summary
//! always adds up: every delivery is new, a duplicate or a redelivery.

#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;

#[allow(dead_code, unreachable_pub)]
#[path = "../../bins/subscriber/src/check.rs"]
mod check;

use check::{Checker, Observation};

#[derive(Arbitrary, Debug)]
enum Payload {
    /// Any bytes.
    Raw(Vec<u8>),
    /// A JSON object with the fields the checker reads.
    Event {
        seq: Option<u64>,
        customer_id: Option<String>,
        numeric_customer: Option<i64>,
    },
}

impl Payload {
    fn bytes(&self) -> Vec<u8> {
        match self {
            Payload::Raw(bytes) => bytes.clone(),
            Payload::Event {
                seq,
                customer_id,
                numeric_customer,
            } => {
                let mut object = serde_json::Map::new();
                if let Some(seq) = seq {
                    object.insert("seq".into(), (*seq).into());
                }
                if let Some(id) = customer_id {
                    object.insert("customer_id".into(), id.clone().into());
                } else if let Some(id) = numeric_customer {
                    object.insert("customer_id".into(), (*id).into());
                }
                serde_json::to_vec(&object).expect("a map serializes")
            }
        }
    }
}

#[derive(Arbitrary, Debug)]
struct Delivery {
    msg_id: Option<String>,
    key: Option<String>,
    stream_seq: Option<u64>,
    payload: Payload,
}

#[derive(Arbitrary, Debug)]
struct Input {
    from_start: bool,
    deliveries: Vec<Delivery>,
}

fuzz_target!(|input: Input| {
    let mut checker = Checker::new(input.from_start);
    for delivery in &input.deliveries {
        let observation = Observation::parse(
            delivery.msg_id.as_deref(),
            delivery.key.as_deref(),
            delivery.stream_seq,
            &delivery.payload.bytes(),
        );
        checker.observe(observation);
        let s = checker.summary();
        assert_eq!(
            s.received,
            s.distinct + s.duplicates + s.redelivered,
            "{s:?}"
        );
        assert!(s.violations + s.unchecked <= s.distinct, "{s:?}");
        assert_eq!(checker.distinct(), s.distinct);
    }
    assert_eq!(checker.summary().received, input.deliveries.len() as u64);
});
