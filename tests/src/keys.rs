//! Test signing keys and a token builder, independent of the engine under test: fixture JWKs
//! (committed in `tests/fixtures/keys/`, generated once, since RSA key generation per test is slow)
//! and jwt-compact's signature primitives. The JWS is assembled by hand so a test can put anything
//! in the header or the payload, including the malformed shapes the filter must refuse.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jwt_compact::alg::{Ed25519, Es256, Rsa};
use jwt_compact::jwk::JsonWebKey;
use jwt_compact::{Algorithm, AlgorithmSignature};
use serde_json::{json, Map, Value};

/// The issuer every test configuration trusts unless it says otherwise.
pub const ISSUER: &str = "https://issuer.e2e.edgewarden.test";
/// The audience every test configuration requires unless it says otherwise.
pub const AUDIENCE: &str = "e2e-api";

/// A fixture key pair.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TestKey {
    /// ES256, kid `es256-a`: the default key.
    Es256A,
    /// ES256, kid `es256-b`: the key rotated in mid-test.
    Es256B,
    /// RS256 (2048-bit), kid `rs256-a`.
    Rs256A,
    /// EdDSA (Ed25519), kid `eddsa-a`.
    EdDsaA,
}

impl TestKey {
    fn private_jwk_text(self) -> &'static str {
        match self {
            TestKey::Es256A => include_str!("../fixtures/keys/es256-a.private.jwk.json"),
            TestKey::Es256B => include_str!("../fixtures/keys/es256-b.private.jwk.json"),
            TestKey::Rs256A => include_str!("../fixtures/keys/rs256-a.private.jwk.json"),
            TestKey::EdDsaA => include_str!("../fixtures/keys/eddsa-a.private.jwk.json"),
        }
    }

    fn private_jwk(self) -> Value {
        serde_json::from_str(self.private_jwk_text()).expect("fixture jwk is json")
    }

    /// The key id.
    pub fn kid(self) -> String {
        self.private_jwk()["kid"]
            .as_str()
            .expect("fixture has a kid")
            .to_string()
    }

    /// The JWS `alg`.
    pub fn alg(self) -> &'static str {
        match self {
            TestKey::Es256A | TestKey::Es256B => "ES256",
            TestKey::Rs256A => "RS256",
            TestKey::EdDsaA => "EdDSA",
        }
    }

    /// The public JWK (private members removed).
    pub fn public_jwk(self) -> Value {
        let mut jwk = self.private_jwk();
        if let Some(map) = jwk.as_object_mut() {
            for private in ["d", "p", "q", "dp", "dq", "qi"] {
                map.remove(private);
            }
        }
        jwk
    }

    /// Signs `signing_input` (`base64url(header).base64url(payload)`) and returns the raw signature.
    pub fn sign_raw(self, signing_input: &[u8]) -> Vec<u8> {
        let text = self.private_jwk_text();
        let jwk: JsonWebKey<'_> = serde_json::from_str(text).expect("fixture jwk parses");
        match self {
            TestKey::Es256A | TestKey::Es256B => {
                let key: <Es256 as Algorithm>::SigningKey =
                    (&jwk).try_into().expect("es256 fixture key");
                Es256.sign(&key, signing_input).as_bytes().into_owned()
            }
            TestKey::Rs256A => {
                let key: <Rsa as Algorithm>::SigningKey =
                    (&jwk).try_into().expect("rs256 fixture key");
                Rsa::rs256()
                    .sign(&key, signing_input)
                    .as_bytes()
                    .into_owned()
            }
            TestKey::EdDsaA => {
                let key: <Ed25519 as Algorithm>::SigningKey =
                    (&jwk).try_into().expect("eddsa fixture key");
                Ed25519.sign(&key, signing_input).as_bytes().into_owned()
            }
        }
    }
}

/// A JWKS holding the public halves of `keys`.
pub fn jwks(keys: &[TestKey]) -> Value {
    json!({ "keys": keys.iter().map(|k| k.public_jwk()).collect::<Vec<_>>() })
}

/// Seconds since the Unix epoch.
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

/// Builds a signed token: sensible defaults (issuer, audience, 1 hour lifetime, `typ: at+jwt`),
/// every header member and claim overridable.
#[derive(Clone, Debug)]
pub struct TokenBuilder {
    key: TestKey,
    header: Map<String, Value>,
    claims: Map<String, Value>,
}

