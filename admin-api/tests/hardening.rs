//! Hardening found when the admin API was tried as an attacker would (issue 13, "low"): identifiers
//! with control characters, credentials of a webhook URL in events auditors read, usage times far in
//! the future (in `usage.rs`), and a SQLite store readable by other users.

mod common;

use axum::http::StatusCode;
use common::{Backend, TestApp, TestDb};
use serde_json::json;

both_backends!(
    identifiers_with_control_characters_are_refused_before_they_reach_a_token_or_the_feed,
    webhook_url_credentials_never_reach_the_event_log,
);

async fn identifiers_with_control_characters_are_refused_before_they_reach_a_token_or_the_feed(
    backend: Backend,
) {
    let app = TestApp::start(backend).await;
    app.post(
        "/api/v1/clients",
        Some(&app.admin_key),
        json!({"client_id": "app", "allowed_scopes": ["read"], "audiences": ["api"]}),
    )
    .await
    .expect(StatusCode::CREATED);
    for subject in ["carol\0", "carol\r\nx-edgewarden-sub: admin", "carol\n"] {
        let refused = app
            .post(
                "/api/v1/tokens",
                Some(&app.admin_key),
                json!({"subject": subject, "client_id": "app"}),
            )
            .await
            .expect(StatusCode::BAD_REQUEST);
        assert_eq!(
            refused.body["error"]["field"], "subject",
            "{:?}",
            refused.body
        );
        let refused = app
            .post(
                "/api/v1/revocations",
                Some(&app.admin_key),
                json!({"subject": subject, "reason": "test"}),
            )
            .await
            .expect(StatusCode::BAD_REQUEST);
        assert_eq!(
            refused.body["error"]["field"], "subject",
            "{:?}",
            refused.body
        );
    }
    app.post(
        "/api/v1/tokens",
        Some(&app.admin_key),
        json!({"subject": "Zoë Ω", "client_id": "app"}),
    )
    .await
    .expect(StatusCode::OK);
    let feed = app
        .get("/api/v1/revocations/feed?since=0", Some(&app.admin_key))
        .await
        .expect(StatusCode::OK);
    assert_eq!(
        feed.body["revoked_subjects"],
        json!([]),
        "nothing was recorded"
    );
}

async fn webhook_url_credentials_never_reach_the_event_log(backend: Backend) {
    let app = TestApp::start(backend).await;
    let created = app
        .post(
            "/api/v1/webhooks",
            Some(&app.admin_key),
            json!({"url": "https://bot:s3cret@hooks.example/in?token=abc123", "kinds": ["*"]}),
        )
        .await
        .expect(StatusCode::CREATED);
    assert!(created.body["secret"].is_string(), "{:?}", created.body);
    let events = app
        .get("/api/v1/events?kind=webhook.created", Some(&app.admin_key))
        .await
        .expect(StatusCode::OK);
    let text = events.body.to_string();
    assert!(text.contains("hooks.example"), "{text}");
    assert!(
        !text.contains("s3cret") && !text.contains("abc123") && !text.contains("bot:"),
        "credentials of the webhook url leaked into the event log: {text}"
    );
}

#[cfg(unix)]
#[tokio::test]
async fn a_new_sqlite_store_is_private_to_the_service_user() {
    use std::os::unix::fs::PermissionsExt;
    let db = TestDb::new(Backend::Sqlite).await;
    let mut config = db.config();
    let data = db.dir.path().join("fresh-data");
    config.data_dir = data.clone();
    let app = TestApp::with_config(config, db).await;
    app.get("/healthz", None).await.expect(StatusCode::OK);
    let mode =
        |p: &std::path::Path| std::fs::metadata(p).expect("stat").permissions().mode() & 0o777;
    assert_eq!(mode(&data), 0o700, "data directory");
    for entry in std::fs::read_dir(&data).expect("data dir") {
        let path = entry.expect("entry").path();
        if path
            .extension()
            .is_some_and(|e| e == "db" || e == "db-wal" || e == "db-shm")
            || path.to_string_lossy().contains("edgewarden.db")
        {
            assert_eq!(mode(&path), 0o600, "{}", path.display());
        }
    }
}
