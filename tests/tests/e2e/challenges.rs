//! Every answer the filter gives, as a client sees it through Envoy: 200 for a valid token,
//! RFC 6750 challenges for 401 and 403 with the JSON error body, and never the token echoed back.

use edgewarden_e2e::{Stack, TestKey, TokenBuilder, AUDIENCE};
use reqwest::Response;
use serde_json::Value;

use crate::base_config;

/// A refused response, read whole.
struct Refusal {
    status: u16,
    challenge: String,
    content_type: String,
    raw_headers: String,
    body: Value,
    body_text: String,
}

async fn refusal(response: Response) -> Refusal {
    let status = response.status().as_u16();
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .map(|v| v.to_str().unwrap_or_default().to_string())
            .unwrap_or_default()
    };
    let challenge = header("www-authenticate");
    let content_type = header("content-type");
    let raw_headers = format!("{:?}", response.headers());
    let body_text = response.text().await.expect("body");
    let body = serde_json::from_str(&body_text)
        .unwrap_or_else(|e| panic!("refusal body is not json ({e}): {body_text}"));
    Refusal {
        status,
        challenge,
        content_type,
        raw_headers,
        body,
        body_text,
    }
}

impl Refusal {
    /// The body has the documented shape: string `error` and `error_description`.
    fn assert_json_shape(&self) {
        assert!(
            self.content_type.starts_with("application/json"),
            "content-type {}",
            self.content_type
        );
        // RFC 6750 3.1: an error code only when a token was presented; `reason` always.
        assert!(
            self.body["reason"].is_string(),
            "no reason in {}",
            self.body_text
        );
        if self.body["reason"] == "missing_token" {
            assert!(
                self.body.get("error").is_none(),
                "an error code for a request without a token in {}",
                self.body_text
            );
        } else {
            assert!(
                self.body["error"].is_string(),
                "no error in {}",
                self.body_text
            );
        }
        assert!(
            self.body["error_description"].is_string(),
            "no error_description in {}",
            self.body_text
        );
    }

    /// Neither the token nor its signature appear anywhere in the answer.
    fn assert_token_not_echoed(&self, token: &str) {
        // The signature segment (absent for an unsigned token) is the part that must never leak.
        let signature = token.rsplit('.').next().unwrap_or(token);
        for (what, text) in [("body", &self.body_text), ("headers", &self.raw_headers)] {
            assert!(!text.contains(token), "token echoed in the {what}: {text}");
            assert!(
                signature.len() < 8 || !text.contains(signature),
                "signature echoed in the {what}: {text}"
            );
        }
    }
}

#[tokio::test]
async fn valid_tokens_of_every_algorithm_reach_the_upstream() {
    let stack = Stack::start(base_config()).await;
    for key in [TestKey::Es256A, TestKey::Rs256A, TestKey::EdDsaA] {
        let token = TokenBuilder::new(key).scope("read").sign();
        let response = stack.get_with_token("/read", &token).send().await.unwrap();
        assert_eq!(
            response.status(),
            200,
            "{key:?}: {}",
            response.text().await.unwrap()
        );
    }
    assert_eq!(stack.upstream.hits(), 3);
}

