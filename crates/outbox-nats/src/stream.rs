//! Stream provisioning: [`StreamSpec`] and [`ensure_stream`].
//!
//! Only settings that NATS 2.9 understands are used: a 2.9 server silently ignores newer ones
//! (compression, metadata, subject transforms), so relying on them would be a lie there.

use std::time::Duration;

use async_nats::jetstream::{
    self, ErrorCode,
    context::{CreateStreamErrorKind, GetStreamErrorKind},
    stream::{Config, Info, StorageType},
};

use crate::Error;

/// The JetStream stream the outbox publishes into. Build it with [`StreamSpec::new`] and adjust
/// the public fields.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use outbox_nats::StreamSpec;
///
/// let mut spec = StreamSpec::new("ORDERS", ["orders.>"]);
/// assert_eq!(spec.duplicate_window, Duration::from_secs(120));
/// spec.max_age = Duration::from_secs(7 * 24 * 3600);
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct StreamSpec {
    /// The stream name (no whitespace, `.`, `*`, `>`, `/` or `\`).
    pub name: String,
    /// Subjects the stream captures, wildcards allowed. [`ensure_stream`] adds missing ones to an
    /// existing stream and keeps the others.
    pub subjects: Vec<String>,
    /// How long JetStream remembers message ids to drop republishes. A relay that crashes
    /// after publishing and before recording republishes within seconds to minutes; the window
    /// must cover that. Default: 2 min (the NATS default, and the binaries' value). Applied to
    /// existing streams too.
    pub duplicate_window: Duration,
    /// File (default) or memory storage. Used at creation only.
    pub storage: StorageType,
    /// Replicas in a cluster. Default: 1. Used at creation only.
    pub replicas: usize,
    /// How long messages are kept; zero keeps them until other limits apply. Default: zero.
    /// Used at creation only.
    pub max_age: Duration,
}

impl StreamSpec {
    /// A spec for stream `name` capturing `subjects`, with the defaults of every other field.
    pub fn new<S: Into<String>>(
        name: impl Into<String>,
        subjects: impl IntoIterator<Item = S>,
    ) -> Self {
        Self {
            name: name.into(),
            subjects: subjects.into_iter().map(Into::into).collect(),
            duplicate_window: Duration::from_secs(120),
            storage: StorageType::File,
            replicas: 1,
            max_age: Duration::ZERO,
        }
    }

    /// The JetStream configuration a new stream gets.
    pub fn to_config(&self) -> Config {
        Config {
            name: self.name.clone(),
            subjects: self.subjects.clone(),
            duplicate_window: self.duplicate_window,
            storage: self.storage,
            num_replicas: self.replicas,
            max_age: self.max_age,
            ..Default::default()
        }
    }

    fn validate(&self) -> Result<(), Error> {
        let invalid = |reason: &str| Error::Config(format!("stream {:?}: {reason}", self.name));
        if self.subjects.is_empty() {
            return Err(invalid("at least one subject is needed"));
        }
        if self.duplicate_window.is_zero() {
            return Err(invalid("duplicate_window must be positive"));
        }
        if self.replicas == 0 {
            return Err(invalid("replicas must be at least 1"));
        }
        Ok(())
    }
}

