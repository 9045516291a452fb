//! Arbitrary `traceparent` and `tracestate` values through `TraceContext`.
//!
//! Never a panic. A refusal is `Error::InvalidMessage`. An accepted `traceparent` writes back a
//! canonical version-00 value that parses to the same ids; a context with an accepted
//! `tracestate` goes onto a message whose headers pass the builder's checks, and is read back
//! from it unchanged.

#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use outbox_core::{Error, Message, TraceContext};

/// A `traceparent`: any text, or one assembled from parts, so that valid and nearly valid
/// values are common.
#[derive(Arbitrary, Debug)]
enum Traceparent {
    Raw(String),
    Parts {
        version: u8,
        trace_id: u128,
        parent_id: u64,
        flags: u8,
        upper: bool,
        padding: (bool, bool),
        rest: String,
    },
}

impl Traceparent {
    fn text(&self) -> String {
        match self {
            Traceparent::Raw(text) => text.clone(),
            Traceparent::Parts {
                version,
                trace_id,
                parent_id,
                flags,
                upper,
                padding,
                rest,
            } => {
                let mut text =
                    format!("{version:02x}-{trace_id:032x}-{parent_id:016x}-{flags:02x}{rest}");
                if *upper {
                    text = text.to_uppercase();
                }
                if padding.0 {
                    text.insert(0, ' ');
                }
                if padding.1 {
                    text.push('\t');
                }
                text
            }
        }
    }
}

/// A `tracestate`: any text, or `key=value` members joined with commas.
#[derive(Arbitrary, Debug)]
enum Tracestate {
    Raw(String),
    Members(Vec<(String, String)>),
}

impl Tracestate {
    fn text(&self) -> String {
        match self {
            Tracestate::Raw(text) => text.clone(),
            Tracestate::Members(members) => members
                .iter()
                .map(|(key, value)| format!("{key}={value}"))
                .collect::<Vec<_>>()
                .join(","),
        }
    }
}

#[derive(Arbitrary, Debug)]
struct Input {
    traceparent: Traceparent,
    tracestate: Option<Tracestate>,
}

fn invalid<T: std::fmt::Debug>(result: Result<T, Error>) -> Option<T> {
    match result {
        Ok(value) => Some(value),
        Err(Error::InvalidMessage(reason)) => {
            assert!(!reason.is_empty());
            None
        }
        Err(other) => panic!("refused with the wrong error: {other}"),
    }
}

fuzz_target!(|input: Input| {
    let traceparent = input.traceparent.text();
    let tracestate = input.tracestate.as_ref().map(Tracestate::text);
    let from_headers = TraceContext::from_headers(Some(&traceparent), tracestate.as_deref());
    let Some(trace) = invalid(TraceContext::parse(&traceparent)) else {
        assert_eq!(from_headers, None, "an invalid traceparent is ignored");
        return;
    };

    let written = trace.traceparent();
    assert_eq!(written.len(), 55, "{written}");
    assert!(written.starts_with("00-"), "{written}");
    let again = TraceContext::parse(&written).expect("a written traceparent parses");
    assert_eq!(again.trace_id(), trace.trace_id());
    assert_eq!(again.parent_id(), trace.parent_id());
    assert_eq!(again.traceparent(), written, "writing is canonical");

    let trace = match tracestate.as_deref() {
        Some(state) => match invalid(trace.clone().with_state(state)) {
            Some(with_state) => {
                assert_eq!(from_headers.as_ref(), Some(&with_state));
                with_state
            }
            None => {
                assert_eq!(
                    from_headers.as_ref(),
                    Some(&trace),
                    "a bad tracestate is dropped"
                );
                trace
            }
        },
        None => trace,
    };

    let message = Message::builder("fuzz.trace")
        .trace_context(&trace)
        .build()
        .expect("a valid trace context makes valid headers");
    let read = message.trace_context().expect("the context is read back");
    assert_eq!(read.trace_id(), trace.trace_id());
    assert_eq!(read.parent_id(), trace.parent_id());
    assert_eq!(read.state(), trace.state());
});
