//! `outbox dead-letters list|replay|purge`.

use std::collections::HashSet;

use anyhow::bail;
use outbox_postgres::dead_letter::{BulkProgress, DeadLetterFilter};
use outbox_postgres::{DeadLetter, PgOutbox};
use serde::Serialize;
use tokio_postgres::Client;
use uuid::Uuid;

use crate::cli::{Bulk, BulkKind, Settings, Target};
use crate::confirm;
use crate::db;
use crate::output::{self, Table, print_json, truncate};

/// The widest error shown in a table; `--json` has them whole.
const ERROR_WIDTH: usize = 60;

/// One dead letter in `--json` output.
#[derive(Debug, Serialize)]
struct DeadLetterJson<'a> {
    id: Uuid,
    seq: i64,
    subject: &'a str,
    key: Option<&'a str>,
    attempts: u32,
    error: &'a str,
    failed_at: String,
    created_at: String,
    headers: &'a std::collections::BTreeMap<String, String>,
    /// The payload as text when it is UTF-8.
    #[serde(skip_serializing_if = "Option::is_none")]
    payload: Option<&'a str>,
    /// The payload in base64 when it is not UTF-8.
    #[serde(skip_serializing_if = "Option::is_none")]
    payload_base64: Option<String>,
}

impl<'a> From<&'a DeadLetter> for DeadLetterJson<'a> {
    fn from(d: &'a DeadLetter) -> Self {
        let m = &d.message;
        let text = std::str::from_utf8(m.payload()).ok();
        DeadLetterJson {
            id: m.id(),
            seq: d.seq,
            subject: m.subject(),
            key: m.key(),
            attempts: d.attempts,
            error: &d.error,
            failed_at: output::timestamp(d.failed_at),
            created_at: output::timestamp(m.created_at()),
            headers: m.headers(),
            payload: text,
            payload_base64: text.is_none().then(|| output::base64(m.payload())),
        }
    }
}

/// What `outbox dead-letters list --json` prints.
#[derive(Debug, Serialize)]
struct Listing<'a> {
    schema: &'a str,
    /// Dead letters matching the filters, in all.
    total: u64,
    offset: usize,
    limit: usize,
    dead_letters: Vec<DeadLetterJson<'a>>,
}

/// `outbox dead-letters list`.
pub(crate) async fn list(
    settings: &Settings,
    filter: &DeadLetterFilter,
    limit: usize,
    offset: usize,
) -> anyhow::Result<()> {
    let outbox = db::outbox(settings)?;
    let client = db::connect(settings).await?;
    let fail = |e: outbox_postgres::Error| {
        db::failed("listing dead letters", &settings.schema, e.code(), &e)
    };
    let total = outbox
        .count_dead_letters_matching(&client, filter)
        .await
        .map_err(fail)?;
    let page = outbox
        .dead_letters_matching(&client, filter, limit, offset)
        .await
        .map_err(fail)?;
    if settings.json {
        return print_json(&Listing {
            schema: &settings.schema,
            total,
            offset,
            limit,
            dead_letters: page.iter().map(DeadLetterJson::from).collect(),
        });
    }
    let matching = describe(filter);
    if page.is_empty() {
        if total == 0 {
            println!("No dead letters{}.", suffix(&matching));
        } else {
            println!(
                "No dead letters past offset {offset} ({total}{}).",
                suffix(&matching)
            );
        }
        return Ok(());
    }
    let mut table = Table::new(&[
        "ID",
        "SEQ",
        "SUBJECT",
        "KEY",
        "ATTEMPTS",
        "FAILED AT",
        "ERROR",
    ]);
    for d in &page {
        let m = &d.message;
        table.row(vec![
            m.id().to_string(),
            d.seq.to_string(),
            m.subject().to_owned(),
            m.key().unwrap_or("-").to_owned(),
            d.attempts.to_string(),
            output::timestamp_seconds(d.failed_at),
            truncate(&d.error, ERROR_WIDTH),
        ]);
    }
    print!("{}", table.render());
    println!(
        "{}-{} of {}{}, oldest failure first.",
        offset + 1,
        offset + page.len(),
        dead_letters(total),
        suffix(&matching)
    );
    Ok(())
}

