//! Usage floods (issue 13, findings 3 and 4; issue 14): a flood of usage batches at the documented limits
//! never makes a concurrent revocation or issuance fail or stall, and every batch is either stored (2xx)
//! or refused with 503 and `Retry-After`, never half-stored; a flood of reports opens deduplicated
//! anomalies within the per-edge cap and counts what the cap kept out; retention prunes usage, events and
//! resolved anomalies. Each runs on SQLite and on PostgreSQL.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::{header, StatusCode};
use common::{Backend, TestApp, TestDb};
use edgewarden_admin::db::now;
use serde_json::{json, Value};

both_backends!(
    usage_flood_never_fails_or_stalls_revocations_and_issuance,
    flood_of_findings_opens_deduplicated_anomalies_within_the_edge_cap,
    retention_prunes_usage_events_and_resolved_anomalies,
    oversized_batch_is_stored_in_parts_and_counted_once_when_resent,
    same_oversized_batch_sent_twice_at_once_is_counted_once,
    journaled_batch_heavier_than_a_fold_is_stored_in_parts_once,
    journal_finds_the_anomalies_the_pipeline_without_it_finds,
    unreadable_journal_rows_hold_up_no_batch_behind_them,
);

/// SQLite's WAL starts over under a steady stream of writes and reads (the checkpointer's restart):
/// passive checkpoints alone never let it, so it grew by every write (2 GB in a 30 s usage bench).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_wal_starts_over_under_a_steady_stream_of_writes() {
    let db = TestDb::new(Backend::Sqlite).await;
    let store = edgewarden_admin::db::Db::connect(&db.config())
        .await
        .expect("connect");
    sqlx::query("CREATE TABLE wal_test (id INTEGER PRIMARY KEY, v BLOB NOT NULL)")
        .execute(&store.pool)
        .await
        .unwrap();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    // A bulk writer committing a page or two at a time, and a reader, both without pause.
    let writer = tokio::spawn({
        let (store, stop) = (store.clone(), stop.clone());
        async move {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let _turn = store.bulk_write_turn().await;
                let mut tx = store.begin_bulk().await.unwrap();
                sqlx::query("INSERT INTO wal_test (v) VALUES (zeroblob(3000))")
                    .execute(&mut *tx)
                    .await
                    .unwrap();
                tx.commit().await.unwrap();
            }
        }
    });
    let reader = tokio::spawn({
        let (store, stop) = (store.clone(), stop.clone());
        async move {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                sqlx::query("SELECT MAX(id) FROM wal_test")
                    .fetch_one(&store.pool)
                    .await
                    .unwrap();
            }
        }
    });
    // (rows written, frames in the log, restarted) at each round of the checkpointer.
    let mut rounds: Vec<(i64, i64, bool)> = Vec::new();
    for _ in 0..12 {
        tokio::time::sleep(Duration::from_millis(150)).await;
        let rows: Option<i64> = sqlx::query_scalar("SELECT MAX(id) FROM wal_test")
            .fetch_one(&store.pool)
            .await
            .unwrap();
        let (log, restarted) = store.checkpoint(64).await.expect("checkpoint");
        rounds.push((rows.unwrap_or(0), log, restarted));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    writer.await.unwrap();
    reader.await.unwrap();
    // Frames per row written: in the first round the log holds every frame so far, in the last one only
    // the frames since the round before when the log started over (about twelve times more without).
    let (first, last, before) = (rounds[0], rounds[11], rounds[10]);
    assert!(
        first.0 > 10 && last.0 - before.0 > 10,
        "the writer barely wrote: {rounds:?}"
    );
    let per_row_first = first.1 as f64 / first.0 as f64;
    let per_row_last = last.1 as f64 / (last.0 - before.0) as f64;
    assert!(
        per_row_last < 3.0 * per_row_first,
        "the WAL did not start over: {per_row_last:.1} frames per row written since the last round, \
         {per_row_first:.1} in the first; (rows, frames in the log, restarted) per round: {rounds:?}"
    );
}

/// Longest a revocation or an issuance may take during the flood (a debug build on a loaded machine;
/// before the ingestion writer they failed with "database is locked" after 5 s or more).
const WRITE_BOUND: Duration = Duration::from_secs(3);

