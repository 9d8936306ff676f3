//! The paged revocation feed (`limit` and `after`), each test on SQLite and on PostgreSQL: pages add up to
//! the unpaged listing, keep its cursor, and leave changes made mid-listing to the next delta.

mod common;

use axum::http::{header, StatusCode};
use common::{Answer, Backend, TestApp};
use edgewarden_admin::auth::Role;
use serde_json::{json, Value};

both_backends!(
    snapshot_pages_add_up_to_the_unpaged_snapshot_with_its_cursor,
    revocation_between_pages_is_left_out_of_the_listing_and_arrives_in_the_next_delta,
    delta_listing_pages_like_a_snapshot_and_limit_keeps_the_304,
    bad_limit_or_after_is_400_naming_the_field,
    later_pages_are_not_recorded_as_edge_polls,
);

/// Issues `n` tokens to subjects `<prefix>-NN` and revokes each by jti; returns the jtis.
async fn revoke_jtis(app: &TestApp, prefix: &str, n: usize) -> Vec<String> {
    let mut jtis = Vec::with_capacity(n);
    for i in 0..n {
        let issued = app
            .issue(&format!("{prefix}-{i:02}"), "billing", &[], false)
            .await;
        let jti = issued["jti"].as_str().unwrap().to_owned();
        revoke(app, json!({"jti": jti})).await;
        jtis.push(jti);
    }
    jtis
}

/// Revokes one target (`{"jti"}`, `{"subject"}` or `{"client_id"}`) with the admin key.
async fn revoke(app: &TestApp, target: Value) {
    let mut body = target;
    body["reason"] = json!("paging test");
    app.post("/api/v1/revocations", Some(&app.admin_key), body)
        .await
        .expect(StatusCode::CREATED);
}

/// One feed page.
async fn page(app: &TestApp, key: &str, query: &str) -> Answer {
    app.get(&format!("/api/v1/revocations/feed?{query}"), Some(key))
        .await
        .expect(StatusCode::OK)
}

/// The page after `previous` of the listing `since`, `limit`.
async fn next_page(app: &TestApp, key: &str, since: i64, limit: i64, previous: &Answer) -> Answer {
    let next = previous.body["next"].as_str().expect("next");
    page(
        app,
        key,
        &format!("since={since}&limit={limit}&after={next}"),
    )
    .await
}

/// Every page of the listing `since`, `limit`, following `next` until a page has none.
async fn all_pages(app: &TestApp, key: &str, since: i64, limit: i64) -> Vec<Answer> {
    let mut pages = vec![page(app, key, &format!("since={since}&limit={limit}")).await];
    while pages.last().unwrap().body.get("next").is_some() {
        assert!(pages.len() < 100, "paging does not end");
        let next = next_page(app, key, since, limit, pages.last().unwrap()).await;
        pages.push(next);
    }
    pages
}

/// The values of one list (`revoked_jtis` with `jti`, ...) across pages, in page order.
fn values(pages: &[&Value], list: &str, field: &str) -> Vec<String> {
    pages
        .iter()
        .flat_map(|p| p[list].as_array().unwrap().iter())
        .map(|e| e[field].as_str().unwrap().to_owned())
        .collect()
}

/// The three lists of a listing as sorted value lists, for comparing paged and unpaged answers.
fn listing(pages: &[&Value]) -> [Vec<String>; 3] {
    [
        ("revoked_jtis", "jti"),
        ("revoked_subjects", "subject"),
        ("revoked_clients", "client_id"),
    ]
    .map(|(list, field)| {
        let mut v = values(pages, list, field);
        v.sort();
        v
    })
}

/// Entries on one page, across the three lists.
fn entries(page: &Value) -> usize {
    ["revoked_jtis", "revoked_subjects", "revoked_clients"]
        .iter()
        .map(|l| page[l].as_array().unwrap().len())
        .sum()
}

