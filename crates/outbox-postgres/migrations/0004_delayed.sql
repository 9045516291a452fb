-- Migration 4: only messages that were ever not due at once are indexed by due time.
--
-- The claim needs the messages that are not yet due (scheduled later, or waiting for a retry):
-- found through an index on available_at. But almost every message is due the moment it
-- commits, and maintaining that index cost every enqueuing transaction about 5-10% of its
-- throughput (16 producers on 2 cores). `delayed` marks the messages enqueued with a schedule
-- and those rescheduled after a failure; only they are indexed. A message that is not delayed
-- is due, whatever the clocks say.
ALTER TABLE {schema}.messages ADD COLUMN IF NOT EXISTS delayed boolean NOT NULL DEFAULT false;
UPDATE {schema}.messages SET delayed = true WHERE available_at > now();
CREATE INDEX IF NOT EXISTS messages_delayed_available_at_idx
    ON {schema}.messages (available_at) WHERE delayed;
DROP INDEX IF EXISTS {schema}.messages_available_at_idx;