/// A batch at the documented limits (10,000 count entries, 1,000 failure samples) from `edge`.
fn full_batch(edge: &str, seed: usize) -> (Value, i64) {
    let now = now();
    let mut total = 0;
    let counts: Vec<Value> = (0..10_000)
        .map(|i| {
            let count = 1 + (i % 7) as i64;
            total += count;
            json!({
                "jti": format!("flood-{seed}-{i}"),
                "subject": format!("user-{}", i % 300),
                "client_id": format!("client-{}", i % 20),
                "route": format!("/api/items/{}", i % 50),
                "reason": "allowed",
                "count": count,
                "addresses": [format!("10.{}.{}.{}", seed % 250, i % 250, 1 + i % 200)],
            })
        })
        .collect();
    let failures: Vec<Value> = (0..1_000)
        .map(|i| {
            json!({"reason": "bad_signature", "client_address": format!("198.51.{}.{}", seed % 250, i % 25),
                   "at": now - 5, "route": "/api/items"})
        })
        .collect();
    (
        json!({"edge": edge, "interval_start": now - 10, "interval_end": now, "counts": counts, "failures": failures}),
        total,
    )
}

async fn usage_flood_never_fails_or_stalls_revocations_and_issuance(backend: Backend) {
    let db = TestDb::new(backend).await;
    let mut config = db.config();
    // Room for a few full batches: the rest of the flood is told to come back.
    config.usage.queue_entries = 40_000;
    let app = Arc::new(TestApp::with_config(config, db).await);
    app.client("billing", &["read"], &[]).await;

    const BATCHES: usize = 32;
    // The bodies as edges send them, serialized before the flood starts. Serialized inside it (1.5 MB
    // each, in a debug build) they took the runtime's two workers, which serve the app too, for seconds:
    // that, not the service, was what held the first revocation 3 to 6 s on a loaded machine.
    let batches: Vec<(String, String, i64)> = (0..BATCHES)
        .map(|i| {
            let edge = format!("flood-edge-{i:02}");
            let (body, total) = full_batch(&edge, i);
            (edge, body.to_string(), total)
        })
        .collect();
    let mut posts = Vec::new();
    for (edge, body, total) in batches {
        let app = app.clone();
        posts.push(tokio::spawn(async move {
            let request = axum::http::Request::post("/api/v1/usage")
                .header(header::AUTHORIZATION, format!("Bearer {}", app.admin_key))
                .header(header::CONTENT_TYPE, "application/json")
                .body(axum::body::Body::from(body))
                .expect("request");
            let answer = app.call(request).await;
            (edge, total, answer)
        }));
    }
    // Revocations and issuance while the flood is being ingested: at least six of each, and on until
    // every batch is answered, so they meet parsing, writing and detection alike.
    let mut writes = Vec::new();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut i = 0;
    while i < 6 || (i < 100 && posts.iter().any(|p| !p.is_finished())) {
        i += 1;
        let started = Instant::now();
        let answer = app
            .post(
                "/api/v1/revocations",
                Some(&app.admin_key),
                json!({"subject": format!("flood-victim-{i}"), "reason": "flood test"}),
            )
            .await;
        writes.push(("revocation", answer.status, started.elapsed(), answer.body));
        let started = Instant::now();
        let answer = app
            .post(
                "/api/v1/tokens",
                Some(&app.admin_key),
                json!({"subject": format!("flood-user-{i}"), "client_id": "billing", "scopes": ["read"], "ttl_seconds": 600}),
            )
            .await;
        writes.push(("issuance", answer.status, started.elapsed(), answer.body));
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    let mut stored = 0;
    let mut refused = 0;
    for post in posts {
        let (edge, total, answer) = post.await.expect("post task");
        let sum: Option<i64> = sqlx::query_scalar(
            "SELECT CAST(SUM(count) AS BIGINT) FROM usage_counts WHERE edge = $1",
        )
        .bind(&edge)
        .fetch_one(&app.state.db.pool)
        .await
        .expect("sum");
        match answer.status {
            StatusCode::ACCEPTED => {
                stored += 1;
                assert_eq!(sum, Some(total), "{edge}: a 202 batch is stored whole");
            }
            StatusCode::SERVICE_UNAVAILABLE => {
                refused += 1;
                let retry: u64 = answer
                    .headers
                    .get(header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse().ok())
                    .unwrap_or_else(|| panic!("{edge}: 503 without a Retry-After in seconds"));
                assert!(retry >= 1, "{edge}: Retry-After {retry}");
                assert_eq!(answer.code(), "ingestion_busy", "{}", answer.body);
                assert_eq!(sum, None, "{edge}: a refused batch leaves nothing behind");
            }
            other => panic!("{edge}: usage batch answered {other}: {}", answer.body),
        }
    }
    let took: Vec<String> = writes
        .iter()
        .map(|(what, status, took, _)| format!("{what} {status} {took:?}"))
        .collect();
    eprintln!(
        "{stored} batches stored, {refused} refused; {}",
        took.join(", ")
    );
    assert!(stored >= 1, "no batch of the flood was stored");
    assert_eq!(stored + refused, BATCHES);
    for (what, status, took, body) in &writes {
        assert!(
            status.is_success(),
            "a {what} during the usage flood answered {status}: {body}"
        );
        assert!(
            *took < WRITE_BOUND,
            "a {what} during the usage flood took {took:?} (bound {WRITE_BOUND:?})"
        );
    }
    // Every stored batch went through the detectors: its 1,000 failures from 25 addresses (40 each, over
    // the threshold of 20) opened address anomalies from its edge, none was skipped.
    let opened: i64 = sqlx::query_scalar(
        "SELECT COUNT(DISTINCT edge) FROM anomalies WHERE kind = 'address_failures' AND edge IS NOT NULL",
    )
    .fetch_one(&app.state.db.pool)
    .await
    .expect("anomalies");
    assert_eq!(
        opened, stored as i64,
        "each stored batch's edge opened address anomalies"
    );
}

/// One report from `edge` with a revoked-token refusal for each of `tokens`.
fn revoked_uses(edge: &str, tokens: std::ops::Range<usize>) -> Value {
    let now = now();
    let counts: Vec<Value> = tokens
        .map(|i| json!({"jti": format!("stolen-{i:04}"), "route": "/api/orders", "reason": "revoked", "count": 3}))
        .collect();
    json!({"edge": edge, "interval_start": now - 10, "interval_end": now, "counts": counts})
}

async fn flood_of_findings_opens_deduplicated_anomalies_within_the_edge_cap(backend: Backend) {
    let db = TestDb::new(backend).await;
    let mut config = db.config();
    config.anomalies.edge_cap = 50;
    let app = TestApp::with_config(config, db).await;
    // The same 200 revoked tokens reported twice by one edge: 400 findings.
    for _ in 0..2 {
        app.post(
            "/api/v1/usage",
            Some(&app.admin_key),
            revoked_uses("noisy-edge", 0..200),
        )
        .await
        .expect(StatusCode::ACCEPTED);
    }
    let page = app
        .get(
            "/api/v1/anomalies?kind=revoked_token_use&limit=500",
            Some(&app.admin_key),
        )
        .await
        .expect(StatusCode::OK)
        .body;
    assert_eq!(page["total"], 50, "the edge's cap of new anomalies holds");
    let items = page["items"].as_array().expect("items");
    assert!(
        items.iter().all(|a| a["occurrences"] == 2),
        "the second report of the same token adds an occurrence, not a row: {items:?}"
    );
    let suppressed = app
        .get(
            "/api/v1/anomalies?kind=anomalies_suppressed",
            Some(&app.admin_key),
        )
        .await
        .expect(StatusCode::OK)
        .body;
    assert_eq!(suppressed["total"], 1, "{suppressed}");
    let s = &suppressed["items"][0];
    assert_eq!(s["subject_kind"], "edge");
    assert_eq!(s["subject"], "noisy-edge");
    assert_eq!(
        s["occurrences"], 300,
        "150 findings kept out per report are counted"
    );
    assert_eq!(s["evidence"]["suppressed"]["revoked_token_use"], 150);
    assert_eq!(s["evidence"]["cap"], 50);
    let opened = app
        .get("/api/v1/events?kind=anomaly.opened", Some(&app.admin_key))
        .await
        .expect(StatusCode::OK)
        .body;
    assert_eq!(
        opened["total"], 51,
        "one event per opened anomaly, one for the suppression"
    );
    // Another edge has its own cap.
    app.post(
        "/api/v1/usage",
        Some(&app.admin_key),
        revoked_uses("quiet-edge", 1000..1010),
    )
    .await
    .expect(StatusCode::ACCEPTED);
    let page = app
        .get(
            "/api/v1/anomalies?kind=revoked_token_use&limit=1",
            Some(&app.admin_key),
        )
        .await
        .expect(StatusCode::OK)
        .body;
    assert_eq!(page["total"], 60);
}

async fn retention_prunes_usage_events_and_resolved_anomalies(backend: Backend) {
    let app = TestApp::start(backend).await;
    let db = &app.state.db;
    let now = now();
    let day = 86_400;
    let mut config = app.state.config.usage.clone();
    config.event_retention_seconds = 30 * day;
    config.anomaly_retention_seconds = 10 * day;
    config.count_retention_seconds = 5 * day;
    config.failure_retention_seconds = 2 * day;
    // More old usage rows than one pruning chunk.
    for chunk in 0..120 {
        let mut sql = String::from("INSERT INTO usage_counts (bucket, edge, token, subject, client_id, route, reason, count) VALUES ");
        let rows: Vec<String> = (0..100)
            .map(|i| {
                format!(
                    "({}, 'e', 't{chunk}-{i}', '', '', '/r', 'allowed', 1)",
                    now - 6 * day
                )
            })
            .collect();
        sql.push_str(&rows.join(", "));
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .execute(&db.pool)
            .await
            .expect("old counts");
    }
    let recent = now - now.rem_euclid(60);
    sqlx::query("INSERT INTO usage_counts (bucket, edge, token, subject, client_id, route, reason, count) VALUES ($1, 'e', 'fresh', '', '', '/r', 'allowed', 4)")
        .bind(recent)
        .execute(&db.pool)
        .await
        .expect("recent count");
    // The hourly rollup of those counts, as the ingestion writer adds it beside them.
    let old_hour = (now - 6 * day) - (now - 6 * day).rem_euclid(3600);
    for (hour, count) in [(old_hour, 12_000), (recent - recent.rem_euclid(3600), 4)] {
        sqlx::query(
            "INSERT INTO usage_hourly (hour, edge, reason, count) VALUES ($1, 'e', 'allowed', $2)",
        )
        .bind(hour)
        .bind(count)
        .execute(&db.pool)
        .await
        .expect("hourly rollup");
    }
    for (id, at) in [("uf_old", now - 3 * day), ("uf_new", now - 60)] {
        sqlx::query("INSERT INTO usage_failures (id, edge, at, received_at, reason, client_address) VALUES ($1, 'e', $2, $2, 'expired', '10.0.0.1')")
            .bind(id)
            .bind(at)
            .execute(&db.pool)
            .await
            .expect("failure");
        sqlx::query("INSERT INTO address_failure_minutes (address, minute, failures) VALUES ('10.0.0.1', $1, 1)")
            .bind(at - at.rem_euclid(60))
            .execute(&db.pool)
            .await
            .expect("failure rollup");
    }
    for (id, at) in [
        ("evt_00000000000001old", now - 40 * day),
        ("evt_00000000000002new", now - day),
    ] {
        sqlx::query("INSERT INTO events (id, at, kind, actor, details) VALUES ($1, $2, 'anomaly.opened', 'test', '{}')")
            .bind(id)
            .bind(at)
            .execute(&db.pool)
            .await
            .expect("event");
    }
    for (id, state, updated) in [
        ("anm_resolved_old", "resolved", now - 20 * day),
        ("anm_resolved_new", "resolved", now - day),
        ("anm_open_old", "open", now - 20 * day),
    ] {
        sqlx::query("INSERT INTO anomalies (id, kind, severity, subject_kind, subject, evidence, state, created_at, updated_at) VALUES ($1, 'clock_skew', 'low', 'edge', 'e', '{}', $2, $3, $3)")
            .bind(id)
            .bind(state)
            .bind(updated)
            .execute(&db.pool)
            .await
            .expect("anomaly");
    }
    edgewarden_admin::usage::prune(db, &config)
        .await
        .expect("prune");
    let ids = |table: &'static str, column: &'static str| async move {
        let mut v: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT {column} FROM {table} WHERE {column} NOT LIKE 'evt\\_%' ESCAPE '\\' OR {column} LIKE '%old' OR {column} LIKE '%new'"
        )))
        .fetch_all(&db.pool)
        .await
        .expect("ids");
        v.sort();
        v
    };
    assert_eq!(ids("usage_counts", "token").await, ["fresh"]);
    assert_eq!(ids("usage_failures", "id").await, ["uf_new"]);
    // The per-address failure rollup covers what the samples still cover.
    let minutes: Vec<i64> = sqlx::query_scalar("SELECT minute FROM address_failure_minutes")
        .fetch_all(&db.pool)
        .await
        .expect("rollup minutes");
    assert_eq!(minutes, [(now - 60) - (now - 60).rem_euclid(60)]);
    assert_eq!(
        ids("events", "id").await,
        ["evt_00000000000002new"],
        "events past their retention are deleted"
    );
    assert_eq!(
        ids("anomalies", "id").await,
        ["anm_open_old", "anm_resolved_new"],
        "resolved anomalies past their retention are deleted, open ones stay"
    );
    // The hourly rollup follows the counts retention deletes (a trigger on delete subtracts them).
    let hourly: i64 = sqlx::query_scalar(
        "SELECT CAST(COALESCE(SUM(count), 0) AS BIGINT) FROM usage_hourly WHERE edge = 'e'",
    )
    .fetch_one(&db.pool)
    .await
    .expect("hourly");
    assert_eq!(hourly, 4);

    // Row bounds: the oldest go first.
    // Newer than anything the app itself recorded, so the two kept are two of these.
    for i in 0..3 {
        sqlx::query("INSERT INTO events (id, at, kind, actor, details) VALUES ($1, $2, 'anomaly.opened', 'test', '{}')")
            .bind(format!("evt_0000000000001{i}new"))
            .bind(now + 100 + i)
            .execute(&db.pool)
            .await
            .expect("event");
    }
    config.event_max_rows = 2;
    edgewarden_admin::usage::prune(db, &config)
        .await
        .expect("prune");
    assert_eq!(
        ids("events", "id").await,
        ["evt_00000000000011new", "evt_00000000000012new"],
        "beyond the row bound the oldest events are deleted"
    );
}

