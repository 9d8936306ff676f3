//! Generation, hashing and comparison of secrets: API keys, refresh tokens, session ids, passwords.
//! High-entropy secrets (32 random bytes) are stored as SHA-256; human passwords and client secrets
//! as argon2id PHC strings. Comparisons of secret-derived values are constant time.

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use rand::rngs::OsRng;
use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::config::Argon2Params;

/// `prefix` followed by 32 random bytes in base64url: 256 bits, so SHA-256 storage is enough.
pub fn random_secret(prefix: &str) -> String {
    let mut bytes = [0u8; 32];
    OsRng.fill_bytes(&mut bytes);
    format!("{prefix}{}", URL_SAFE_NO_PAD.encode(bytes))
}

/// A short random identifier (16 hex characters), for ids that are not secrets.
pub fn random_id(prefix: &str) -> String {
    let mut bytes = [0u8; 8];
    OsRng.fill_bytes(&mut bytes);
    format!("{prefix}{}", hex::encode(bytes))
}

/// A 128-bit random token identifier in base64url, used for `jti` and refresh families.
pub fn random_jti() -> String {
    let mut bytes = [0u8; 16];
    OsRng.fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Lowercase hex SHA-256 of a secret: what the database stores for API keys, refresh tokens and sessions.
pub fn sha256_hex(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// Constant-time equality of two byte strings (length is not secret).
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

fn argon2(params: &Argon2Params) -> Argon2<'static> {
    let params = Params::new(
        params.memory_kib,
        params.iterations,
        params.parallelism,
        None,
    )
    .unwrap_or_else(|_| Params::default());
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

/// Hashes a password or client secret with argon2id; the PHC string carries its parameters.
pub fn hash_password(password: &str, params: &Argon2Params) -> anyhow::Result<String> {
    let salt = SaltString::generate(&mut OsRng);
    argon2(params)
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| anyhow::anyhow!("argon2 hashing failed: {e}"))
}

/// Checks a password against a stored PHC string (argon2's verification is constant time).
pub fn verify_password(password: &str, phc: &str) -> bool {
    match PasswordHash::new(phc) {
        // Parameters come from the PHC string, so hashes made with other costs still verify.
        Ok(parsed) => Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok(),
        Err(_) => false,
    }
}

/// A PHC string that verifies nothing, hashed with the configured cost, so unknown users and
/// clients take as long to refuse as known ones.
pub fn dummy_hash(params: &Argon2Params) -> String {
    hash_password("edgewarden-dummy-password", params).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn password_hash_round_trips_and_rejects_other_passwords() {
        let h = hash_password("correct horse", &Argon2Params::INSECURE_FAST_FOR_TESTS).unwrap();
        assert!(h.starts_with("$argon2id$"));
        assert!(verify_password("correct horse", &h));
        assert!(!verify_password("wrong horse", &h));
        assert!(!verify_password("correct horse", "not a phc string"));
    }

    #[test]
    fn random_secrets_are_distinct_and_prefixed() {
        let a = random_secret("ew_");
        let b = random_secret("ew_");
        assert_ne!(a, b);
        assert!(a.starts_with("ew_") && a.len() == 3 + 43);
        assert_eq!(sha256_hex("abc").len(), 64);
        assert!(ct_eq(b"abc", b"abc"));
        assert!(!ct_eq(b"abc", b"abd"));
        assert!(!ct_eq(b"abc", b"ab"));
    }
}