async fn snapshot_pages_add_up_to_the_unpaged_snapshot_with_its_cursor(backend: Backend) {
    let app = TestApp::start(backend).await;
    app.client("billing", &[], &[]).await;
    let edge = app.api_key(Role::Edge, None).await;
    let jtis = revoke_jtis(&app, "user", 25).await;
    revoke(&app, json!({"subject": "alice"})).await;
    revoke(&app, json!({"subject": "bob"})).await;
    revoke(&app, json!({"client_id": "billing"})).await;

    let unpaged = page(&app, &edge, "since=0").await.body;
    assert_eq!(unpaged["cursor"], 28);
    assert!(
        unpaged.get("next").is_none() && unpaged.get("total").is_none(),
        "without limit the answer is as before paging: {unpaged}"
    );

    let pages = all_pages(&app, &edge, 0, 10).await;
    println!(
        "first page: {}\nlast page: {}",
        pages[0].body,
        pages.last().unwrap().body
    );
    assert_eq!(pages.len(), 3);
    assert_eq!(
        pages.iter().map(|p| entries(&p.body)).collect::<Vec<_>>(),
        [10, 10, 8]
    );
    for (i, p) in pages.iter().enumerate() {
        assert_eq!(p.body["cursor"], 28, "page {i}");
        assert_eq!(p.body["full"], true, "page {i}");
        assert_eq!(p.headers[header::ETAG], "\"c28\"", "page {i}");
        assert_eq!(p.body.get("total").is_some(), i == 0, "total on page {i}");
        assert_eq!(p.body.get("next").is_some(), i < 2, "next on page {i}");
    }
    assert_eq!(
        pages[0].body["total"],
        json!({"jtis": 25, "subjects": 2, "clients": 1})
    );
    let paged: Vec<&Value> = pages.iter().map(|p| &p.body).collect();
    assert_eq!(listing(&paged), listing(&[&unpaged]));
    // Ordered by (kind, value): the client first, then the jtis in order, then the subjects.
    assert_eq!(pages[0].body["revoked_clients"][0]["client_id"], "billing");
    let mut sorted = jtis.clone();
    sorted.sort();
    assert_eq!(values(&paged, "revoked_jtis", "jti"), sorted);
    assert_eq!(
        pages[2].body["revoked_subjects"],
        unpaged["revoked_subjects"]
    );
}

async fn revocation_between_pages_is_left_out_of_the_listing_and_arrives_in_the_next_delta(
    backend: Backend,
) {
    let app = TestApp::start(backend).await;
    app.client("billing", &[], &[]).await;
    let edge = app.api_key(Role::Edge, None).await;
    let mut jtis = revoke_jtis(&app, "user", 25).await;
    jtis.sort();
    let first = page(&app, &edge, "since=0&limit=10").await;
    let cursor = first.body["cursor"].as_i64().unwrap();
    assert_eq!(cursor, 25);

    // Mid-listing: a new jti, a subject (which sorts after every jti), and a repeated revocation of the
    // last jti, which moves that entry past the listing's cursor.
    let fresh = revoke_jtis(&app, "late", 1).await.remove(0);
    revoke(&app, json!({"subject": "zed"})).await;
    let moved = jtis.last().unwrap().clone();
    revoke(&app, json!({"jti": moved})).await;

    let mut pages = vec![first];
    while pages.last().unwrap().body.get("next").is_some() {
        let next = next_page(&app, &edge, 0, 10, pages.last().unwrap()).await;
        pages.push(next);
    }
    assert_eq!(pages.len(), 3);
    for p in &pages {
        assert_eq!(
            p.body["cursor"], cursor,
            "every page keeps the listing's cursor"
        );
        assert_eq!(p.headers[header::ETAG], format!("\"c{cursor}\""));
    }
    let paged: Vec<&Value> = pages.iter().map(|p| &p.body).collect();
    let listed = values(&paged, "revoked_jtis", "jti");
    assert_eq!(listed, jtis[..24], "only rows up to the listing's cursor");
    assert!(!listed.contains(&fresh) && !listed.contains(&moved));
    assert_eq!(
        values(&paged, "revoked_subjects", "subject"),
        [] as [String; 0]
    );

    let delta = page(&app, &edge, &format!("since={cursor}")).await.body;
    assert_eq!(delta["full"], false);
    assert_eq!(delta["cursor"], cursor + 3);
    let [delta_jtis, delta_subjects, _] = listing(&[&delta]);
    let mut expected = vec![fresh, moved];
    expected.sort();
    assert_eq!(delta_jtis, expected);
    assert_eq!(delta_subjects, ["zed"]);
    // The paged snapshot plus the delta is the current state: nothing was lost.
    let mut merged = paged.clone();
    merged.push(&delta);
    let now = page(&app, &edge, "since=0").await.body;
    assert_eq!(listing(&merged), listing(&[&now]));
}