/// What `outbox dead-letters replay|purge --json` prints.
#[derive(Debug, Serialize)]
struct BulkReport<'a> {
    schema: &'a str,
    action: &'static str,
    /// Dead letters selected when their batch ran.
    matched: u64,
    /// Replayed or purged (named after the action in the JSON: `replayed` or `purged`).
    #[serde(skip)]
    done: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    replayed: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    purged: Option<u64>,
    /// Selected but left alone: gone meanwhile, or (replay) a message with the same id is still
    /// in the outbox.
    skipped: u64,
    /// Statements run.
    batches: u64,
    /// Ids given with `--id` that are not dead letters.
    not_found: Vec<Uuid>,
}

/// `outbox dead-letters replay` and `outbox dead-letters purge`.
pub(crate) async fn bulk(settings: &Settings, bulk: &Bulk) -> anyhow::Result<()> {
    let outbox = db::outbox(settings)?;
    let client = db::connect(settings).await?;
    let verb = bulk.kind.verb();
    let fail = |e: outbox_postgres::Error| {
        db::failed(
            &format!("{verb} dead letters"),
            &settings.schema,
            e.code(),
            &e,
        )
    };
    let filter = bulk.target.filter();
    let (selected, not_found) = match &bulk.target {
        Target::Ids(ids) => {
            let found = present(&outbox, &client, &filter).await.map_err(fail)?;
            let missing: Vec<Uuid> = ids
                .iter()
                .filter(|id| !found.contains(id))
                .copied()
                .collect();
            (found.len() as u64, missing)
        }
        Target::Matching(filter) => (
            outbox
                .count_dead_letters_matching(&client, filter)
                .await
                .map_err(fail)?,
            Vec::new(),
        ),
    };
    let mut outcome = BulkProgress::default();
    if selected > 0 {
        if bulk.confirm {
            let question = question(bulk, selected, &filter, settings);
            if !confirm::ask_on_terminal(&question)? {
                bail!("aborted: nothing was changed");
            }
        }
        outcome = run(&outbox, &client, bulk, &filter, selected)
            .await
            .map_err(fail)?;
    }
    let report = BulkReport {
        schema: &settings.schema,
        action: verb,
        matched: outcome.matched,
        done: outcome.done,
        replayed: (bulk.kind == BulkKind::Replay).then_some(outcome.done),
        purged: (bulk.kind == BulkKind::Purge).then_some(outcome.done),
        skipped: outcome.skipped(),
        batches: outcome.batches,
        not_found,
    };
    if settings.json {
        print_json(&report)?;
    } else {
        println!("{}", summary(&report, &filter));
    }
    if !report.not_found.is_empty() {
        let ids: Vec<String> = report.not_found.iter().map(Uuid::to_string).collect();
        bail!(
            "{} of the given ids {} no dead letter: {}",
            ids.len(),
            if ids.len() == 1 { "is" } else { "are" },
            ids.join(", ")
        );
    }
    Ok(())
}

/// The distinct message ids among the dead letters `filter` selects.
async fn present(
    outbox: &PgOutbox,
    client: &Client,
    filter: &DeadLetterFilter,
) -> Result<HashSet<Uuid>, outbox_postgres::Error> {
    let rows = outbox
        .dead_letters_matching(client, filter, usize::MAX, 0)
        .await?;
    Ok(rows.iter().map(|d| d.message.id()).collect())
}

/// Runs the operation in batches, with a progress bar on a terminal when there are many.
async fn run(
    outbox: &PgOutbox,
    client: &Client,
    bulk: &Bulk,
    filter: &DeadLetterFilter,
    expected: u64,
) -> Result<BulkProgress, outbox_postgres::Error> {
    let message = match bulk.kind {
        BulkKind::Replay => "replaying",
        BulkKind::Purge => "purging",
    };
    let bar = output::batch_progress(message, expected, bulk.batch_size);
    let on_batch = |p: &BulkProgress| {
        if bar.length().is_some_and(|len| p.matched > len) {
            bar.set_length(p.matched);
        }
        bar.set_position(p.matched);
    };
    let result = match bulk.kind {
        BulkKind::Replay => {
            outbox
                .replay_dead_letters_matching(client, filter, bulk.batch_size, on_batch)
                .await
        }
        BulkKind::Purge => {
            outbox
                .purge_dead_letters_matching(client, filter, bulk.batch_size, on_batch)
                .await
        }
    };
    bar.finish_and_clear();
    result
}

