//! Signs the filter bench's tokens with the committed demo keys in `envoy/demo-keys/` (public keys, never production;
//! the demo itself gets its tokens from the admin API).
//! The JWS is assembled by hand (header, payload, signature) so the claims are exactly what we write;
//! jwt-compact only provides the signature primitives and the JWK-to-key conversion.

use std::path::Path;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jwt_compact::alg::{Es256, Rsa};
use jwt_compact::jwk::JsonWebKey;
use jwt_compact::{Algorithm, AlgorithmSignature};
use serde_json::{json, Value};

use crate::util::{self, bail, Result};

/// The issuer the filter bench configs trust.
pub const DEMO_ISSUER: &str = "https://issuer.demo.edgewarden.example";
/// The audience the filter bench configs require.
pub const DEMO_AUDIENCE: &str = "demo-api";

/// A private signing key loaded from a JWK file.
pub enum SigningKey {
    /// ES256 (P-256).
    Es256 {
        /// The JWK `kid`.
        kid: String,
        /// The key.
        key: <Es256 as Algorithm>::SigningKey,
    },
    /// RS256 (RSA PKCS#1 v1.5 with SHA-256).
    Rs256 {
        /// The JWK `kid`.
        kid: String,
        /// The key.
        key: Box<<Rsa as Algorithm>::SigningKey>,
    },
}

impl SigningKey {
    /// Loads `envoy/demo-keys/<name>.private.jwk.json`.
    pub fn demo(name: &str) -> Result<SigningKey> {
        SigningKey::from_file(
            &util::project_root().join(format!("envoy/demo-keys/{name}.private.jwk.json")),
        )
    }

    /// Loads a private JWK (ES256 or RS256) from a file.
    pub fn from_file(path: &Path) -> Result<SigningKey> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| util::Error::msg(format!("cannot read {}: {e}", path.display())))?;
        let raw: Value = serde_json::from_str(&text)?;
        let kid = raw["kid"].as_str().unwrap_or_default().to_string();
        let jwk: JsonWebKey<'_> = serde_json::from_str(&text)?;
        let bad = |e: jwt_compact::jwk::JwkError| {
            util::Error::msg(format!("{}: not a usable private key: {e}", path.display()))
        };
        match raw["alg"].as_str() {
            Some("ES256") => Ok(SigningKey::Es256 {
                kid,
                key: (&jwk).try_into().map_err(bad)?,
            }),
            Some("RS256") => Ok(SigningKey::Rs256 {
                kid,
                key: Box::new((&jwk).try_into().map_err(bad)?),
            }),
            other => bail!("{}: unsupported alg {other:?}", path.display()),
        }
    }

    /// The JWS `alg` this key signs with.
    pub fn alg(&self) -> &'static str {
        match self {
            SigningKey::Es256 { .. } => "ES256",
            SigningKey::Rs256 { .. } => "RS256",
        }
    }

    /// Signs `claims` into a compact JWS with `typ: at+jwt` and this key's `kid`.
    pub fn sign(&self, claims: &Value) -> Result<String> {
        let (kid, alg) = match self {
            SigningKey::Es256 { kid, .. } | SigningKey::Rs256 { kid, .. } => (kid, self.alg()),
        };
        let header = json!({"alg": alg, "typ": "at+jwt", "kid": kid});
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(serde_json::to_vec(&header)?),
            URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims)?)
        );
        let signature = match self {
            SigningKey::Es256 { key, .. } => Es256
                .sign(key, signing_input.as_bytes())
                .as_bytes()
                .into_owned(),
            SigningKey::Rs256 { key, .. } => Rsa::rs256()
                .sign(key, signing_input.as_bytes())
                .as_bytes()
                .into_owned(),
        };
        Ok(format!(
            "{signing_input}.{}",
            URL_SAFE_NO_PAD.encode(signature)
        ))
    }
}

/// Bench claims for `sub` with `scope`, issued `iat_offset` seconds from now and valid for `ttl` seconds after that.
pub fn claims(sub: &str, scope: &str, now: u64, iat_offset: i64, ttl: u64) -> Value {
    let iat = now.saturating_add_signed(iat_offset);
    json!({
        "iss": DEMO_ISSUER,
        "aud": DEMO_AUDIENCE,
        "sub": sub,
        "scope": scope,
        "iat": iat,
        "exp": iat + ttl,
        "jti": format!("{sub}-{iat}"),
        "client_id": "demo-client",
    })
}

/// The public JWKS for the demo keys, as one line of JSON (for config templates).
pub fn demo_jwks_json() -> Result<String> {
    let path = util::project_root().join("envoy/demo-keys/demo-jwks.public.json");
    let text = std::fs::read_to_string(&path)
        .map_err(|e| util::Error::msg(format!("cannot read {}: {e}", path.display())))?;
    let value: Value = serde_json::from_str(&text)?;
    Ok(serde_json::to_string(&value)?)
}

/// Seconds since the Unix epoch.
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demo_keys_sign_tokens_with_their_kid_and_alg() {
        for name in ["demo-es256", "demo-rs256"] {
            let key = SigningKey::demo(name).unwrap();
            let token = key.sign(&claims("alice", "read", now(), 0, 60)).unwrap();
            let header = token.split('.').next().unwrap();
            let header: Value =
                serde_json::from_slice(&URL_SAFE_NO_PAD.decode(header).unwrap()).unwrap();
            assert_eq!(header["kid"], name);
            assert_eq!(header["alg"], key.alg());
            assert_eq!(token.split('.').count(), 3);
        }
    }

    #[test]
    fn demo_jwks_lists_both_public_keys_without_private_parts() {
        let jwks: Value = serde_json::from_str(&demo_jwks_json().unwrap()).unwrap();
        let keys = jwks["keys"].as_array().unwrap();
        assert_eq!(keys.len(), 2);
        assert!(keys.iter().all(|k| k.get("d").is_none()));
    }
}
