-- EdgeWarden admin API: at most one live anomaly per kind and subject (SQLite).
-- Keep in step with migrations/postgres/0013_one_live_anomaly.sql.

-- Raising an anomaly refreshes the open or acknowledged one of the same kind and subject, and opens a new one
-- only where none is live. Two replicas raising the same finding at once could each see none and each open
-- one; so could two refresh-token reuses of one subject. The database now refuses the second (raising turns
-- it into a refresh of the first). Duplicates already there are resolved first, keeping the oldest live one.
UPDATE anomalies SET state = 'resolved', updated_at = CAST(strftime('%s', 'now') AS BIGINT)
WHERE state IN ('open', 'acknowledged') AND EXISTS (
    SELECT 1 FROM anomalies older
    WHERE older.kind = anomalies.kind AND older.subject_kind = anomalies.subject_kind
      AND older.subject = anomalies.subject AND older.state IN ('open', 'acknowledged')
      AND (older.created_at < anomalies.created_at OR (older.created_at = anomalies.created_at AND older.id < anomalies.id))
);
CREATE UNIQUE INDEX anomalies_live ON anomalies (kind, subject_kind, subject) WHERE state IN ('open', 'acknowledged');
