//! What goes to stdout: one line per message (unless `--quiet`), the summary line, and with
//! `--json` the summary as one JSON line. Logs go to stderr, so stdout stays parseable.

use std::io::Write;

use serde::Serialize;

use crate::check::{Summary, Verdict};
use crate::consume::Delivery;
use crate::inbox::{Applied, InboxCounts};

/// How the run ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Outcome {
    /// `--expect N` distinct messages arrived, none out of order.
    Complete,
    /// A message arrived out of order while `--expect` was set.
    Violation,
    /// The time limit passed first.
    Timeout,
    /// SIGINT or SIGTERM arrived first.
    Interrupted,
    /// The server rejected the stream, subject or consumer settings.
    Rejected,
    /// With `--inbox`: the database refused the inbox's work for a reason that will not pass.
    Failed,
}

/// The summary as printed in JSON.
#[derive(Debug, Serialize)]
pub(crate) struct Report {
    pub(crate) outcome: Outcome,
    #[serde(flatten)]
    pub(crate) summary: Summary,
    pub(crate) expected: Option<u64>,
    /// Whether a consumer was ever attached to the stream; false means nothing was checked.
    pub(crate) attached: bool,
    pub(crate) elapsed_ms: u64,
    /// With `--inbox`: what the inbox applied, skipped and rejected.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) inbox: Option<InboxCounts>,
}

/// Writes the stdout lines.
#[derive(Debug)]
pub(crate) struct Output {
    quiet: bool,
    json: bool,
}

impl Output {
    pub(crate) fn new(quiet: bool, json: bool) -> Self {
        Self { quiet, json }
    }

    /// One line per message, like the original Go subscriber's "Received message", with the
    /// headers the checks use and a marker when the message is not simply in order, or (with
    /// `--inbox`) was not applied this time.
    pub(crate) fn message(&self, shown: &Delivery<'_>, verdict: &Verdict, inbox: Option<Applied>) {
        if self.quiet {
            return;
        }
        let applied = match inbox {
            None | Some(Applied::New) => "",
            Some(Applied::Duplicate) => " [ALREADY APPLIED: skipped]",
            Some(Applied::Rejected) => " [NOT APPLIED: no UUID msg id]",
        };
        let marker = match verdict {
            Verdict::InOrder | Verdict::Unchecked => String::new(),
            Verdict::Gap { missing, .. } => format!(" [GAP: {missing} missing before it]"),
            Verdict::Duplicate => " [DUPLICATE]".to_owned(),
            Verdict::Redelivered => " [REDELIVERED]".to_owned(),
            Verdict::OutOfOrder {
                other, other_first, ..
            } => format!(
                " [OUT OF ORDER: stored {} seq {other}]",
                if *other_first { "after" } else { "before" }
            ),
        };
        line(&format!(
            "received message: subject={} stream_seq={} msg_id={} key={} payload={}{marker}{applied}",
            shown.subject,
            shown
                .stream_seq
                .map_or_else(|| "-".to_owned(), |s| s.to_string()),
            shown.msg_id.unwrap_or("-"),
            shown.key.unwrap_or("-"),
            String::from_utf8_lossy(shown.payload),
        ));
    }

    /// The summary: always the human line, then the JSON line with `--json`.
    pub(crate) fn summary(&self, report: &Report) {
        let s = &report.summary;
        let expected = report
            .expected
            .map(|n| format!(" expected={n}"))
            .unwrap_or_default();
        let inbox = report
            .inbox
            .map(|c| {
                format!(
                    " inbox_applied={} inbox_skipped={} inbox_rejected={}",
                    c.applied, c.skipped, c.rejected
                )
            })
            .unwrap_or_default();
        line(&format!(
            "summary: outcome={} received={} distinct={} duplicates={} redelivered={} \
             violations={} gaps={} keys={} unchecked={}{expected}{inbox} elapsed={:.1}s",
            outcome_name(report.outcome),
            s.received,
            s.distinct,
            s.duplicates,
            s.redelivered,
            s.violations,
            s.gaps,
            s.keys,
            s.unchecked,
            report.elapsed_ms as f64 / 1000.0,
        ));
        if self.json {
            match serde_json::to_string(report) {
                Ok(json) => line(&json),
                Err(e) => tracing::error!("cannot encode the summary as JSON: {e}"),
            }
        }
    }
}

fn outcome_name(outcome: Outcome) -> &'static str {
    match outcome {
        Outcome::Complete => "complete",
        Outcome::Violation => "violation",
        Outcome::Timeout => "timeout",
        Outcome::Interrupted => "interrupted",
        Outcome::Rejected => "rejected",
        Outcome::Failed => "failed",
    }
}

/// Writes one line and flushes it, so a reader sees each message as it arrives even through a
/// pipe. A closed stdout (`subscriber | head`) must not panic the checker (as `println!` would),
/// so a failed write is only logged.
fn line(text: &str) {
    let mut out = std::io::stdout().lock();
    if let Err(e) = writeln!(out, "{text}").and_then(|()| out.flush()) {
        tracing::debug!("cannot write to stdout: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_report_is_flat_and_names_the_outcome() {
        let report = Report {
            outcome: Outcome::Complete,
            summary: Summary {
                received: 3,
                distinct: 2,
                duplicates: 1,
                ..Summary::default()
            },
            expected: Some(2),
            attached: true,
            elapsed_ms: 5,
            inbox: None,
        };
        let value: serde_json::Value =
            serde_json::from_str(&serde_json::to_string(&report).expect("encodes"))
                .expect("decodes");
        assert_eq!(value["outcome"], "complete");
        assert_eq!(value["received"], 3);
        assert_eq!(value["distinct"], 2);
        assert_eq!(value["duplicates"], 1);
        assert_eq!(value["violations"], 0);
        assert_eq!(value["expected"], 2);
        assert_eq!(value["attached"], true);
        assert!(value.get("inbox").is_none(), "no inbox key without --inbox");
    }

    #[test]
    fn outcome_names_match_serde() {
        for o in [
            Outcome::Complete,
            Outcome::Violation,
            Outcome::Timeout,
            Outcome::Interrupted,
            Outcome::Rejected,
            Outcome::Failed,
        ] {
            assert_eq!(
                serde_json::to_value(o).expect("encodes"),
                serde_json::Value::from(outcome_name(o))
            );
        }
    }
}
