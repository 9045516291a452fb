//! W3C trace context: the `traceparent` (and `tracestate`) of the code that enqueued a message,
//! carried in the message's headers so that a consumer continues the same trace.
//!
//! A message's headers are stored with its outbox row and sent as broker headers, unchanged. A
//! [`TraceContext`] put on a message with [`MessageBuilder::trace_context`] therefore reaches the
//! consumer as the standard `traceparent` and `tracestate` headers
//! ([W3C Trace Context](https://www.w3.org/TR/trace-context/)), which any OpenTelemetry SDK
//! extracts.
//!
//! Without the `opentelemetry` feature, pass the context explicitly, e.g. the `traceparent`
//! header of the HTTP request that caused the message ([`TraceContext::from_headers`]), or
//! [`TraceContext::random`] to start a trace. With the feature, [`MessageBuilder::build`] fills
//! in the context of the current `tracing` span (through `tracing-opentelemetry`) when the message
//! has no `traceparent` yet, and `TraceContext::current()` reads it.
//!
//! [`publish_span`] is the span a relay opens around publishing one message: it names the
//! message and its trace id, and with the `opentelemetry` feature it continues the message's
//! trace.
//!
//! With the `otlp` feature, `otlp::Export` exports spans over OTLP/HTTP as the
//! standard `OTEL_*` environment variables say.
//!
//! # Examples
//!
//! ```
//! use outbox_core::{Message, TraceContext};
//!
//! // The header of an incoming request.
//! let incoming = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
//! let trace: TraceContext = incoming.parse()?;
//! let message = Message::builder("orders.created").trace_context(&trace).build()?;
//! assert_eq!(message.headers()["traceparent"], incoming);
//! assert_eq!(message.trace_context(), Some(trace));
//! # Ok::<(), outbox_core::Error>(())
//! ```

use std::fmt;
use std::str::FromStr;

use tracing::field;
use uuid::Uuid;

use crate::message::Headers;
use crate::{Error, Message, MessageBuilder};

#[cfg(feature = "otlp")]
pub mod otlp;

/// The header carrying the trace and parent span ids: `traceparent`.
pub const TRACEPARENT: &str = "traceparent";
/// The header carrying vendor-specific trace data, passed through unchanged: `tracestate`.
pub const TRACESTATE: &str = "tracestate";

/// Most list members a `tracestate` may have (W3C Trace Context).
const MAX_STATE_MEMBERS: usize = 32;
/// Longest `tracestate` key and value (W3C Trace Context).
const MAX_STATE_KEY_LEN: usize = 256;
const MAX_STATE_VALUE_LEN: usize = 256;
/// The `sampled` bit of the trace flags.
const SAMPLED: u8 = 0x01;

/// A trace id: 16 bytes, never all zero; shown as 32 lowercase hex digits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TraceId(u128);

impl TraceId {
    /// The id `value`, or `None` for zero, which W3C forbids.
    pub fn new(value: u128) -> Option<Self> {
        (value != 0).then_some(Self(value))
    }

    /// A random id (122 random bits, from the operating system's generator).
    pub fn random() -> Self {
        // A UUIDv4 has a non-zero version nibble, so the id is never zero; its last 7 bytes are
        // all random, as W3C's "random trace id" flag asks.
        Self(Uuid::new_v4().as_u128())
    }

    /// The id as a number.
    pub fn get(self) -> u128 {
        self.0
    }
}

impl fmt::Display for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

/// A span id: 8 bytes, never all zero; shown as 16 lowercase hex digits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpanId(u64);

impl SpanId {
    /// The id `value`, or `None` for zero, which W3C forbids.
    pub fn new(value: u64) -> Option<Self> {
        (value != 0).then_some(Self(value))
    }

    /// A random id (62 random bits, from the operating system's generator).
    pub fn random() -> Self {
        // The low half of a UUIDv4 starts with the variant bits `10`, so it is never zero.
        Self(Uuid::new_v4().as_u128() as u64)
    }