async fn oversized_batch_is_stored_in_parts_and_counted_once_when_resent(backend: Backend) {
    let db = TestDb::new(backend).await;
    let mut config = db.config();
    // Far fewer rows per transaction than one full batch writes (about 31,000): it goes in parts.
    config.usage.max_rows_per_transaction = 2_000;
    let app = TestApp::with_config(config, db).await;
    let (body, total) = full_batch("big-edge", 7);
    let transactions = || {
        app.state
            .usage
            .stats
            .transactions
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    let before = transactions();
    app.post("/api/v1/usage", Some(&app.admin_key), body.clone())
        .await
        .expect(StatusCode::ACCEPTED);
    let parts = transactions() - before;
    assert!(
        parts >= 10,
        "a batch of ~31,000 rows in parts of 2,000: {parts} transactions"
    );
    let done: i64 = sqlx::query_scalar("SELECT done FROM usage_parts")
        .fetch_one(&app.state.db.pool)
        .await
        .expect("ledger");
    assert_eq!(done as u64, parts, "the ledger counts every part stored");
    // The edge did not get (or trust) the answer and sends the same batch again: nothing more is counted.
    app.post("/api/v1/usage", Some(&app.admin_key), body)
        .await
        .expect(StatusCode::ACCEPTED);
    let stored = Stored::of(&app, "big-edge").await;
    assert_eq!(stored.counts, total, "the resent batch is counted once");
    assert_eq!(stored.failures, 1_000);
    assert_eq!(stored.hourly, total, "the rollup counts the batch once too");
    assert_eq!(stored.reports, 1, "the parts are one report");
}

/// What the store holds of one edge's usage.
struct Stored {
    /// Decisions in the per-minute counts.
    counts: i64,
    /// Failure samples.
    failures: i64,
    /// Decisions in the hourly rollup.
    hourly: i64,
    /// Reports counted for the edge.
    reports: i64,
}

impl Stored {
    async fn of(app: &TestApp, edge: &str) -> Stored {
        let pool = &app.state.db.pool;
        let scalar = |sql: &'static str| async move {
            sqlx::query_scalar::<_, i64>(sql)
                .bind(edge)
                .fetch_one(pool)
                .await
                .unwrap_or_else(|e| panic!("{sql}: {e}"))
        };
        Stored {
            counts: scalar(
                "SELECT CAST(COALESCE(SUM(count), 0) AS BIGINT) FROM usage_counts WHERE edge = $1",
            )
            .await,
            failures: scalar("SELECT COUNT(*) FROM usage_failures WHERE edge = $1").await,
            hourly: scalar(
                "SELECT CAST(COALESCE(SUM(count), 0) AS BIGINT) FROM usage_hourly WHERE edge = $1",
            )
            .await,
            reports: scalar("SELECT reports FROM edges WHERE name = $1").await,
        }
    }
}

