-- The inbox keeps a record's id only while a redelivery of it can still come:
-- `loyalty.retention.prune_inbox` deletes, oldest first by this index, what was received before
-- the retention window (`LOYALTY_INBOX_RETENTION_DAYS`). A batch's rows share their
-- transaction's `received_at`, so the index deduplicates them into one posting list per batch
-- and costs little per row.
CREATE INDEX IF NOT EXISTS inbox_received ON inbox (received_at);
