//! The relay's metrics, recorded through the [`metrics`] facade.
//!
//! Nothing is exported from here: install any `metrics` recorder (for example
//! `metrics-exporter-prometheus`) in the application and these series appear. Names start with
//! `outbox_`.
//!
//! | Name | Kind | Labels | Meaning |
//! |---|---|---|---|
//! | `outbox_messages_published_total` | counter | | messages the broker acknowledged |
//! | `outbox_messages_duplicate_total` | counter | | acknowledgements that said "duplicate" (a republish the broker dropped) |
//! | `outbox_publish_failures_total` | counter | `reason` = `transient`, `permanent`, `unavailable` | failed publishes |
//! | `outbox_messages_retried_total` | counter | | messages rescheduled for another attempt |
//! | `outbox_messages_dead_lettered_total` | counter | | messages moved to the dead letters |
//! | `outbox_batch_size` | histogram | | messages per claim |
//! | `outbox_publish_latency_seconds` | histogram | | from publish to acknowledgement |
//! | `outbox_pending_messages` | gauge | | messages in the outbox (sampled while leading) |
//! | `outbox_lag_seconds` | gauge | | age of the oldest due message, 0 when none (sampled while leading) |
//! | `outbox_leader` | gauge | | 1 while this instance leads, else 0 |
//! | `outbox_leadership_changes_total` | counter | | times this instance became leader |

use std::time::Duration;

use ::metrics::{
    Unit, counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram,
};

use crate::Error;

/// `outbox_messages_published_total`.
pub const PUBLISHED: &str = "outbox_messages_published_total";
/// `outbox_messages_duplicate_total`.
pub const DUPLICATES: &str = "outbox_messages_duplicate_total";
/// `outbox_publish_failures_total`.
pub const FAILURES: &str = "outbox_publish_failures_total";
/// `outbox_messages_retried_total`.
pub const RETRIED: &str = "outbox_messages_retried_total";
/// `outbox_messages_dead_lettered_total`.
pub const DEAD_LETTERED: &str = "outbox_messages_dead_lettered_total";
/// `outbox_batch_size`.
pub const BATCH_SIZE: &str = "outbox_batch_size";
/// `outbox_publish_latency_seconds`.
pub const PUBLISH_LATENCY: &str = "outbox_publish_latency_seconds";
/// `outbox_pending_messages`.
pub const PENDING: &str = "outbox_pending_messages";
/// `outbox_lag_seconds`.
pub const LAG: &str = "outbox_lag_seconds";
/// `outbox_leader`.
pub const LEADER: &str = "outbox_leader";
/// `outbox_leadership_changes_total`.
pub const LEADERSHIP_CHANGES: &str = "outbox_leadership_changes_total";

/// Registers the descriptions of every series with the installed recorder.
pub fn describe() {
    describe_counter!(PUBLISHED, "Messages the broker acknowledged.");
    describe_counter!(
        DUPLICATES,
        "Acknowledgements of republished messages the broker dropped."
    );
    describe_counter!(FAILURES, "Failed publishes, by reason.");
    describe_counter!(RETRIED, "Messages rescheduled for another attempt.");
    describe_counter!(DEAD_LETTERED, "Messages moved to the dead letters.");
    describe_histogram!(BATCH_SIZE, Unit::Count, "Messages per claim.");
    describe_histogram!(
        PUBLISH_LATENCY,
        Unit::Seconds,
        "From publish to acknowledgement."
    );
    describe_gauge!(PENDING, Unit::Count, "Messages in the outbox.");
    describe_gauge!(LAG, Unit::Seconds, "Age of the oldest due message.");
    describe_gauge!(LEADER, "1 while this instance leads.");
    describe_counter!(LEADERSHIP_CHANGES, "Times this instance became leader.");
}

pub(crate) fn acknowledged(duplicate: bool, latency: Duration) {
    counter!(PUBLISHED).increment(1);
    if duplicate {
        counter!(DUPLICATES).increment(1);
    }
    histogram!(PUBLISH_LATENCY).record(latency.as_secs_f64());
}

pub(crate) fn failed(error: &Error) {
    let reason = if error.is_unavailable() {
        "unavailable"
    } else if error.is_retryable() {
        "transient"
    } else {
        "permanent"
    };
    counter!(FAILURES, "reason" => reason).increment(1);
}

pub(crate) fn settled_failures(retried: usize, dead_lettered: usize) {
    counter!(RETRIED).increment(retried as u64);
    counter!(DEAD_LETTERED).increment(dead_lettered as u64);
}

pub(crate) fn claimed(n: usize) {
    histogram!(BATCH_SIZE).record(n as f64);
}

pub(crate) fn leading(leading: bool) {
    gauge!(LEADER).set(if leading { 1.0 } else { 0.0 });
    if leading {
        counter!(LEADERSHIP_CHANGES).increment(1);
    }
}

pub(crate) fn backlog(pending: u64, lag: Duration) {
    gauge!(PENDING).set(pending as f64);
    gauge!(LAG).set(lag.as_secs_f64());
}
