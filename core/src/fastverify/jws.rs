//! jwt-compact [`Algorithm`]s backed by the prepared verifiers: [`FastEs256`] and [`FastRs256`].
//! They keep the JOSE names `ES256` and `RS256`, so whatever drives them through jwt-compact (its `alg` check,
//! signature length check, `try_from_slice`, claims deserialisation in `validator().validate()`) behaves as with
//! jwt-compact's own `Es256` / `Rsa::rs256()`; only the signature mathematics is replaced.
//! They verify only: their signing key type is uninhabited, so a token can never be signed through them.

use std::borrow::Cow;
use std::convert::Infallible;
use std::num::NonZeroUsize;

use jwt_compact::{Algorithm, AlgorithmSignature};

use super::{Es256Verifier, Rs256Verifier};

/// ES256 (ECDSA P-256, SHA-256) through a precomputed [`Es256Verifier`].
#[derive(Debug, Clone, Copy, Default)]
pub struct FastEs256;

/// RS256 (RSASSA-PKCS1-v1_5, SHA-256) through a precomputed [`Rs256Verifier`].
#[derive(Debug, Clone, Copy, Default)]
pub struct FastRs256;

/// Length of a JWS ES256 signature: `r || s`, 32 bytes each (RFC 7518 3.4).
const ES256_SIGNATURE_LEN: usize = 64;

/// A JWS ES256 signature, `r || s` big-endian; range checks on `r` and `s` happen at verification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Es256Signature([u8; ES256_SIGNATURE_LEN]);

/// A JWS RS256 signature; its length is checked against the key's modulus at verification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rs256Signature(Vec<u8>);

impl AlgorithmSignature for Es256Signature {
    const LENGTH: Option<NonZeroUsize> = NonZeroUsize::new(ES256_SIGNATURE_LEN);

    fn try_from_slice(slice: &[u8]) -> anyhow::Result<Self> {
        let bytes: [u8; ES256_SIGNATURE_LEN] = slice.try_into().map_err(|_| {
            anyhow::anyhow!(
                "es256 signature is {} bytes, expected {ES256_SIGNATURE_LEN}",
                slice.len()
            )
        })?;
        Ok(Self(bytes))
    }

    fn as_bytes(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(&self.0)
    }
}

impl AlgorithmSignature for Rs256Signature {
    // Variable: the length is the key's modulus length, which only the verifier knows.
    const LENGTH: Option<NonZeroUsize> = None;

    fn try_from_slice(slice: &[u8]) -> anyhow::Result<Self> {
        Ok(Self(slice.to_vec()))
    }

    fn as_bytes(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(&self.0)
    }
}

impl Algorithm for FastEs256 {
    /// Verification only: no value of this type exists, so `sign` cannot be reached.
    type SigningKey = Infallible;
    type VerifyingKey = Es256Verifier;
    type Signature = Es256Signature;

    fn name(&self) -> Cow<'static, str> {
        Cow::Borrowed("ES256")
    }

    fn sign(&self, signing_key: &Infallible, _message: &[u8]) -> Es256Signature {
        match *signing_key {}
    }

    fn verify_signature(
        &self,
        signature: &Es256Signature,
        verifying_key: &Es256Verifier,
        message: &[u8],
    ) -> bool {
        verifying_key.verify(message, &signature.0)
    }
}

impl Algorithm for FastRs256 {
    /// Verification only: no value of this type exists, so `sign` cannot be reached.
    type SigningKey = Infallible;
    type VerifyingKey = Rs256Verifier;
    type Signature = Rs256Signature;

    fn name(&self) -> Cow<'static, str> {
        Cow::Borrowed("RS256")
    }

    fn sign(&self, signing_key: &Infallible, _message: &[u8]) -> Rs256Signature {
        match *signing_key {}
    }

    fn verify_signature(
        &self,
        signature: &Rs256Signature,
        verifying_key: &Rs256Verifier,
        message: &[u8],
    ) -> bool {
        verifying_key.verify(message, &signature.0)
    }
}

#[cfg(test)]
mod tests {
    use jwt_compact::alg::{Es256, Rsa, RsaPrivateKey};
    use jwt_compact::jwk::JsonWebKey;
    use jwt_compact::{AlgorithmExt, Claims, Empty, Header, UntrustedToken, ValidationError};
    use serde_json::Value;

    use super::*;

    fn fixture_keys() -> Value {
        serde_json::from_str(include_str!("../../tests/fixtures/keys.json")).unwrap()
    }

    fn jwk_field(jwk: &Value, name: &str) -> Vec<u8> {
        use base64::Engine as _;
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(jwk[name].as_str().unwrap())
            .unwrap()
    }

    fn es256_fixture() -> (<Es256 as Algorithm>::SigningKey, Es256Verifier) {
        let keys = fixture_keys();
        let jwk: JsonWebKey<'_> = serde_json::from_value(keys["ec"].clone()).unwrap();
        let signing = <Es256 as Algorithm>::SigningKey::try_from(&jwk).unwrap();
        let verifier = Es256Verifier::from_affine_coordinates(
            &jwk_field(&keys["ec"], "x"),
            &jwk_field(&keys["ec"], "y"),
        )
        .unwrap();
        (signing, verifier)
    }

