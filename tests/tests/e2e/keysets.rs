//! Key sets from real issuers: a real Envoy fetches a JWKS that holds, beside the key the issuer signs with, keys for
//! algorithms this edge does not verify (an ES384 key, an RS512 key, an 8192-bit RSA key), as identity providers
//! publish them. The set loads without them, tokens of the supported key pass, and a token naming a left-out key
//! is refused with `invalid_token` naming its algorithm, not as an unknown kid, and sends no refetch.

use std::time::Duration;

use edgewarden_e2e::{Stack, TestKey, TokenBuilder, AUDIENCE, ISSUER};
use serde_json::{json, Value};

/// What such an issuer publishes: its ES256 key and three keys this edge does not verify.
fn issuer_jwks() -> Value {
    // An 8192-bit modulus: only its size matters, the key is left out before anything else is read.
    let mut modulus = vec![0xffu8; 1024];
    modulus[1023] = 0xfb;
    let mut rs512 = TestKey::Rs256A.public_jwk();
    rs512["kid"] = json!("rs512-1");
    rs512["alg"] = json!("RS512");
    json!({"keys": [
        {"kty": "EC", "crv": "P-384", "kid": "es384-1", "use": "sig",
         "x": "kXwN29eBTRdWS3i2pBftKoaeV_FKmdG7QIinO42mlA90wdaMH3ZAD0NlsErIrv4T",
         "y": "bZYrpS_3FZKJf5y2G7qW5SInG2WbtokdTWP4PlQBpwHGlnO9LUvuu26QlkCR3-AG"},
        rs512,
        {"kty": "RSA", "kid": "rsa-8192", "use": "sig",
         "n": base64_url(&modulus), "e": "AQAB"},
        TestKey::Es256A.public_jwk(),
    ]})
}

fn base64_url(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

async fn refusal(stack: &Stack, token: &str) -> (u16, String, Value) {
    let answer = stack
        .get_with_token("/", token)
        .send()
        .await
        .expect("request through envoy");
    let status = answer.status().as_u16();
    let challenge = answer
        .headers()
        .get("www-authenticate")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let body = answer.json().await.unwrap_or(Value::Null);
    (status, challenge, body)
}

#[tokio::test]
async fn keys_of_algorithms_this_edge_does_not_verify_are_left_out_and_named_when_a_token_asks() {
    let mut remote = Stack::remote_jwks();
    remote["min_refetch_interval_seconds"] = json!(1);
    let config = json!({
        "issuers": [{"issuer": ISSUER, "audiences": [AUDIENCE], "remote_jwks": remote}],
    });
    let stack = Stack::start_with_jwks(config, issuer_jwks()).await;

    // The set loads: the issuer's ES256 key verifies.
    let good = TokenBuilder::new(TestKey::Es256A).sign();
    let answer = stack.get_with_token("/", &good).send().await.unwrap();
    assert_eq!(answer.status(), 200, "{}", answer.text().await.unwrap());
    // Past min_refetch_interval_seconds, so an unknown kid would be allowed to refetch.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let fetches = stack.jwks.fetches();

    // A token naming the 8192-bit key: parsed, refused at key selection for its algorithm.
    let big = TokenBuilder::new(TestKey::Rs256A)
        .header("kid", "rsa-8192")
        .sign();
    let (status, challenge, body) = refusal(&stack, &big).await;
    assert_eq!(status, 401, "{body}");
    assert!(
        challenge.contains(r#"error="invalid_token""#),
        "{challenge}"
    );
    assert_eq!(body["reason"], "disallowed_algorithm", "{body}");
    assert_eq!(
        body["error_description"],
        format!("algorithm RS256 with a 8192-bit key is not supported by this edge (key \"rsa-8192\" of issuer \"{ISSUER}\")"),
    );

    // A token asking for ES384 with the ES384 key's kid: refused for its algorithm.
    let es384 = TokenBuilder::new(TestKey::Es256A)
        .header("alg", "ES384")
        .header("kid", "es384-1")
        .sign();
    let (status, _, body) = refusal(&stack, &es384).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["error"], "invalid_token", "{body}");
    assert!(
        body["error_description"]
            .as_str()
            .is_some_and(|d| d.starts_with("algorithm ES384 is not supported by this edge")),
        "{body}"
    );

    // A token asking for RS256 with the RS512 key's kid (an algorithm swap): refused naming RS512.
    let swapped = TokenBuilder::new(TestKey::Rs256A)
        .header("kid", "rs512-1")
        .sign();
    let (status, _, body) = refusal(&stack, &swapped).await;
    assert_eq!(status, 401, "{body}");
    assert!(
        body["error_description"]
            .as_str()
            .is_some_and(|d| d.starts_with("algorithm RS512 is not supported by this edge")),
        "{body}"
    );

    // None of them was taken for a rotation: no refetch.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        stack.jwks.fetches(),
        fetches,
        "a left-out key made the edge refetch"
    );
    assert_eq!(stack.filter_counter("requests_denied.unknown_kid").await, 0);
    assert_eq!(
        stack
            .filter_counter("requests_denied.disallowed_algorithm")
            .await,
        3
    );
}
