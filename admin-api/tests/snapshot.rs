//! The edge snapshot (`GET /api/v1/revocations/snapshot`), each test on SQLite and on PostgreSQL: who may
//! read it, that it holds exactly the state the JSON feed's full listing gives at the same cursor, that deltas
//! continue from its cursor, that its checksum and header verify, and how later pages are asked for.

mod common;

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use common::{Backend, TestApp};
use edgewarden_admin::auth::Role;
use edgewarden_core::feed::snapshot::{SnapshotError, SnapshotPage, SNAPSHOT_CONTENT_TYPE};
use edgewarden_core::feed::FeedUpdate;
use edgewarden_core::revocation::{PrincipalRevocation, RevocationKey, RevocationSet};
use http_body_util::BodyExt as _;
use serde_json::{json, Value};
use tower::ServiceExt as _;

both_backends!(
    only_admin_auditor_and_edge_keys_read_the_snapshot,
    the_snapshot_is_the_feeds_full_state_and_deltas_follow_its_cursor,
    pages_are_asked_by_the_previous_headers_and_a_changed_snapshot_is_409,
);

const PATH: &str = "/api/v1/revocations/snapshot";

/// A raw answer: status, content type and the body's bytes.
async fn raw(
    app: &TestApp,
    uri: &str,
    key: Option<&str>,
    edge: Option<&str>,
) -> (StatusCode, String, Vec<u8>) {
    let mut builder = Request::builder().uri(uri);
    if let Some(key) = key {
        builder = builder.header(header::AUTHORIZATION, format!("Bearer {key}"));
    }
    if let Some(edge) = edge {
        builder = builder.header("x-edgewarden-edge", edge);
    }
    let response = app
        .router
        .clone()
        .oneshot(builder.body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = response.status();
    let content_type = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let body = response
        .into_body()
        .collect()
        .await
        .unwrap()
        .to_bytes()
        .to_vec();
    (status, content_type, body)
}

async fn revoke(app: &TestApp, target: Value) {
    let mut body = target;
    body["reason"] = json!("snapshot test");
    app.post("/api/v1/revocations", Some(&app.admin_key), body)
        .await
        .expect(StatusCode::CREATED);
}

/// Revokes `n` issued tokens by jti (their issuer is the admin API's), two subjects and a client.
async fn seed(app: &TestApp, n: usize) {
    app.client("billing", &[], &[]).await;
    for i in 0..n {
        let issued = app.issue(&format!("user-{i}"), "billing", &[], false).await;
        revoke(app, json!({"jti": issued["jti"]})).await;
    }
    revoke(app, json!({"subject": "alice"})).await;
    revoke(app, json!({"subject": "bob"})).await;
    revoke(app, json!({"client_id": "billing"})).await;
}

/// Every page of the snapshot, following the headers; and the state they load into.
async fn load(app: &TestApp, key: &str) -> (Vec<Vec<u8>>, RevocationSet) {
    let (status, content_type, first) = raw(app, PATH, Some(key), None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(content_type, SNAPSHOT_CONTENT_TYPE);
    let mut pages = vec![first];
    let page = SnapshotPage::parse(&pages[0]).unwrap();
    let mut set = page.new_set();
    page.apply_to(&mut set);
    let mut progress = page.progress();
    while progress.next_page < progress.pages {
        let (status, _, bytes) = raw(
            app,
            &format!("{PATH}?{}", progress.next_query()),
            Some(key),
            None,
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        let page = SnapshotPage::parse(&bytes).unwrap();
        page.check_follows(&progress).unwrap();
        page.apply_to(&mut set);
        progress = page.progress();
        pages.push(bytes);
    }
    (pages, set)
}

fn sorted<T: Ord>(items: impl Iterator<Item = T>) -> Vec<T> {
    let mut v: Vec<T> = items.collect();
    v.sort();
    v
}

async fn only_admin_auditor_and_edge_keys_read_the_snapshot(backend: Backend) {
    let app = TestApp::start(backend).await;
    seed(&app, 2).await;
    assert_eq!(
        raw(&app, PATH, None, None).await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        raw(&app, PATH, Some("ewk_not_a_key"), None).await.0,
        StatusCode::UNAUTHORIZED
    );
    let service = app.api_key(Role::Service, Some("billing")).await;
    assert_eq!(
        raw(&app, PATH, Some(&service), None).await.0,
        StatusCode::FORBIDDEN
    );
    for role in [Role::Admin, Role::Auditor, Role::Edge] {
        let key = app.api_key(role, None).await;
        let (status, content_type, body) = raw(&app, PATH, Some(&key), Some("edge-1")).await;
        assert_eq!(status, StatusCode::OK, "{role}");
        assert_eq!(content_type, SNAPSHOT_CONTENT_TYPE);
        assert!(SnapshotPage::parse(&body).is_ok());
    }
}

async fn the_snapshot_is_the_feeds_full_state_and_deltas_follow_its_cursor(backend: Backend) {
    let app = TestApp::start(backend).await;
    seed(&app, 12).await;
    let edge = app.api_key(Role::Edge, None).await;
    let (pages, set) = load(&app, &edge).await;
    let json = app
        .get("/api/v1/revocations/feed?since=0", Some(&edge))
        .await
        .expect(StatusCode::OK)
        .body;
    let feed = FeedUpdate::from_json(json.to_string().as_bytes()).unwrap();
    let mut from_feed = RevocationSet::new();
    from_feed.apply(&feed);
    assert_eq!(set.cursor(), from_feed.cursor());
    assert_eq!(set.cursor(), 15);
    assert_eq!(set.jti_count(), 12);
    assert_eq!(sorted(set.jtis()), sorted(from_feed.jtis()));
    let flat = |(k, r): (RevocationKey, PrincipalRevocation)| (k, r.revoked_at, r.expires_at);
    assert_eq!(
        sorted(set.subjects().map(flat)),
        sorted(from_feed.subjects().map(flat))
    );
    assert_eq!(
        sorted(set.clients().map(flat)),
        sorted(from_feed.clients().map(flat))
    );
    assert_eq!(set.subject_count(), 2);
    assert_eq!(set.client_count(), 1);
    // Entries are keyed by issuer as the feed's are: the subject is revoked for this admin API's tokens only.
    let issuer = json["revoked_subjects"][0]["iss"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(set
        .subjects()
        .any(|(k, _)| k == RevocationKey::scoped(&issuer, "alice")));

    // The checksum covers every byte.
    let page = &pages[0];
    let mut bad = page.clone();
    bad[SNAPSHOT_HEADER + 3] ^= 0x10;
    assert_eq!(
        SnapshotPage::parse(&bad).unwrap_err(),
        SnapshotError::Checksum
    );

    // A revocation after the snapshot comes in the delta since its cursor.
    revoke(&app, json!({"subject": "carol"})).await;
    let delta = app
        .get(
            &format!("/api/v1/revocations/feed?since={}", set.cursor()),
            Some(&edge),
        )
        .await
        .expect(StatusCode::OK)
        .body;
    assert_eq!(delta["full"], false);
    assert_eq!(delta["revoked_subjects"].as_array().unwrap().len(), 1);
    assert_eq!(delta["revoked_subjects"][0]["subject"], "carol");
    // A cold edge now gets a new snapshot at the new cursor, never the one a change behind: loading that, it
    // would count itself synced and let carol's tokens through until its next poll.
    let (_, newer) = load(&app, &edge).await;
    assert_eq!(newer.cursor(), 16);
    assert_eq!(newer.subject_count(), 3);
}

const SNAPSHOT_HEADER: usize = edgewarden_core::feed::snapshot::SNAPSHOT_HEADER_BYTES;

async fn pages_are_asked_by_the_previous_headers_and_a_changed_snapshot_is_409(backend: Backend) {
    let app = TestApp::start(backend).await;
    seed(&app, 3).await;
    let edge = app.api_key(Role::Edge, None).await;
    let (pages, _) = load(&app, &edge).await;
    let first = SnapshotPage::parse(&pages[0]).unwrap();
    assert_eq!(first.pages, 1);
    let query = |page: u32, id: u64| {
        format!(
            "{PATH}?page={page}&id={id:016x}&cursor={}&now={}",
            first.cursor, first.now
        )
    };
    // Any replica rebuilds the same snapshot from the header's cursor and clock: the same bytes.
    let again = raw(&app, &query(0, first.id), Some(&edge), None).await;
    assert_eq!(again.0, StatusCode::OK);
    assert_eq!(again.2, pages[0]);
    // Another id: that snapshot cannot be built any more.
    let (status, _, body) = raw(&app, &query(0, first.id ^ 1), Some(&edge), None).await;
    assert_eq!(
        status,
        StatusCode::CONFLICT,
        "{}",
        String::from_utf8_lossy(&body)
    );
    // Past the last page, a cursor never produced, missing or malformed parameters: 400 naming them.
    for (uri, field) in [
        (query(1, first.id), "page"),
        (
            format!("{PATH}?page=1&id={:016x}&cursor=999&now=1", first.id),
            "cursor",
        ),
        (format!("{PATH}?page=1"), "id"),
        (format!("{PATH}?page=1&id=xyz&cursor=1&now=1"), "id"),
        (format!("{PATH}?since=0"), "since"),
    ] {
        let (status, _, body) = raw(&app, &uri, Some(&edge), None).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{uri}");
        let body: Value = serde_json::from_slice(&body).unwrap();
        assert!(body.to_string().contains(field), "{uri}: {body}");
    }
}