impl TokenBuilder {
    /// A token for subject `alice` signed by `key`, valid for an hour from now.
    pub fn new(key: TestKey) -> TokenBuilder {
        let now = now();
        let mut header = Map::new();
        header.insert("alg".into(), key.alg().into());
        header.insert("typ".into(), "at+jwt".into());
        header.insert("kid".into(), key.kid().into());
        let mut claims = Map::new();
        claims.insert("iss".into(), ISSUER.into());
        claims.insert("aud".into(), AUDIENCE.into());
        claims.insert("sub".into(), "alice".into());
        claims.insert("iat".into(), now.into());
        claims.insert("exp".into(), (now + 3600).into());
        claims.insert("jti".into(), format!("jti-{now}-{}", unique()).into());
        TokenBuilder {
            key,
            header,
            claims,
        }
    }

    /// Sets (or with `Value::Null`, removes) a claim.
    pub fn claim(mut self, name: &str, value: impl Into<Value>) -> TokenBuilder {
        match value.into() {
            Value::Null => {
                self.claims.remove(name);
            }
            v => {
                self.claims.insert(name.to_string(), v);
            }
        }
        self
    }

    /// Sets (or with `Value::Null`, removes) a header member.
    pub fn header(mut self, name: &str, value: impl Into<Value>) -> TokenBuilder {
        match value.into() {
            Value::Null => {
                self.header.remove(name);
            }
            v => {
                self.header.insert(name.to_string(), v);
            }
        }
        self
    }

    /// Sets the space-delimited `scope` claim.
    pub fn scope(self, scope: &str) -> TokenBuilder {
        self.claim("scope", scope)
    }

    /// Sets `sub`.
    pub fn subject(self, sub: &str) -> TokenBuilder {
        self.claim("sub", sub)
    }

    /// Sets `exp` to `now + seconds` (negative: in the past).
    pub fn expires_in(self, seconds: i64) -> TokenBuilder {
        self.claim("exp", now().saturating_add_signed(seconds))
    }

    /// Signs the token.
    pub fn sign(&self) -> String {
        let header = serde_json::to_vec(&self.header).expect("header serializes");
        let claims = serde_json::to_vec(&self.claims).expect("claims serialize");
        let input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header),
            URL_SAFE_NO_PAD.encode(claims)
        );
        let signature = self.key.sign_raw(input.as_bytes());
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature))
    }
}

fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use jwt_compact::{AlgorithmExt, UntrustedToken};

    /// The builder's tokens verify with jwt-compact's own validator: the harness signs correctly,
    /// so a rejection in an end-to-end test is the filter's doing.
    #[test]
    fn builder_tokens_verify_with_the_public_keys() {
        for key in [
            TestKey::Es256A,
            TestKey::Es256B,
            TestKey::Rs256A,
            TestKey::EdDsaA,
        ] {
            let token = TokenBuilder::new(key).scope("read").sign();
            let untrusted = UntrustedToken::new(&token).expect("parses");
            assert_eq!(untrusted.algorithm(), key.alg());
            let public: JsonWebKey<'_> =
                serde_json::from_value(key.public_jwk()).expect("public jwk");
            let ok = match key {
                TestKey::Es256A | TestKey::Es256B => {
                    let k: <Es256 as Algorithm>::VerifyingKey = (&public).try_into().unwrap();
                    Es256
                        .validator::<Map<String, Value>>(&k)
                        .validate(&untrusted)
                        .is_ok()
                }
                TestKey::Rs256A => {
                    let k: <Rsa as Algorithm>::VerifyingKey = (&public).try_into().unwrap();
                    Rsa::rs256()
                        .validator::<Map<String, Value>>(&k)
                        .validate(&untrusted)
                        .is_ok()
                }
                TestKey::EdDsaA => {
                    let k: <Ed25519 as Algorithm>::VerifyingKey = (&public).try_into().unwrap();
                    Ed25519
                        .validator::<Map<String, Value>>(&k)
                        .validate(&untrusted)
                        .is_ok()
                }
            };
            assert!(ok, "{key:?} token does not verify");
            assert!(key.public_jwk().get("d").is_none());
        }
    }
}