    /// The id as a number.
    pub fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Display for SpanId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// A W3C trace context: the `traceparent` (version `00`) and an optional `tracestate`.
///
/// Parsing follows the W3C Trace Context recommendation: lowercase hex only, all-zero ids and
/// version `ff` rejected, version `00` exactly 55 characters; a higher version is read as far as
/// version `00` defines it and written back as version `00` with only the `sampled` flag. The
/// `tracestate` is checked for its syntax and otherwise passed through unchanged.
///
/// # Examples
///
/// ```
/// use outbox_core::TraceContext;
///
/// let trace: TraceContext = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".parse()?;
/// assert_eq!(trace.trace_id().to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
/// assert!(trace.is_sampled());
/// assert!("00-00000000000000000000000000000000-00f067aa0ba902b7-01".parse::<TraceContext>().is_err());
/// # Ok::<(), outbox_core::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TraceContext {
    trace_id: TraceId,
    parent_id: SpanId,
    flags: u8,
    state: Option<String>,
}

impl TraceContext {
    /// A context with these ids and trace flags, and no `tracestate`.
    pub fn new(trace_id: TraceId, parent_id: SpanId, flags: u8) -> Self {
        Self {
            trace_id,
            parent_id,
            flags,
            state: None,
        }
    }

    /// A new trace: random trace and parent ids, sampled. For the start of a chain of work
    /// that has no trace yet, so that its messages can still be followed end to end.
    pub fn random() -> Self {
        Self::new(TraceId::random(), SpanId::random(), SAMPLED)
    }

    /// Parses a `traceparent` header value; surrounding spaces and tabs are ignored.
    ///
    /// Fails with [`Error::InvalidMessage`] for anything W3C says to ignore: wrong length or
    /// delimiters, uppercase or non-hex digits, an all-zero id, version `ff`.
    pub fn parse(traceparent: &str) -> Result<Self, Error> {
        parse_traceparent(traceparent.trim_matches([' ', '\t']))
            .map_err(|reason| Error::InvalidMessage(format!("invalid traceparent: {reason}")))
    }

    /// The context from the values of a `traceparent` and a `tracestate` header, as a service
    /// receives them; `None` when there is no valid `traceparent`.
    ///
    /// As W3C asks, an invalid `traceparent` is ignored (the caller starts a new trace), and an
    /// invalid `tracestate` is dropped while the `traceparent` is kept. Several `tracestate`
    /// headers are joined with `,` before they are passed here.
    pub fn from_headers(traceparent: Option<&str>, tracestate: Option<&str>) -> Option<Self> {
        let trace = Self::parse(traceparent?).ok()?;
        match tracestate {
            Some(state) => Some(trace.clone().with_state(state).unwrap_or(trace)),
            None => Some(trace),
        }
    }

    /// This context with `tracestate` set to `state` (surrounding whitespace removed; an empty
    /// state means none).
    ///
    /// Fails with [`Error::InvalidMessage`] when `state` is not a valid `tracestate`: more than
    /// 32 members, a member that is not `key=value`, a key or value over 256 characters or with
    /// characters W3C does not allow, a key twice.
    pub fn with_state(mut self, state: &str) -> Result<Self, Error> {
        let state = state.trim_matches([' ', '\t']);
        validate_state(state)
            .map_err(|reason| Error::InvalidMessage(format!("invalid tracestate: {reason}")))?;
        self.state = (!state.is_empty()).then(|| state.to_owned());
        Ok(self)
    }

    /// The trace id, shared by every span of the trace.
    pub fn trace_id(&self) -> TraceId {
        self.trace_id
    }

    /// The id of the span that enqueued the message: the consumer's parent.
    pub fn parent_id(&self) -> SpanId {
        self.parent_id
    }

    /// The trace flags byte.
    pub fn flags(&self) -> u8 {
        self.flags
    }

