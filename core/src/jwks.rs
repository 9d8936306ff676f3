//! JSON Web Key Sets parsed once into ready-to-verify keys, with RFC 8725 key hygiene.
//! Every key is bound to exactly one algorithm when it is loaded, weak keys are refused then
//! (not at verification time), and the hot path only looks a key up by `kid` and calls a jwt-compact `Algorithm`.
//! ES256 and RS256 keys are prepared here for the precomputed verifiers of [`crate::fastverify`] (5-9x cheaper per
//! token in V8); PS256, EdDSA and HS256 use jwt-compact's own algorithms.

use std::borrow::Cow;
use std::sync::Arc;

use base64::Engine as _;
use jwt_compact::alg::{Ed25519, Hs256, Hs256Key, Rsa, RsaPublicKey};
use jwt_compact::jwk::JsonWebKey;
use jwt_compact::{Algorithm, AlgorithmSignature};
use serde_json::Value;

use crate::fastverify::{Es256KeyError, Es256Verifier, FastEs256, FastRs256, Rs256Verifier};

/// The verifying key type jwt-compact uses for EdDSA (ed25519-compact's public key).
type EdKey = <Ed25519 as Algorithm>::VerifyingKey;

/// Minimum RSA modulus size (RFC 7518 3.3, RFC 8725 3.5).
pub const MIN_RSA_BITS: usize = 2048;
/// Minimum HMAC key size for HS256 (RFC 7518 3.2: at least the hash output size).
pub const MIN_HMAC_BYTES: usize = 32;
/// Upper bound on keys per set, so a hostile JWKS endpoint cannot make key lookup slow.
pub const MAX_KEYS: usize = 64;

/// The signature algorithms the engine accepts. Names are case-sensitive, as in RFC 7515.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Alg {
    /// ECDSA with P-256 and SHA-256.
    Es256,
    /// RSASSA-PKCS1-v1_5 with SHA-256.
    Rs256,
    /// RSASSA-PSS with SHA-256.
    Ps256,
    /// Ed25519.
    EdDsa,
    /// HMAC with SHA-256 (inline symmetric keys only).
    Hs256,
}

impl Alg {
    /// Every accepted algorithm.
    pub const ALL: &'static [Alg] = &[Alg::Es256, Alg::Rs256, Alg::Ps256, Alg::EdDsa, Alg::Hs256];

    /// Parses a JOSE `alg` value exactly (case-sensitive); `None` for anything outside the allow-list.
    pub fn parse(name: &str) -> Option<Alg> {
        match name {
            "ES256" => Some(Alg::Es256),
            "RS256" => Some(Alg::Rs256),
            "PS256" => Some(Alg::Ps256),
            "EdDSA" => Some(Alg::EdDsa),
            "HS256" => Some(Alg::Hs256),
            _ => None,
        }
    }

    /// The JOSE name.
    pub fn as_str(&self) -> &'static str {
        match self {
            Alg::Es256 => "ES256",
            Alg::Rs256 => "RS256",
            Alg::Ps256 => "PS256",
            Alg::EdDsa => "EdDSA",
            Alg::Hs256 => "HS256",
        }
    }
}

/// Prepared key material, one variant per verifier.
#[derive(Clone)]
enum Material {
    /// ES256: fixed-base tables (about 264 KiB), shared between clones of the key set.
    Ec(Arc<Es256Verifier>),
    /// RS256 with Montgomery constants (about 0.5-1 KiB).
    RsaFast(Arc<Rs256Verifier>),
    /// PS256, and any RS256 key the fast verifier would refuse: jwt-compact's rsa path.
    Rsa(RsaPublicKey),
    Ed(EdKey),
    Hmac(Hs256Key),
}

/// One ready-to-verify key, usable with exactly one algorithm.
#[derive(Clone)]
pub struct Key {
    kid: Option<String>,
    alg: Alg,
    material: Material,
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material: an HMAC key is a secret.
        f.debug_struct("Key")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .finish_non_exhaustive()
    }
}

impl Key {
    /// The key id, if the JWK has one.
    pub fn kid(&self) -> Option<&str> {
        self.kid.as_deref()
    }

    /// The one algorithm this key verifies.
    pub fn alg(&self) -> Alg {
        self.alg
    }

    /// Whether this key verifies through a precomputed verifier of [`crate::fastverify`] (ES256, and RS256 keys it
    /// accepts) rather than jwt-compact's generic big-number code.
    pub fn is_precomputed(&self) -> bool {
        matches!(self.material, Material::Ec(_) | Material::RsaFast(_))
    }

    /// Verifies `signature` over `signing_input` (the ASCII `header.payload`) through a jwt-compact `Algorithm`:
    /// [`FastEs256`] / [`FastRs256`] for prepared keys, jwt-compact's own algorithms otherwise.
    /// A signature of the wrong length is simply invalid.
    pub fn verify(&self, signing_input: &[u8], signature: &[u8]) -> bool {
        match (&self.material, self.alg) {
            (Material::Ec(key), Alg::Es256) => {
                verify_with(&FastEs256, key, signing_input, signature)
            }
            (Material::RsaFast(key), Alg::Rs256) => {
                verify_with(&FastRs256, key, signing_input, signature)
            }
            (Material::Rsa(key), Alg::Rs256) => {
                verify_with(&Rsa::rs256(), key, signing_input, signature)
            }
            (Material::Rsa(key), Alg::Ps256) => {
                verify_with(&Rsa::ps256(), key, signing_input, signature)
            }
            (Material::Ed(key), Alg::EdDsa) => verify_with(&Ed25519, key, signing_input, signature),
            (Material::Hmac(key), Alg::Hs256) => verify_with(&Hs256, key, signing_input, signature),
            // Loading binds material and alg together; any other pairing cannot exist, and refusing is the safe answer.
            _ => false,
        }
    }
}

