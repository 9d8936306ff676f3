-- EdgeWarden admin API: revocations name the issuer they apply to, and the foreign issuers the admin API
-- trusts (PostgreSQL). Keep in step with migrations/sqlite/0004_foreign_issuers.sql.

-- A `sub`, `client_id` or `jti` is unique only within its issuer (RFC 7519), so the issuer is part of a
-- revocation's identity: the same subject revoked for two issuers is two entries.
-- '' stands for "every issuer": the rows recorded before this migration, which the feed emits without `iss`.
-- Not NULL, because NULLs never conflict in a unique key and the upsert needs them to.
ALTER TABLE revocations ADD COLUMN issuer TEXT NOT NULL DEFAULT '';
ALTER TABLE revocations DROP CONSTRAINT revocations_pkey;
ALTER TABLE revocations ADD PRIMARY KEY (kind, value, issuer);

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
