//! The admin API under abuse (issue 13), over a real socket on 127.0.0.1: slow and idle clients are cut
//! off, `/healthz` answers with the connection bound full of half-sent requests, while event streams
//! and long-polls outlive every timeout. Time bounds are generous (a timeout plus five seconds), so a
//! loaded machine does not make them flaky. Run on SQLite and PostgreSQL.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{header, Method, Request, StatusCode};
use common::{serve_on_socket, Answer, Backend, TestApp, TestDb};
use edgewarden_admin::auth::{create_user, Role};
use edgewarden_admin::config::{Argon2Params, ServeLimits};
use http_body_util::BodyExt as _;
use serde_json::json;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tower::ServiceExt as _;

both_backends!(
    half_sent_header_is_cut_within_the_header_timeout,
    slow_body_is_cut_within_the_body_timeout,
    idle_keep_alive_connection_is_closed_after_the_idle_timeout,
    healthz_answers_with_the_connection_bound_full_of_half_sent_requests,
    streams_and_long_polls_outlive_the_timeouts_and_the_bound,
    held_requests_never_fill_the_connection_bound,
    concurrent_wrong_logins_never_hash_more_than_the_bound,
    repeated_wrong_passwords_lock_the_account_from_any_address,
    event_stream_ends_when_its_api_key_is_deleted,
    event_stream_ends_when_its_session_logs_out,
    held_feed_poll_ends_when_its_api_key_is_deleted,
    answers_carrying_a_secret_are_not_stored,
    head_is_answered_like_get_without_a_body,
    healthz_answers_while_the_runtime_is_saturated,
);

/// Grace on top of a timeout before a test calls it missed.
const GRACE: Duration = Duration::from_secs(5);

async fn app_with(backend: Backend, limits: ServeLimits) -> (TestApp, SocketAddr) {
    let db = TestDb::new(backend).await;
    let mut config = db.config();
    config.serve = limits;
    let app = TestApp::with_config(config, db).await;
    let addr = serve_on_socket(&app).await;
    (app, addr)
}

fn limits(header: u64, body: u64, idle: u64, max_connections: usize) -> ServeLimits {
    ServeLimits {
        max_connections,
        header_timeout: Duration::from_secs(header),
        body_timeout: Duration::from_secs(body),
        idle_timeout: Duration::from_secs(idle),
    }
}

async fn connect(addr: SocketAddr, sent: &str) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.write_all(sent.as_bytes()).await.expect("write");
    stream
}

/// What the server sent until it closed the connection, `until` appeared, or `within` passed; and
/// whether it closed.
async fn read_until(stream: &mut TcpStream, until: &str, within: Duration) -> (String, bool) {
    let mut got = Vec::new();
    let end = tokio::time::Instant::now() + within;
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout_at(end, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (String::from_utf8_lossy(&got).into_owned(), true),
            Ok(Ok(n)) => {
                got.extend_from_slice(&buf[..n]);
                let text = String::from_utf8_lossy(&got);
                if !until.is_empty() && text.contains(until) {
                    return (text.into_owned(), false);
                }
            }
            Err(_) => return (String::from_utf8_lossy(&got).into_owned(), false),
        }
    }
}

async fn healthz_answers(addr: SocketAddr) -> bool {
    let mut stream = connect(
        addr,
        "GET /healthz HTTP/1.1\r\nhost: test\r\nconnection: close\r\n\r\n",
    )
    .await;
    let (got, _) = read_until(&mut stream, "\"status\":\"ok\"", GRACE).await;
    got.starts_with("HTTP/1.1 200")
}

async fn half_sent_header_is_cut_within_the_header_timeout(backend: Backend) {
    let (_app, addr) = app_with(backend, limits(1, 60, 60, 100)).await;
    let mut stream = connect(addr, "GET /healthz HTTP/1.1\r\nhost: te").await;
    let (_, closed) = read_until(&mut stream, "", Duration::from_secs(1) + GRACE).await;
    assert!(
        closed,
        "a half-sent header was still open after the header timeout plus {GRACE:?}"
    );
}

async fn slow_body_is_cut_within_the_body_timeout(backend: Backend) {
    let (_app, addr) = app_with(backend, limits(60, 1, 60, 100)).await;
    let mut stream = connect(
        addr,
        "POST /api/v1/session HTTP/1.1\r\nhost: test\r\ncontent-type: application/json\r\ncontent-length: 1000\r\n\r\n{\"username\"",
    )
    .await;
    let (got, closed) = read_until(&mut stream, "HTTP/1.1 ", Duration::from_secs(1) + GRACE).await;
    assert!(
        closed || got.starts_with("HTTP/1.1 4"),
        "a body stalled after 11 of 1000 bytes was still waited for after the body timeout plus {GRACE:?}: {got:?}"
    );
}

