-- How long a trusted foreign issuer's access tokens live at most: a subject or client revocation of that
-- issuer stays in the feed this long (it was a fixed 24 hours).
ALTER TABLE trusted_issuers ADD COLUMN max_token_lifetime_seconds BIGINT NOT NULL DEFAULT 86400;
