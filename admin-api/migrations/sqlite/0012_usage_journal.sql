-- EdgeWarden admin API: the usage journal (SQLite).
-- Keep in step with migrations/postgres/0012_usage_journal.sql.

-- With `serve --usage-journal`, a usage batch is answered once its prepared form (`body`, postcard) is a row
-- here, and folded into the usage tables afterwards, many batches per transaction. `done` counts the parts
-- of the batch stored so far (a batch larger than one fold is stored in `parts` parts, each claimed in the
-- transaction that stores it); a row with every part stored waits only for the anomaly detectors, and is
-- deleted once they ran.
CREATE TABLE usage_journal (
    id INTEGER PRIMARY KEY,
    received_at BIGINT NOT NULL,
    entries BIGINT NOT NULL,
    weight BIGINT NOT NULL,
    parts BIGINT NOT NULL,
    done BIGINT NOT NULL DEFAULT 0,
    stored_at BIGINT,
    body BLOB NOT NULL
);