/// An edge that gave up waiting sends its batch again while the first copy is still being stored: with
/// PostgreSQL the two go to different writers (or replicas) at once, each finds the same parts missing,
/// and the parts ledger lets only one store each part. Whatever each copy is answered (202, or 503 to
/// resend, which the edge does), the batch is counted once.
async fn same_oversized_batch_sent_twice_at_once_is_counted_once(backend: Backend) {
    let db = TestDb::new(backend).await;
    let mut config = db.config();
    config.usage.max_rows_per_transaction = 2_000;
    config.usage.writers = 2;
    let app = TestApp::with_config(config, db).await;
    let (body, total) = full_batch("twice-edge", 11);
    let (a, b) = tokio::join!(
        app.post("/api/v1/usage", Some(&app.admin_key), body.clone()),
        app.post("/api/v1/usage", Some(&app.admin_key), body.clone()),
    );
    for answer in [a, b] {
        if answer.status != StatusCode::ACCEPTED {
            assert_eq!(
                answer.status,
                StatusCode::SERVICE_UNAVAILABLE,
                "a copy is stored or refused to be resent: {}",
                answer.body
            );
            app.post("/api/v1/usage", Some(&app.admin_key), body.clone())
                .await
                .expect(StatusCode::ACCEPTED);
        }
    }
    let stored = Stored::of(&app, "twice-edge").await;
    assert_eq!(
        stored.counts, total,
        "the batch sent twice at once is counted once"
    );
    assert_eq!(
        stored.failures, 1_000,
        "its failure samples are stored once"
    );
    assert_eq!(stored.hourly, total, "the rollup counts it once too");
    assert_eq!(stored.reports, 1, "the two copies are one report");
}

