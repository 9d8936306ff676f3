//! Credentials and their lifetime (issue 13, low findings): edge keys bound to edge names, service keys
//! tied to their client, logins and bad keys leaving log lines and events, password changes, and the
//! request-shape errors (413, 415, JSON path errors). Each test runs on SQLite and on PostgreSQL.

mod common;

use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use common::{Answer, Backend, TestApp};
use edgewarden_admin::auth::Role;
use edgewarden_admin::db::now;
use serde_json::{json, Value};

both_backends!(
    an_edge_key_polls_and_reports_only_under_its_own_edge_names,
    an_unbound_edge_key_still_acts_as_any_edge,
    edge_names_are_checked_and_only_edge_keys_take_them,
    deleting_a_client_deletes_its_keys_and_a_new_client_with_its_id_does_not_revive_them,
    a_key_for_a_client_that_does_not_exist_is_refused_when_typed,
    cli_created_keys_and_users_leave_an_event,
    logins_failures_lockouts_and_rate_limits_leave_events_without_the_password,
    bad_api_keys_leave_one_event_per_address_a_minute,
    a_user_changes_their_password_and_their_other_sessions_end,
    the_cli_sets_a_password_and_ends_every_session,
    the_first_admin_password_goes_to_a_private_file_never_to_the_log,
    oversized_json_is_413_and_json_needs_its_content_type,
    a_bad_path_parameter_is_answered_in_the_json_error_shape,
    error_texts_say_what_to_do,
);

const PASSWORD: &str = "correct horse battery";

async fn user(app: &TestApp, username: &str) {
    edgewarden_admin::auth::create_user(
        &app.state.db,
        &app.state.config.argon2,
        username,
        PASSWORD,
        Role::Admin,
    )
    .await
    .expect("user");
}

/// `POST /api/v1/session` as if from `address`.
async fn login_from(app: &TestApp, address: &str, username: &str, password: &str) -> Answer {
    let mut request = Request::builder()
        .method(Method::POST)
        .uri("/api/v1/session")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(
            json!({"username": username, "password": password}).to_string(),
        ))
        .unwrap();
    let addr: std::net::SocketAddr = format!("{address}:40000").parse().unwrap();
    request
        .extensions_mut()
        .insert(axum::extract::ConnectInfo(addr));
    app.call(request).await
}

/// The session cookie header value and the CSRF token of a successful login.
fn session_of(answer: &Answer) -> (String, String) {
    let cookie = answer
        .headers
        .get_all(header::SET_COOKIE)
        .iter()
        .map(|v| v.to_str().unwrap().split(';').next().unwrap().to_owned())
        .collect::<Vec<_>>()
        .join("; ");
    let csrf = answer.body["csrf_token"].as_str().unwrap().to_owned();
    (cookie, csrf)
}

async fn with_session(
    app: &TestApp,
    method: Method,
    uri: &str,
    session: &(String, String),
    body: Option<Value>,
) -> Answer {
    let mut builder = Request::builder()
        .method(method)
        .uri(uri)
        .header(header::COOKIE, &session.0)
        .header("x-csrf-token", &session.1);
    let request = match body {
        Some(b) => builder
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(b.to_string())),
        None => {
            builder = builder.header(header::CONTENT_LENGTH, 0);
            builder.body(Body::empty())
        }
    };
    app.call(request.unwrap()).await
}

/// The real binary on the test's database.
fn cli(db: &common::TestDb, args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_edgewarden-admin"))
        .env_clear()
        .env("EDGEWARDEN_DATA_DIR", db.dir.path())
        .env("EDGEWARDEN_LOG", "warn")
        .env("DATABASE_URL", db.database_url.clone().unwrap_or_default())
        .args(args)
        .output()
        .expect("run edgewarden-admin")
}

async fn events_of(app: &TestApp, kind: &str) -> Vec<Value> {
    let page = app
        .get(&format!("/api/v1/events?kind={kind}"), Some(&app.admin_key))
        .await
        .expect(StatusCode::OK)
        .body;
    page["items"].as_array().unwrap().clone()
}

async fn poll_as(app: &TestApp, key: &str, edge: &str) -> Answer {
    app.call(
        Request::builder()
            .uri("/api/v1/revocations/feed?since=0")
            .header(header::AUTHORIZATION, format!("Bearer {key}"))
            .header("x-edgewarden-edge", edge)
            .body(Body::empty())
            .unwrap(),
    )
    .await
}

