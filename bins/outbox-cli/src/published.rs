//! `outbox purge-published`: deletes published messages kept past a given age.

use anyhow::bail;
use serde::Serialize;

use crate::cli::{Purge, Settings};
use crate::output::{self, print_json};
use crate::{confirm, db};

#[derive(Debug, Serialize)]
struct PurgeReport<'a> {
    schema: &'a str,
    action: &'static str,
    older_than_seconds: u64,
    matched: u64,
    purged: u64,
}

/// `outbox purge-published`.
pub(crate) async fn purge(settings: &Settings, purge: &Purge) -> anyhow::Result<()> {
    let outbox = db::outbox(settings)?;
    let client = db::connect(settings).await?;
    let fail = |e: outbox_postgres::Error| {
        db::failed("purge published messages", &settings.schema, e.code(), &e)
    };
    let age = humantime::format_duration(purge.older_than).to_string();
    let matched = outbox
        .count_published(&client, purge.older_than)
        .await
        .map_err(fail)?;
    let mut purged = 0;
    if matched > 0 {
        if purge.confirm {
            let question = format!(
                "Purge {matched} published message{} kept longer than {age} in schema \"{}\" on {} \
                 (this cannot be undone)?",
                if matched == 1 { "" } else { "s" },
                settings.schema,
                settings.database_redacted,
            );
            if !confirm::ask_on_terminal(&question)? {
                bail!("aborted: nothing was changed");
            }
        }
        let bar = output::batch_progress("purging", matched, purge.batch_size);
        let result = outbox
            .purge_published(&client, purge.older_than, purge.batch_size, |n| {
                bar.set_position(n)
            })
            .await;
        bar.finish_and_clear();
        purged = result.map_err(fail)?;
    }
    let report = PurgeReport {
        schema: &settings.schema,
        action: "purge-published",
        older_than_seconds: purge.older_than.as_secs(),
        matched,
        purged,
    };
    if settings.json {
        print_json(&report)?;
    } else if purged == 0 {
        println!("No published messages kept longer than {age}: nothing to purge.");
    } else {
        println!(
            "Purged {purged} published message{} kept longer than {age}.",
            if purged == 1 { "" } else { "s" }
        );
    }
    Ok(())
}