/// Waits until the usage journal is empty: every batch answered is stored and examined.
async fn journal_folded(app: &TestApp) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let waiting: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM usage_journal")
            .fetch_one(&app.state.db.pool)
            .await
            .expect("journal");
        if waiting == 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{waiting} batches still in the usage journal after 60 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// With `--usage-journal`, a batch heavier than one fold (about 31,000 rows against 2,000) is answered at
/// once, then stored in parts, each claimed in the transaction that stores it, and counted once; failure
/// samples beyond the per-edge quota are not stored, but every failure is counted in the per-address
/// rollup the detectors read.
async fn journaled_batch_heavier_than_a_fold_is_stored_in_parts_once(backend: Backend) {
    let db = TestDb::new(backend).await;
    let mut config = db.config();
    config.usage.journal = true;
    config.usage.max_rows_per_transaction = 2_000;
    config.usage.fold_rows = Some(2_000);
    config.usage.failure_samples_per_minute = 300;
    let app = TestApp::with_config(config, db).await;
    let (body, total) = full_batch("journal-edge", 5);
    app.post("/api/v1/usage", Some(&app.admin_key), body)
        .await
        .expect(StatusCode::ACCEPTED);
    journal_folded(&app).await;
    let transactions = app
        .state
        .usage
        .stats
        .transactions
        .load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        transactions >= 30,
        "a batch of ~31,000 rows in parts of 500: {transactions} transactions"
    );
    let stored = Stored::of(&app, "journal-edge").await;
    assert_eq!(stored.counts, total, "counted once");
    assert_eq!(stored.hourly, total, "the rollup counts it once too");
    assert_eq!(stored.reports, 1, "the parts are one report");
    assert_eq!(stored.failures, 300, "samples within the quota");
    let failures: i64 = sqlx::query_scalar(
        "SELECT CAST(COALESCE(SUM(failures), 0) AS BIGINT) FROM address_failure_minutes",
    )
    .fetch_one(&app.state.db.pool)
    .await
    .unwrap();
    assert_eq!(failures, 1_000, "every failure counted for the detectors");
}

