-- Migration 2: a cheaper claim, and storage settings for a table that is mostly inserts and deletes.
--
-- The claim used to probe messages_key_available_at_idx once per keyed row for an earlier
-- message of its key that is not yet due. Such messages are rare: the claim now collects them
-- once per statement through an index on available_at (a range scan past now() that finds
-- nothing, usually) and probes a hash of their keys instead. A timestamp index is also cheaper
-- for producers to maintain than a text index compared under the database's collation.
CREATE INDEX IF NOT EXISTS messages_available_at_idx ON {schema}.messages (available_at);
DROP INDEX IF EXISTS {schema}.messages_key_available_at_idx;

-- Rows live for milliseconds, so the table holds few live rows and many dead ones between
-- vacuums. The store vacuums it itself every PgConfig::vacuum_every deletes; for autovacuum, a
-- fixed threshold instead of a fraction of a (backlog-sized) table, and no cost-based sleeping,
-- which keeps each autovacuum short. What bounds dead rows under autovacuum alone is the server's
-- autovacuum_naptime (README, "Table hygiene").
ALTER TABLE {schema}.messages SET (
    autovacuum_vacuum_scale_factor = 0,
    autovacuum_vacuum_threshold = 10000,
    autovacuum_vacuum_insert_scale_factor = 0,
    autovacuum_vacuum_insert_threshold = 10000,
    autovacuum_analyze_scale_factor = 0,
    autovacuum_analyze_threshold = 10000,
    autovacuum_vacuum_cost_delay = 0
);
