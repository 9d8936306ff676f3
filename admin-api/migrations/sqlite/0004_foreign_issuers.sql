-- EdgeWarden admin API: revocations name the issuer they apply to, and the foreign issuers the admin API
-- trusts (SQLite). Keep in step with migrations/postgres/0004_foreign_issuers.sql.

-- A `sub`, `client_id` or `jti` is unique only within its issuer (RFC 7519), so the issuer is part of a
-- revocation's identity: the same subject revoked for two issuers is two entries.
-- '' stands for "every issuer": the rows recorded before this migration, which the feed emits without `iss`.
-- Not NULL, because NULLs never conflict in a unique key and the upsert needs them to.
-- SQLite cannot change a primary key in place: the table is rebuilt.
CREATE TABLE revocations_new (
    kind TEXT NOT NULL,
    value TEXT NOT NULL,
    issuer TEXT NOT NULL DEFAULT '',
    seq BIGINT NOT NULL,
    reason TEXT NOT NULL,
    actor TEXT NOT NULL,
    revoked_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    PRIMARY KEY (kind, value, issuer)
);
INSERT INTO revocations_new (kind, value, issuer, seq, reason, actor, revoked_at, expires_at)
    SELECT kind, value, '', seq, reason, actor, revoked_at, expires_at FROM revocations;
DROP TABLE revocations;
ALTER TABLE revocations_new RENAME TO revocations;
CREATE INDEX revocations_seq ON revocations (seq);
CREATE INDEX revocations_expires ON revocations (expires_at);

-- Issuers other than the admin API itself whose tokens it may revoke: by jti, subject or client of that
-- issuer, or by verifying a presented token against the issuer's keys. Exactly one of `jwks_uri` (an
-- http(s) URL fetched when a token is presented) and `jwks` (the JSON document, inline) is set.
CREATE TABLE trusted_issuers (
    issuer TEXT PRIMARY KEY,
    jwks_uri TEXT,
    jwks TEXT,
    created_at BIGINT NOT NULL,
    created_by TEXT NOT NULL
);