/// A sequence of batches that crosses several detectors' thresholds (failures from one address, a
/// revoked token used, a token from many addresses, refusals for one subject) opens the same anomalies
/// with the journal as without it.
async fn journal_finds_the_anomalies_the_pipeline_without_it_finds(backend: Backend) {
    let batches: Vec<Value> = (0..12)
        .map(|b| {
            let now = now();
            let counts: Vec<Value> = (0..40)
                .map(|i| {
                    let reason = match i % 8 {
                        0 => "revoked",
                        1 => "expired",
                        _ => "allowed",
                    };
                    json!({"jti": format!("tok-{}", i % 10), "subject": format!("user-{}", i % 3),
                           "client_id": "billing", "route": "/api/orders", "reason": reason, "count": 3,
                           "addresses": [format!("10.0.{}.{}", b, i % 4)]})
                })
                .collect();
            let failures: Vec<Value> = (0..5)
                .map(|i| json!({"reason": "bad_signature", "client_address": "203.0.113.9", "at": now - i,
                                "jti": "tok-1", "subject": "user-1"}))
                .collect();
            json!({"edge": format!("edge-{}", b % 2), "interval_start": now - 10, "interval_end": now,
                   "counts": counts, "failures": failures})
        })
        .collect();
    let mut opened: Vec<Vec<(String, String, String)>> = Vec::new();
    for journal in [false, true] {
        let db = TestDb::new(backend).await;
        let mut config = db.config();
        config.usage.journal = journal;
        let app = TestApp::with_config(config, db).await;
        for batch in &batches {
            app.post("/api/v1/usage", Some(&app.admin_key), batch.clone())
                .await
                .expect(StatusCode::ACCEPTED);
        }
        if journal {
            journal_folded(&app).await;
        }
        let rows = sqlx::query(
            "SELECT kind, subject_kind, subject FROM anomalies ORDER BY kind, subject_kind, subject",
        )
        .fetch_all(&app.state.db.pool)
        .await
        .unwrap();
        opened.push(
            rows.iter()
                .map(|r| {
                    use sqlx::Row as _;
                    (r.get("kind"), r.get("subject_kind"), r.get("subject"))
                })
                .collect(),
        );
    }
    let kinds: std::collections::BTreeSet<&str> =
        opened[0].iter().map(|(k, _, _)| k.as_str()).collect();
    for kind in [
        "address_failures",
        "revoked_token_use",
        "token_many_addresses",
        "subject_failures",
    ] {
        assert!(kinds.contains(kind), "{kind} is opened: {:?}", opened[0]);
    }
    assert_eq!(opened[1], opened[0], "the journal opens the same anomalies");
}