fn batch(edge: &str) -> Value {
    let now = now();
    json!({"edge": edge, "interval_start": now - 10, "interval_end": now,
           "counts": [{"route": "/orders", "reason": "missing_token", "count": 2}], "failures": []})
}

async fn edge_key(app: &TestApp, edges: &[&str]) -> Answer {
    app.post(
        "/api/v1/api-keys",
        Some(&app.admin_key),
        json!({"role": "edge", "name": "bound edge", "edges": edges}),
    )
    .await
}

async fn edge_names(app: &TestApp) -> Vec<String> {
    let page = app
        .get("/api/v1/edges", Some(&app.admin_key))
        .await
        .expect(StatusCode::OK)
        .body;
    page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap().to_owned())
        .collect()
}

async fn an_edge_key_polls_and_reports_only_under_its_own_edge_names(backend: Backend) {
    let app = TestApp::start(backend).await;
    let created = edge_key(&app, &["edge-a", "edge-b"])
        .await
        .expect(StatusCode::CREATED)
        .body;
    assert_eq!(created["edges"], json!(["edge-a", "edge-b"]));
    let key = created["key"].as_str().unwrap().to_owned();

    poll_as(&app, &key, "edge-a").await.expect(StatusCode::OK);
    poll_as(&app, &key, "edge-b").await.expect(StatusCode::OK);
    let refused = poll_as(&app, &key, "edge-c")
        .await
        .expect(StatusCode::FORBIDDEN);
    assert_eq!(refused.code(), "forbidden");
    let message = refused.body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("\"edge-c\"") && message.contains("--edge edge-c"),
        "{message}"
    );

    app.post("/api/v1/usage", Some(&key), batch("edge-a"))
        .await
        .expect(StatusCode::ACCEPTED);
    let refused = app
        .post("/api/v1/usage", Some(&key), batch("edge-c"))
        .await
        .expect(StatusCode::FORBIDDEN);
    assert_eq!(refused.code(), "forbidden");

    // The refused poll and report left no trace under the other edge's name.
    let names = edge_names(&app).await;
    assert!(names.contains(&"edge-a".to_owned()), "{names:?}");
    assert!(!names.contains(&"edge-c".to_owned()), "{names:?}");

    // The binding is listed, and admins still act as any edge.
    let keys = app
        .get("/api/v1/api-keys", Some(&app.admin_key))
        .await
        .expect(StatusCode::OK)
        .body;
    let listed = keys["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["id"] == created["id"])
        .unwrap()
        .clone();
    assert_eq!(listed["edges"], json!(["edge-a", "edge-b"]));
    poll_as(&app, &app.admin_key, "edge-c")
        .await
        .expect(StatusCode::OK);
}

async fn an_unbound_edge_key_still_acts_as_any_edge(backend: Backend) {
    let app = TestApp::start(backend).await;
    // As every edge key created before keys were bound: no edge names.
    let key = app.api_key(Role::Edge, None).await;
    poll_as(&app, &key, "edge-x").await.expect(StatusCode::OK);
    app.post("/api/v1/usage", Some(&key), batch("edge-y"))
        .await
        .expect(StatusCode::ACCEPTED);
    let keys = app
        .get("/api/v1/api-keys", Some(&app.admin_key))
        .await
        .expect(StatusCode::OK)
        .body;
    assert!(keys["items"]
        .as_array()
        .unwrap()
        .iter()
        .all(|k| k["edges"] == json!([])));
}

async fn edge_names_are_checked_and_only_edge_keys_take_them(backend: Backend) {
    let app = TestApp::start(backend).await;
    let refused = app
        .post(
            "/api/v1/api-keys",
            Some(&app.admin_key),
            json!({"role": "auditor", "edges": ["edge-a"]}),
        )
        .await
        .expect(StatusCode::BAD_REQUEST);
    assert_eq!(refused.body["error"]["field"], "edges");
    let refused = edge_key(&app, &["edge-a", "bad\nname"])
        .await
        .expect(StatusCode::BAD_REQUEST);
    assert_eq!(refused.body["error"]["field"], "edges[1]");
    // Repeated names are stored once.
    let created = edge_key(&app, &["edge-a", "edge-a"])
        .await
        .expect(StatusCode::CREATED);
    assert_eq!(created.body["edges"], json!(["edge-a"]));
}