#[tokio::test]
async fn missing_token_gets_401_with_realm_and_no_error_code() {
    let stack = Stack::start(base_config()).await;
    let r = refusal(stack.get("/read").send().await.unwrap()).await;
    assert_eq!(r.status, 401);
    assert_eq!(r.challenge, r#"Bearer realm="e2e""#);
    assert!(!r.challenge.contains("error="));
    r.assert_json_shape();
    assert_eq!(stack.upstream.hits(), 0);
}

#[tokio::test]
async fn expired_token_is_rejected_with_token_expired() {
    let stack = Stack::start(base_config()).await;
    let token = TokenBuilder::new(TestKey::Es256A)
        .scope("read")
        .claim("iat", edgewarden_e2e::now() - 7200)
        .expires_in(-3600)
        .sign();
    let r = refusal(stack.get_with_token("/read", &token).send().await.unwrap()).await;
    assert_eq!(r.status, 401);
    assert!(
        r.challenge.starts_with(r#"Bearer realm="e2e""#),
        "{}",
        r.challenge
    );
    assert!(
        r.challenge.contains(r#"error="invalid_token""#),
        "{}",
        r.challenge
    );
    assert!(
        r.challenge.contains(r#"error_description="token expired"#),
        "{}",
        r.challenge
    );
    r.assert_json_shape();
    assert_eq!(r.body["error"], "invalid_token");
    let description = r.body["error_description"].as_str().unwrap();
    assert!(description.contains("token expired"), "{description}");
    assert!(
        description.contains("leeway"),
        "figures expected: {description}"
    );
    r.assert_token_not_echoed(&token);
    assert_eq!(stack.upstream.hits(), 0);
}

#[tokio::test]
async fn token_within_clock_skew_after_exp_is_still_accepted() {
    let stack = Stack::start(base_config()).await;
    // Expired 10 s ago, within the default 60 s leeway.
    let token = TokenBuilder::new(TestKey::Es256A)
        .scope("read")
        .expires_in(-10)
        .sign();
    let response = stack.get_with_token("/read", &token).send().await.unwrap();
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn missing_scope_gets_403_insufficient_scope_naming_the_scope() {
    let stack = Stack::start(base_config()).await;
    let token = TokenBuilder::new(TestKey::Es256A).scope("read").sign();
    let r = refusal(stack.get_with_token("/admin", &token).send().await.unwrap()).await;
    assert_eq!(r.status, 403);
    assert!(
        r.challenge.contains(r#"error="insufficient_scope""#),
        "{}",
        r.challenge
    );
    assert!(r.challenge.contains(r#"scope="admin""#), "{}", r.challenge);
    r.assert_json_shape();
    assert_eq!(r.body["error"], "insufficient_scope");
    r.assert_token_not_echoed(&token);
    assert_eq!(stack.upstream.hits(), 0);
}

#[tokio::test]
async fn bad_tokens_get_invalid_token_and_are_never_echoed() {
    let stack = Stack::start(base_config()).await;
    let good = TokenBuilder::new(TestKey::Es256A).scope("read").sign();
    let (input, signature) = good.rsplit_once('.').unwrap();
    let mut flipped = signature.as_bytes().to_vec();
    flipped[5] = if flipped[5] == b'A' { b'B' } else { b'A' };
    let cases = [
        (
            "bad signature",
            format!("{input}.{}", String::from_utf8(flipped).unwrap()),
        ),
        (
            "wrong audience",
            TokenBuilder::new(TestKey::Es256A)
                .scope("read")
                .claim("aud", "someone-else")
                .sign(),
        ),
        (
            "wrong issuer",
            TokenBuilder::new(TestKey::Es256A)
                .scope("read")
                .claim("iss", "https://evil.example")
                .sign(),
        ),
        (
            "unknown kid",
            TokenBuilder::new(TestKey::Es256B).scope("read").sign(),
        ),
        (
            "alg none",
            format!("{}.", {
                use base64::Engine as _;
                let e = base64::engine::general_purpose::URL_SAFE_NO_PAD;
                format!(
                    "{}.{}",
                    e.encode(r#"{"alg":"none","typ":"at+jwt"}"#),
                    e.encode(format!(
                        r#"{{"iss":"{}","aud":"{AUDIENCE}","sub":"x","exp":{},"scope":"read"}}"#,
                        edgewarden_e2e::ISSUER,
                        edgewarden_e2e::now() + 600
                    ))
                )
            }),
        ),
        ("not a jwt", "definitely-not-a-jwt".to_string()),
    ];
    for (what, token) in cases {
        let r = refusal(stack.get_with_token("/read", &token).send().await.unwrap()).await;
        assert_eq!(r.status, 401, "{what}: {}", r.body_text);
        assert!(
            r.challenge.contains(r#"error="invalid_token""#),
            "{what}: {}",
            r.challenge
        );
        r.assert_json_shape();
        assert_eq!(r.body["error"], "invalid_token", "{what}");
        r.assert_token_not_echoed(&token);
    }
    assert_eq!(stack.upstream.hits(), 0, "a bad token reached the upstream");
}

#[tokio::test]
async fn basic_credentials_are_not_taken_for_a_bearer_token() {
    let stack = Stack::start(base_config()).await;
    let response = stack
        .get("/read")
        .header("authorization", "Basic YWxpY2U6c2VjcmV0")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    assert_eq!(stack.upstream.hits(), 0);
}
