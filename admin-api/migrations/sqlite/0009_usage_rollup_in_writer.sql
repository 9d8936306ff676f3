-- EdgeWarden admin API: the hourly usage rollup written by the ingestion writer (SQLite).
-- Keep in step with migrations/postgres/0009_usage_rollup_in_writer.sql.

-- The writer sums each group of usage batches per (hour, edge, reason) and adds them to `usage_hourly`
-- in one multi-row upsert; the per-row triggers on insert and update cost a third of each write.
-- Deletes (retention) still subtract through `usage_hourly_delete`, so the rollup stays the sum of
-- the minute counts it covers.
DROP TRIGGER usage_hourly_insert;
DROP TRIGGER usage_hourly_update;
