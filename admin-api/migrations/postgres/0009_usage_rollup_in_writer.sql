-- EdgeWarden admin API: the hourly usage rollup written by the ingestion writer (PostgreSQL).
-- Keep in step with migrations/sqlite/0009_usage_rollup_in_writer.sql.

-- The writer sums each group of usage batches per (hour, edge, reason) and adds them to `usage_hourly`
-- in one multi-row upsert; the per-row trigger on insert and update cost a third of each write.
-- Deletes (retention) still subtract through the same function, so the rollup stays the sum of the
-- minute counts it covers.
DROP TRIGGER usage_hourly_apply ON usage_counts;
CREATE TRIGGER usage_hourly_apply AFTER DELETE ON usage_counts
    FOR EACH ROW EXECUTE FUNCTION usage_hourly_apply();

-- The detectors' window sums per subject and per client read refusals only (a small share of the
-- counts): these partial indexes hold just those rows, so a sum visits the subject's or client's
-- refusals in the window instead of every decision it made.
CREATE INDEX usage_counts_refusals_subject ON usage_counts (subject, bucket) WHERE reason NOT IN ('allowed', 'anonymous');
CREATE INDEX usage_counts_refusals_client ON usage_counts (client_id, bucket) WHERE reason NOT IN ('allowed', 'anonymous');

-- The parts ledger: a batch too large for one short transaction is stored in parts, each in its own
-- transaction that also records here how many parts of the batch (keyed by its body's SHA-256) are
-- stored, so a resent batch stores only the parts that are not. Kept a day.
CREATE TABLE usage_parts (
    batch TEXT PRIMARY KEY,
    done BIGINT NOT NULL,
    at BIGINT NOT NULL
);
CREATE INDEX usage_parts_at ON usage_parts (at);
