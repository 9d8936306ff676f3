//! RS256 through a real Envoy with keys of every size the filter's own RSA arithmetic takes (2048, 3072 and
//! 4096 bits, and a 2048-bit key with exponent 3, whose verify also multiplies): the built `.wasm` runs the
//! WebAssembly SIMD kernel of `core/src/fastverify/rs256.rs`, which the native unit tests cannot reach.
//! Each valid token must pass; the same token with one signature bit flipped (high, middle or low limb), signed
//! by another key of the same size, or carrying a signature not below the modulus must be refused. A wrong
//! product, carry or reduction in any limb turns a pass into a refusal or a refusal into a pass.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use edgewarden_e2e::{now, Stack, TestKey, AUDIENCE, ISSUER};
use jwt_compact::alg::Rsa;
use jwt_compact::jwk::JsonWebKey;
use jwt_compact::{Algorithm, AlgorithmSignature};
use serde_json::{json, Value};

/// Fixture keys beside `TestKey::Rs256A` (2048 bits, e = 65537): the same private keys as the core unit tests'
/// `core/src/fastverify/testdata`, as private JWKs.
const RSA_3072: &str = include_str!("../../fixtures/keys/rs256-3072.private.jwk.json");
const RSA_4096: &str = include_str!("../../fixtures/keys/rs256-4096.private.jwk.json");
const RSA_2048_E3: &str = include_str!("../../fixtures/keys/rs256-2048-e3.private.jwk.json");

/// Signs a JWS signing input with one fixture key.
type Signer = Box<dyn Fn(&[u8]) -> Vec<u8>>;

/// One RSA key the issuer publishes, and how to sign with it.
struct Key {
    kid: String,
    public: Value,
    sign: Signer,
}

fn fixture(text: &'static str) -> Key {
    let private: Value = serde_json::from_str(text).expect("fixture jwk is json");
    let mut public = private.clone();
    if let Some(map) = public.as_object_mut() {
        for member in ["d", "p", "q", "dp", "dq", "qi"] {
            map.remove(member);
        }
    }
    let kid = private["kid"]
        .as_str()
        .expect("fixture has a kid")
        .to_string();
    let sign = move |input: &[u8]| {
        let jwk: JsonWebKey<'_> = serde_json::from_str(text).expect("fixture jwk parses");
        let key: <Rsa as Algorithm>::SigningKey = (&jwk).try_into().expect("rsa fixture key");
        Rsa::rs256().sign(&key, input).as_bytes().into_owned()
    };
    Key {
        kid,
        public,
        sign: Box::new(sign),
    }
}

fn keys() -> Vec<Key> {
    let a = TestKey::Rs256A;
    vec![
        Key {
            kid: a.kid(),
            public: a.public_jwk(),
            sign: Box::new(move |input| a.sign_raw(input)),
        },
        fixture(RSA_2048_E3),
        fixture(RSA_3072),
        fixture(RSA_4096),
    ]
}

/// `header.payload` for a token naming `kid`, valid for an hour.
fn signing_input(kid: &str, subject: &str) -> String {
    let now = now();
    let header = json!({"alg": "RS256", "typ": "at+jwt", "kid": kid});
    let claims = json!({
        "iss": ISSUER, "aud": AUDIENCE, "sub": subject, "iat": now, "exp": now + 3600,
        "jti": format!("{kid}-{subject}-{now}"),
    });
    format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(&header).expect("header")),
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims).expect("claims"))
    )
}

fn token(input: &str, signature: &[u8]) -> String {
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature))
}

async fn status(stack: &Stack, token: &str) -> u16 {
    stack
        .get_with_token("/", token)
        .send()
        .await
        .expect("request through envoy")
        .status()
        .as_u16()
}

#[tokio::test]
async fn rs256_tokens_pass_or_fail_exactly_by_their_signature_for_every_key_size() {
    let keys = keys();
    let config = json!({
        "issuers": [{
            "issuer": ISSUER,
            "audiences": [AUDIENCE],
            "jwks": {"keys": keys.iter().map(|k| k.public.clone()).collect::<Vec<_>>()},
        }],
        "realm": "e2e",
    });
    let stack = Stack::start(config).await;
    for (n, key) in keys.iter().enumerate() {
        let input = signing_input(&key.kid, "alice");
        let signature = (key.sign)(input.as_bytes());
        assert_eq!(
            status(&stack, &token(&input, &signature)).await,
            200,
            "valid token of {} refused",
            key.kid
        );
        for byte in [0, signature.len() / 2, signature.len() - 1] {
            let mut flipped = signature.clone();
            flipped[byte] ^= 0x10;
            assert_eq!(
                status(&stack, &token(&input, &flipped)).await,
                401,
                "{}: signature with byte {byte} flipped accepted",
                key.kid
            );
        }
        // The same claims under this key's kid, signed by the next key in the list.
        let other = &keys[(n + 1) % keys.len()];
        let forged = (other.sign)(input.as_bytes());
        assert_eq!(
            status(&stack, &token(&input, &forged)).await,
            401,
            "{}: token signed by {} accepted",
            key.kid,
            other.kid
        );
        // A signature of the right length but not below the modulus.
        let too_large = vec![0xff; signature.len()];
        assert_eq!(
            status(&stack, &token(&input, &too_large)).await,
            401,
            "{}: signature above the modulus accepted",
            key.kid
        );
        // A second valid token (another subject, so not a cache hit) still passes after the refusals.
        let input = signing_input(&key.kid, "bob");
        let signature = (key.sign)(input.as_bytes());
        assert_eq!(
            status(&stack, &token(&input, &signature)).await,
            200,
            "second valid token of {} refused",
            key.kid
        );
    }
}
