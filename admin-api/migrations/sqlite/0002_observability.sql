-- EdgeWarden admin API: event log, usage, edges, anomaly dedup, webhooks (SQLite).
-- Keep in step with migrations/postgres/0002_observability.sql.

-- Every lifecycle event and admin action. Ids are time-ordered (`evt_` + 14 hex digits of Unix
-- microseconds + 8 random hex digits), so ORDER BY id is chronological.
CREATE TABLE events (
    id TEXT PRIMARY KEY,
    at BIGINT NOT NULL,
    kind TEXT NOT NULL,
    actor TEXT NOT NULL,
    subject TEXT,
    client_id TEXT,
    jti TEXT,
    details TEXT NOT NULL
);
CREATE INDEX events_at ON events (at);
CREATE INDEX events_kind ON events (kind, id);
CREATE INDEX events_subject ON events (subject, id);
CREATE INDEX events_client ON events (client_id, id);
CREATE INDEX events_jti ON events (jti, id);

-- Decision counts reported by edges, summed per minute. Empty strings stand for "not reported" so
-- every column can be part of the key. `token` is the jti, or `fp:<fingerprint>` for tokens without one.
CREATE TABLE usage_counts (
    bucket BIGINT NOT NULL,
    edge TEXT NOT NULL,
    token TEXT NOT NULL,
    subject TEXT NOT NULL,
    client_id TEXT NOT NULL,
    route TEXT NOT NULL,
    reason TEXT NOT NULL,
    count BIGINT NOT NULL,
    PRIMARY KEY (bucket, edge, token, subject, client_id, route, reason)
);
CREATE INDEX usage_counts_subject ON usage_counts (subject, bucket);
CREATE INDEX usage_counts_client ON usage_counts (client_id, bucket);
CREATE INDEX usage_counts_token ON usage_counts (token, bucket);

-- Sampled failures with the client address, pruned by age and count.
CREATE TABLE usage_failures (
    id TEXT PRIMARY KEY,
    edge TEXT NOT NULL,
    at BIGINT NOT NULL,
    received_at BIGINT NOT NULL,
    jti TEXT,
    subject TEXT,
    client_id TEXT,
    route TEXT,
    reason TEXT NOT NULL,
    client_address TEXT NOT NULL,
    iat BIGINT,
    nbf BIGINT
);
CREATE INDEX usage_failures_at ON usage_failures (at);
CREATE INDEX usage_failures_address ON usage_failures (client_address, at);
CREATE INDEX usage_failures_subject ON usage_failures (subject, at);
CREATE INDEX usage_failures_jti ON usage_failures (jti, at);

-- Addresses each token was seen from (for the many-addresses detector).
CREATE TABLE token_addresses (
    token TEXT NOT NULL,
    address TEXT NOT NULL,
    first_seen BIGINT NOT NULL,
    last_seen BIGINT NOT NULL,
    PRIMARY KEY (token, address)
);
CREATE INDEX token_addresses_seen ON token_addresses (last_seen);

-- First and last use of each token, from usage reports.
ALTER TABLE tokens ADD COLUMN first_used_at BIGINT;
ALTER TABLE tokens ADD COLUMN last_used_at BIGINT;
ALTER TABLE tokens ADD COLUMN use_count BIGINT NOT NULL DEFAULT 0;
ALTER TABLE tokens ADD COLUMN last_use_recorded BIGINT NOT NULL DEFAULT 0;

-- Edges: the last poll (flushed from each replica's memory) and the last usage report.
CREATE TABLE edges (
    name TEXT PRIMARY KEY,
    address TEXT,
    last_poll BIGINT,
    feed_cursor BIGINT,
    last_report BIGINT,
    reports BIGINT NOT NULL DEFAULT 0,
    events BIGINT NOT NULL DEFAULT 0,
    first_seen BIGINT NOT NULL
);

-- Deduplicated anomalies: one open (or acknowledged) row per kind and subject collects new evidence.
ALTER TABLE anomalies ADD COLUMN occurrences BIGINT NOT NULL DEFAULT 1;
ALTER TABLE anomalies ADD COLUMN last_seen BIGINT;
CREATE INDEX anomalies_dedup ON anomalies (kind, subject_kind, subject, state);

CREATE TABLE webhooks (
    id TEXT PRIMARY KEY,
    url TEXT NOT NULL,
    kinds TEXT NOT NULL,
    secret_enc BLOB NOT NULL,
    description TEXT NOT NULL,
    active BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    created_by TEXT NOT NULL
);

-- One row per (webhook, event); the id is derived from both, so every replica's dispatcher may
-- insert it and only one row results.
CREATE TABLE webhook_deliveries (
    id TEXT PRIMARY KEY,
    webhook_id TEXT NOT NULL REFERENCES webhooks(id) ON DELETE CASCADE,
    event_id TEXT NOT NULL,
    state TEXT NOT NULL,
    attempts BIGINT NOT NULL,
    next_attempt_at BIGINT NOT NULL,
    locked_until BIGINT NOT NULL,
    last_status BIGINT,
    last_error TEXT,
    created_at BIGINT NOT NULL,
    delivered_at BIGINT
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (state, next_attempt_at);
CREATE INDEX webhook_deliveries_hook ON webhook_deliveries (webhook_id, created_at);