    /// Whether the caller recorded its span (the `sampled` flag).
    pub fn is_sampled(&self) -> bool {
        self.flags & SAMPLED != 0
    }

    /// The `tracestate`, if any.
    pub fn state(&self) -> Option<&str> {
        self.state.as_deref()
    }

    /// The `traceparent` header value: `00-<trace id>-<parent id>-<flags>`.
    pub fn traceparent(&self) -> String {
        self.to_string()
    }
}

impl fmt::Display for TraceContext {
    /// Writes the `traceparent` header value.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "00-{}-{}-{:02x}",
            self.trace_id, self.parent_id, self.flags
        )
    }
}

impl FromStr for TraceContext {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// Reads a `traceparent`: `version-traceid-parentid-flags` (W3C Trace Context, section 3.2).
fn parse_traceparent(value: &str) -> Result<TraceContext, &'static str> {
    const LEN: usize = 55;
    let bytes = value.as_bytes();
    let version = bytes.get(..2).ok_or("shorter than 55 characters")?;
    let version = lower_hex(version).ok_or("the version is not two lowercase hex digits")?;
    if version == 0xff {
        return Err("version ff is forbidden");
    }
    if bytes.len() < LEN {
        return Err("shorter than 55 characters");
    }
    if version == 0 && bytes.len() != LEN {
        return Err("version 00 must be exactly 55 characters");
    }
    // A higher version may append fields, after a dash.
    if bytes.len() > LEN && bytes[LEN] != b'-' {
        return Err("the flags are not followed by a dash");
    }
    if bytes[2] != b'-' || bytes[35] != b'-' || bytes[52] != b'-' {
        return Err("fields must be separated by dashes at positions 3, 36 and 53");
    }
    let trace_id = lower_hex(&bytes[3..35]).ok_or("the trace id is not 32 lowercase hex digits")?;
    let parent_id =
        lower_hex(&bytes[36..52]).ok_or("the parent id is not 16 lowercase hex digits")?;
    let flags = lower_hex(&bytes[53..55]).ok_or("the flags are not two lowercase hex digits")?;
    let trace_id = TraceId::new(trace_id).ok_or("the trace id is all zeros")?;
    let parent_id = u64::try_from(parent_id)
        .ok()
        .and_then(SpanId::new)
        .ok_or("the parent id is all zeros")?;
    // Only the flags of version 00 are understood; of a later version, keep just `sampled`.
    let flags = u8::try_from(flags).unwrap_or(0);
    let flags = if version == 0 { flags } else { flags & SAMPLED };
    Ok(TraceContext::new(trace_id, parent_id, flags))
}

/// `digits` as a number if they are all lowercase hex (at most 32 of them).
fn lower_hex(digits: &[u8]) -> Option<u128> {
    if digits.is_empty() || digits.len() > 32 {
        return None;
    }
    digits.iter().try_fold(0u128, |acc, &d| {
        let v = match d {
            b'0'..=b'9' => d - b'0',
            b'a'..=b'f' => d - b'a' + 10,
            _ => return None,
        };
        Some((acc << 4) | u128::from(v))
    })
}

/// Checks a `tracestate` (W3C Trace Context, section 3.3): comma-separated `key=value` members.
fn validate_state(state: &str) -> Result<(), String> {
    let mut keys = Vec::new();
    for member in state.split(',') {
        let member = member.trim_matches([' ', '\t']);
        // Empty members are allowed and carry nothing.
        if member.is_empty() {
            continue;
        }
        let (key, value) = member
            .split_once('=')
            .ok_or_else(|| "a member is not key=value".to_owned())?;
        validate_state_key(key)?;
        let value_ok = !value.is_empty()
            && value.len() <= MAX_STATE_VALUE_LEN
            && value
                .bytes()
                .all(|b| (0x20..=0x7e).contains(&b) && b != b',' && b != b'=')
            && !value.ends_with(' ');
        if !value_ok {
            return Err(format!("the value of {} is not allowed", shown(key)));
        }
        if keys.contains(&key) {
            return Err(format!("key {} appears twice", shown(key)));
        }
        keys.push(key);
        if keys.len() > MAX_STATE_MEMBERS {
            return Err(format!("more than {MAX_STATE_MEMBERS} members"));
        }
    }
    Ok(())
}