fn verify_with<A: Algorithm>(
    alg: &A,
    key: &A::VerifyingKey,
    message: &[u8],
    signature: &[u8],
) -> bool {
    // jwt-compact's validator checks the fixed length before `try_from_slice` (which may assume it); do the same.
    if let Some(len) = <A::Signature as AlgorithmSignature>::LENGTH {
        if signature.len() != len.get() {
            return false;
        }
    }
    match <A::Signature as AlgorithmSignature>::try_from_slice(signature) {
        Ok(sig) => alg.verify_signature(&sig, key, message),
        Err(_) => false,
    }
}

/// A parsed key set: keys bound to one algorithm each, looked up by exact `kid`.
#[derive(Clone, Default)]
pub struct KeySet {
    keys: Arc<[Key]>,
    /// Keys of the document left out: not for verifying signatures (an identity provider's `use: enc` key), or
    /// for a signature algorithm this edge does not verify (ES384, RS512, RSA over 4096 bits), each as
    /// `keys[1] (kid "enc-1"): use is "enc"`.
    skipped: Arc<[String]>,
    /// The left-out keys of an algorithm this edge does not verify, by kid, with that algorithm
    /// (`ES384`, `RS256 with an 8192-bit key`): a token naming one is refused for its algorithm, not its kid.
    unsupported: Arc<[(String, String)]>,
    /// Hash of every key's kid, alg and public bytes: tells a real key change from a refresh that changed nothing.
    digest: u64,
}

impl std::fmt::Debug for KeySet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeySet").field("keys", &self.keys).finish()
    }
}

/// Why a JWKS was refused. Messages are lowercase and name the key index and kid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwksError {
    /// The document is not JSON.
    #[error("jwks is not valid json: {0}")]
    Json(String),
    /// The document is JSON but not `{"keys": [...]}`.
    #[error("jwks must be an object with a \"keys\" array")]
    Shape,
    /// The key set is empty.
    #[error("jwks has no keys")]
    Empty,
    /// No key of the set verifies tokens here: every one is for something else than signatures, or for an
    /// algorithm this edge does not verify.
    #[error("jwks has no key this edge verifies tokens with, every key was left out: {0}")]
    NoSignatureKeys(String),
    /// More keys than [`MAX_KEYS`].
    #[error("jwks has {0} keys, maximum {MAX_KEYS}")]
    TooManyKeys(usize),
    /// One key is malformed, weak or not allowed.
    #[error("keys[{index}]{}: {problem}", kid_label(.kid))]
    Key {
        /// Position of the key in `keys`.
        index: usize,
        /// Its `kid`, if it has one.
        kid: Option<String>,
        /// What is wrong with it.
        problem: String,
    },
    /// The issuer index given to the engine does not exist.
    #[error("issuer index {0} does not exist")]
    NoSuchIssuer(usize),
    /// The issuer has no `remote_jwks` configured.
    #[error("issuer index {0} has no remote_jwks configured")]
    NotRemote(usize),
}

fn kid_label(kid: &Option<String>) -> String {
    match kid {
        Some(kid) => format!(" (kid {kid:?})"),
        None => String::new(),
    }
}

impl KeySet {
    /// Strict RFC 7517 parsing with RFC 8725 key hygiene: RSA >= 2048 bits, Ed25519 not small-order, EC on P-256 only,
    /// oct keys (HS256, >= 32 bytes, explicit `"alg": "HS256"`) only when `allow_symmetric` (inline config),
    /// `alg` inferred only where unambiguous (EC P-256 -> ES256, OKP Ed25519 -> EdDSA, RSA without alg -> RS256).
    /// A bad signature key fails the whole set: `keys[2] (kid "k1"): rsa modulus is 1024 bits, minimum 2048`.
    /// Keys that are not for signatures at all (`use` other than "sig", `key_ops` without "verify", a JWE `alg`)
    /// are left out and listed by [`KeySet::skipped`]: identity providers publish their encryption keys in the
    /// same document (Keycloak's `RSA-OAEP` key), and such a key can never verify a token.
    /// So are well-formed signature keys for a registered algorithm this edge does not verify (an `alg` such as
    /// ES384 or RS512, an EC key on P-384, P-521 or secp256k1, an Ed448 key, an RSA modulus over 4096 bits):
    /// real issuers publish them beside the keys they sign with, and [`KeySet::unsupported_alg`] names the
    /// algorithm of a token that asks for one.
    pub fn from_jwks_json(bytes: &[u8], allow_symmetric: bool) -> Result<KeySet, JwksError> {
        let value: Value =
            serde_json::from_slice(bytes).map_err(|e| JwksError::Json(e.to_string()))?;
        KeySet::from_jwks_value(&value, allow_symmetric)
    }

    /// Like [`KeySet::from_jwks_json`], from an already parsed JSON value.
    pub fn from_jwks_value(v: &Value, allow_symmetric: bool) -> Result<KeySet, JwksError> {
        let keys = v
            .get("keys")
            .and_then(Value::as_array)
            .ok_or(JwksError::Shape)?;
        if keys.is_empty() {
            return Err(JwksError::Empty);
        }
        if keys.len() > MAX_KEYS {
            return Err(JwksError::TooManyKeys(keys.len()));
        }
        let mut parsed: Vec<Key> = Vec::with_capacity(keys.len());
        let mut skipped = Vec::new();
        let mut unsupported = Vec::new();
        let mut digest = crate::token::fingerprint_bytes(b"jwks");
        for (index, jwk) in keys.iter().enumerate() {
            let kid = jwk.get("kid").and_then(Value::as_str).map(str::to_string);
            let fail = |problem: String| JwksError::Key {
                index,
                kid: kid.clone(),
                problem,
            };
            if let Some(why) = not_for_signatures(jwk).map_err(fail)? {
                skipped.push(format!("keys[{index}]{}: {why}", kid_label(&kid)));
                continue;
            }
            let (key, raw) = match parse_key(jwk, allow_symmetric).map_err(fail)? {
                Loaded::Key(key, raw) => (key, raw),
                Loaded::Unsupported { alg, why } => {
                    skipped.push(format!("keys[{index}]{}: {why}", kid_label(&kid)));
                    if let Some(kid) = kid {
                        // A later change of these keys must replace the set, so the lookup stays true.
                        digest = mix(digest, kid.as_bytes());
                        digest = mix(digest, alg.as_bytes());
                        unsupported.push((kid, alg));
                    }
                    continue;
                }
            };
            if let Some(kid) = &key.kid {
                if let Some(other) = parsed.iter().position(|k| k.kid.as_deref() == Some(kid)) {
                    return Err(fail(format!("duplicate kid, also used by keys[{other}]")));
                }
            }
            digest = mix(digest, key.kid.as_deref().unwrap_or("").as_bytes());
            digest = mix(digest, key.alg.as_str().as_bytes());
            digest = mix(digest, &raw);
            parsed.push(key);
        }
        if parsed.is_empty() {
            return Err(JwksError::NoSignatureKeys(skipped.join("; ")));
        }
        Ok(KeySet {
            keys: parsed.into(),
            skipped: skipped.into(),
            unsupported: unsupported.into(),
            digest,
        })
    }

