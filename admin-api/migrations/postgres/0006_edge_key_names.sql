-- EdgeWarden admin API: an edge API key is bound to the edge names it may poll the feed and report
-- usage as (PostgreSQL). Keep in step with migrations/sqlite/0006_edge_key_names.sql.
-- A JSON array of names; NULL for keys of other roles and for edge keys created before this migration,
-- which stay unbound (they may act as any edge) until they are replaced by keys created with --edge.
ALTER TABLE api_keys ADD COLUMN edges TEXT;
