//! One run: connect, consume, check each message, and stop on completion, violation, time limit
//! or signal, always with a summary.

use std::ops::ControlFlow;
use std::time::Duration;

use tokio::time::Instant;
use tracing::{error, info, warn};

use crate::check::{Checker, Observation, Verdict};
use crate::cli::Cli;
use crate::consume::{self, AttachError, Delivery, Handler, Reply, Settings, Settle};
use crate::inbox::{Applied, Inbox};
use crate::output::{Outcome, Output, Report};

/// Runs the subscriber as `cli` says; returns the process exit code.
pub(crate) async fn run(cli: &Cli) -> u8 {
    let started = Instant::now();
    let limit = cli.time_limit();
    // Bad input found before anything connects: one line and exit 2, as for a bad flag.
    let inbox = match cli
        .inbox
        .then(|| Inbox::new(cli.database_url.expose(), &cli.inbox_schema))
        .transpose()
    {
        Ok(inbox) => inbox,
        Err(reason) => {
            error!("{reason}");
            return 2;
        }
    };
    let nats = match cli.nats_options() {
        Ok(nats) => nats,
        Err(reason) => {
            error!("{reason}");
            return 2;
        }
    };
    let mut verifier = Verifier {
        checker: Checker::new(cli.reads_from_start()),
        output: Output::new(cli.quiet, cli.json),
        expect: cli.expect,
        attached: false,
        finished: None,
        inbox,
    };
    if let Some(n) = cli.expect {
        info!(
            "expecting {n} distinct messages within {}s",
            limit.map_or(0, |d| d.as_secs())
        );
    }
    let settings = Settings {
        stream: cli.stream.clone(),
        subject: cli.subject.clone(),
        durable: cli.durable.clone(),
        new_only: cli.new,
        explicit_ack: cli.durable.is_some() || cli.inbox,
    };
    let work = async {
        if let Some(inbox) = &mut verifier.inbox
            && let Err(fatal) = inbox.prepare().await
        {
            error!("{fatal}");
            return Outcome::Failed;
        }
        let client = match consume::connect(&nats).await {
            Ok(client) => client,
            Err(AttachError::Rejected(reason) | AttachError::Transient(reason)) => {
                error!("{reason}");
                return Outcome::Rejected;
            }
        };
        let result = consume::Consumer::new(client, settings)
            .run(&mut verifier)
            .await;
        match result {
            Ok(()) => verifier.finished.unwrap_or(Outcome::Complete),
            Err(AttachError::Rejected(reason) | AttachError::Transient(reason)) => {
                error!("{reason}");
                Outcome::Rejected
            }
        }
    };
    let outcome = tokio::select! {
        outcome = work => outcome,
        () = shutdown_signal() => {
            info!("signal received; stopping");
            Outcome::Interrupted
        }
        () = sleep_until(limit.map(|d| started + d)) => Outcome::Timeout,
    };
    let report = Report {
        outcome,
        summary: verifier.checker.summary(),
        expected: cli.expect,
        attached: verifier.attached,
        elapsed_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        inbox: verifier.inbox.as_ref().map(Inbox::counts),
    };
    explain(&report, limit);
    verifier.output.summary(&report);
    exit_code(&report)
}

/// Checks and prints each message, and with `--inbox` applies it; decides when `--expect` is
/// met or broken.
#[derive(Debug)]
struct Verifier {
    checker: Checker,
    output: Output,
    expect: Option<u64>,
    attached: bool,
    finished: Option<Outcome>,
    inbox: Option<Inbox>,
}

impl Handler for Verifier {
    fn wanted(&self) -> Option<u64> {
        self.expect
            .map(|n| n.saturating_sub(self.checker.distinct()))
    }

    fn attached(&mut self, description: &str) {
        self.attached = true;
        info!("{description}");
    }

    async fn message(&mut self, delivery: &Delivery<'_>) -> Reply {
        let observation = Observation::parse(
            delivery.msg_id,
            delivery.key,
            delivery.stream_seq,
            delivery.payload,
        );
        let verdict = self.checker.observe(observation);
        let applied = match &mut self.inbox {
            None => None,
            Some(inbox) => match inbox.apply(delivery).await {
                Ok(applied) => Some(applied),
                Err(fatal) => {
                    // Left unacked: whoever runs next gets it again.
                    error!("{fatal}");
                    self.finished = Some(Outcome::Failed);
                    return Reply {
                        flow: ControlFlow::Break(()),
                        settle: Settle::Leave,
                    };
                }
            },
        };
        self.output.message(delivery, &verdict, applied);
        let msg_id = delivery.msg_id.unwrap_or("-");
        let at = delivery
            .stream_seq
            .map_or_else(|| "-".to_owned(), |s| s.to_string());
        let settle = match applied {
            Some(Applied::Duplicate) => {
                info!(
                    "redelivered, skipped: msg id {msg_id} (stream sequence {at}) was applied before"
                );
                Settle::Ack
            }
            Some(Applied::Rejected) => {
                warn!(
                    "not applied: msg id {msg_id} (stream sequence {at}) is not a UUID, so the \
                     inbox cannot recognise it again; terminated"
                );
                Settle::Terminate
            }
            Some(Applied::New) | None => Settle::Ack,
        };
        Reply {
            flow: self.judge(&verdict, msg_id, &at),
            settle,
        }
    }
}

