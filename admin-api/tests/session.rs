//! Dashboard sessions: the first-start admin logs in with the one-time password, the session cookie
//! is HttpOnly and SameSite=Strict, mutations need the CSRF header, logout ends the session, and
//! logins are rate limited with 429 and Retry-After. Run on SQLite and PostgreSQL.

mod common;

use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use common::{Answer, Backend, TestApp, TestDb};
use edgewarden_admin::config::RateLimit;
use serde_json::json;

both_backends!(
    first_admin_logs_in_and_mutations_need_the_csrf_header,
    logins_are_rate_limited_with_retry_after,
);

async fn login(app: &TestApp, username: &str, password: &str) -> Answer {
    app.post(
        "/api/v1/session",
        None,
        json!({"username": username, "password": password}),
    )
    .await
}

fn cookies(answer: &Answer) -> Vec<String> {
    answer
        .headers
        .get_all(header::SET_COOKIE)
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect()
}

async fn with_cookie(
    app: &TestApp,
    method: Method,
    uri: &str,
    cookie: &str,
    csrf: Option<&str>,
    body: Option<serde_json::Value>,
) -> Answer {
    let mut builder = Request::builder()
        .method(method)
        .uri(uri)
        .header(header::COOKIE, cookie);
    if let Some(csrf) = csrf {
        builder = builder.header("x-csrf-token", csrf);
    }
    let request = match body {
        Some(b) => builder
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(b.to_string())),
        None => builder.body(Body::empty()),
    };
    app.call(request.unwrap()).await
}

async fn first_admin_logs_in_and_mutations_need_the_csrf_header(backend: Backend) {
    let app = TestApp::start(backend).await;
    let password = app
        .state
        .bootstrap_admin()
        .await
        .unwrap()
        .expect("first start creates an admin");
    assert_eq!(
        app.state.bootstrap_admin().await.unwrap(),
        None,
        "only once"
    );
    let stored: String =
        sqlx::query_scalar("SELECT password_hash FROM users WHERE username = 'admin'")
            .fetch_one(&app.state.db.pool)
            .await
            .unwrap();
    assert!(stored.starts_with("$argon2id$") && !stored.contains(&password));

    login(&app, "admin", "wrong password!")
        .await
        .expect(StatusCode::UNAUTHORIZED);
    login(&app, "nobody", &password)
        .await
        .expect(StatusCode::UNAUTHORIZED);
    let answer = login(&app, "admin", &password).await.expect(StatusCode::OK);
    let set = cookies(&answer);
    let session = set
        .iter()
        .find(|c| c.starts_with("ew_session="))
        .expect("session cookie");
    assert!(
        session.contains("HttpOnly") && session.contains("SameSite=Strict"),
        "{session}"
    );
    let csrf_cookie = set
        .iter()
        .find(|c| c.starts_with("ew_csrf="))
        .expect("csrf cookie");
    assert!(
        !csrf_cookie.contains("HttpOnly"),
        "the dashboard must be able to read the csrf cookie"
    );
    let csrf = answer.body["csrf_token"].as_str().unwrap().to_owned();
    let cookie = session.split(';').next().unwrap().to_owned();

    let me = with_cookie(&app, Method::GET, "/api/v1/session", &cookie, None, None)
        .await
        .expect(StatusCode::OK);
    assert_eq!(me.body["username"], "admin");
    assert_eq!(me.body["role"], "admin");
    with_cookie(&app, Method::GET, "/api/v1/clients", &cookie, None, None)
        .await
        .expect(StatusCode::OK);
    let body = json!({"client_id": "billing"});
    let refused = with_cookie(
        &app,
        Method::POST,
        "/api/v1/clients",
        &cookie,
        None,
        Some(body.clone()),
    )
    .await
    .expect(StatusCode::FORBIDDEN);
    assert!(refused.body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("x-csrf-token"));
    with_cookie(
        &app,
        Method::POST,
        "/api/v1/clients",
        &cookie,
        Some("forged"),
        Some(body.clone()),
    )
    .await
    .expect(StatusCode::FORBIDDEN);
    with_cookie(
        &app,
        Method::POST,
        "/api/v1/clients",
        &cookie,
        Some(&csrf),
        Some(body),
    )
    .await
    .expect(StatusCode::CREATED);

    with_cookie(
        &app,
        Method::DELETE,
        "/api/v1/session",
        &cookie,
        Some(&csrf),
        None,
    )
    .await
    .expect(StatusCode::NO_CONTENT);
    with_cookie(&app, Method::GET, "/api/v1/clients", &cookie, None, None)
        .await
        .expect(StatusCode::UNAUTHORIZED);
}

async fn logins_are_rate_limited_with_retry_after(backend: Backend) {
    let db = TestDb::new(backend).await;
    let mut config = db.config();
    config.login_rate_limit = RateLimit {
        burst: 3,
        per_second: 1.0 / 60.0,
    };
    let app = TestApp::with_config(config, db).await;
    for _ in 0..3 {
        login(&app, "admin", "not the password")
            .await
            .expect(StatusCode::UNAUTHORIZED);
    }
    let limited = login(&app, "admin", "not the password")
        .await
        .expect(StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(limited.code(), "rate_limited");
    let retry: u64 = limited.headers[header::RETRY_AFTER]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry), "retry after {retry}s");
}