async fn delta_listing_pages_like_a_snapshot_and_limit_keeps_the_304(backend: Backend) {
    let app = TestApp::start(backend).await;
    app.client("billing", &[], &[]).await;
    let edge = app.api_key(Role::Edge, None).await;
    revoke_jtis(&app, "early", 5).await;
    let since = page(&app, &edge, "since=0").await.body["cursor"]
        .as_i64()
        .unwrap();
    revoke_jtis(&app, "user", 12).await;
    revoke(&app, json!({"subject": "carol"})).await;

    let unpaged = page(&app, &edge, &format!("since={since}")).await.body;
    assert_eq!(unpaged["full"], false);
    let pages = all_pages(&app, &edge, since, 5).await;
    assert_eq!(
        pages.iter().map(|p| entries(&p.body)).collect::<Vec<_>>(),
        [5, 5, 3]
    );
    for (i, p) in pages.iter().enumerate() {
        assert_eq!(p.body["cursor"], unpaged["cursor"], "page {i}");
        assert_eq!(p.body["full"], false, "page {i}");
        assert_eq!(p.body.get("total").is_some(), i == 0, "total on page {i}");
        assert_eq!(p.body.get("next").is_some(), i < 2, "next on page {i}");
    }
    assert_eq!(
        pages[0].body["total"],
        json!({"jtis": 12, "subjects": 1, "clients": 0})
    );
    let paged: Vec<&Value> = pages.iter().map(|p| &p.body).collect();
    assert_eq!(listing(&paged), listing(&[&unpaged]));

    // Up to date: limit changes nothing about the 304, and the empty delta is a one-page listing.
    let cursor = unpaged["cursor"].as_i64().unwrap();
    let request = axum::http::Request::builder()
        .uri(format!("/api/v1/revocations/feed?since={cursor}&limit=5"))
        .header(header::AUTHORIZATION, format!("Bearer {edge}"))
        .header(header::IF_NONE_MATCH, format!("\"c{cursor}\""))
        .body(axum::body::Body::empty())
        .unwrap();
    let not_modified = app.call(request).await.expect(StatusCode::NOT_MODIFIED);
    assert_eq!(not_modified.body, Value::Null);
    let empty = page(&app, &edge, &format!("since={cursor}&limit=5"))
        .await
        .body;
    assert_eq!(entries(&empty), 0);
    assert_eq!(
        empty["total"],
        json!({"jtis": 0, "subjects": 0, "clients": 0})
    );
    assert!(empty.get("next").is_none());
}

async fn bad_limit_or_after_is_400_naming_the_field(backend: Backend) {
    let app = TestApp::start(backend).await;
    app.client("billing", &[], &[]).await;
    let edge = app.api_key(Role::Edge, None).await;
    revoke_jtis(&app, "user", 3).await;
    let first = page(&app, &edge, "since=0&limit=1").await;
    let next = first.body["next"].as_str().unwrap().to_owned();
    use base64::Engine as _;
    let foreign = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode("999:jti:x");
    for (query, field) in [
        ("since=0&limit=0".to_owned(), "limit"),
        ("since=0&limit=-1".to_owned(), "limit"),
        ("since=0&limit=1000001".to_owned(), "limit"),
        ("since=0&limit=abc".to_owned(), "limit"),
        ("since=0&limit=10&after=garbage".to_owned(), "after"),
        ("since=0&limit=10&after=".to_owned(), "after"),
        (format!("since=0&limit=10&after={foreign}"), "after"),
        (format!("since=0&after={next}"), "limit"),
    ] {
        let answer = app
            .get(&format!("/api/v1/revocations/feed?{query}"), Some(&edge))
            .await;
        assert_eq!(
            answer.status,
            StatusCode::BAD_REQUEST,
            "{query}: {}",
            answer.body
        );
        assert_eq!(
            answer.body["error"]["field"], field,
            "{query}: {}",
            answer.body
        );
        let message = answer.body["error"]["message"].as_str().unwrap();
        assert!(message.starts_with(&format!("{field}: ")), "{message}");
        if field == "after" {
            assert!(
                message.ends_with("restart the listing without after"),
                "{message}"
            );
        }
    }
    page(&app, &edge, "since=0&limit=1000000").await;
    page(&app, &edge, &format!("since=0&limit=1&after={next}")).await;
}

async fn later_pages_are_not_recorded_as_edge_polls(backend: Backend) {
    let app = TestApp::start(backend).await;
    app.client("billing", &[], &[]).await;
    let edge = app.api_key(Role::Edge, None).await;
    revoke_jtis(&app, "user", 3).await;
    let poll = |query: String, name: &'static str| {
        axum::http::Request::builder()
            .uri(format!("/api/v1/revocations/feed?{query}"))
            .header(header::AUTHORIZATION, format!("Bearer {edge}"))
            .header("x-edgewarden-edge", name)
            .body(axum::body::Body::empty())
            .unwrap()
    };
    let first = app
        .call(poll("since=0&limit=2".into(), "edge-1"))
        .await
        .expect(StatusCode::OK);
    let next = first.body["next"].as_str().unwrap();
    app.call(poll(format!("since=0&limit=2&after={next}"), "edge-2"))
        .await
        .expect(StatusCode::OK);
    let edges = app.state.feed.edges();
    assert_eq!(
        edges.iter().map(|e| e.name.as_str()).collect::<Vec<_>>(),
        ["edge-1"],
        "a listing counts once, when its first page is served"
    );
}