    /// The keys of the document left out, with why: not for signatures, or for an algorithm this edge does not verify.
    pub fn skipped(&self) -> &[String] {
        &self.skipped
    }

    /// The algorithm of the left-out key with exactly this `kid`, when it was left out because this edge does not
    /// verify that algorithm: `ES384`, `RS512`, `RS256 with an 8192-bit key`.
    pub fn unsupported_alg(&self, kid: &str) -> Option<&str> {
        self.unsupported
            .iter()
            .find(|(k, _)| k == kid)
            .map(|(_, alg)| alg.as_str())
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether the set has no key (only the default, empty set).
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The key ids, in JWKS order (keys without a kid are left out).
    pub fn kids(&self) -> Vec<&str> {
        self.keys.iter().filter_map(Key::kid).collect()
    }

    /// Every key.
    pub fn keys(&self) -> &[Key] {
        &self.keys
    }

    /// A hash of the keys' ids, algorithms and public material: equal digests mean the same keys.
    pub fn digest(&self) -> u64 {
        self.digest
    }

    /// The key with exactly this `kid`.
    pub fn by_kid(&self, kid: &str) -> Option<&Key> {
        self.keys.iter().find(|k| k.kid.as_deref() == Some(kid))
    }

    /// Keys usable with `alg`.
    pub fn for_alg(&self, alg: Alg) -> impl Iterator<Item = &Key> {
        self.keys.iter().filter(move |k| k.alg == alg)
    }
}

fn mix(hash: u64, bytes: &[u8]) -> u64 {
    // Order-sensitive chaining of fingerprints; collisions only cost a needless cache flush.
    (hash.rotate_left(17) ^ crate::token::fingerprint_bytes(bytes))
        .wrapping_mul(0x9e37_79b9_7f4a_7c15)
}

fn get_str<'v>(jwk: &'v Value, name: &str) -> Result<Option<&'v str>, String> {
    match jwk.get(name) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(format!("{name} must be a string")),
    }
}

fn b64_field(jwk: &Value, name: &str) -> Result<Vec<u8>, String> {
    let s = get_str(jwk, name)?.ok_or_else(|| format!("missing {name}"))?;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s)
        .map_err(|_| format!("{name} is not unpadded base64url"))
}

/// The y-coordinates (sign bit cleared) of the Ed25519 points of small order, plus the non-canonical encodings
/// of 0 and 1 (p and p+1), as in libsodium's blocklist. A key equal to one of these verifies forged signatures.
const ED25519_SMALL_ORDER: [[u8; 32]; 7] = [
    [0; 32],
    [
        1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        0, 0,
    ],
    [
        0x26, 0xe8, 0x95, 0x8f, 0xc2, 0xb2, 0x27, 0xb0, 0x45, 0xc3, 0xf4, 0x89, 0xf2, 0xef, 0x98,
        0xf0, 0xd5, 0xdf, 0xac, 0x05, 0xd3, 0xc6, 0x33, 0x39, 0xb1, 0x38, 0x02, 0x88, 0x6d, 0x53,
        0xfc, 0x05,
    ],
    [
        0xc7, 0x17, 0x6a, 0x70, 0x3d, 0x4d, 0xd8, 0x4f, 0xba, 0x3c, 0x0b, 0x76, 0x0d, 0x10, 0x67,
        0x0f, 0x2a, 0x20, 0x53, 0xfa, 0x2c, 0x39, 0xcc, 0xc6, 0x4e, 0xc7, 0xfd, 0x77, 0x92, 0xac,
        0x03, 0x7a,
    ],
    [
        0xec, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        0xff, 0x7f,
    ],
    [
        0xed, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        0xff, 0x7f,
    ],
    [
        0xee, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        0xff, 0x7f,
    ],
];

fn ed25519_is_small_order(x: &[u8; 32]) -> bool {
    let mut y = *x;
    y[31] &= 0x7f;
    ED25519_SMALL_ORDER.contains(&y)
}

/// JWE key-management algorithms (RFC 7518 section 4.1): a key declaring one of them encrypts, never signs.
const JWE_ALGS: [&str; 17] = [
    "RSA1_5",
    "RSA-OAEP",
    "RSA-OAEP-256",
    "A128KW",
    "A192KW",
    "A256KW",
    "dir",
    "ECDH-ES",
    "ECDH-ES+A128KW",
    "ECDH-ES+A192KW",
    "ECDH-ES+A256KW",
    "A128GCMKW",
    "A192GCMKW",
    "A256GCMKW",
    "PBES2-HS256+A128KW",
    "PBES2-HS384+A192KW",
    "PBES2-HS512+A256KW",
];

/// JWS signature algorithms registered with IANA (RFC 7518 section 3.1, RFC 8812, RFC 9864) that this edge does
/// not verify: a key declaring one is left out of its set, and a token asking for one is refused naming it.
pub const UNSUPPORTED_SIGNATURE_ALGS: [&str; 13] = [
    "HS384", "HS512", "RS384", "RS512", "ES384", "ES512", "PS384", "PS512", "ES256K", "Ed25519",
    "Ed448", "ESP256", "ESP384",
];