/// Journal rows this build cannot read (a record of another build's version, a damaged body) are left in
/// the journal for a build that can, and hold up nothing: neither one too heavy for a fold at its head
/// (the fold tried it again without pause) nor more of them than one fold reads (the fold read only
/// them, and stopped).
async fn unreadable_journal_rows_hold_up_no_batch_behind_them(backend: Backend) {
    let db = TestDb::new(backend).await;
    let mut config = db.config();
    config.usage.journal = true;
    let app = TestApp::with_config(config, db).await;
    let pool = &app.state.db.pool;
    let mut tx = pool.begin().await.unwrap();
    // A heavy one first (three parts), then more light ones than a fold takes (1,024).
    for (i, parts) in std::iter::once(3_i64)
        .chain(std::iter::repeat_n(1, 1_100))
        .enumerate()
    {
        let body: Vec<u8> = vec![0x10, 0, 0, 0, 0xff, (i % 251) as u8, 0x7f];
        sqlx::query(
            "INSERT INTO usage_journal (received_at, entries, weight, parts, done, body) VALUES ($1, 1, 1, $2, 0, $3)",
        )
        .bind(now())
        .bind(parts)
        .bind(body)
        .execute(&mut *tx)
        .await
        .unwrap();
    }
    tx.commit().await.unwrap();
    let body = revoked_uses("behind-edge", 0..20);
    app.post("/api/v1/usage", Some(&app.admin_key), body)
        .await
        .expect(StatusCode::ACCEPTED);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let counted: i64 = sqlx::query_scalar(
            "SELECT CAST(COALESCE(SUM(count), 0) AS BIGINT) FROM usage_counts WHERE edge = 'behind-edge'",
        )
        .fetch_one(pool)
        .await
        .unwrap();
        if counted == 60 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the batch behind 1,101 unreadable journal rows is not stored after 30 s: {counted} decisions counted"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(Stored::of(&app, "behind-edge").await.reports, 1);
    // Its own row goes once its detectors ran; the unreadable rows stay for a build that can read them.
    loop {
        let left: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM usage_journal")
            .fetch_one(pool)
            .await
            .unwrap();
        if left == 1_101 {
            break;
        }
        assert!(
            left == 1_102 && Instant::now() < deadline,
            "{left} journal rows: the 1,101 unreadable ones stay, the stored batch's goes"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