/// A key is `lcalpha *(lcalpha / digit / _ - * /)`, or `tenant@system` where the tenant may
/// start with a digit; at most 256 characters.
fn validate_state_key(key: &str) -> Result<(), String> {
    let allowed = |b: u8| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'_' | b'-' | b'*' | b'/');
    let ok = match key.split_once('@') {
        None => key.bytes().next().is_some_and(|b| b.is_ascii_lowercase()),
        Some((tenant, system)) => {
            tenant
                .bytes()
                .next()
                .is_some_and(|b| b.is_ascii_alphanumeric())
                && tenant.len() <= 241
                && system
                    .bytes()
                    .next()
                    .is_some_and(|b| b.is_ascii_lowercase())
                && system.len() <= 14
        }
    } && key.len() <= MAX_STATE_KEY_LEN
        && key.bytes().all(|b| allowed(b) || b == b'@')
        && key.bytes().filter(|&b| b == b'@').count() <= 1;
    if ok {
        Ok(())
    } else {
        Err(format!("key {} is not allowed", shown(key)))
    }
}

/// A key for an error message: quoted, cut at 32 characters.
fn shown(key: &str) -> String {
    match key.char_indices().nth(32) {
        Some((end, _)) => format!("{:?}...", &key[..end]),
        None => format!("{key:?}"),
    }
}

/// The value of header `name` (any letter case, an exact match first).
fn header<'a>(headers: &'a Headers, name: &str) -> Option<&'a str> {
    headers
        .get(name)
        .or_else(|| {
            headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v)
        })
        .map(String::as_str)
}

impl MessageBuilder {
    /// Puts `trace` on the message: the `traceparent` header, and `tracestate` when the context
    /// has one. The broker sends both to consumers as they are.
    ///
    /// With the `opentelemetry` feature, a message built without this gets the current span's
    /// context instead (see [`build`](MessageBuilder::build)).
    pub fn trace_context(self, trace: &TraceContext) -> Self {
        let builder = self.header(TRACEPARENT, trace.traceparent());
        match trace.state() {
            Some(state) => builder.header(TRACESTATE, state),
            None => builder,
        }
    }
}

impl Message {
    /// The trace context of the code that enqueued the message, from its `traceparent` and
    /// `tracestate` headers; `None` when it has no valid `traceparent`.
    pub fn trace_context(&self) -> Option<TraceContext> {
        TraceContext::from_headers(
            header(self.headers(), TRACEPARENT),
            header(self.headers(), TRACESTATE),
        )
    }
}

