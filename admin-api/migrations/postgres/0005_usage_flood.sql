-- EdgeWarden admin API: per-edge anomaly caps and retention (PostgreSQL).
-- Keep in step with migrations/sqlite/0005_usage_flood.sql.

-- The edge whose report opened an anomaly (NULL for anomalies not raised from a report), so the number
-- an edge opened within the cap window is one index range.
ALTER TABLE anomalies ADD COLUMN edge TEXT;
CREATE INDEX anomalies_edge ON anomalies (edge, created_at);

-- Retention deletes resolved anomalies by their last change.
CREATE INDEX anomalies_resolved ON anomalies (updated_at) WHERE state = 'resolved';