impl Verifier {
    /// Logs what is wrong with a message and decides whether the run goes on.
    fn judge(&mut self, verdict: &Verdict, msg_id: &str, at: &str) -> ControlFlow<()> {
        match verdict {
            Verdict::OutOfOrder {
                key,
                seq,
                other,
                other_first,
            } => warn!(
                "order violation: key {key} seq {seq} is stored {} seq {other} \
                 (stream sequence {at}, msg id {msg_id})",
                if *other_first { "after" } else { "before" }
            ),
            Verdict::Duplicate => {
                warn!("duplicate: msg id {msg_id} stored again (stream sequence {at})");
            }
            Verdict::Redelivered => {
                info!("redelivered: stream sequence {at} (msg id {msg_id}) was already checked");
            }
            Verdict::Gap { key, seq, missing } => warn!(
                "gap: key {key} jumped to seq {seq}, {missing} missing before it \
                 (stream sequence {at})"
            ),
            Verdict::InOrder | Verdict::Unchecked => {}
        }
        let Some(expect) = self.expect else {
            return ControlFlow::Continue(());
        };
        if matches!(verdict, Verdict::OutOfOrder { .. }) {
            self.finished = Some(Outcome::Violation);
            return ControlFlow::Break(());
        }
        if self.checker.distinct() >= expect {
            self.finished = Some(Outcome::Complete);
            return ControlFlow::Break(());
        }
        ControlFlow::Continue(())
    }
}

/// Exit codes: 0 when what was asked was verified, 1 when it was not (violation, timeout,
/// interruption before `--expect` was met, nothing ever read), 2 when the server rejected the
/// settings (bad input found late; clap gives 2 for bad input found early).
fn exit_code(report: &Report) -> u8 {
    match report.outcome {
        Outcome::Complete => 0,
        Outcome::Violation | Outcome::Failed => 1,
        Outcome::Rejected => 2,
        Outcome::Timeout | Outcome::Interrupted => {
            let verified =
                report.expected.is_none() && report.attached && report.summary.violations == 0;
            u8::from(!verified)
        }
    }
}

/// Log lines saying why the run ended the way it did, when the summary alone would not.
fn explain(report: &Report, limit: Option<Duration>) {
    let secs = limit.map_or(0, |d| d.as_secs());
    if report.outcome == Outcome::Timeout {
        match report.expected {
            Some(n) => warn!(
                "timed out after {secs}s with {} of {n} distinct messages",
                report.summary.distinct
            ),
            None => info!("time limit of {secs}s reached"),
        }
    }
    if matches!(report.outcome, Outcome::Timeout | Outcome::Interrupted) && !report.attached {
        warn!("never attached to the stream: nothing was checked");
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// Resolves on SIGINT or SIGTERM. A handler that cannot be installed is logged and ignored:
/// the run still ends by its own rules.
async fn shutdown_signal() {
    let interrupt = async {
        if let Err(err) = tokio::signal::ctrl_c().await {
            warn!("cannot listen for SIGINT: {err}");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(err) => {
                warn!("cannot listen for SIGTERM: {err}");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = interrupt => {}
        () = terminate => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::Summary;

    fn report(outcome: Outcome, expected: Option<u64>, attached: bool, violations: u64) -> Report {
        Report {
            outcome,
            summary: Summary {
                violations,
                ..Summary::default()
            },
            expected,
            attached,
            elapsed_ms: 0,
            inbox: None,
        }
    }

    #[test]
    fn exit_codes_follow_the_contract() {
        assert_eq!(exit_code(&report(Outcome::Complete, Some(3), true, 0)), 0);
        assert_eq!(exit_code(&report(Outcome::Violation, Some(3), true, 1)), 1);
        assert_eq!(exit_code(&report(Outcome::Rejected, None, true, 0)), 2);
        assert_eq!(exit_code(&report(Outcome::Failed, None, true, 0)), 1);
        // --expect not met in time, or interrupted before it was met.
        assert_eq!(exit_code(&report(Outcome::Timeout, Some(3), true, 0)), 1);
        assert_eq!(
            exit_code(&report(Outcome::Interrupted, Some(3), true, 0)),
            1
        );
        // Without --expect, stopping is fine if something was checked and it was all in order.
        assert_eq!(exit_code(&report(Outcome::Interrupted, None, true, 0)), 0);
        assert_eq!(exit_code(&report(Outcome::Timeout, None, true, 0)), 0);
        assert_eq!(exit_code(&report(Outcome::Interrupted, None, true, 2)), 1);
        assert_eq!(exit_code(&report(Outcome::Timeout, None, false, 0)), 1);
    }
}
