-- Migration 1: the outbox and its dead letters.
--
-- `{schema}` is replaced by the configured schema name, validated and quoted. The runner applies
-- this file once, inside the transaction that holds the migration lock and records version 1.

-- Committed messages waiting to be published. `seq` is the enqueue order the relay claims in.
CREATE TABLE IF NOT EXISTS {schema}.messages (
    seq          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id           uuid        NOT NULL UNIQUE,
    subject      text        NOT NULL,
    key          text,
    payload      bytea       NOT NULL,
    headers      jsonb       NOT NULL DEFAULT '{}',
    created_at   timestamptz NOT NULL DEFAULT now(),
    available_at timestamptz NOT NULL DEFAULT now(),
    attempts     integer     NOT NULL DEFAULT 0,
    last_error   text
);

-- The claim walks `messages_pkey` in seq order and, for each keyed message, probes this index for
-- an earlier message of the same key that is not yet due (waiting for a retry). Such messages are
-- rare, so the probe is a range scan that finds nothing.
CREATE INDEX IF NOT EXISTS messages_key_available_at_idx
    ON {schema}.messages (key, available_at)
    WHERE key IS NOT NULL;

-- Messages given up on: the columns of `messages`, when and why.
CREATE TABLE IF NOT EXISTS {schema}.dead_letters (
    seq          bigint      PRIMARY KEY,
    id           uuid        NOT NULL,
    subject      text        NOT NULL,
    key          text,
    payload      bytea       NOT NULL,
    headers      jsonb       NOT NULL DEFAULT '{}',
    created_at   timestamptz NOT NULL,
    available_at timestamptz NOT NULL,
    attempts     integer     NOT NULL,
    last_error   text,
    failed_at    timestamptz NOT NULL DEFAULT now(),
    error        text        NOT NULL
);

-- Replay and purge by message id.
CREATE INDEX IF NOT EXISTS dead_letters_id_idx ON {schema}.dead_letters (id);

-- Listing oldest first and purging by age.
CREATE INDEX IF NOT EXISTS dead_letters_failed_at_idx ON {schema}.dead_letters (failed_at, seq);
