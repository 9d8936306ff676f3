-- EdgeWarden admin API: failures per client address and minute (SQLite).
-- Keep in step with migrations/postgres/0010_address_failure_minutes.sql.

-- The repeated-failures detector sums an address's failures over the window from this rollup, which the
-- ingestion writer adds each batch's failure samples to, instead of counting the raw samples: those are
-- thousands per address in a five-minute window under a flood, and the count grew with the load (1-2.7 ms
-- per usage batch in the usage bench). Pruned with the samples, so it covers what they cover.
CREATE TABLE address_failure_minutes (
    address TEXT NOT NULL,
    minute BIGINT NOT NULL,
    failures BIGINT NOT NULL,
    PRIMARY KEY (address, minute)
);
CREATE INDEX address_failure_minutes_minute ON address_failure_minutes (minute);
INSERT INTO address_failure_minutes (address, minute, failures)
    SELECT client_address, at - (at % 60), COUNT(*) FROM usage_failures GROUP BY client_address, at - (at % 60);