async fn deleting_a_client_deletes_its_keys_and_a_new_client_with_its_id_does_not_revive_them(
    backend: Backend,
) {
    let app = TestApp::start(backend).await;
    app.client("billing", &["read"], &[]).await;
    let created = app
        .post(
            "/api/v1/api-keys",
            Some(&app.admin_key),
            json!({"role": "service", "client_id": "billing"}),
        )
        .await
        .expect(StatusCode::CREATED)
        .body;
    let key = created["key"].as_str().unwrap().to_owned();
    // Used once, so the key is in the cache the deletion must clear.
    app.get("/api/v1/clients/billing", Some(&key))
        .await
        .expect(StatusCode::FORBIDDEN);
    app.json(
        Method::DELETE,
        "/api/v1/clients/billing",
        Some(&app.admin_key),
        None,
    )
    .await
    .expect(StatusCode::NO_CONTENT);
    let issue = json!({"subject": "alice", "client_id": "billing", "scopes": ["read"]});
    app.post("/api/v1/tokens", Some(&key), issue.clone())
        .await
        .expect(StatusCode::UNAUTHORIZED);
    app.client("billing", &["read"], &[]).await;
    app.post("/api/v1/tokens", Some(&key), issue)
        .await
        .expect(StatusCode::UNAUTHORIZED);
    let keys = app
        .get("/api/v1/api-keys", Some(&app.admin_key))
        .await
        .expect(StatusCode::OK)
        .body;
    assert!(keys["items"]
        .as_array()
        .unwrap()
        .iter()
        .all(|k| k["id"] != created["id"]));
    let deleted = events_of(&app, "api_key.deleted").await;
    assert!(
        deleted.iter().any(|e| e["details"]["id"] == created["id"]),
        "{deleted:?}"
    );
}