async fn idle_keep_alive_connection_is_closed_after_the_idle_timeout(backend: Backend) {
    let (_app, addr) = app_with(backend, limits(60, 60, 1, 100)).await;
    let mut stream = connect(addr, "GET /healthz HTTP/1.1\r\nhost: test\r\n\r\n").await;
    let (got, closed) = read_until(&mut stream, "\"status\":\"ok\"", GRACE).await;
    assert!(got.starts_with("HTTP/1.1 200") && !closed, "{got:?}");
    let (_, closed) = read_until(&mut stream, "", Duration::from_secs(1) + GRACE).await;
    assert!(
        closed,
        "an idle keep-alive connection was still open after the idle timeout plus {GRACE:?}"
    );
}

async fn healthz_answers_with_the_connection_bound_full_of_half_sent_requests(backend: Backend) {
    // Timeouts far longer than the test: only the bound can close anything here.
    let (_app, addr) = app_with(backend, limits(120, 120, 120, 20)).await;
    let mut held = Vec::new();
    for _ in 0..40 {
        held.push(connect(addr, "GET /healthz HTTP/1.1\r\nhost: te").await);
    }
    for _ in 0..3 {
        assert!(
            healthz_answers(addr).await,
            "/healthz did not answer with the bound full"
        );
    }
    // Evicted connections are closed: a read sees the end at once, an open one waits.
    let mut open = 0;
    for stream in &mut held {
        let (_, closed) = read_until(stream, "", Duration::from_millis(300)).await;
        if !closed {
            open += 1;
        }
    }
    assert!(
        open <= 20,
        "{open} of 40 half-sent requests still hold a connection with a bound of 20"
    );
}

async fn streams_and_long_polls_outlive_the_timeouts_and_the_bound(backend: Backend) {
    let (app, addr) = app_with(backend, limits(1, 1, 1, 4)).await;
    let key = app.admin_key.clone();
    let mut stream = connect(
        addr,
        &format!("GET /api/v1/events/stream HTTP/1.1\r\nhost: test\r\nauthorization: Bearer {key}\r\n\r\n"),
    )
    .await;
    let (got, closed) = read_until(&mut stream, "\r\n\r\n", GRACE).await;
    assert!(got.starts_with("HTTP/1.1 200") && !closed, "{got:?}");
    let since = app.state.feed.current();
    let mut poll = connect(
        addr,
        &format!("GET /api/v1/revocations/feed?since={since}&wait=3 HTTP/1.1\r\nhost: test\r\nauthorization: Bearer {key}\r\n\r\n"),
    )
    .await;
    // The long-poll is held before the bound fills: until the main runtime has parsed its request a
    // connection counts as idle and may be evicted like any other (a race this test is not about).
    let free = app.state.held_requests.available_permits();
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    while app.state.held_requests.available_permits() == free {
        assert!(
            std::time::Instant::now() < deadline,
            "the long-poll was not held within 3 s"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Fill the bound with half-sent requests: they, not the stream or the long-poll, are evicted.
    let mut held = Vec::new();
    for _ in 0..8 {
        held.push(connect(addr, "GET /healthz HTTP/1.1\r\nhost: te").await);
    }
    let (got, _) = read_until(&mut poll, "\r\n\r\n", Duration::from_secs(3) + GRACE).await;
    assert!(
        got.starts_with("HTTP/1.1 200") || got.starts_with("HTTP/1.1 304"),
        "the long-poll was cut: {got:?}"
    );
    // Past every timeout, the stream still delivers.
    tokio::time::sleep(Duration::from_secs(2)).await;
    app.post(
        "/api/v1/clients",
        Some(&key),
        json!({"client_id": "late", "allowed_scopes": ["read"]}),
    )
    .await
    .expect(StatusCode::CREATED);
    let (got, closed) = read_until(&mut stream, "client.created", GRACE).await;
    assert!(
        got.contains("client.created"),
        "the event stream was cut (closed: {closed}): {got:?}"
    );
}

/// `POST /api/v1/session` as if from `address` (what `auth::client_address` reads).
async fn login_from(app: &TestApp, address: &str, username: &str, password: &str) -> Answer {
    let mut request = Request::builder()
        .method(Method::POST)
        .uri("/api/v1/session")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(
            json!({"username": username, "password": password}).to_string(),
        ))
        .unwrap();
    let addr: SocketAddr = format!("{address}:40000").parse().unwrap();
    request.extensions_mut().insert(ConnectInfo(addr));
    app.call(request).await
}

async fn concurrent_wrong_logins_never_hash_more_than_the_bound(backend: Backend) {
    let db = TestDb::new(backend).await;
    let mut config = db.config();
    // Costly enough that unbounded verifications overlap on the blocking pool.
    config.argon2 = Argon2Params {
        memory_kib: 4096,
        iterations: 2,
        parallelism: 1,
    };
    config.password_concurrency = 2;
    config.password_wait = Duration::from_secs(120);
    config.login_lockout_failures = 0;
    let app = std::sync::Arc::new(TestApp::with_config(config, db).await);
    let logins = (0..16).map(|i| {
        let app = app.clone();
        tokio::spawn(async move {
            login_from(&app, &format!("10.0.1.{i}"), "admin", "not the password")
                .await
                .status
        })
    });
    for login in logins.collect::<Vec<_>>() {
        assert_eq!(login.await.unwrap(), StatusCode::UNAUTHORIZED);
    }
    let high_water = app.state.password_gate.high_water();
    assert!(
        (1..=2).contains(&high_water),
        "{high_water} password verifications ran at once with a bound of 2"
    );
}

async fn repeated_wrong_passwords_lock_the_account_from_any_address(backend: Backend) {
    let db = TestDb::new(backend).await;
    let mut config = db.config();
    config.login_lockout_failures = 3;
    config.login_lockout = Duration::from_secs(60);
    let app = TestApp::with_config(config, db).await;
    for name in ["alice", "bob"] {
        create_user(
            &app.state.db,
            &app.state.config.argon2,
            name,
            "correct horse battery",
            Role::Admin,
        )
        .await
        .unwrap();
    }
    for i in 1..=3 {
        login_from(&app, &format!("10.0.2.{i}"), "alice", "wrong password!")
            .await
            .expect(StatusCode::UNAUTHORIZED);
    }
    // A fourth address, even with the right password: the account is locked, not the address.
    let locked = login_from(&app, "10.0.2.4", "alice", "correct horse battery")
        .await
        .expect(StatusCode::TOO_MANY_REQUESTS);
    let retry: u64 = locked.headers[header::RETRY_AFTER]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry), "retry after {retry}s");
    login_from(&app, "10.0.2.5", "bob", "correct horse battery")
        .await
        .expect(StatusCode::OK);
}