    fn rs256_fixture() -> (RsaPrivateKey, Rs256Verifier) {
        let keys = fixture_keys();
        let jwk: JsonWebKey<'_> = serde_json::from_value(keys["rsa2048"].clone()).unwrap();
        let signing = RsaPrivateKey::try_from(&jwk).unwrap();
        let verifier = Rs256Verifier::new(
            &jwk_field(&keys["rsa2048"], "n"),
            &jwk_field(&keys["rsa2048"], "e"),
        )
        .unwrap();
        (signing, verifier)
    }

    /// Flips one bit in the middle of the signature segment's decoded bytes and re-encodes the token.
    fn tamper_signature(token: &str) -> String {
        use base64::Engine as _;
        let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let (input, signature) = token.rsplit_once('.').unwrap();
        let mut bytes = engine.decode(signature).unwrap();
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0x10;
        format!("{input}.{}", engine.encode(bytes))
    }

    fn claims() -> Claims<Empty> {
        Claims::empty()
    }

    #[test]
    fn jwt_compact_es256_tokens_validate_through_fast_es256() {
        let (signing, verifier) = es256_fixture();
        let token = Es256
            .token(&Header::empty().with_key_id("ec-1"), &claims(), &signing)
            .unwrap();
        let untrusted = UntrustedToken::new(&token).unwrap();
        let validated = FastEs256
            .validator::<Empty>(&verifier)
            .validate(&untrusted)
            .unwrap();
        assert_eq!(validated.header().key_id.as_deref(), Some("ec-1"));

        let tampered = tamper_signature(&token);
        let untrusted = UntrustedToken::new(&tampered).unwrap();
        assert!(matches!(
            FastEs256.validator::<Empty>(&verifier).validate(&untrusted),
            Err(ValidationError::InvalidSignature)
        ));
    }

    #[test]
    fn jwt_compact_rs256_tokens_validate_through_fast_rs256() {
        let (signing, verifier) = rs256_fixture();
        let token = Rsa::rs256()
            .token(&Header::empty(), &claims(), &signing)
            .unwrap();
        let untrusted = UntrustedToken::new(&token).unwrap();
        assert!(FastRs256
            .validator::<Empty>(&verifier)
            .validate(&untrusted)
            .is_ok());

        let tampered = tamper_signature(&token);
        let untrusted = UntrustedToken::new(&tampered).unwrap();
        assert!(matches!(
            FastRs256.validator::<Empty>(&verifier).validate(&untrusted),
            Err(ValidationError::InvalidSignature)
        ));
    }

    #[test]
    fn jwt_compact_alg_check_still_applies_to_fast_algorithms() {
        let (es_signing, es_verifier) = es256_fixture();
        let (rs_signing, rs_verifier) = rs256_fixture();
        // An RS256 token offered to the ES256 validator (and the reverse) fails on the header alg, before any math.
        let rs_token = Rsa::rs256()
            .token(&Header::empty(), &claims(), &rs_signing)
            .unwrap();
        let es_token = Es256
            .token(&Header::empty(), &claims(), &es_signing)
            .unwrap();
        assert!(matches!(
            FastEs256
                .validator::<Empty>(&es_verifier)
                .validate(&UntrustedToken::new(&rs_token).unwrap()),
            Err(ValidationError::AlgorithmMismatch { .. })
        ));
        assert!(matches!(
            FastRs256
                .validator::<Empty>(&rs_verifier)
                .validate(&UntrustedToken::new(&es_token).unwrap()),
            Err(ValidationError::AlgorithmMismatch { .. })
        ));
    }

    #[test]
    fn es256_signature_of_wrong_length_is_refused_by_length_or_slice_check() {
        let (_, verifier) = es256_fixture();
        assert!(Es256Signature::try_from_slice(&[0u8; 63]).is_err());
        assert!(Es256Signature::try_from_slice(&[0u8; 65]).is_err());
        let zero = Es256Signature::try_from_slice(&[0u8; 64]).unwrap();
        assert!(!FastEs256.verify_signature(&zero, &verifier, b"a.b"));
        assert_eq!(zero.as_bytes().len(), 64);
    }

    #[test]
    fn rs256_signature_of_wrong_length_does_not_verify() {
        let (signing, verifier) = rs256_fixture();
        let good = Rsa::rs256().sign(&signing, b"a.b");
        assert!(FastRs256.verify_signature(
            &Rs256Signature::try_from_slice(&good.as_bytes()).unwrap(),
            &verifier,
            b"a.b"
        ));
        let mut longer = good.as_bytes().to_vec();
        longer.insert(0, 0);
        let longer = Rs256Signature::try_from_slice(&longer).unwrap();
        assert!(!FastRs256.verify_signature(&longer, &verifier, b"a.b"));
        assert!(!FastRs256.verify_signature(&longer, &verifier, b"a.c"));
    }
}
