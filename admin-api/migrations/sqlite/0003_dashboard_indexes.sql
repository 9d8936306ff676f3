-- EdgeWarden admin API: what the dashboard reads at scale (SQLite).
-- Keep in step with migrations/postgres/0003_dashboard_indexes.sql.

-- Token counts and listings by status: active and expired tokens are found by expiry among the
-- unrevoked ones, revoked tokens by revocation time; subject and client listings come newest first.
CREATE INDEX tokens_unrevoked_expiry ON tokens (expires_at) WHERE revoked_at IS NULL;
CREATE INDEX tokens_revoked ON tokens (revoked_at) WHERE revoked_at IS NOT NULL;
CREATE INDEX tokens_subject_issued ON tokens (subject, issued_at);
CREATE INDEX tokens_client_issued ON tokens (client_id, issued_at);

-- Decision counts per hour, edge and reason: the sum of `usage_counts` over the hour's minutes, kept
-- exact by the triggers below, so a week of decisions is a few thousand rows instead of millions.
-- Keyed by edge too, so concurrent reports from different edges never update the same row.
CREATE TABLE usage_hourly (
    hour BIGINT NOT NULL,
    edge TEXT NOT NULL,
    reason TEXT NOT NULL,
    count BIGINT NOT NULL,
    PRIMARY KEY (hour, edge, reason)
);
INSERT INTO usage_hourly (hour, edge, reason, count)
    SELECT (bucket / 3600) * 3600, edge, reason, SUM(count) FROM usage_counts GROUP BY (bucket / 3600) * 3600, edge, reason;

CREATE TRIGGER usage_hourly_insert AFTER INSERT ON usage_counts BEGIN
    INSERT INTO usage_hourly (hour, edge, reason, count) VALUES ((NEW.bucket / 3600) * 3600, NEW.edge, NEW.reason, NEW.count)
        ON CONFLICT (hour, edge, reason) DO UPDATE SET count = usage_hourly.count + excluded.count;
END;
CREATE TRIGGER usage_hourly_update AFTER UPDATE ON usage_counts BEGIN
    UPDATE usage_hourly SET count = count - OLD.count WHERE hour = (OLD.bucket / 3600) * 3600 AND edge = OLD.edge AND reason = OLD.reason;
    INSERT INTO usage_hourly (hour, edge, reason, count) VALUES ((NEW.bucket / 3600) * 3600, NEW.edge, NEW.reason, NEW.count)
        ON CONFLICT (hour, edge, reason) DO UPDATE SET count = usage_hourly.count + excluded.count;
END;
CREATE TRIGGER usage_hourly_delete AFTER DELETE ON usage_counts BEGIN
    UPDATE usage_hourly SET count = count - OLD.count WHERE hour = (OLD.bucket / 3600) * 3600 AND edge = OLD.edge AND reason = OLD.reason;
    DELETE FROM usage_hourly WHERE hour = (OLD.bucket / 3600) * 3600 AND edge = OLD.edge AND reason = OLD.reason AND count = 0;
END;

-- When each feed change was made, in milliseconds: the start of a revocation's propagation.
CREATE TABLE feed_changes (
    cursor BIGINT PRIMARY KEY,
    at_ms BIGINT NOT NULL
);
CREATE INDEX feed_changes_at ON feed_changes (at_ms);

-- When each edge's polled cursor first reached a value (written only when it advances): the end of a
-- revocation's propagation to that edge. Replicas share it, whichever one the edge polls.
CREATE TABLE edge_cursor_marks (
    edge TEXT NOT NULL,
    cursor BIGINT NOT NULL,
    first_seen_ms BIGINT NOT NULL,
    PRIMARY KEY (edge, cursor)
);
CREATE INDEX edge_cursor_marks_cursor ON edge_cursor_marks (cursor);