/// Whether `body` ends within `within` (keep-alive comments and events may come first).
async fn ends_within(body: &mut Body, within: Duration) -> bool {
    let end = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(end, body.frame()).await {
            Ok(None) | Ok(Some(Err(_))) => return true,
            Ok(Some(Ok(_))) => {}
            Err(_) => return false,
        }
    }
}

async fn open_stream(app: &TestApp, header_name: header::HeaderName, value: &str) -> Body {
    let response = app
        .router
        .clone()
        .oneshot(
            Request::builder()
                .uri("/api/v1/events/stream")
                .header(header_name, value)
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    response.into_body()
}

/// Creates an API key through the API (as an operator would, so deletion goes through the API too).
async fn new_key(app: &TestApp, role: &str) -> (String, String) {
    let created = app
        .post(
            "/api/v1/api-keys",
            Some(&app.admin_key),
            json!({"role": role, "name": format!("held {role}")}),
        )
        .await
        .expect(StatusCode::CREATED);
    (
        created.body["id"].as_str().unwrap().to_owned(),
        created.body["key"].as_str().unwrap().to_owned(),
    )
}

async fn event_stream_ends_when_its_api_key_is_deleted(backend: Backend) {
    let app = TestApp::start(backend).await;
    let (id, key) = new_key(&app, "auditor").await;
    let mut body = open_stream(&app, header::AUTHORIZATION, &format!("Bearer {key}")).await;
    assert!(
        !ends_within(&mut body, Duration::from_millis(1500)).await,
        "the stream ended before its key was deleted"
    );
    app.json(
        Method::DELETE,
        &format!("/api/v1/api-keys/{id}"),
        Some(&app.admin_key),
        None,
    )
    .await
    .expect(StatusCode::NO_CONTENT);
    assert!(
        ends_within(&mut body, Duration::from_secs(1) + GRACE).await,
        "the event stream outlived its deleted api key"
    );
}

async fn event_stream_ends_when_its_session_logs_out(backend: Backend) {
    let app = TestApp::start(backend).await;
    create_user(
        &app.state.db,
        &app.state.config.argon2,
        "carol",
        "correct horse battery",
        Role::Auditor,
    )
    .await
    .unwrap();
    let login = login_from(&app, "10.0.3.1", "carol", "correct horse battery")
        .await
        .expect(StatusCode::OK);
    let cookie = login
        .headers
        .get_all(header::SET_COOKIE)
        .iter()
        .map(|v| v.to_str().unwrap().split(';').next().unwrap().to_owned())
        .collect::<Vec<_>>()
        .join("; ");
    let csrf = login.body["csrf_token"].as_str().unwrap().to_owned();
    let mut body = open_stream(&app, header::COOKIE, &cookie).await;
    let logout = app
        .call(
            Request::builder()
                .method(Method::DELETE)
                .uri("/api/v1/session")
                .header(header::COOKIE, &cookie)
                .header("x-csrf-token", &csrf)
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    logout.expect(StatusCode::NO_CONTENT);
    assert!(
        ends_within(&mut body, Duration::from_secs(1) + GRACE).await,
        "the event stream outlived its session's logout"
    );
}

async fn held_feed_poll_ends_when_its_api_key_is_deleted(backend: Backend) {
    let app = std::sync::Arc::new(TestApp::start(backend).await);
    let (id, key) = new_key(&app, "edge").await;
    // Some feed state, so the poll is held at a real cursor.
    app.post(
        "/api/v1/revocations",
        Some(&app.admin_key),
        json!({"subject": "mallory", "reason": "test"}),
    )
    .await;
    let since = app.state.feed.current();
    let poll = {
        let app = app.clone();
        tokio::spawn(async move {
            app.get(
                &format!("/api/v1/revocations/feed?since={since}&wait=30"),
                Some(&key),
            )
            .await
        })
    };
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(!poll.is_finished(), "the poll was not held");
    app.json(
        Method::DELETE,
        &format!("/api/v1/api-keys/{id}"),
        Some(&app.admin_key),
        None,
    )
    .await
    .expect(StatusCode::NO_CONTENT);
    let answer = tokio::time::timeout(Duration::from_secs(1) + GRACE, poll)
        .await
        .expect("the held poll outlived its deleted api key")
        .unwrap();
    answer.expect(StatusCode::UNAUTHORIZED);
}

async fn answers_carrying_a_secret_are_not_stored(backend: Backend) {
    let app = TestApp::start(backend).await;
    let key = app.admin_key.clone();
    let no_store = |answer: &Answer, what: &str| {
        assert_eq!(
            answer
                .headers
                .get(header::CACHE_CONTROL)
                .map(|v| v.to_str().unwrap()),
            Some("no-store"),
            "{what} answered a secret without Cache-Control: no-store"
        );
    };
    let client = app
        .post(
            "/api/v1/clients",
            Some(&key),
            json!({"client_id": "billing", "allowed_scopes": ["read"], "audiences": ["api://default"]}),
        )
        .await
        .expect(StatusCode::CREATED);
    no_store(&client, "POST /api/v1/clients");
    let secret = app
        .post("/api/v1/clients/billing/secret", Some(&key), json!({}))
        .await;
    assert!(secret.status.is_success(), "{}", secret.body);
    no_store(&secret, "POST /api/v1/clients/{id}/secret");
    let token = app
        .post(
            "/api/v1/tokens",
            Some(&key),
            json!({"subject": "alice", "client_id": "billing", "scopes": ["read"], "ttl_seconds": 600}),
        )
        .await
        .expect(StatusCode::OK);
    no_store(&token, "POST /api/v1/tokens");
    let api_key = app
        .post(
            "/api/v1/api-keys",
            Some(&key),
            json!({"role": "auditor", "name": "reader"}),
        )
        .await
        .expect(StatusCode::CREATED);
    no_store(&api_key, "POST /api/v1/api-keys");
    let webhook = app
        .post(
            "/api/v1/webhooks",
            Some(&key),
            json!({"url": "http://127.0.0.1:9/hook", "kinds": ["*"]}),
        )
        .await
        .expect(StatusCode::CREATED);
    no_store(&webhook, "POST /api/v1/webhooks");
    create_user(
        &app.state.db,
        &app.state.config.argon2,
        "dave",
        "correct horse battery",
        Role::Admin,
    )
    .await
    .unwrap();
    let session = login_from(&app, "10.0.4.1", "dave", "correct horse battery")
        .await
        .expect(StatusCode::OK);
    no_store(&session, "POST /api/v1/session");
}

async fn head_is_answered_like_get_without_a_body(backend: Backend) {
    let app = TestApp::start(backend).await;
    let head = |uri: &str, key: Option<&str>| {
        let mut builder = Request::builder().method(Method::HEAD).uri(uri);
        if let Some(key) = key {
            builder = builder.header(header::AUTHORIZATION, format!("Bearer {key}"));
        }
        builder.body(Body::empty()).unwrap()
    };
    let listed = app
        .call(head("/api/v1/clients", Some(&app.admin_key)))
        .await;
    assert_eq!(listed.status, StatusCode::OK, "{}", listed.body);
    assert_eq!(listed.body, serde_json::Value::Null, "HEAD answered a body");
    let health = app.call(head("/healthz", None)).await;
    assert_eq!(health.status, StatusCode::OK);
    // HEAD is checked like GET: no credentials, no answer.
    let anonymous = app.call(head("/api/v1/clients", None)).await;
    assert_eq!(anonymous.status, StatusCode::UNAUTHORIZED);
    let edge = app.api_key(Role::Edge, None).await;
    let forbidden = app.call(head("/api/v1/clients", Some(&edge))).await;
    assert_eq!(forbidden.status, StatusCode::FORBIDDEN);
}

async fn held_requests_never_fill_the_connection_bound(backend: Backend) {
    // A bound of 10 leaves 9 slots to held requests.
    let (app, addr) = app_with(backend, limits(120, 120, 120, 10)).await;
    let key = app.admin_key.clone();
    let since = app.state.feed.current();
    let poll = format!(
        "GET /api/v1/revocations/feed?since={since}&wait=30 HTTP/1.1\r\nhost: test\r\nauthorization: Bearer {key}\r\n\r\n"
    );
    let mut held = Vec::new();
    for _ in 0..9 {
        held.push(connect(addr, &poll).await);
    }
    // Let every one of them reach its wait.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for stream in &mut held {
        let (got, closed) = read_until(stream, "\r\n\r\n", Duration::from_millis(100)).await;
        assert!(got.is_empty() && !closed, "a poll was not held: {got:?}");
    }
    // The tenth finds no slot and is answered at once, as without wait.
    let mut tenth = connect(addr, &poll).await;
    let (got, _) = read_until(&mut tenth, "\r\n\r\n", GRACE).await;
    assert!(
        got.starts_with("HTTP/1.1 200") || got.starts_with("HTTP/1.1 304"),
        "a tenth long-poll was held or refused: {got:?}"
    );
    assert!(
        healthz_answers(addr).await,
        "/healthz did not answer with held requests at their limit"
    );
    let stream = app
        .router
        .clone()
        .oneshot(
            Request::builder()
                .uri("/api/v1/events/stream")
                .header(header::AUTHORIZATION, format!("Bearer {key}"))
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(stream.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(stream.headers().contains_key(header::RETRY_AFTER));
}

async fn healthz_answers_while_the_runtime_is_saturated(backend: Backend) {
    let (_app, addr) = app_with(backend, limits(10, 10, 60, 1000)).await;
    assert!(
        healthz_answers(addr).await,
        "/healthz did not answer at rest"
    );
    // What ten thousand woken feed polls do to the runtime (the fleet bench, issue 12): thousands of
    // ready tasks, each taking a slice of CPU. A task spawned now waits about a second for its turn.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut herd = Vec::new();
    for _ in 0..2_000 {
        let stop = stop.clone();
        herd.push(tokio::spawn(async move {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let until = std::time::Instant::now() + Duration::from_millis(1);
                while std::time::Instant::now() < until {
                    std::hint::spin_loop();
                }
                tokio::task::yield_now().await;
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Asked from a thread of its own, so the answer's time is not the test's runtime's.
    let times = tokio::task::spawn_blocking(move || {
        (0..5)
            .map(|_| {
                let started = std::time::Instant::now();
                let answered = blocking_healthz(addr);
                (answered, started.elapsed())
            })
            .collect::<Vec<_>>()
    })
    .await
    .expect("probe");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for task in herd {
        let _ = task.await;
    }
    for (answered, took) in &times {
        assert!(
            answered,
            "/healthz did not answer with the runtime saturated: {times:?}"
        );
        // Behind the herd it took 1-2 s; on the accept thread a few milliseconds (loaded CI: tens).
        assert!(
            *took < Duration::from_millis(400),
            "/healthz waited behind the runtime's queue: {times:?}"
        );
    }
}

fn blocking_healthz(addr: SocketAddr) -> bool {
    use std::io::{Read as _, Write as _};
    let Ok(mut stream) = std::net::TcpStream::connect(addr) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(GRACE));
    if stream
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: test\r\nconnection: close\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut got = Vec::new();
    let _ = stream.read_to_end(&mut got);
    String::from_utf8_lossy(&got).starts_with("HTTP/1.1 200")
}
