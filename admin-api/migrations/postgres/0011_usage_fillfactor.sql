-- EdgeWarden admin API: room in the pages of the tables usage ingestion updates (PostgreSQL only;
-- SQLite updates rows in place and has no such setting).

-- Most of what the ingestion writer writes adds to rows that exist: a count for a token, route and
-- reason already reported this minute, a pair of token and address already seen, a token's use count.
-- PostgreSQL writes an updated row as a new version; when the version fits in the same page and no
-- indexed column changed, it is a heap-only (HOT) update, which writes no index entry. In pages packed
-- full (the default fill factor of 100) it never fits, and every update writes an entry in each of the
-- table's indexes: six for `usage_counts`. A fill factor leaves that room in each page as it is filled
-- (pages written before this migration keep theirs until rewritten).
ALTER TABLE usage_counts SET (fillfactor = 70);
ALTER TABLE token_addresses SET (fillfactor = 70);
ALTER TABLE address_failure_minutes SET (fillfactor = 70);
ALTER TABLE usage_hourly SET (fillfactor = 50);
ALTER TABLE tokens SET (fillfactor = 85);
ALTER TABLE edges SET (fillfactor = 50);
