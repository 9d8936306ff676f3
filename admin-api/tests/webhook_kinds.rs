//! Webhook `kinds` take the forms the event stream's `kind` filter takes: `*`, an exact kind, or a
//! `prefix.*`; a webhook subscribed to `token.*` gets a delivery for every `token.` event and no other.

mod common;

use axum::http::StatusCode;
use common::{Backend, TestApp};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prefix_subscription_gets_every_kind_under_it() {
    let app = TestApp::start(Backend::Sqlite).await;
    let hook = app
        .post(
            "/api/v1/webhooks",
            Some(&app.admin_key),
            json!({"url": "http://127.0.0.1:9/hook", "kinds": ["token.*"]}),
        )
        .await
        .expect(StatusCode::CREATED)
        .body;
    let id = hook["id"].as_str().unwrap().to_owned();
    assert_eq!(hook["kinds"], json!(["token.*"]));
    let refused = app
        .post(
            "/api/v1/webhooks",
            Some(&app.admin_key),
            json!({"url": "http://127.0.0.1:9/hook", "kinds": ["tokens.*"]}),
        )
        .await
        .expect(StatusCode::BAD_REQUEST);
    assert_eq!(refused.body["error"]["field"], "kinds[0]");
    // client.created is not under token.*, token.issued is.
    app.client("billing", &["read"], &[]).await;
    let issued = app.issue("alice", "billing", &["read"], false).await;
    let jti = issued["jti"].as_str().unwrap();
    // The dispatcher reads the event log in order: once token.issued has a delivery, client.created
    // (recorded before it) has been passed over.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(15);
    let deliveries = loop {
        let page = app
            .get(
                &format!("/api/v1/webhooks/{id}/deliveries"),
                Some(&app.admin_key),
            )
            .await
            .expect(StatusCode::OK)
            .body;
        if page["total"] != 0 || tokio::time::Instant::now() > deadline {
            break page;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    let events = app
        .get("/api/v1/events?limit=100", Some(&app.admin_key))
        .await
        .expect(StatusCode::OK)
        .body;
    let kind_of = |event_id: &str| {
        events["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["id"] == event_id)
            .map(|e| (e["kind"].as_str().unwrap().to_owned(), e["jti"].clone()))
    };
    let delivered: Vec<_> = deliveries["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| kind_of(d["event_id"].as_str().unwrap()).expect("delivered event in the log"))
        .collect();
    assert_eq!(
        delivered,
        [("token.issued".to_owned(), json!(jti))],
        "{deliveries}"
    );
}