fn question(bulk: &Bulk, selected: u64, filter: &DeadLetterFilter, settings: &Settings) -> String {
    let what = match &bulk.target {
        Target::Ids(_) => format!("{} named by --id", dead_letters(selected)),
        Target::Matching(_) => format!("{}{}", dead_letters(selected), suffix(&describe(filter))),
    };
    let consequence = match bulk.kind {
        BulkKind::Replay => "they will be published again",
        BulkKind::Purge => "this cannot be undone",
    };
    format!(
        "{} {what} in schema \"{}\" on {} ({consequence})?",
        capitalize(bulk.kind.verb()),
        settings.schema,
        settings.database_redacted,
    )
}

fn summary(report: &BulkReport<'_>, filter: &DeadLetterFilter) -> String {
    let matching = if filter.ids.is_some() {
        String::new()
    } else {
        suffix(&describe(filter))
    };
    if report.matched == 0 {
        return format!("No dead letters{matching}: nothing to {}.", report.action);
    }
    let mut text = match report.action {
        "replay" => format!(
            "Replayed {} of {}{matching} into the outbox.",
            report.done,
            dead_letters(report.matched)
        ),
        _ => format!(
            "Purged {} of {}{matching}.",
            report.done,
            dead_letters(report.matched)
        ),
    };
    if report.skipped > 0 {
        text.push_str(&format!(
            " Skipped {}: gone meanwhile{}.",
            report.skipped,
            if report.action == "replay" {
                ", or a message with the same id is still in the outbox"
            } else {
                ""
            }
        ));
    }
    text
}

/// The filter's conditions in words; empty when it matches everything.
fn describe(filter: &DeadLetterFilter) -> String {
    let mut parts = Vec::new();
    if let Some(ids) = &filter.ids {
        parts.push(format!("with one of {} ids", ids.len()));
    }
    if let Some(subject) = &filter.subject {
        parts.push(format!("with subject {subject:?}"));
    }
    if let Some(key) = &filter.key {
        parts.push(format!("with key {key:?}"));
    }
    if let Some(age) = filter.older_than {
        parts.push(format!(
            "that failed more than {} ago",
            humantime::format_duration(age)
        ));
    }
    parts.join(", ")
}

/// "1 dead letter", "2 dead letters".
fn dead_letters(n: u64) -> String {
    if n == 1 {
        "1 dead letter".to_owned()
    } else {
        format!("{n} dead letters")
    }
}

fn suffix(description: &str) -> String {
    if description.is_empty() {
        String::new()
    } else {
        format!(" {description}")
    }
}

fn capitalize(word: &str) -> String {
    let mut chars = word.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn filters_read_as_words() {
        assert_eq!(describe(&DeadLetterFilter::all()), "");
        assert_eq!(
            describe(
                &DeadLetterFilter::all()
                    .subject("orders.created")
                    .older_than(Duration::from_secs(7 * 86_400))
            ),
            "with subject \"orders.created\", that failed more than 7days ago"
        );
    }

    #[test]
    fn summaries_say_what_happened() {
        let report = BulkReport {
            schema: "outbox",
            action: "replay",
            matched: 7,
            done: 6,
            replayed: Some(6),
            purged: None,
            skipped: 1,
            batches: 1,
            not_found: Vec::new(),
        };
        let text = summary(&report, &DeadLetterFilter::all().key("k"));
        assert_eq!(
            text,
            "Replayed 6 of 7 dead letters with key \"k\" into the outbox. Skipped 1: gone \
             meanwhile, or a message with the same id is still in the outbox."
        );
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["replayed"], 6);
        assert!(json.get("purged").is_none());
        assert!(json.get("done").is_none());
    }
}
