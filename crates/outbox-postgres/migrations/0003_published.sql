-- Migration 3: published messages kept for a while (PgConfig::retention), outside the hot table.
--
-- With a retention, the statement that completes a batch moves its rows here instead of only
-- deleting them: `messages` stays as small as without, and this table is append-mostly, purged
-- by age in batches along published_at_idx.
CREATE TABLE IF NOT EXISTS {schema}.published (
    seq          bigint      PRIMARY KEY,
    id           uuid        NOT NULL,
    subject      text        NOT NULL,
    key          text,
    payload      bytea       NOT NULL,
    headers      jsonb       NOT NULL DEFAULT '{}',
    created_at   timestamptz NOT NULL,
    attempts     integer     NOT NULL,
    published_at timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX IF NOT EXISTS published_published_at_idx ON {schema}.published (published_at, seq);