/// Whether `name` is a registered JWS signature algorithm this edge does not verify (see [`UNSUPPORTED_SIGNATURE_ALGS`]).
pub fn is_unsupported_signature_alg(name: &str) -> bool {
    UNSUPPORTED_SIGNATURE_ALGS.contains(&name)
}

/// What became of one JWK: a key to verify with, or a well-formed key for an algorithm this edge does not verify.
enum Loaded {
    /// A key bound to one algorithm, with its public bytes for the set digest.
    Key(Key, Vec<u8>),
    /// Left out: `alg` names the algorithm (for the token that asks for it), `why` says so for the log.
    Unsupported {
        /// `ES384`, `RS256 with an 8192-bit key`.
        alg: String,
        /// `alg ES384 is not supported by this edge`.
        why: String,
    },
}

/// Why a JWK is not a signature key (`Ok(None)` when it may be one), from its `use`, `key_ops` and `alg`;
/// an `Err` for those members in a shape RFC 7517 does not allow.
fn not_for_signatures(jwk: &Value) -> Result<Option<String>, String> {
    if !jwk.is_object() {
        return Ok(None);
    }
    if let Some(usage) = get_str(jwk, "use")? {
        if usage != "sig" {
            return Ok(Some(format!(
                "use is {usage:?}, only \"sig\" keys verify tokens"
            )));
        }
    }
    if let Some(ops) = jwk.get("key_ops") {
        let ops = ops.as_array().ok_or("key_ops must be an array")?;
        if !ops.iter().any(|op| op.as_str() == Some("verify")) {
            return Ok(Some("key_ops does not include \"verify\"".to_string()));
        }
    }
    if let Some(alg) = get_str(jwk, "alg")? {
        if JWE_ALGS.contains(&alg) {
            return Ok(Some(format!("alg {alg:?} is an encryption algorithm")));
        }
    }
    Ok(None)
}

/// Parses one JWK into a key bound to one algorithm (with the public bytes for the set digest), or tells that it
/// is a key for an algorithm this edge does not verify.
fn parse_key(jwk: &Value, allow_symmetric: bool) -> Result<Loaded, String> {
    if !jwk.is_object() {
        return Err("key must be a json object".to_string());
    }
    let kty = get_str(jwk, "kty")?.ok_or("missing kty")?;
    let kid = get_str(jwk, "kid")?.map(str::to_string);
    let declared = match get_str(jwk, "alg")? {
        None => None,
        Some(name) if is_unsupported_signature_alg(name) => {
            return Ok(Loaded::Unsupported {
                alg: name.to_string(),
                why: format!("alg {name} is not supported by this edge"),
            });
        }
        Some(name) => {
            Some(Alg::parse(name).ok_or_else(|| format!("alg {name:?} is not supported"))?)
        }
    };
    let mismatch = |alg: Alg| format!("alg {} does not fit kty {kty}", alg.as_str());
    let (alg, material, raw) = match kty {
        "EC" => {
            reject_private(jwk, kty)?;
            let crv = get_str(jwk, "crv")?.ok_or("missing crv")?;
            let other_curve_alg = match crv {
                "P-256" => None,
                "P-384" => Some("ES384"),
                "P-521" => Some("ES512"),
                "secp256k1" => Some("ES256K"),
                _ => return Err(format!("ec curve {crv:?} is not supported, only P-256")),
            };
            if let Some(alg) = other_curve_alg {
                return Ok(Loaded::Unsupported {
                    alg: alg.to_string(),
                    why: format!(
                        "ec curve {crv} ({alg}) is not supported by this edge, only P-256"
                    ),
                });
            }
            let alg = match declared {
                None | Some(Alg::Es256) => Alg::Es256,
                Some(other) => return Err(mismatch(other)),
            };
            let x = b64_field(jwk, "x")?;
            let y = b64_field(jwk, "y")?;
            if x.len() != 32 || y.len() != 32 {
                return Err(format!(
                    "ec coordinates are {} and {} bytes, expected 32",
                    x.len(),
                    y.len()
                ));
            }
            // Checks the point is on the curve and not the identity (as p256 does), then builds the tables.
            let verifier =
                Es256Verifier::from_affine_coordinates(&x, &y).map_err(|err| match err {
                    Es256KeyError::InvalidPoint { .. } => {
                        "ec point is not on the P-256 curve".to_string()
                    }
                    other => format!("ec key could not be prepared: {other}"),
                })?;
            let mut sec1 = Vec::with_capacity(65);
            sec1.push(0x04);
            sec1.extend_from_slice(&x);
            sec1.extend_from_slice(&y);
            (alg, Material::Ec(Arc::new(verifier)), sec1)
        }
        "RSA" => {
            reject_private(jwk, kty)?;
            let alg = match declared {
                None | Some(Alg::Rs256) => Alg::Rs256,
                Some(Alg::Ps256) => Alg::Ps256,
                Some(other) => return Err(mismatch(other)),
            };
            let n = b64_field(jwk, "n")?;
            let e = b64_field(jwk, "e")?;
            let leading = n.iter().take_while(|b| **b == 0).count();
            let significant = n.get(leading..).unwrap_or(&[]);
            let bits = match significant.first() {
                Some(top) => significant.len() * 8 - top.leading_zeros() as usize,
                None => 0,
            };
            if bits < MIN_RSA_BITS {
                return Err(format!(
                    "rsa modulus is {bits} bits, minimum {MIN_RSA_BITS}"
                ));
            }
            if bits > RsaPublicKey::MAX_SIZE {
                // 8192-bit keys exist, but in V8 one would cost about 15 ms per token through generic code (the fast
                // verifier stops at 4096), and every forged token naming it would cost the same: leave it out.
                return Ok(Loaded::Unsupported {
                    alg: format!("{} with a {bits}-bit key", alg.as_str()),
                    why: format!(
                        "rsa modulus is {bits} bits, this edge verifies at most {}",
                        RsaPublicKey::MAX_SIZE
                    ),
                });
            }
            let jwk = JsonWebKey::Rsa {
                modulus: Cow::Borrowed(significant),
                public_exponent: Cow::Borrowed(&e),
                private_parts: None,
            };
            // jwt-compact's (rsa's) checks run for every RSA key, fast path or not: exponent range, modulus shape.
            let key =
                RsaPublicKey::try_from(&jwk).map_err(|err| format!("rsa key is invalid: {err}"))?;
            let material = match alg {
                // rsa's checks above (odd modulus, odd exponent 3..2^33) are stricter than the fast verifier's
                // (odd, 3..2^64), so every RS256 key loaded today takes the fast path. Should they ever disagree,
                // the key keeps jwt-compact's path rather than failing the whole set.
                Alg::Rs256 => match Rs256Verifier::new(significant, &e) {
                    Ok(verifier) => Material::RsaFast(Arc::new(verifier)),
                    Err(_) => Material::Rsa(key),
                },
                _ => Material::Rsa(key),
            };
            let mut raw = significant.to_vec();
            raw.extend_from_slice(&e);
            (alg, material, raw)
        }
        "OKP" => {
            reject_private(jwk, kty)?;
            let crv = get_str(jwk, "crv")?.ok_or("missing crv")?;
            if crv == "Ed448" {
                return Ok(Loaded::Unsupported {
                    alg: "EdDSA (Ed448)".to_string(),
                    why: "okp curve Ed448 is not supported by this edge, only Ed25519".to_string(),
                });
            }
            if crv != "Ed25519" {
                return Err(format!("okp curve {crv:?} is not supported, only Ed25519"));
            }
            let alg = match declared {
                None | Some(Alg::EdDsa) => Alg::EdDsa,
                Some(other) => return Err(mismatch(other)),
            };
            let x = b64_field(jwk, "x")?;
            let point: [u8; 32] = x
                .as_slice()
                .try_into()
                .map_err(|_| format!("ed25519 key is {} bytes, expected 32", x.len()))?;
            if ed25519_is_small_order(&point) {
                return Err("ed25519 key is a small-order point".to_string());
            }
            let key = <EdKey as jwt_compact::alg::VerifyingKey<Ed25519>>::from_slice(&point)
                .map_err(|_| "ed25519 key is invalid".to_string())?;
            // ed25519-compact's own check: canonical encoding of a point on the curve, not of small order.
            key.validate()
                .map_err(|_| "ed25519 key is not a canonical point of large order".to_string())?;
            (alg, Material::Ed(key), x)
        }
        "oct" => {
            if !allow_symmetric {
                return Err(
                    "symmetric (oct) keys are only accepted inline in the configuration"
                        .to_string(),
                );
            }
            match declared {
                Some(Alg::Hs256) => {}
                None => return Err("oct key needs an explicit \"alg\": \"HS256\"".to_string()),
                Some(other) => return Err(mismatch(other)),
            }
            let k = b64_field(jwk, "k")?;
            if k.len() < MIN_HMAC_BYTES {
                return Err(format!(
                    "hmac key is {} bytes, minimum {MIN_HMAC_BYTES}",
                    k.len()
                ));
            }
            let key = Hs256Key::new(&k);
            // The digest must not be computed over the secret itself: hash it first.
            let raw = <sha2::Sha256 as sha2::Digest>::digest(&k).to_vec();
            (Alg::Hs256, Material::Hmac(key), raw)
        }
        other => return Err(format!("kty {other:?} is not supported")),
    };
    Ok(Loaded::Key(Key { kid, alg, material }, raw))
}

