-- Where the ingest of EnqueueMode::WalMessage stands: the end of the last transaction whose
-- messages it moved into `messages`, updated in the same transaction as their insert. A
-- transaction read again from the replication slot after a crash is recognised by it and
-- skipped, so no message is inserted twice. One row, used only in that mode.
CREATE TABLE {schema}.wal_progress (
    only_row boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    lsn      pg_lsn  NOT NULL
);
INSERT INTO {schema}.wal_progress (lsn) VALUES ('0/0');