/// The span to publish `message` in: `outbox.publish` (level DEBUG, target
/// `outbox_core::relay`) with fields `message_id`, `subject`, `key` and `trace_id`, and empty
/// fields `attempts`, `duplicate`, `error` and `otel.status_code` to record the attempt and the
/// outcome in.
///
/// With the `opentelemetry` feature and a message that carries a trace context, the span is a
/// child of the message's context, so the publish shows in the trace of the code that enqueued
/// the message, and it links to the span that was current when it was made (the relay's
/// batch). Without that, it is an ordinary child of the current span.
///
/// DEBUG, like the relay's other spans: a span per message costs a few microseconds in a
/// subscriber that formats it, and next to nothing when it is filtered out (the trace context
/// is then not even read). Enable `outbox_core::relay=debug` for the layer that exports traces.
///
/// Create it where the message is handed to the broker, and keep it until the broker's
/// acknowledgement arrives:
///
/// ```
/// # use outbox_core::{Message, trace::publish_span};
/// use tracing::Instrument;
///
/// # async fn publish(message: &Message) {}
/// # async fn run(message: Message) {
/// let span = publish_span(&message);
/// publish(&message).instrument(span.clone()).await;
/// span.record("duplicate", false);
/// # }
/// ```
pub fn publish_span(message: &Message) -> tracing::Span {
    let span = tracing::debug_span!(
        target: "outbox_core::relay",
        "outbox.publish",
        otel.kind = "producer",
        message_id = %message.id(),
        subject = message.subject(),
        key = message.key(),
        trace_id = field::Empty,
        attempts = field::Empty,
        duplicate = field::Empty,
        error = field::Empty,
        otel.status_code = field::Empty,
    );
    if span.is_disabled() {
        return span;
    }
    if let Some(trace) = message.trace_context() {
        // The parent first: OpenTelemetry fixes it when the span starts.
        #[cfg(feature = "opentelemetry")]
        otel::continue_in(&span, &trace);
        span.record("trace_id", field::display(trace.trace_id()));
    }
    span
}

/// Fills in the current span's trace context on a message being built that has no
/// `traceparent` yet; `fresh` is false for a builder given an explicit id (a message being
/// rebuilt), which is left as it is.
#[cfg(feature = "opentelemetry")]
pub(crate) fn inject_current(headers: &mut Headers, fresh: bool) {
    if fresh
        && header(headers, TRACEPARENT).is_none()
        && let Some(trace) = TraceContext::current()
    {
        headers.insert(TRACEPARENT.to_owned(), trace.traceparent());
        if let Some(state) = trace.state {
            headers.insert(TRACESTATE.to_owned(), state);
        }
    }
}

/// Without the `opentelemetry` feature there is no current context to read.
#[cfg(not(feature = "opentelemetry"))]
pub(crate) fn inject_current(_headers: &mut Headers, _fresh: bool) {}

#[cfg(feature = "opentelemetry")]
mod otel {
    use opentelemetry::trace::{
        SpanContext, SpanId as OtelSpanId, TraceContextExt, TraceFlags, TraceId as OtelTraceId,
        TraceState,
    };
    use tracing_opentelemetry::OpenTelemetrySpanExt;

    use super::{SpanId, TraceContext, TraceId};

    impl TraceContext {
        /// The context of the current `tracing` span as OpenTelemetry sees it (through the
        /// `tracing-opentelemetry` layer), or else of OpenTelemetry's current context; `None`
        /// when neither has a valid span (no layer installed, no span entered, span disabled).
        ///
        /// Feature `opentelemetry`.
        pub fn current() -> Option<Self> {
            let span = tracing::Span::current().context();
            Self::from_span_context(span.span().span_context()).or_else(|| {
                Self::from_span_context(opentelemetry::Context::current().span().span_context())
            })
        }

        /// The context of an OpenTelemetry span; `None` when it is not valid.
        ///
        /// Feature `opentelemetry`.
        pub fn from_span_context(span: &SpanContext) -> Option<Self> {
            if !span.is_valid() {
                return None;
            }
            let trace_id = TraceId::new(u128::from_be_bytes(span.trace_id().to_bytes()))?;
            let parent_id = SpanId::new(u64::from_be_bytes(span.span_id().to_bytes()))?;
            let mut trace = Self::new(trace_id, parent_id, span.trace_flags().to_u8());
            let state = span.trace_state().header();
            if !state.is_empty() {
                trace = trace.clone().with_state(&state).unwrap_or(trace);
            }
            Some(trace)
        }

        /// This context as a remote OpenTelemetry span context: what a consumer's span takes as
        /// its parent.
        ///
        /// Feature `opentelemetry`.
        pub fn to_span_context(&self) -> SpanContext {
            let state = self
                .state()
                .and_then(|s| s.parse::<TraceState>().ok())
                .unwrap_or_default();
            SpanContext::new(
                OtelTraceId::from_bytes(self.trace_id.get().to_be_bytes()),
                OtelSpanId::from_bytes(self.parent_id.get().to_be_bytes()),
                TraceFlags::new(self.flags),
                true,
                state,
            )
        }

