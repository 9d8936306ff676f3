-- EdgeWarden admin API: every Envoy polling under an edge name, and the configurations edges report (SQLite).
-- Keep in step with migrations/postgres/0008_edge_instances.sql.

-- One row per (edge name, instance): instance is the id an Envoy process makes for itself at start
-- (x-edgewarden-instance), '' for an edge that sends none. Written when an instance is first seen, when
-- its cursor advances or its configuration changes, and by each replica's periodic flush of its polls.
CREATE TABLE edge_instances (
    edge TEXT NOT NULL,
    instance TEXT NOT NULL,
    node TEXT,
    address TEXT,
    first_seen BIGINT NOT NULL,
    last_poll BIGINT,
    feed_cursor BIGINT,
    config_hash TEXT,
    PRIMARY KEY (edge, instance)
);

-- Configurations edges run, secrets left out (control_plane.api_key and inline key material are
-- "<redacted>"), by the SHA-256 of the document as the edge sent it.
CREATE TABLE edge_configs (
    hash TEXT PRIMARY KEY,
    document TEXT NOT NULL,
    first_seen BIGINT NOT NULL,
    edge TEXT NOT NULL,
    instance TEXT NOT NULL
);
