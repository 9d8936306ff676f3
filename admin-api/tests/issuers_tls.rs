//! A foreign issuer whose JWKS is published over https (as Keycloak, Auth0 and Entra ID do): the admin API
//! fetches it with rustls and the system's trust store, which `SSL_CERT_FILE` replaces here with a test CA,
//! the way an operator adds a private CA. A server whose certificate that CA did not sign is refused, and
//! the answer says it was the certificate. Its own test binary: `SSL_CERT_FILE` is read once per process,
//! when the first https client is built. SQLite only: the store plays no part in fetching keys.

mod common;

use std::sync::Arc;

use axum::http::StatusCode;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use common::{Backend, TestApp};
use p256::ecdsa::signature::Signer as _;
use p256::ecdsa::{Signature, SigningKey};
use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio_rustls::rustls;

/// A certificate authority and a `localhost` server certificate it signed.
struct Pki {
    ca_pem: String,
    leaf: rustls::pki_types::CertificateDer<'static>,
    leaf_key: rustls::pki_types::PrivateKeyDer<'static>,
}

fn pki() -> Pki {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["localhost".to_owned()])
        .unwrap()
        .signed_by(&leaf_key, &ca, &ca_key)
        .unwrap();
    Pki {
        ca_pem: ca.pem(),
        leaf: leaf.der().clone(),
        leaf_key: rustls::pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into()),
    }
}

/// Serves `body` as JSON at any path over TLS with `pki`'s server certificate; returns the port.
async fn serve_https(pki: &Pki, body: Value) -> u16 {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![pki.leaf.clone()], pki.leaf_key.clone_key())
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let body = body.to_string();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            let body = body.clone();
            tokio::spawn(async move {
                // A refused handshake (the client distrusts the certificate) ends here.
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut request = Vec::new();
                let mut buf = [0u8; 1024];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tls.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                let answer = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = tls.write_all(answer.as_bytes()).await;
                let _ = tls.shutdown().await;
            });
        }
    });
    port
}

fn jwks(key: &SigningKey, kid: &str) -> Value {
    let point = key.verifying_key().to_encoded_point(false);
    json!({"keys": [{
        "kty": "EC", "crv": "P-256", "use": "sig", "alg": "ES256", "kid": kid,
        "x": URL_SAFE_NO_PAD.encode(point.x().unwrap()),
        "y": URL_SAFE_NO_PAD.encode(point.y().unwrap()),
    }]})
}

fn sign(key: &SigningKey, kid: &str, claims: &Value) -> String {
    let header = json!({"alg": "ES256", "typ": "JWT", "kid": kid});
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let signature: Signature = key.sign(input.as_bytes());
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature.to_bytes()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_jwks_uri_is_fetched_with_the_trust_store_and_an_untrusted_certificate_is_named() {
    let trusted = pki();
    let untrusted = pki();
    let dir = tempfile::tempdir().unwrap();
    let bundle = dir.path().join("ca.pem");
    std::fs::write(&bundle, &trusted.ca_pem).unwrap();
    // The only test of this binary sets it before any client exists.
    std::env::set_var("SSL_CERT_FILE", &bundle);

    let app = TestApp::start(Backend::Sqlite).await;
    let key = SigningKey::random(&mut rand::rngs::OsRng);
    let now = edgewarden_admin::db::now();
    for (issuer, pki) in [
        ("https://kc.example.com/realms/acme", &trusted),
        ("https://rogue.example.com", &untrusted),
    ] {
        let port = serve_https(pki, jwks(&key, "kc-1")).await;
        app.post(
            "/api/v1/issuers",
            Some(&app.admin_key),
            json!({"issuer": issuer, "jwks_uri": format!("https://localhost:{port}/certs")}),
        )
        .await
        .expect(StatusCode::CREATED);
    }

    let token = sign(
        &key,
        "kc-1",
        &json!({"iss": "https://kc.example.com/realms/acme", "sub": "carol", "jti": "tls-1", "exp": now + 300}),
    );
    let revoked = app
        .post(
            "/api/v1/revocations",
            Some(&app.admin_key),
            json!({"token": token, "reason": "leaked"}),
        )
        .await
        .expect(StatusCode::CREATED)
        .body;
    assert_eq!(revoked["issuer"], "https://kc.example.com/realms/acme");
    assert_eq!(revoked["value"], "tls-1");

    let token = sign(
        &key,
        "kc-1",
        &json!({"iss": "https://rogue.example.com", "sub": "carol", "jti": "tls-2", "exp": now + 300}),
    );
    let refused = app
        .post(
            "/api/v1/revocations",
            Some(&app.admin_key),
            json!({"token": token, "reason": "leaked"}),
        )
        .await
        .expect(StatusCode::BAD_REQUEST)
        .body;
    let message = refused["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("cannot fetch the issuer's jwks") && message.contains("certificate"),
        "{message}"
    );
    assert!(!message.contains(&token), "the token is never echoed");
}