        /// An OpenTelemetry context whose (remote) span is this one.
        ///
        /// Feature `opentelemetry`.
        pub fn to_otel_context(&self) -> opentelemetry::Context {
            opentelemetry::Context::new().with_remote_span_context(self.to_span_context())
        }

        /// Makes `span` a child of this context, so that it joins this trace. Returns whether
        /// it did: not when no OpenTelemetry layer is installed, when `span` is disabled, or
        /// when it was already entered (a parent can only be set before).
        ///
        /// Feature `opentelemetry`.
        pub fn set_parent_of(&self, span: &tracing::Span) -> bool {
            span.set_parent(self.to_otel_context()).is_ok()
        }
    }

    /// Makes `span` continue `trace`, linked to the span that is current now.
    pub(super) fn continue_in(span: &tracing::Span, trace: &TraceContext) {
        let current = tracing::Span::current().context();
        let current = current.span().span_context().clone();
        if trace.set_parent_of(span) && current.is_valid() {
            span.add_link(current);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_valid_traceparent_round_trips() {
        let trace = TraceContext::parse(VALID).unwrap();
        assert_eq!(
            trace.trace_id().get(),
            0x4bf92f3577b34da6a3ce929d0e0e4736_u128
        );
        assert_eq!(trace.parent_id().get(), 0x00f067aa0ba902b7);
        assert_eq!(trace.flags(), 1);
        assert!(trace.is_sampled());
        assert_eq!(trace.state(), None);
        assert_eq!(trace.traceparent(), VALID);
        assert_eq!(VALID.parse::<TraceContext>().unwrap(), trace);
        // Surrounding optional whitespace of an HTTP header value is not part of it.
        assert_eq!(TraceContext::parse(&format!(" \t{VALID} ")).unwrap(), trace);
        let unsampled = TraceContext::parse(&VALID.replace("-01", "-00")).unwrap();
        assert!(!unsampled.is_sampled());
        // Unknown flags of version 00 are kept.
        let flags = TraceContext::parse(&VALID.replace("-01", "-ff")).unwrap();
        assert_eq!(flags.flags(), 0xff);
        assert!(flags.traceparent().ends_with("-ff"));
    }

    #[test]
    fn uppercase_hex_is_rejected() {
        for bad in [
            VALID.to_uppercase(),
            VALID.replace("4bf92f", "4BF92F"),
            VALID.replace("00f067aa", "00F067AA"),
            VALID.replace("-01", "-0A"),
            VALID.replacen("00", "0A", 1),
        ] {
            let err = TraceContext::parse(&bad).unwrap_err();
            assert!(
                err.to_string().contains("invalid traceparent"),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn all_zero_ids_are_rejected() {
        let zero_trace = format!("00-{}-00f067aa0ba902b7-01", "0".repeat(32));
        let err = TraceContext::parse(&zero_trace).unwrap_err();
        assert!(err.to_string().contains("trace id is all zeros"), "{err}");
        let zero_parent = format!("00-4bf92f3577b34da6a3ce929d0e0e4736-{}-01", "0".repeat(16));
        let err = TraceContext::parse(&zero_parent).unwrap_err();
        assert!(err.to_string().contains("parent id is all zeros"), "{err}");
        assert_eq!(TraceId::new(0), None);
        assert_eq!(SpanId::new(0), None);
    }

    #[test]
    fn wrong_lengths_and_delimiters_are_rejected() {
        let cases = [
            String::new(),
            "0".to_owned(),
            "00".to_owned(),
            VALID[..54].to_owned(),
            format!("{VALID}0"),
            format!("{VALID}-"),
            // Trace id one digit short, parent id one digit long.
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b70-01".to_owned(),
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b-001".to_owned(),
            VALID.replace('-', "_"),
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1".to_owned(),
            VALID.replace("4bf9", "4bg9"),
            VALID.replace("00f0", "+0f0"),
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-".to_owned(),
        ];
        for bad in cases {
            assert!(TraceContext::parse(&bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn future_versions_are_read_as_version_00() {
        // A higher version with the same fields: read, written back as 00.
        let v1 = VALID.replacen("00", "01", 1);
        let trace = TraceContext::parse(&v1).unwrap();
        assert_eq!(trace.traceparent(), VALID);
        // It may append fields after a dash.
        let longer = format!("{}-what-the-future-brings", VALID.replacen("00", "cc", 1));
        assert_eq!(TraceContext::parse(&longer).unwrap().traceparent(), VALID);
        // Only the sampled flag of a later version is understood.
        let flags = VALID.replacen("00", "02", 1).replace("-01", "-ff");
        assert_eq!(TraceContext::parse(&flags).unwrap().flags(), 0x01);
        // But not without the dash, nor shorter than version 00, nor version ff.
        let glued = format!("{}x", VALID.replacen("00", "01", 1));
        assert!(TraceContext::parse(&glued).is_err());
        assert!(TraceContext::parse(&v1[..54]).is_err());
        let ff = VALID.replacen("00", "ff", 1);
        let err = TraceContext::parse(&ff).unwrap_err();
        assert!(err.to_string().contains("ff"), "{err}");
        // Version 00 is exactly 55 characters: no trailing fields.
        assert!(TraceContext::parse(&format!("{VALID}-extra")).is_err());
    }

    #[test]
    fn tracestate_is_checked_and_passed_through() {
        let trace = TraceContext::parse(VALID).unwrap();
        let state = "rojo=00f067aa0ba902b7, congo=t61rcWkgMzE,tenant1@vendor=x y";
        let with = trace.clone().with_state(state).unwrap();
        assert_eq!(with.state(), Some(state));
        assert_eq!(with.traceparent(), VALID);
        assert_eq!(trace.clone().with_state("  ").unwrap().state(), None);
        let many = (0..33).map(|i| format!("k{i}=v")).collect::<Vec<_>>();
        let thirty_two = many[..32].join(",");
        assert!(trace.clone().with_state(&thirty_two).is_ok());
        for bad in [
            "novalue".to_owned(),
            "Upper=v".to_owned(),
            "k=".to_owned(),
            "k=v,k=w".to_owned(),
            "k=a=b".to_owned(),
            "k=v\n".to_owned(),
            "k=é".to_owned(),
            format!("k={}", "v".repeat(257)),
            many.join(","),
        ] {
            assert!(trace.clone().with_state(&bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn from_headers_ignores_what_w3c_says_to_ignore() {
        assert_eq!(TraceContext::from_headers(None, Some("k=v")), None);
        assert_eq!(TraceContext::from_headers(Some("garbage"), None), None);
        let trace = TraceContext::from_headers(Some(VALID), Some("k=v")).unwrap();
        assert_eq!(trace.state(), Some("k=v"));
        // A bad tracestate is dropped, the traceparent kept.
        let trace = TraceContext::from_headers(Some(VALID), Some("K=v")).unwrap();
        assert_eq!((trace.traceparent().as_str(), trace.state()), (VALID, None));
    }

    #[test]
    fn random_contexts_are_valid_and_distinct() {
        let a = TraceContext::random();
        let b = TraceContext::random();
        assert_ne!(a.trace_id(), b.trace_id());
        assert!(a.is_sampled());
        assert_eq!(TraceContext::parse(&a.traceparent()).unwrap(), a);
        assert_eq!(a.trace_id().to_string().len(), 32);
        assert_eq!(a.parent_id().to_string().len(), 16);
    }

    #[test]
    fn messages_carry_the_context_in_their_headers() {
        let trace = TraceContext::parse(VALID)
            .unwrap()
            .with_state("k=v")
            .unwrap();
        let message = Message::builder("orders.created")
            .trace_context(&trace)
            .build()
            .unwrap();
        assert_eq!(message.headers()[TRACEPARENT], VALID);
        assert_eq!(message.headers()[TRACESTATE], "k=v");
        assert_eq!(message.trace_context(), Some(trace));
        // Set by hand, in another letter case, it is still found.
        let message = Message::builder("a")
            .header("TraceParent", VALID)
            .build()
            .unwrap();
        assert_eq!(message.trace_context().unwrap().traceparent(), VALID);
        // An invalid header is no context, not an error.
        let message = Message::builder("a")
            .header(TRACEPARENT, "nope")
            .build()
            .unwrap();
        assert_eq!(message.trace_context(), None);
    }

    /// What a fmt subscriber writes for an event inside `span` made by `make`.
    fn logged_in(make: impl FnOnce() -> tracing::Span) -> String {
        use std::sync::{Arc, Mutex};
        #[derive(Clone, Default)]
        struct Buffer(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Buffer {
            fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(bytes);
                Ok(bytes.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let buffer = Buffer::default();
        let writer = buffer.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::DEBUG)
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            make().in_scope(|| tracing::info!("inside"));
        });
        String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap()
    }

    #[test]
    fn the_publish_span_names_the_message_and_its_trace() {
        let trace = TraceContext::parse(VALID).unwrap();
        let message = Message::builder("orders.created")
            .key("customer-1")
            .trace_context(&trace)
            .build()
            .unwrap();
        let line = logged_in(|| publish_span(&message));
        assert!(line.contains("outbox.publish{"), "{line}");
        assert!(
            line.contains(&format!("message_id={}", message.id())),
            "{line}"
        );
        assert!(line.contains("subject=\"orders.created\""), "{line}");
        assert!(line.contains("key=\"customer-1\""), "{line}");
        assert!(
            line.contains("trace_id=4bf92f3577b34da6a3ce929d0e0e4736"),
            "{line}"
        );
        // No context, no key: the fields are simply absent.
        let plain = Message::builder("a").build().unwrap();
        let line = logged_in(|| publish_span(&plain));
        assert!(line.contains("outbox.publish{"), "{line}");
        assert!(!line.contains("trace_id"), "{line}");
        assert!(!line.contains("key="), "{line}");
    }

    #[cfg(not(feature = "opentelemetry"))]
    #[test]
    fn without_opentelemetry_nothing_is_added() {
        let m = Message::builder("a").build().unwrap();
        assert!(m.headers().is_empty());
        assert_eq!(m.trace_context(), None);
    }

    #[cfg(feature = "opentelemetry")]
    #[test]
    fn otel_span_contexts_convert_both_ways() {
        let trace = TraceContext::parse(VALID)
            .unwrap()
            .with_state("k=v")
            .unwrap();
        let span = trace.to_span_context();
        assert!(span.is_valid() && span.is_remote() && span.is_sampled());
        assert_eq!(
            span.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(span.span_id().to_string(), "00f067aa0ba902b7");
        assert_eq!(span.trace_state().header(), "k=v");
        assert_eq!(TraceContext::from_span_context(&span), Some(trace));
        let invalid = opentelemetry::trace::SpanContext::empty_context();
        assert_eq!(TraceContext::from_span_context(&invalid), None);
    }

    #[cfg(feature = "opentelemetry")]
    #[test]
    fn without_an_otel_layer_there_is_no_current_context() {
        let line = logged_in(|| {
            assert_eq!(TraceContext::current(), None);
            let m = Message::builder("a").build().unwrap();
            assert!(m.headers().is_empty());
            tracing::Span::none()
        });
        assert!(line.contains("inside"));
    }
}
