-- EdgeWarden admin API, initial schema (PostgreSQL). Keep in step with migrations/sqlite/0001_initial.sql.
-- Portable types only: BIGINT (Unix seconds, counters), TEXT, BYTEA. Secrets and tokens are stored as SHA-256 hex or argon2id PHC strings.

CREATE TABLE api_keys (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    role TEXT NOT NULL,
    client_id TEXT,
    key_hash TEXT NOT NULL UNIQUE,
    created_at BIGINT NOT NULL,
    revoked_at BIGINT
);

CREATE TABLE users (
    id TEXT PRIMARY KEY,
    username TEXT NOT NULL UNIQUE,
    password_hash TEXT NOT NULL,
    role TEXT NOT NULL,
    created_at BIGINT NOT NULL
);

CREATE TABLE sessions (
    id_hash TEXT PRIMARY KEY,
    user_id TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    csrf_hash TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL
);

CREATE TABLE signing_keys (
    kid TEXT PRIMARY KEY,
    alg TEXT NOT NULL,
    public_jwk TEXT NOT NULL,
    private_key_enc BYTEA NOT NULL,
    status TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    retired_at BIGINT
);

CREATE TABLE clients (
    client_id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    secret_hash TEXT,
    allowed_scopes TEXT NOT NULL,
    allowed_roles TEXT NOT NULL,
    audiences TEXT NOT NULL,
    max_lifetime_seconds BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);

CREATE TABLE tokens (
    jti TEXT PRIMARY KEY,
    subject TEXT NOT NULL,
    client_id TEXT NOT NULL,
    scopes TEXT NOT NULL,
    roles TEXT NOT NULL,
    audience TEXT NOT NULL,
    kid TEXT NOT NULL,
    issued_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    family_id TEXT,
    issued_by TEXT NOT NULL,
    revoked_at BIGINT,
    revoke_reason TEXT
);
CREATE INDEX tokens_subject ON tokens (subject, expires_at);
CREATE INDEX tokens_client ON tokens (client_id, expires_at);
CREATE INDEX tokens_family ON tokens (family_id);
CREATE INDEX tokens_kid ON tokens (kid, expires_at);
CREATE INDEX tokens_issued ON tokens (issued_at);

CREATE TABLE refresh_tokens (
    token_hash TEXT PRIMARY KEY,
    family_id TEXT NOT NULL,
    client_id TEXT NOT NULL,
    subject TEXT NOT NULL,
    scopes TEXT NOT NULL,
    roles TEXT NOT NULL,
    audience TEXT NOT NULL,
    access_jti TEXT NOT NULL,
    issued_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    state TEXT NOT NULL,
    used_at BIGINT
);
CREATE INDEX refresh_tokens_family ON refresh_tokens (family_id);
CREATE INDEX refresh_tokens_subject ON refresh_tokens (subject);
CREATE INDEX refresh_tokens_client ON refresh_tokens (client_id);

-- One row: the feed cursor. Writers bump it inside their transaction, which serialises them, so
-- cursors become visible in commit order and a poller can never skip a change.
CREATE TABLE feed_state (
    id BIGINT PRIMARY KEY,
    current_cursor BIGINT NOT NULL
);
INSERT INTO feed_state (id, current_cursor) VALUES (1, 0);

CREATE TABLE revocations (
    kind TEXT NOT NULL,
    value TEXT NOT NULL,
    seq BIGINT NOT NULL,
    reason TEXT NOT NULL,
    actor TEXT NOT NULL,
    revoked_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    PRIMARY KEY (kind, value)
);
CREATE INDEX revocations_seq ON revocations (seq);
CREATE INDEX revocations_expires ON revocations (expires_at);

CREATE TABLE anomalies (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    severity TEXT NOT NULL,
    subject_kind TEXT NOT NULL,
    subject TEXT NOT NULL,
    evidence TEXT NOT NULL,
    state TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE INDEX anomalies_state ON anomalies (state, created_at);
