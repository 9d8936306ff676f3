//! A new client's first issuance that asks for something the client does not list says which field of the
//! client to set and how, on `POST /api/v1/tokens` and on `/oauth/token`.

mod common;

use axum::http::StatusCode;
use common::{basic, Backend, TestApp};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_scope_role_or_audience_names_the_client_field_to_set() {
    let app = TestApp::start(Backend::Sqlite).await;
    let secret = app
        .post(
            "/api/v1/clients",
            Some(&app.admin_key),
            json!({"client_id": "billing"}),
        )
        .await
        .expect(StatusCode::CREATED)
        .body["client_secret"]
        .as_str()
        .unwrap()
        .to_owned();
    for (request, field, fix) in [
        (
            json!({"subject": "alice", "client_id": "billing", "scopes": ["invoices:read"]}),
            "scopes[0]",
            r#"its allowed_scopes is empty; add it to the client's allowed_scopes with PATCH /api/v1/clients/billing {"allowed_scopes": ["invoices:read"]}"#,
        ),
        (
            json!({"subject": "alice", "client_id": "billing", "roles": ["reader"]}),
            "roles[0]",
            r#"PATCH /api/v1/clients/billing {"allowed_roles": ["reader"]}"#,
        ),
        (
            json!({"subject": "alice", "client_id": "billing", "audience": "api://billing"}),
            "audience",
            r#"may only name the default audience "edgewarden"; its audiences is empty; add it to the client's audiences with PATCH /api/v1/clients/billing {"audiences": ["api://billing"]}"#,
        ),
    ] {
        let refused = app
            .post("/api/v1/tokens", Some(&app.admin_key), request)
            .await
            .expect(StatusCode::BAD_REQUEST);
        assert_eq!(refused.body["error"]["field"], field);
        let message = refused.body["error"]["message"].as_str().unwrap();
        assert!(message.contains(fix), "{message}");
    }
    // The same advice through the OAuth token endpoint, and it works once the field is set.
    let auth = basic("billing", &secret);
    let refused = app
        .form(
            "/oauth/token",
            Some(&auth),
            &[
                ("grant_type", "client_credentials"),
                ("scope", "invoices:read"),
            ],
        )
        .await
        .expect(StatusCode::BAD_REQUEST);
    assert_eq!(refused.body["error"], "invalid_scope");
    assert!(refused.body["error_description"]
        .as_str()
        .unwrap()
        .contains(r#"{"allowed_scopes": ["invoices:read"]}"#));
    app.json(
        axum::http::Method::PATCH,
        "/api/v1/clients/billing",
        Some(&app.admin_key),
        Some(json!({"allowed_scopes": ["invoices:read"]})),
    )
    .await
    .expect(StatusCode::OK);
    app.form(
        "/oauth/token",
        Some(&auth),
        &[
            ("grant_type", "client_credentials"),
            ("scope", "invoices:read"),
        ],
    )
    .await
    .expect(StatusCode::OK);
    // A client with scopes lists them.
    let refused = app
        .post(
            "/api/v1/tokens",
            Some(&app.admin_key),
            json!({"subject": "alice", "client_id": "billing", "scopes": ["payroll"]}),
        )
        .await
        .expect(StatusCode::BAD_REQUEST);
    let message = refused.body["error"]["message"].as_str().unwrap();
    assert!(message
        .contains(r#"its allowed_scopes are invoices:read; add it to the client's allowed_scopes with PATCH /api/v1/clients/billing {"allowed_scopes": ["invoices:read", "payroll"]}"#),
        "{message}"
    );
}