/// Creates the stream of `spec`, or updates an existing one so that it captures every subject of
/// `spec` and has its duplicate window; returns the stream's info afterwards.
///
/// Idempotent, and safe when several processes run it at once. Subjects an existing stream
/// captures beyond `spec` are kept, as are its other settings: changing storage or replicas
/// of a live stream is an operator's decision.
///
/// # Errors
///
/// [`Error::Config`] for an empty subject list or a zero duplicate window; [`Error::Stream`]
/// when JetStream refuses (overlapping subjects, JetStream disabled: permanent) or does not
/// answer or fails on its side with a 500 (transient).
///
/// # Examples
///
/// ```no_run
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), outbox_nats::Error> {
/// use outbox_nats::{StreamSpec, ensure_stream};
///
/// let client = outbox_nats::connect("nats://127.0.0.1:4222").await?;
/// let info = ensure_stream(&async_nats::jetstream::new(client), &StreamSpec::new("ORDERS", ["orders.>"])).await?;
/// assert_eq!(info.config.duplicate_window.as_secs(), 120);
/// # Ok(()) }
/// ```
pub async fn ensure_stream(context: &jetstream::Context, spec: &StreamSpec) -> Result<Info, Error> {
    spec.validate()?;
    // Two rounds: a stream created by someone else between our lookup and our create is
    // found by the second lookup.
    for _ in 0..2 {
        match context.get_stream(&spec.name).await {
            Ok(stream) => return update(context, spec, stream.cached_info()).await,
            Err(e) if is_not_found(e.kind()) => {}
            Err(e) => {
                let transient = matches!(e.kind(), GetStreamErrorKind::Request);
                return Err(Error::stream(&spec.name, transient, e));
            }
        }
        match context.create_stream(spec.to_config()).await {
            Ok(stream) => {
                tracing::info!(stream = %spec.name, subjects = ?spec.subjects, "created stream");
                return Ok(stream.cached_info().clone());
            }
            Err(e) if already_exists(e.kind()) => continue,
            Err(e) => return Err(stream_error(&spec.name, e)),
        }
    }
    Err(Error::stream(
        &spec.name,
        true,
        "the stream was created and deleted concurrently",
    ))
}

async fn update(
    context: &jetstream::Context,
    spec: &StreamSpec,
    info: &Info,
) -> Result<Info, Error> {
    let mut config = info.config.clone();
    let missing: Vec<&String> = spec
        .subjects
        .iter()
        .filter(|s| !config.subjects.contains(s))
        .collect();
    if missing.is_empty() && config.duplicate_window == spec.duplicate_window {
        return Ok(info.clone());
    }
    config.subjects.extend(missing.into_iter().cloned());
    config.duplicate_window = spec.duplicate_window;
    let updated = context
        .update_stream(&config)
        .await
        .map_err(|e| stream_error(&spec.name, e))?;
    tracing::info!(
        stream = %spec.name,
        subjects = ?updated.config.subjects,
        duplicate_window = ?updated.config.duplicate_window,
        "updated stream"
    );
    Ok(updated)
}

fn is_not_found(kind: GetStreamErrorKind) -> bool {
    matches!(kind, GetStreamErrorKind::JetStream(e) if e.error_code() == ErrorCode::STREAM_NOT_FOUND)
}

fn already_exists(kind: CreateStreamErrorKind) -> bool {
    matches!(kind, CreateStreamErrorKind::JetStream(e) if e.error_code() == ErrorCode::STREAM_NAME_EXIST)
}

fn stream_error(name: &str, e: jetstream::context::CreateStreamError) -> Error {
    // A 500 is the server failing on its side (e.g. "error creating store for stream" when its
    // file store could not be set up), not a refusal of the configuration: worth another try.
    let transient = match e.kind() {
        CreateStreamErrorKind::TimedOut
        | CreateStreamErrorKind::Response
        | CreateStreamErrorKind::JetStreamUnavailable => true,
        CreateStreamErrorKind::JetStream(api) => api.code() >= 500,
        _ => false,
    };
    Error::stream(name, transient, e)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_documented_ones() {
        let spec = StreamSpec::new("ORDERS", ["orders.>"]);
        assert_eq!(spec.subjects, vec!["orders.>".to_owned()]);
        assert_eq!(spec.duplicate_window, Duration::from_secs(120));
        assert_eq!(spec.storage, StorageType::File);
        assert_eq!(spec.replicas, 1);
        assert_eq!(spec.max_age, Duration::ZERO);
        let config = spec.to_config();
        assert_eq!(config.name, "ORDERS");
        assert_eq!(config.duplicate_window, Duration::from_secs(120));
        // Nothing a 2.9 server would silently ignore.
        let json = serde_json::to_value(&config).unwrap();
        for newer in [
            "compression",
            "metadata",
            "subject_transform",
            "first_seq",
            "allow_msg_ttl",
        ] {
            assert!(json.get(newer).is_none(), "{newer} in {json}");
        }
    }

    #[test]
    fn unusable_specs_are_refused() {
        let spec = StreamSpec::new("S", Vec::<String>::new());
        assert!(spec.validate().is_err());
        let mut spec = StreamSpec::new("S", ["s"]);
        spec.duplicate_window = Duration::ZERO;
        assert!(spec.validate().is_err());
    }
}