/// Public key sets must not carry private parts: that is a leak upstream and a sign of a mix-up.
fn reject_private(jwk: &Value, kty: &str) -> Result<(), String> {
    if jwk.get("d").is_some() {
        return Err(format!("{kty} key contains private material (d)"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};

    use super::*;
    use crate::test_support::{b64, hmac_jwk, public_jwk};

    fn load(keys: Vec<Value>, allow_symmetric: bool) -> Result<KeySet, JwksError> {
        KeySet::from_jwks_value(&json!({ "keys": keys }), allow_symmetric)
    }

    fn problem(keys: Vec<Value>, allow_symmetric: bool) -> String {
        load(keys, allow_symmetric).unwrap_err().to_string()
    }

    fn with(mut jwk: Value, field: &str, value: Value) -> Value {
        jwk[field] = value;
        jwk
    }

    #[test]
    fn good_keys_load_with_their_algorithms() {
        let set = load(
            vec![
                public_jwk("rsa2048", None),
                public_jwk("rsa2048_b", Some("PS256")),
                public_jwk("ec", None),
                public_jwk("ed25519", None),
                hmac_jwk(),
                with(public_jwk("ec_b", None), "use", json!("sig")),
            ],
            true,
        )
        .unwrap();
        let algs: Vec<&str> = set.keys().iter().map(|k| k.alg().as_str()).collect();
        assert_eq!(
            algs,
            vec!["RS256", "PS256", "ES256", "EdDSA", "HS256", "ES256"]
        );
        assert_eq!(
            set.kids(),
            vec!["rsa-1", "rsa-2", "ec-1", "ed-1", "hs-1", "ec-2"]
        );
        assert_eq!(set.len(), 6);
        assert!(set.by_kid("ec-1").is_some() && set.by_kid("EC-1").is_none());
    }

    #[test]
    fn weak_and_disallowed_keys_are_refused_naming_index_and_kid() {
        let small_order_points: Vec<[u8; 32]> = {
            let mut v = ED25519_SMALL_ORDER.to_vec();
            // The same points with the sign bit set.
            let mut signed = ED25519_SMALL_ORDER[2];
            signed[31] |= 0x80;
            v.push(signed);
            v
        };
        let mut cases: Vec<(Value, bool, String)> = vec![
            (public_jwk("rsa1024_public", None), false, r#"keys[0] (kid "rsa-weak"): rsa modulus is 1024 bits, minimum 2048"#.into()),
            (json!({"kty": "EC", "crv": "P-192", "kid": "ec-192", "x": b64(&[1u8; 24]), "y": b64(&[2u8; 24])}), false, r#"keys[0] (kid "ec-192"): ec curve "P-192" is not supported, only P-256"#.into()),
            (
                json!({"kty": "oct", "kid": "short", "alg": "HS256", "k": b64(&[7u8; 31])}),
                true,
                r#"keys[0] (kid "short"): hmac key is 31 bytes, minimum 32"#.into(),
            ),
            (hmac_jwk(), false, r#"keys[0] (kid "hs-1"): symmetric (oct) keys are only accepted inline in the configuration"#.into()),
            (
                json!({"kty": "oct", "kid": "noalg", "k": b64(&[7u8; 32])}),
                true,
                r#"keys[0] (kid "noalg"): oct key needs an explicit "alg": "HS256""#.into(),
            ),
            (with(public_jwk("ec", None), "use", json!("enc")), false, r#"jwks has no key this edge verifies tokens with, every key was left out: keys[0] (kid "ec-1"): use is "enc", only "sig" keys verify tokens"#.into()),
            (with(public_jwk("ec", None), "use", json!(1)), false, r#"keys[0] (kid "ec-1"): use must be a string"#.into()),
            (with(public_jwk("ec", None), "alg", json!("RS256")), false, r#"keys[0] (kid "ec-1"): alg RS256 does not fit kty EC"#.into()),
            (with(public_jwk("rsa2048", None), "alg", json!("ES256")), false, r#"keys[0] (kid "rsa-1"): alg ES256 does not fit kty RSA"#.into()),
            (with(public_jwk("ed25519", None), "alg", json!("ES256")), false, r#"keys[0] (kid "ed-1"): alg ES256 does not fit kty OKP"#.into()),
            (with(hmac_jwk(), "alg", json!("RS256")), true, r#"keys[0] (kid "hs-1"): alg RS256 does not fit kty oct"#.into()),
            (with(public_jwk("rsa2048", None), "alg", json!("RS999")), false, r#"keys[0] (kid "rsa-1"): alg "RS999" is not supported"#.into()),
            (with(public_jwk("ec", None), "key_ops", json!(["encrypt"])), false, r#"jwks has no key this edge verifies tokens with, every key was left out: keys[0] (kid "ec-1"): key_ops does not include "verify""#.into()),
            (with(public_jwk("ec", None), "key_ops", json!("verify")), false, r#"keys[0] (kid "ec-1"): key_ops must be an array"#.into()),
            (crate::test_support::private_jwk("ec"), false, r#"keys[0] (kid "ec-1"): EC key contains private material (d)"#.into()),
            (json!({"kty": "OKP", "crv": "X25519", "x": b64(&[9u8; 32])}), false, r#"keys[0]: okp curve "X25519" is not supported, only Ed25519"#.into()),
            (json!({"kty": "EC", "crv": "P-256", "kid": "off", "x": b64(&[1u8; 32]), "y": b64(&[2u8; 32])}), false, r#"keys[0] (kid "off"): ec point is not on the P-256 curve"#.into()),
            (json!({"kid": "k"}), false, r#"keys[0] (kid "k"): missing kty"#.into()),
            (json!({"kty": "foo", "kid": "k"}), false, r#"keys[0] (kid "k"): kty "foo" is not supported"#.into()),
            (with(public_jwk("ec", None), "x", json!("AAAA=")), false, r#"keys[0] (kid "ec-1"): x is not unpadded base64url"#.into()),
            ("not an object".into(), false, "keys[0]: key must be a json object".into()),
        ];
        for point in small_order_points {
            cases.push((
                json!({"kty": "OKP", "crv": "Ed25519", "kid": "weak", "x": b64(&point)}),
                false,
                r#"keys[0] (kid "weak"): ed25519 key is a small-order point"#.into(),
            ));
        }
        for (jwk, symmetric, expected) in cases {
            assert_eq!(problem(vec![jwk.clone()], symmetric), expected, "{jwk}");
        }
    }

    #[test]
    fn encryption_keys_beside_signature_keys_are_left_out_not_fatal() {
        // Keycloak's JWKS: the realm's RS256 signing key and its RSA-OAEP encryption key, side by side.
        let mut enc = with(public_jwk("rsa2048_b", None), "use", json!("enc"));
        enc["alg"] = json!("RSA-OAEP");
        enc["kid"] = json!("enc-1");
        let mut no_use = with(public_jwk("ec_b", None), "alg", json!("ECDH-ES"));
        no_use["kid"] = json!("ecdh-1");
        let jwks = json!({"keys": [enc, public_jwk("rsa2048", None), no_use]}).to_string();
        let set = KeySet::from_jwks_json(jwks.as_bytes(), false).unwrap();
        assert_eq!(set.kids(), ["rsa-1"]);
        assert_eq!(
            set.skipped(),
            [
                r#"keys[0] (kid "enc-1"): use is "enc", only "sig" keys verify tokens"#,
                r#"keys[2] (kid "ecdh-1"): alg "ECDH-ES" is an encryption algorithm"#,
            ]
        );
        // A weak signature key beside them still fails the whole set.
        let enc_only = with(public_jwk("rsa2048_b", None), "use", json!("enc"));
        let jwks = json!({"keys": [public_jwk("rsa1024_public", None), enc_only]}).to_string();
        assert!(matches!(
            KeySet::from_jwks_json(jwks.as_bytes(), false),
            Err(JwksError::Key { index: 0, .. })
        ));
    }

    #[test]
    fn non_canonical_ed25519_encoding_is_refused() {
        // y = p + 2 (non-canonical encoding of y = 2).
        let mut x = [0xffu8; 32];
        x[0] = 0xef;
        x[31] = 0x7f;
        let err = problem(
            vec![json!({"kty": "OKP", "crv": "Ed25519", "x": b64(&x)})],
            false,
        );
        assert_eq!(
            err,
            "keys[0]: ed25519 key is not a canonical point of large order"
        );
    }

    #[test]
    fn bad_key_later_in_the_set_names_its_index() {
        let err = problem(
            vec![public_jwk("ec", None), public_jwk("rsa1024_public", None)],
            false,
        );
        assert!(err.starts_with(r#"keys[1] (kid "rsa-weak")"#), "{err}");
        let dup = problem(
            vec![
                public_jwk("ec", None),
                with(public_jwk("ec_b", None), "kid", json!("ec-1")),
            ],
            false,
        );
        assert_eq!(
            dup,
            r#"keys[1] (kid "ec-1"): duplicate kid, also used by keys[0]"#
        );
    }

    #[test]
    fn document_shape_errors() {
        assert_eq!(
            KeySet::from_jwks_json(b"nope", false)
                .unwrap_err()
                .to_string()
                .split(':')
                .next(),
            Some("jwks is not valid json")
        );
        assert_eq!(
            KeySet::from_jwks_json(b"[]", false).unwrap_err(),
            JwksError::Shape
        );
        assert_eq!(
            KeySet::from_jwks_json(br#"{"keys": {}}"#, false).unwrap_err(),
            JwksError::Shape
        );
        assert_eq!(
            KeySet::from_jwks_json(br#"{"keys": []}"#, false).unwrap_err(),
            JwksError::Empty
        );
        let many: Vec<Value> = (0..=MAX_KEYS)
            .map(|i| with(public_jwk("ec", None), "kid", json!(i.to_string())))
            .collect();
        assert_eq!(
            load(many, false).unwrap_err(),
            JwksError::TooManyKeys(MAX_KEYS + 1)
        );
    }

    #[test]
    fn digest_changes_with_keys_only() {
        let a = load(vec![public_jwk("ec", None)], false).unwrap();
        let a_again = load(vec![public_jwk("ec", None)], false).unwrap();
        let b = load(vec![public_jwk("ec_b", None)], false).unwrap();
        let renamed = load(
            vec![with(public_jwk("ec", None), "kid", json!("other"))],
            false,
        )
        .unwrap();
        assert_eq!(a.digest(), a_again.digest());
        assert_ne!(a.digest(), b.digest());
        assert_ne!(a.digest(), renamed.digest());
    }

    #[test]
    fn debug_output_never_shows_key_material() {
        let set = load(vec![hmac_jwk()], true).unwrap();
        let shown = format!("{set:?}");
        assert!(shown.contains("hs-1"));
        assert!(!shown.contains(&b64(crate::test_support::HMAC_SECRET)));
        assert!(!shown.contains("0123456789abcdef"));
    }

    #[test]
    fn es256_and_rs256_keys_get_precomputed_verifiers_others_stay_on_jwt_compact() {
        let set = load(
            vec![
                public_jwk("rsa2048", None),
                public_jwk("rsa2048_b", Some("PS256")),
                public_jwk("ec", None),
                public_jwk("ed25519", None),
                hmac_jwk(),
                public_jwk("ec_b", None),
            ],
            true,
        )
        .unwrap();
        let prepared: Vec<(&str, bool)> = set
            .keys()
            .iter()
            .map(|k| (k.alg().as_str(), k.is_precomputed()))
            .collect();
        assert_eq!(
            prepared,
            vec![
                ("RS256", true),
                ("PS256", false),
                ("ES256", true),
                ("EdDSA", false),
                ("HS256", false),
                ("ES256", true),
            ]
        );
    }

    #[test]
    fn jwt_compact_signed_tokens_verify_on_the_fast_path_and_tampered_signatures_do_not() {
        use crate::test_support::{claims, sign, Signer};
        let set = load(
            vec![public_jwk("rsa2048", None), public_jwk("ec", None)],
            false,
        )
        .unwrap();
        let cases = [
            ("RS256", "rsa-1", Signer::Rs256("rsa2048")),
            ("ES256", "ec-1", Signer::Es256("ec")),
        ];
        for (alg, kid, signer) in cases {
            let key = set.by_kid(kid).unwrap();
            assert!(key.is_precomputed(), "{alg}");
            let token = sign(&json!({"alg": alg, "kid": kid}), &claims(), signer);
            let (input, signature) = token.rsplit_once('.').unwrap();
            let signature = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(signature)
                .unwrap();
            assert!(key.verify(input.as_bytes(), &signature), "{alg}");
            // Every single-bit flip of the signature is refused (both halves of r || s, every RSA limb).
            for bit in (0..signature.len() * 8).step_by(7) {
                let mut flipped = signature.clone();
                flipped[bit / 8] ^= 1 << (bit % 8);
                assert!(!key.verify(input.as_bytes(), &flipped), "{alg} bit {bit}");
            }
            // The same signature over another signing input, and a truncated or extended signature.
            assert!(
                !key.verify(format!("{input}x").as_bytes(), &signature),
                "{alg}"
            );
            assert!(!key.verify(input.as_bytes(), &signature[1..]), "{alg}");
            let mut longer = signature.clone();
            longer.push(0);
            assert!(!key.verify(input.as_bytes(), &longer), "{alg}");
        }
        // Keys never cross algorithms, even with a prepared verifier.
        let ec = set.by_kid("ec-1").unwrap();
        let rs_token = sign(
            &json!({"alg": "RS256"}),
            &claims(),
            Signer::Rs256("rsa2048"),
        );
        let (input, signature) = rs_token.rsplit_once('.').unwrap();
        let signature = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(signature)
            .unwrap();
        assert!(!ec.verify(input.as_bytes(), &signature));
    }

    #[test]
    fn fast_path_tokens_pass_the_engine_and_tampered_ones_are_bad_signatures() {
        use crate::decision::Reason;
        use crate::test_support::{claims, engine, sign, Signer, NOW};
        let engine = engine(json!({}));
        for (alg, kid, signer) in [
            ("RS256", "rsa-1", Signer::Rs256("rsa2048")),
            ("ES256", "ec-1", Signer::Es256("ec")),
        ] {
            let token = sign(&json!({"alg": alg, "kid": kid}), &claims(), signer);
            let verified = engine.verify(&token, NOW).unwrap();
            assert_eq!(
                (verified.alg.as_str(), verified.sub.as_deref()),
                (alg, Some("alice"))
            );
            let (input, signature) = token.rsplit_once('.').unwrap();
            let mut bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(signature)
                .unwrap();
            bytes[5] ^= 0x01;
            let tampered = format!("{input}.{}", b64(&bytes));
            let err = engine.verify(&tampered, NOW).unwrap_err();
            assert_eq!(err.reason, Reason::BadSignature, "{alg}");
            assert_eq!(
                err.description,
                format!("signature does not verify with key \"{kid}\" ({alg})")
            );
        }
    }

    /// A modulus of `bits` bits (all ones but the low bits, so it is odd); never a usable key, only its size matters.
    fn big_modulus(bits: usize) -> Vec<u8> {
        let mut n = vec![0xffu8; bits / 8];
        if let Some(last) = n.last_mut() {
            *last = 0xfb;
        }
        n
    }

    #[test]
    fn signature_keys_for_algorithms_this_edge_does_not_verify_are_left_out_not_fatal() {
        // What real issuers publish beside the keys they sign with: an ES384 key (P-384), an RS512 key, an RSA key
        // over 4096 bits, an Ed448 key. Each is left out, named in `skipped`, and its kid maps to its algorithm.
        let cases: Vec<(Value, &str, &str)> = vec![
            (
                public_jwk("ec384_public", None),
                "ES384",
                r#"keys[1] (kid "ec-384"): ec curve P-384 (ES384) is not supported by this edge, only P-256"#,
            ),
            (
                with(public_jwk("ec384_public", None), "alg", json!("ES384")),
                "ES384",
                r#"keys[1] (kid "ec-384"): alg ES384 is not supported by this edge"#,
            ),
            (
                with(public_jwk("rsa2048_b", None), "alg", json!("RS512")),
                "RS512",
                r#"keys[1] (kid "rsa-2"): alg RS512 is not supported by this edge"#,
            ),
            (
                json!({"kty": "RSA", "kid": "rsa-8192", "n": b64(&big_modulus(8192)), "e": "AQAB"}),
                "RS256 with a 8192-bit key",
                r#"keys[1] (kid "rsa-8192"): rsa modulus is 8192 bits, this edge verifies at most 4096"#,
            ),
            (
                json!({"kty": "RSA", "kid": "ps-8192", "alg": "PS256", "n": b64(&big_modulus(8192)), "e": "AQAB"}),
                "PS256 with a 8192-bit key",
                r#"keys[1] (kid "ps-8192"): rsa modulus is 8192 bits, this edge verifies at most 4096"#,
            ),
            (
                json!({"kty": "EC", "crv": "P-521", "kid": "ec-521", "x": b64(&[1u8; 66]), "y": b64(&[2u8; 66])}),
                "ES512",
                r#"keys[1] (kid "ec-521"): ec curve P-521 (ES512) is not supported by this edge, only P-256"#,
            ),
            (
                json!({"kty": "OKP", "crv": "Ed448", "kid": "ed-448", "x": b64(&[3u8; 57])}),
                "EdDSA (Ed448)",
                r#"keys[1] (kid "ed-448"): okp curve Ed448 is not supported by this edge, only Ed25519"#,
            ),
        ];
        for (jwk, alg, skipped) in cases {
            let kid = jwk["kid"].as_str().unwrap().to_string();
            let set = load(vec![public_jwk("ec", None), jwk.clone()], false)
                .unwrap_or_else(|e| panic!("{jwk}: {e}"));
            assert_eq!(set.kids(), ["ec-1"], "{jwk}");
            assert_eq!(set.skipped(), [skipped], "{jwk}");
            assert_eq!(set.unsupported_alg(&kid), Some(alg), "{jwk}");
            assert!(set.by_kid(&kid).is_none(), "{jwk}");
            // The loaded key is no unsupported one, and a kid nobody published is neither.
            assert_eq!(set.unsupported_alg("ec-1"), None);
            assert_eq!(set.unsupported_alg("nope"), None);
        }
        // Alone, such a key leaves nothing to verify with: the set is refused saying why.
        assert_eq!(
            problem(vec![public_jwk("ec384_public", None)], false),
            r#"jwks has no key this edge verifies tokens with, every key was left out: keys[0] (kid "ec-384"): ec curve P-384 (ES384) is not supported by this edge, only P-256"#
        );
        // A weak key is still no unsupported one: it fails the whole set, whatever else the set holds.
        assert!(matches!(
            load(
                vec![
                    public_jwk("ec384_public", None),
                    public_jwk("rsa1024_public", None)
                ],
                false
            ),
            Err(JwksError::Key { index: 1, .. })
        ));
    }

    #[test]
    fn a_change_of_left_out_keys_changes_the_digest() {
        let es384 = public_jwk("ec384_public", None);
        let a = load(vec![public_jwk("ec", None), es384.clone()], false).unwrap();
        let same = load(vec![public_jwk("ec", None), es384.clone()], false).unwrap();
        let renamed = load(
            vec![
                public_jwk("ec", None),
                with(es384, "kid", json!("ec-384-b")),
            ],
            false,
        )
        .unwrap();
        assert_eq!(a.digest(), same.digest());
        assert_ne!(a.digest(), renamed.digest());
    }

    #[test]
    fn unsupported_signature_algorithm_names_are_registered_ones_only() {
        for alg in Alg::ALL {
            assert!(!is_unsupported_signature_alg(alg.as_str()), "{alg:?}");
        }
        for name in ["ES384", "RS512", "PS384", "HS512", "ES256K", "Ed448"] {
            assert!(is_unsupported_signature_alg(name), "{name}");
        }
        for name in ["none", "es384", "RSA-OAEP", "foo", ""] {
            assert!(!is_unsupported_signature_alg(name), "{name}");
        }
    }

    #[test]
    fn alg_names_round_trip_case_sensitively() {
        for alg in Alg::ALL {
            assert_eq!(Alg::parse(alg.as_str()), Some(*alg));
        }
        assert_eq!(Alg::parse("es256"), None);
        assert_eq!(Alg::parse("none"), None);
    }
}