async fn a_key_for_a_client_that_does_not_exist_is_refused_when_typed(backend: Backend) {
    let app = TestApp::start(backend).await;
    let refused = app
        .post(
            "/api/v1/api-keys",
            Some(&app.admin_key),
            json!({"role": "service", "client_id": "billing"}),
        )
        .await
        .expect(StatusCode::BAD_REQUEST);
    assert_eq!(refused.body["error"]["field"], "client_id");
    let message = refused.body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("create the client first: POST /api/v1/clients"),
        "{message}"
    );

    let out = cli(
        &app.db,
        &[
            "api-key",
            "create",
            "--role",
            "service",
            "--client-id",
            "billing",
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(out.stdout.is_empty(), "no key printed");
    assert!(
        stderr.contains("create the client first: POST /api/v1/clients"),
        "{stderr}"
    );
    let out = cli(&app.db, &["api-key", "create", "--role", "service"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("--client-id"), "{stderr}");

    app.client("billing", &["read"], &[]).await;
    let out = cli(
        &app.db,
        &[
            "api-key",
            "create",
            "--role",
            "service",
            "--client-id",
            "billing",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

async fn cli_created_keys_and_users_leave_an_event(backend: Backend) {
    let app = TestApp::start(backend).await;
    let out = cli(
        &app.db,
        &[
            "api-key", "create", "--role", "edge", "--edge", "edge-1", "--name", "cli edge",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let key = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    poll_as(&app, &key, "edge-1").await.expect(StatusCode::OK);
    poll_as(&app, &key, "edge-2")
        .await
        .expect(StatusCode::FORBIDDEN);
    let created = events_of(&app, "api_key.created").await;
    let event = created
        .iter()
        .find(|e| e["details"]["name"] == "cli edge")
        .unwrap_or_else(|| panic!("no api_key.created event for the cli key: {created:?}"));
    assert_eq!(event["actor"], "cli");
    assert_eq!(event["details"]["edges"], json!(["edge-1"]));
    assert!(
        !event.to_string().contains(&key),
        "the key is never in an event"
    );

    let out = cli(&app.db, &["user", "create", "--username", "carol"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let password = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let created = events_of(&app, "user.created").await;
    let event = created
        .iter()
        .find(|e| e["details"]["username"] == "carol")
        .unwrap_or_else(|| panic!("no user.created event: {created:?}"));
    assert_eq!(event["actor"], "cli");
    assert!(!event.to_string().contains(&password));
}

async fn logins_failures_lockouts_and_rate_limits_leave_events_without_the_password(
    backend: Backend,
) {
    let db = common::TestDb::new(backend).await;
    let mut config = db.config();
    config.login_lockout_failures = 2;
    config.login_rate_limit = edgewarden_admin::config::RateLimit {
        burst: 4,
        per_second: 0.001,
    };
    let app = TestApp::with_config(config, db).await;
    user(&app, "dora").await;
    login_from(&app, "10.0.0.1", "dora", PASSWORD)
        .await
        .expect(StatusCode::OK);
    login_from(&app, "10.0.0.1", "dora", "wrong password 1")
        .await
        .expect(StatusCode::UNAUTHORIZED);
    // A password typed into the username field is never recorded.
    login_from(&app, "10.0.0.1", "my secret passphrase", "x")
        .await
        .expect(StatusCode::UNAUTHORIZED);
    login_from(&app, "10.0.0.1", "dora", "wrong password 2")
        .await
        .expect(StatusCode::UNAUTHORIZED);
    // The fifth attempt from this address is over the limit, and so are the next ones.
    for _ in 0..3 {
        login_from(&app, "10.0.0.1", "dora", PASSWORD)
            .await
            .expect(StatusCode::TOO_MANY_REQUESTS);
    }

    let logins = events_of(&app, "auth.login").await;
    assert_eq!(logins.len(), 1, "{logins:?}");
    assert_eq!(logins[0]["actor"], "user:dora");
    assert_eq!(logins[0]["details"]["address"], "10.0.0.1");
    let failed = events_of(&app, "auth.login_failed").await;
    assert_eq!(failed.len(), 3, "{failed:?}");
    assert!(failed.iter().all(|e| e["details"]["address"] == "10.0.0.1"));
    let locked = events_of(&app, "auth.locked").await;
    assert_eq!(locked.len(), 1, "{locked:?}");
    assert_eq!(locked[0]["details"]["username"], "dora");
    // Three refusals by the rate limit, one event.
    let limited = events_of(&app, "auth.rate_limited").await;
    assert_eq!(limited.len(), 1, "{limited:?}");
    let all = app
        .get("/api/v1/events?limit=500", Some(&app.admin_key))
        .await
        .expect(StatusCode::OK)
        .body
        .to_string();
    for secret in [PASSWORD, "wrong password", "my secret passphrase"] {
        assert!(!all.contains(secret), "{secret:?} reached the events");
    }
}

async fn bad_api_keys_leave_one_event_per_address_a_minute(backend: Backend) {
    let app = TestApp::start(backend).await;
    for _ in 0..20 {
        app.get("/api/v1/clients", Some("ewk_not-a-real-key-0123456789"))
            .await
            .expect(StatusCode::UNAUTHORIZED);
    }
    let bad = events_of(&app, "auth.bad_api_key").await;
    assert_eq!(bad.len(), 1, "{bad:?}");
    assert_eq!(bad[0]["details"]["path"], "/api/v1/clients");
    assert!(!bad[0].to_string().contains("not-a-real-key"));
}

async fn a_user_changes_their_password_and_their_other_sessions_end(backend: Backend) {
    let app = TestApp::start(backend).await;
    user(&app, "erin").await;
    let here = session_of(
        &login_from(&app, "10.0.0.2", "erin", PASSWORD)
            .await
            .expect(StatusCode::OK),
    );
    let elsewhere = session_of(
        &login_from(&app, "10.0.0.3", "erin", PASSWORD)
            .await
            .expect(StatusCode::OK),
    );
    let new = "a much better passphrase";
    // CSRF-protected like every session mutation.
    let no_csrf = (here.0.clone(), String::new());
    with_session(
        &app,
        Method::POST,
        "/api/v1/session/password",
        &no_csrf,
        Some(json!({"current_password": PASSWORD, "new_password": new})),
    )
    .await
    .expect(StatusCode::FORBIDDEN);
    let wrong = with_session(
        &app,
        Method::POST,
        "/api/v1/session/password",
        &here,
        Some(json!({"current_password": "not my password", "new_password": new})),
    )
    .await
    .expect(StatusCode::BAD_REQUEST);
    assert_eq!(wrong.body["error"]["field"], "current_password");
    let short = with_session(
        &app,
        Method::POST,
        "/api/v1/session/password",
        &here,
        Some(json!({"current_password": PASSWORD, "new_password": "short"})),
    )
    .await
    .expect(StatusCode::BAD_REQUEST);
    assert_eq!(short.body["error"]["field"], "new_password");
    with_session(
        &app,
        Method::POST,
        "/api/v1/session/password",
        &here,
        Some(json!({"current_password": PASSWORD, "new_password": new})),
    )
    .await
    .expect(StatusCode::NO_CONTENT);

    with_session(&app, Method::GET, "/api/v1/session", &here, None)
        .await
        .expect(StatusCode::OK);
    with_session(&app, Method::GET, "/api/v1/session", &elsewhere, None)
        .await
        .expect(StatusCode::UNAUTHORIZED);
    login_from(&app, "10.0.0.4", "erin", PASSWORD)
        .await
        .expect(StatusCode::UNAUTHORIZED);
    login_from(&app, "10.0.0.4", "erin", new)
        .await
        .expect(StatusCode::OK);
    let changed = events_of(&app, "user.password_changed").await;
    assert_eq!(changed.len(), 1, "{changed:?}");
    assert_eq!(changed[0]["actor"], "user:erin");
    assert!(!changed[0].to_string().contains(new));

    // An API key has no password to change.
    app.post(
        "/api/v1/session/password",
        Some(&app.admin_key),
        json!({"current_password": PASSWORD, "new_password": new}),
    )
    .await
    .expect(StatusCode::BAD_REQUEST);
}

async fn the_cli_sets_a_password_and_ends_every_session(backend: Backend) {
    let app = TestApp::start(backend).await;
    user(&app, "finn").await;
    let session = session_of(
        &login_from(&app, "10.0.0.5", "finn", PASSWORD)
            .await
            .expect(StatusCode::OK),
    );
    let out = cli(&app.db, &["user", "password", "--username", "finn"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let generated = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    assert!(generated.len() >= 12, "{generated:?}");
    with_session(&app, Method::GET, "/api/v1/session", &session, None)
        .await
        .expect(StatusCode::UNAUTHORIZED);
    login_from(&app, "10.0.0.6", "finn", &generated)
        .await
        .expect(StatusCode::OK);
    let changed = events_of(&app, "user.password_changed").await;
    assert_eq!(changed[0]["actor"], "cli");

    let out = cli(
        &app.db,
        &[
            "user",
            "password",
            "--username",
            "nobody",
            "--password",
            "long enough password",
        ],
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("user create"));
}

async fn the_first_admin_password_goes_to_a_private_file_never_to_the_log(backend: Backend) {
    let db = common::TestDb::new(backend).await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let stdout = db.dir.path().join("stdout.log");
    let stderr = db.dir.path().join("stderr.log");
    let data = db.dir.path().join("data");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_edgewarden-admin"))
        .env_clear()
        .env("EDGEWARDEN_DATA_DIR", &data)
        .env("EDGEWARDEN_LOG", "info")
        .env(
            "EDGEWARDEN_MASTER_KEY",
            "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff",
        )
        .env("DATABASE_URL", db.database_url.clone().unwrap_or_default())
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .stdout(std::fs::File::create(&stdout).unwrap())
        .stderr(std::fs::File::create(&stderr).unwrap())
        .spawn()
        .expect("start serve");
    let file = data.join("initial-admin-password");
    let started = std::time::Instant::now();
    while !std::fs::read_to_string(&file).is_ok_and(|t| t.ends_with('\n')) {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(60),
            "no {} after 60 s; stderr: {}",
            file.display(),
            std::fs::read_to_string(&stderr).unwrap_or_default()
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    // Let the log line that names the file be written.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    child.kill().unwrap();
    child.wait().unwrap();
    let password = std::fs::read_to_string(&file).unwrap().trim().to_owned();
    assert!(password.len() >= 12);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{mode:o}");
    }
    let log =
        std::fs::read_to_string(&stdout).unwrap() + &std::fs::read_to_string(&stderr).unwrap();
    assert!(
        !log.contains(&password),
        "the password reached the log: {log}"
    );
    assert!(log.contains("initial-admin-password"), "{log}");

    // The password in the file logs in.
    let mut config = db.config();
    config.data_dir = data.clone();
    let app = TestApp::with_config(config, db).await;
    login_from(&app, "10.0.0.7", "admin", &password)
        .await
        .expect(StatusCode::OK);
}

async fn oversized_json_is_413_and_json_needs_its_content_type(backend: Backend) {
    let app = TestApp::start(backend).await;
    let big = format!(
        "{{\"client_id\": \"big\", \"name\": \"{}\"}}",
        "a".repeat(5 * 1024 * 1024)
    );
    // Without content-length (found while reading) and with it (refused before reading).
    for declared in [false, true] {
        let mut builder = Request::builder()
            .method(Method::POST)
            .uri("/api/v1/clients")
            .header(header::AUTHORIZATION, format!("Bearer {}", app.admin_key))
            .header(header::CONTENT_TYPE, "application/json");
        if declared {
            builder = builder.header(header::CONTENT_LENGTH, big.len());
        }
        let answer = app
            .call(builder.body(Body::from(big.clone())).unwrap())
            .await
            .expect(StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(answer.code(), "payload_too_large", "declared {declared}");
    }
    let body = json!({"client_id": "plain"}).to_string();
    for content_type in [
        None,
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
    ] {
        let mut builder = Request::builder()
            .method(Method::POST)
            .uri("/api/v1/clients")
            .header(header::AUTHORIZATION, format!("Bearer {}", app.admin_key));
        if let Some(ct) = content_type {
            builder = builder.header(header::CONTENT_TYPE, ct);
        }
        let answer = app
            .call(builder.body(Body::from(body.clone())).unwrap())
            .await
            .expect(StatusCode::UNSUPPORTED_MEDIA_TYPE);
        assert_eq!(answer.code(), "unsupported_media_type");
        let message = answer.body["error"]["message"].as_str().unwrap();
        assert!(
            message.contains("content-type: application/json"),
            "{message}"
        );
    }
    app.get("/api/v1/clients/plain", Some(&app.admin_key))
        .await
        .expect(StatusCode::NOT_FOUND);
    // Usage reports too: a batch without a JSON content type is refused, not parsed.
    for content_type in [None, Some("text/plain")] {
        let mut builder = Request::builder()
            .method(Method::POST)
            .uri("/api/v1/usage")
            .header(header::AUTHORIZATION, format!("Bearer {}", app.admin_key));
        if let Some(ct) = content_type {
            builder = builder.header(header::CONTENT_TYPE, ct);
        }
        let answer = app
            .call(builder.body(Body::from("{}")).unwrap())
            .await
            .expect(StatusCode::UNSUPPORTED_MEDIA_TYPE);
        assert_eq!(answer.code(), "unsupported_media_type", "{content_type:?}");
    }
    // The optional body of a key rotation too.
    let answer = app
        .call(
            Request::builder()
                .method(Method::POST)
                .uri("/api/v1/keys/rotate")
                .header(header::AUTHORIZATION, format!("Bearer {}", app.admin_key))
                .body(Body::from(json!({"alg": "EdDSA"}).to_string()))
                .unwrap(),
        )
        .await
        .expect(StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert_eq!(answer.code(), "unsupported_media_type");
    // A +json type is json.
    let answer = app
        .call(
            Request::builder()
                .method(Method::POST)
                .uri("/api/v1/clients")
                .header(header::AUTHORIZATION, format!("Bearer {}", app.admin_key))
                .header(header::CONTENT_TYPE, "application/merge-patch+json")
                .body(Body::from(body))
                .unwrap(),
        )
        .await;
    assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.body);
}

async fn a_bad_path_parameter_is_answered_in_the_json_error_shape(backend: Backend) {
    let app = TestApp::start(backend).await;
    let answer = app
        .get("/api/v1/clients/%FF%FE", Some(&app.admin_key))
        .await
        .expect(StatusCode::BAD_REQUEST);
    assert_eq!(answer.code(), "invalid_request", "{}", answer.body);
    assert!(answer.body["error"]["message"].as_str().unwrap().len() > 5);
    assert_eq!(
        answer.headers[header::CONTENT_TYPE],
        "application/json",
        "{:?}",
        answer.headers
    );
}

async fn error_texts_say_what_to_do(backend: Backend) {
    let app = TestApp::start(backend).await;
    app.client("billing", &["read"], &[]).await;
    let service = app.api_key(Role::Service, Some("billing")).await;
    let refused = app
        .get("/api/v1/revocations/feed?since=0", Some(&service))
        .await
        .expect(StatusCode::FORBIDDEN);
    assert_eq!(
        refused.body["error"]["message"],
        "role service may not call GET /api/v1/revocations/feed (revocation feed for edges); roles allowed: admin, auditor, edge"
    );

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_edgewarden-admin"))
        .env_clear()
        .env("EDGEWARDEN_DATA_DIR", app.db.dir.path().join("bad-key"))
        .env(
            "DATABASE_URL",
            app.db.database_url.clone().unwrap_or_default(),
        )
        .env("EDGEWARDEN_MASTER_KEY", "abcd")
        .args(["serve", "--listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    for hint in [
        "64 hex characters",
        "base64 of 32 bytes",
        "--master-key-file",
    ] {
        assert!(stderr.contains(hint), "{hint:?} missing from: {stderr}");
    }

    let out = cli(&app.db, &["--help"]);
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.contains("edgewarden-admin serve --help"), "{help}");
    assert!(help.contains("--client-id, --edge"), "{help}");
}
