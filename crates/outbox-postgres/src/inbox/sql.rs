//! Every SQL statement of the inbox, in one place.
//!
//! Templates name the table as `{table}` (schema-qualified) and its index as `{index}`;
//! [`InboxSql::render`] replaces them with validated, quoted identifiers once, when a
//! [`PgInbox`](super::PgInbox) is made. Values always travel as bind parameters.

/// Whether the inbox table exists yet; `$1` is the quoted, schema-qualified name. `to_regclass`
/// answers NULL for a missing schema or table instead of failing.
pub(super) const TABLE_EXISTS: &str = "SELECT to_regclass($1::text) IS NOT NULL AS present";

/// Idempotent, like the index below: every object is created only if missing, so the
/// statements are their own migration.
const CREATE_TABLE: &str = "\
CREATE SCHEMA IF NOT EXISTS {schema};
CREATE TABLE IF NOT EXISTS {table} (
    message_id  uuid        PRIMARY KEY,
    subject     text        NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now()
)";

/// Reads no row, but fails if a table of that name existed without the inbox's columns (for
/// example another application's table), so `migrate` reports it instead of `process`.
const CHECK_COLUMNS: &str = "SELECT message_id, subject, received_at FROM {table} LIMIT 0";

/// Purges walk this index, oldest first.
const CREATE_INDEX: &str = "CREATE INDEX IF NOT EXISTS {index} ON {table} (received_at)";

// Under READ COMMITTED, a conflicting row inserted by a transaction still in progress makes this
// statement wait for that transaction: after its commit the row conflicts (nothing inserted),
// after its rollback this insert goes ahead. `received_at` is the transaction's start.
const RECORD: &str = "\
INSERT INTO {table} (message_id, subject) VALUES ($1, $2)
ON CONFLICT (message_id) DO NOTHING";

const CONTAINS: &str = "SELECT EXISTS (SELECT 1 FROM {table} WHERE message_id = $1) AS present";

/// The purge's cutoff on the database's clock: `$1` microseconds before `now()`.
pub(super) const CUTOFF: &str = "SELECT now() - $1::bigint * interval '1 microsecond' AS cutoff";

// One batch of a purge, oldest first along the `received_at` index.
const PURGE_BATCH: &str = "\
DELETE FROM {table} WHERE message_id IN (
    SELECT message_id FROM {table}
    WHERE received_at < $1
    ORDER BY received_at
    LIMIT $2
)";

/// The statements of one inbox table, rendered once.
#[derive(Debug)]
pub(super) struct InboxSql {
    /// The quoted, schema-qualified table name, as `to_regclass` reads it.
    pub(super) table: String,
    pub(super) create_table: String,
    pub(super) check_columns: String,
    pub(super) create_index: String,
    pub(super) record: String,
    pub(super) contains: String,
    pub(super) purge_batch: String,
}

impl InboxSql {
    /// Renders every statement for `schema`, `table` and `index` (all already validated).
    pub(super) fn render(schema: &str, table: &str, index: &str) -> Self {
        let schema = quote_ident(schema);
        let qualified = format!("{schema}.{}", quote_ident(table));
        let index = quote_ident(index);
        let r = |template: &str| {
            template
                .replace("{schema}", &schema)
                .replace("{table}", &qualified)
                .replace("{index}", &index)
        };
        Self {
            create_table: r(CREATE_TABLE),
            check_columns: r(CHECK_COLUMNS),
            create_index: r(CREATE_INDEX),
            record: r(RECORD),
            contains: r(CONTAINS),
            purge_batch: r(PURGE_BATCH),
            table: qualified,
        }
    }
}

/// Quotes an identifier. Names are validated before they get here; doubling quotes keeps this
/// safe on its own.
fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_placeholder_is_replaced_with_quoted_names() {
        let sql = InboxSql::render("app_1", "inbox", "inbox_received_at_idx");
        for text in [
            &sql.create_table,
            &sql.check_columns,
            &sql.create_index,
            &sql.record,
            &sql.contains,
            &sql.purge_batch,
        ] {
            assert!(!text.contains('{'), "{text}");
        }
        assert_eq!(sql.table, "\"app_1\".\"inbox\"");
        assert!(
            sql.create_table
                .starts_with("CREATE SCHEMA IF NOT EXISTS \"app_1\";")
        );
        assert_eq!(
            sql.create_index,
            "CREATE INDEX IF NOT EXISTS \"inbox_received_at_idx\" ON \"app_1\".\"inbox\" (received_at)"
        );
        assert!(sql.record.starts_with("INSERT INTO \"app_1\".\"inbox\" "));
    }

    #[test]
    fn quoting_doubles_quotes() {
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
    }
}
