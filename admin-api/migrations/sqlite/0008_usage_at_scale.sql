-- EdgeWarden admin API: usage ingestion at fleet scale (SQLite).
-- Keep in step with migrations/postgres/0008_usage_at_scale.sql.

-- Usage batches stored lately, by the SHA-256 of their body: an edge resends a batch whose answer it
-- did not get, and a batch already here is not counted again (`detected` says whether the anomaly
-- detectors have seen it, so a batch stored just before the service died is still examined once).
-- Pruned after a day, far longer than any edge keeps an unconfirmed batch.
CREATE TABLE usage_batches (
    digest TEXT PRIMARY KEY,
    at BIGINT NOT NULL,
    detected BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX usage_batches_at ON usage_batches (at);

-- The parts of an oversized usage batch already stored, while the batch is written in several short
-- transactions: keyed by the SHA-256 of the batch's body and the split, deleted by the transaction that
-- stores the last part. A batch the service died half-way through is resent by its edge (it was never
-- acknowledged), and the parts listed here are skipped. Rows left by a batch never resent are pruned.
CREATE TABLE usage_batch_parts (
    digest TEXT NOT NULL,
    part BIGINT NOT NULL,
    at BIGINT NOT NULL,
    PRIMARY KEY (digest, part)
);
CREATE INDEX usage_batch_parts_at ON usage_batch_parts (at);

-- Refusals per minute, summed by what the anomaly detectors count over their window: per subject (every
-- refusal), per client (expired, insufficient_scope), per token (revoked), and failure samples per client
-- address. Written by the usage writer in the same transaction as `usage_counts` and `usage_failures`, so
-- a detector's window sum reads a few rows per subject instead of every decision row of the window.
CREATE TABLE usage_refusals (
    dimension TEXT NOT NULL,
    value TEXT NOT NULL,
    bucket BIGINT NOT NULL,
    reason TEXT NOT NULL,
    count BIGINT NOT NULL,
    PRIMARY KEY (dimension, value, bucket, reason)
);
CREATE INDEX usage_refusals_bucket ON usage_refusals (bucket);
-- The last day of what is already stored, so detectors keep their window across the upgrade.
INSERT INTO usage_refusals (dimension, value, bucket, reason, count)
    SELECT 'subject', subject, bucket, reason, SUM(count) FROM usage_counts
    WHERE subject <> '' AND reason NOT IN ('allowed', 'anonymous') AND bucket >= CAST(strftime('%s', 'now') AS INTEGER) - 86400
    GROUP BY subject, bucket, reason;
INSERT INTO usage_refusals (dimension, value, bucket, reason, count)
    SELECT 'client_id', client_id, bucket, reason, SUM(count) FROM usage_counts
    WHERE client_id <> '' AND reason IN ('expired', 'insufficient_scope') AND bucket >= CAST(strftime('%s', 'now') AS INTEGER) - 86400
    GROUP BY client_id, bucket, reason;
INSERT INTO usage_refusals (dimension, value, bucket, reason, count)
    SELECT 'token', token, bucket, reason, SUM(count) FROM usage_counts
    WHERE token <> '' AND reason = 'revoked' AND bucket >= CAST(strftime('%s', 'now') AS INTEGER) - 86400
    GROUP BY token, bucket, reason;
INSERT INTO usage_refusals (dimension, value, bucket, reason, count)
    SELECT 'address', client_address, (at / 60) * 60, reason, COUNT(*) FROM usage_failures
    WHERE at >= CAST(strftime('%s', 'now') AS INTEGER) - 86400
    GROUP BY client_address, (at / 60) * 60, reason;
