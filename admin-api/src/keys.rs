//! Signing keys: generated on first start (ES256 by default, EdDSA or RS256 by flag), private halves
//! encrypted at rest with AES-256-GCM under the master key, rotated on demand.
//! Retired public keys stay in the JWKS until the last token they signed has expired (plus a grace
//! period for replicas that have not yet noticed the rotation), so a rotation never fails a request.
//! Also serves `/.well-known/jwks.json` and the RFC 8414 metadata, and keeps the introspection engine
//! (`edgewarden_core::engine::Engine`) built from the same JWKS the edges fetch.

use std::fmt;
use std::io::Write as _;
use std::path::Path;
use std::str::FromStr;
use std::sync::{Arc, RwLock};

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use anyhow::Context as _;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::Router;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use jwt_compact::alg::{Ed25519, Es256, ModulusBits, Rsa};
use jwt_compact::jwk::JsonWebKey;
use jwt_compact::{AlgorithmExt as _, Claims, Header};
use rand::rngs::OsRng;
use rand::RngCore as _;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sha2::Sha256;
use sqlx::Row as _;

use crate::auth::{Principal, Role};
use crate::config::{Config, MasterKeySource};
use crate::db::{now, Db, DbKind};
use crate::error::{ApiError, ApiResult};
use crate::extract::Json;
use crate::AppState;
pub use edgewarden_api_types::KeyInfo;

/// PostgreSQL NOTIFY channel that tells other replicas to reload their keys.
pub const KEYS_CHANNEL: &str = "edgewarden_keys";

/// Algorithm of a signing key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SigningAlg {
    /// ECDSA P-256 with SHA-256 (default: small keys, small signatures).
    #[serde(rename = "ES256")]
    Es256,
    /// Ed25519.
    #[serde(rename = "EdDSA")]
    EdDsa,
    /// RSASSA-PKCS1-v1_5 with SHA-256, 2048-bit keys.
    #[serde(rename = "RS256")]
    Rs256,
}

impl SigningAlg {
    /// The JOSE `alg` name.
    pub fn as_str(self) -> &'static str {
        match self {
            SigningAlg::Es256 => "ES256",
            SigningAlg::EdDsa => "EdDSA",
            SigningAlg::Rs256 => "RS256",
        }
    }
}

impl fmt::Display for SigningAlg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for SigningAlg {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_uppercase().as_str() {
            "ES256" => Ok(SigningAlg::Es256),
            "EDDSA" | "ED25519" => Ok(SigningAlg::EdDsa),
            "RS256" => Ok(SigningAlg::Rs256),
            _ => Err(format!(
                "unknown signing algorithm {s:?}, expected ES256, EdDSA or RS256"
            )),
        }
    }
}

/// A private key ready to sign.
enum Material {
    Es256(p256::ecdsa::SigningKey),
    EdDsa(ed25519_compact::SecretKey),
    // Boxed: an RSA key is three times the size of the others.
    Rs256(Box<rsa::RsaPrivateKey>),
}

impl Material {
    fn generate(alg: SigningAlg) -> anyhow::Result<Material> {
        Ok(match alg {
            SigningAlg::Es256 => Material::Es256(p256::ecdsa::SigningKey::random(&mut OsRng)),
            SigningAlg::EdDsa => Material::EdDsa(Ed25519::generate(&mut OsRng).0),
            SigningAlg::Rs256 => {
                let (private, _) = Rsa::generate(&mut OsRng, ModulusBits::TwoKibibytes)
                    .context("rsa key generation failed")?;
                Material::Rs256(Box::new(private.into_inner()))
            }
        })
    }

    fn private_jwk(&self) -> JsonWebKey<'_> {
        match self {
            Material::Es256(k) => JsonWebKey::from(k),
            Material::EdDsa(k) => JsonWebKey::from(k),
            Material::Rs256(k) => JsonWebKey::from(k.as_ref()),
        }
    }

    /// The public JWK as JSON and its RFC 7638 thumbprint (base64url SHA-256), used as `kid`.
    fn public_jwk(&self) -> anyhow::Result<(Value, String)> {
        fn describe(jwk: &JsonWebKey<'_>) -> anyhow::Result<(Value, String)> {
            Ok((
                serde_json::to_value(jwk)?,
                URL_SAFE_NO_PAD.encode(jwk.thumbprint::<Sha256>()),
            ))
        }
        match self {
            Material::Es256(k) => describe(&JsonWebKey::from(k.verifying_key())),
            Material::EdDsa(k) => describe(&JsonWebKey::from(&k.public_key())),
            Material::Rs256(k) => describe(&JsonWebKey::from(&k.to_public_key())),
        }
    }

    fn from_private_jwk(alg: SigningAlg, json: &[u8]) -> anyhow::Result<Material> {
        let jwk: JsonWebKey<'_> =
            serde_json::from_slice(json).context("stored private key is not a jwk")?;
        Ok(match alg {
            SigningAlg::Es256 => {
                Material::Es256(p256::ecdsa::SigningKey::try_from(&jwk).context("bad es256 key")?)
            }
            SigningAlg::EdDsa => Material::EdDsa(
                ed25519_compact::SecretKey::try_from(&jwk).context("bad ed25519 key")?,
            ),
            SigningAlg::Rs256 => Material::Rs256(Box::new(
                rsa::RsaPrivateKey::try_from(&jwk).context("bad rsa key")?,
            )),
        })
    }

    fn sign<T: Serialize>(&self, header: &Header, claims: &Claims<T>) -> anyhow::Result<String> {
        let token = match self {
            Material::Es256(k) => Es256.token(header, claims, k),
            Material::EdDsa(k) => Ed25519.token(header, claims, k),
            Material::Rs256(k) => Rsa::rs256().token(header, claims, k.as_ref()),
        };
        token.map_err(|e| anyhow::anyhow!("token signing failed: {e}"))
    }
}

/// The key currently used to sign.
struct ActiveKey {
    kid: String,
    material: Material,
}

/// What is swapped atomically on reload.
struct Snapshot {
    active: Arc<ActiveKey>,
    jwks: Arc<Value>,
    engine: Arc<edgewarden_core::engine::Engine>,
}

/// Owns the signing keys of this replica.
pub struct KeyManager {
    cipher: Aes256Gcm,
    issuer: String,
    alg: SigningAlg,
    grace_seconds: i64,
    /// `None` only inside `init`, before the first `reload` succeeds.
    snapshot: RwLock<Option<Arc<Snapshot>>>,
}

impl fmt::Debug for KeyManager {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyManager")
            .field("issuer", &self.issuer)
            .field("alg", &self.alg)
            .finish_non_exhaustive()
    }
}

/// Reads or creates the 32-byte master key.
pub fn load_master_key(source: &MasterKeySource) -> anyhow::Result<[u8; 32]> {
    let text = match source {
        MasterKeySource::Inline(s) => s.clone(),
        MasterKeySource::File(path) => {
            if !path.exists() {
                create_master_key_file(path)?;
            }
            check_permissions(path);
            std::fs::read_to_string(path)
                .with_context(|| format!("cannot read master key file {}", path.display()))?
        }
    };
    parse_master_key(text.trim())
}

fn parse_master_key(text: &str) -> anyhow::Result<[u8; 32]> {
    let bytes = if text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit()) {
        hex::decode(text)?
    } else {
        STANDARD
            .decode(text)
            .or_else(|_| URL_SAFE_NO_PAD.decode(text))
            .map_err(|_| {
                anyhow::anyhow!("master key is neither hex nor base64: {MASTER_KEY_FORMS}")
            })?
    };
    bytes.try_into().map_err(|b: Vec<u8>| {
        anyhow::anyhow!(
            "master key is {} bytes, expected 32: {MASTER_KEY_FORMS}",
            b.len()
        )
    })
}

/// What a master key may look like, for the errors that refuse one.
const MASTER_KEY_FORMS: &str =
    "give EDGEWARDEN_MASTER_KEY (--master-key) as 64 hex characters or as \
     base64 of 32 bytes (`openssl rand -hex 32` makes one), or a file holding one with \
     --master-key-file (EDGEWARDEN_MASTER_KEY_FILE)";

fn create_master_key_file(path: &Path) -> anyhow::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let mut key = [0u8; 32];
    OsRng.fill_bytes(&mut key);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options
        .open(path)
        .with_context(|| format!("cannot create master key file {}", path.display()))?;
    writeln!(file, "{}", hex::encode(key))?;
    tracing::warn!(
        path = %path.display(),
        "created a master key file for encrypting signing keys; back it up, and for several replicas set EDGEWARDEN_MASTER_KEY to the same key everywhere"
    );
    Ok(())
}

fn check_permissions(path: &Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        if let Ok(meta) = std::fs::metadata(path) {
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                tracing::warn!(path = %path.display(), mode = format!("{mode:o}"), "master key file is readable by other users, chmod 600 it");
            }
        }
    }
}

impl KeyManager {
    /// Loads the keys (generating the first one when there is none) and builds the JWKS.
    pub async fn init(db: &Db, config: &Config) -> anyhow::Result<KeyManager> {
        let master = load_master_key(&config.master_key)?;
        let cipher = Aes256Gcm::new_from_slice(&master)
            .map_err(|_| anyhow::anyhow!("master key must be 32 bytes"))?;
        let manager = KeyManager {
            cipher,
            issuer: config.issuer.clone(),
            alg: config.signing_alg,
            grace_seconds: (config.refresh_interval_seconds as i64 * 2).max(60),
            snapshot: RwLock::new(None),
        };
        let count: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM signing_keys WHERE status = 'active'")
                .fetch_one(&db.pool)
                .await?;
        if count == 0 {
            manager.insert_new_key(db, config.signing_alg).await?;
        }
        manager.reload(db).await?;
        Ok(manager)
    }

    fn engine_for(issuer: &str, jwks: &Value) -> anyhow::Result<edgewarden_core::engine::Engine> {
        let config = json!({
            "issuers": [{"issuer": issuer, "audiences": [], "jwks": jwks}],
            "allowed_typ": ["at+jwt"],
        });
        edgewarden_core::engine::Engine::from_json(config.to_string().as_bytes())
            .map_err(|e| anyhow::anyhow!("cannot build introspection engine: {e}"))
    }

    fn encrypt(&self, kid: &str, plaintext: &[u8]) -> anyhow::Result<Vec<u8>> {
        let mut nonce = [0u8; 12];
        OsRng.fill_bytes(&mut nonce);
        let ct = self
            .cipher
            .encrypt(
                &Nonce::from(nonce),
                Payload {
                    msg: plaintext,
                    aad: kid.as_bytes(),
                },
            )
            .map_err(|_| anyhow::anyhow!("encryption of key {kid} failed"))?;
        Ok([nonce.as_slice(), &ct].concat())
    }

    fn decrypt(&self, kid: &str, blob: &[u8]) -> anyhow::Result<Vec<u8>> {
        let (nonce, ct) = blob
            .split_at_checked(12)
            .context("encrypted key blob too short")?;
        let nonce: [u8; 12] = nonce.try_into().context("encrypted key blob too short")?;
        self.cipher
            .decrypt(
                &Nonce::from(nonce),
                Payload {
                    msg: ct,
                    aad: kid.as_bytes(),
                },
            )
            .map_err(|_| {
                anyhow::anyhow!(
                    "cannot decrypt signing key {kid}: wrong master key or corrupted row"
                )
            })
    }

    async fn insert_new_key(&self, db: &Db, alg: SigningAlg) -> anyhow::Result<String> {
        let material = tokio::task::spawn_blocking(move || Material::generate(alg)).await??;
        let (mut public_json, kid) = material.public_jwk()?;
        if let Value::Object(map) = &mut public_json {
            map.insert("kid".into(), Value::String(kid.clone()));
            map.insert("alg".into(), Value::String(alg.as_str().into()));
            map.insert("use".into(), Value::String("sig".into()));
        }
        let private = serde_json::to_vec(&material.private_jwk())?;
        let encrypted = self.encrypt(&kid, &private)?;
        let now = now();
        let mut tx = db.pool.begin().await?;
        sqlx::query(
            "UPDATE signing_keys SET status = 'retired', retired_at = $1 WHERE status = 'active'",
        )
        .bind(now)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO signing_keys (kid, alg, public_jwk, private_key_enc, status, created_at) VALUES ($1, $2, $3, $4, 'active', $5)",
        )
        .bind(&kid)
        .bind(alg.as_str())
        .bind(public_json.to_string())
        .bind(encrypted)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(kid)
    }

    /// Re-reads the keys: the newest active key signs; the JWKS holds it and every retired key that
    /// may still have unexpired tokens.
    pub async fn reload(&self, db: &Db) -> anyhow::Result<()> {
        let now = now();
        let rows = sqlx::query(
            "SELECT k.kid, k.alg, k.public_jwk, k.status, k.retired_at FROM signing_keys k \
             WHERE k.status = 'active' OR k.retired_at > $1 \
             OR EXISTS (SELECT 1 FROM tokens t WHERE t.kid = k.kid AND t.expires_at > $2) \
             ORDER BY k.created_at DESC, k.kid",
        )
        .bind(now - self.grace_seconds)
        .bind(now)
        .fetch_all(&db.pool)
        .await?;
        let mut keys = Vec::with_capacity(rows.len());
        let mut newest_active: Option<(String, String)> = None;
        for row in &rows {
            let jwk: String = row.try_get("public_jwk")?;
            keys.push(serde_json::from_str::<Value>(&jwk)?);
            let status: String = row.try_get("status")?;
            if status == "active" && newest_active.is_none() {
                newest_active = Some((row.try_get("kid")?, row.try_get("alg")?));
            }
        }
        let (kid, alg) = newest_active.context("no active signing key in the database")?;
        let current = self
            .snapshot
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let active =
            if let Some(active) = current.as_ref().map(|c| &c.active).filter(|a| a.kid == kid) {
                active.clone()
            } else {
                let blob: Vec<u8> =
                    sqlx::query_scalar("SELECT private_key_enc FROM signing_keys WHERE kid = $1")
                        .bind(&kid)
                        .fetch_one(&db.pool)
                        .await?;
                let plain = self.decrypt(&kid, &blob)?;
                let alg: SigningAlg = alg.parse().map_err(anyhow::Error::msg)?;
                Arc::new(ActiveKey {
                    material: Material::from_private_jwk(alg, &plain)?,
                    kid,
                })
            };
        let jwks = json!({"keys": keys});
        let engine = match current.as_ref().filter(|c| *c.jwks == jwks) {
            Some(c) => c.engine.clone(),
            None => Arc::new(Self::engine_for(&self.issuer, &jwks)?),
        };
        let snapshot = Arc::new(Snapshot {
            active,
            jwks: Arc::new(jwks),
            engine,
        });
        *self.snapshot.write().unwrap_or_else(|p| p.into_inner()) = Some(snapshot);
        Ok(())
    }

    fn current(&self) -> Arc<Snapshot> {
        #[allow(clippy::expect_used)]
        self.snapshot
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            // `init` is the only constructor and returns only after a successful `reload`.
            .expect("signing keys are loaded before the key manager is handed out")
    }

    /// Generates a new key with the configured algorithm (or `alg`), retires the current one and
    /// tells other replicas. Returns the new key id.
    pub async fn rotate(&self, db: &Db, alg: Option<SigningAlg>) -> anyhow::Result<String> {
        let kid = self.insert_new_key(db, alg.unwrap_or(self.alg)).await?;
        self.reload(db).await?;
        if db.kind == DbKind::Postgres {
            sqlx::query("SELECT pg_notify($1, $2)")
                .bind(KEYS_CHANNEL)
                .bind(&kid)
                .execute(&db.pool)
                .await?;
        }
        Ok(kid)
    }

    /// Signs RFC 9068 access-token claims with the active key; returns the token and the key id.
    pub fn sign<T: Serialize>(&self, claims: T) -> anyhow::Result<(String, String)> {
        let snapshot = self.current();
        let header = Header::empty()
            .with_key_id(snapshot.active.kid.clone())
            .with_token_type("at+jwt");
        let token = snapshot
            .active
            .material
            .sign(&header, &Claims::new(claims))?;
        Ok((token, snapshot.active.kid.clone()))
    }

    /// The published JWKS.
    pub fn jwks(&self) -> Arc<Value> {
        self.current().jwks.clone()
    }

    /// The verification engine built from the published JWKS, used by introspection.
    pub fn engine(&self) -> Arc<edgewarden_core::engine::Engine> {
        self.current().engine.clone()
    }

    /// Key id of the active key.
    pub fn active_kid(&self) -> String {
        self.current().active.kid.clone()
    }

    /// The `iss` of issued tokens.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }
}

/// Routes of this module.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/.well-known/jwks.json", get(jwks))
        .route("/.well-known/oauth-authorization-server", get(metadata))
        .route("/api/v1/keys", get(list_keys))
        .route("/api/v1/keys/rotate", post(rotate))
}

async fn jwks(State(state): State<AppState>) -> impl IntoResponse {
    let body = state.keys.jwks();
    (
        [(header::CACHE_CONTROL, "public, max-age=60")],
        axum::Json((*body).clone()),
    )
}

async fn metadata(State(state): State<AppState>) -> impl IntoResponse {
    let iss = state.keys.issuer().trim_end_matches('/').to_owned();
    let auth_methods = json!(["client_secret_basic", "client_secret_post"]);
    let algs = json!(["ES256", "EdDSA", "RS256"]);
    (
        [(header::CACHE_CONTROL, "public, max-age=300")],
        axum::Json(json!({
            "issuer": state.keys.issuer(),
            "token_endpoint": format!("{iss}/oauth/token"),
            "jwks_uri": format!("{iss}/.well-known/jwks.json"),
            "revocation_endpoint": format!("{iss}/oauth/revoke"),
            "introspection_endpoint": format!("{iss}/oauth/introspect"),
            "grant_types_supported": ["client_credentials", "refresh_token"],
            "response_types_supported": [],
            "token_endpoint_auth_methods_supported": auth_methods,
            "revocation_endpoint_auth_methods_supported": auth_methods,
            "introspection_endpoint_auth_methods_supported": auth_methods,
            "token_endpoint_auth_signing_alg_values_supported": algs,
            "service_documentation": format!("{iss}/api/v1/openapi.json"),
        })),
    )
}

async fn list_keys(
    State(state): State<AppState>,
    principal: Principal,
) -> ApiResult<Json<Vec<KeyInfo>>> {
    principal.require(&[Role::Admin, Role::Auditor], "list signing keys")?;
    let published: Vec<String> = state
        .keys
        .jwks()
        .get("keys")
        .and_then(Value::as_array)
        .map(|keys| {
            keys.iter()
                .filter_map(|k| k.get("kid").and_then(Value::as_str).map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    let rows = sqlx::query(
        "SELECT kid, alg, status, created_at, retired_at FROM signing_keys \
         ORDER BY CASE WHEN status = 'active' THEN 0 ELSE 1 END, created_at DESC, kid",
    )
    .fetch_all(&state.db.pool)
    .await?;
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        let kid: String = row.try_get("kid")?;
        out.push(KeyInfo {
            published: published.contains(&kid),
            kid,
            alg: row.try_get("alg")?,
            status: row.try_get("status")?,
            created_at: row.try_get("created_at")?,
            retired_at: row.try_get("retired_at")?,
        });
    }
    Ok(Json(out))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RotateRequest {
    alg: Option<SigningAlg>,
}

async fn rotate(
    State(state): State<AppState>,
    principal: Principal,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> ApiResult<Json<Value>> {
    principal.require(&[Role::Admin], "rotate signing keys")?;
    // The body is optional; when there is one, it is json like every other body.
    let request: RotateRequest = if body.is_empty() {
        RotateRequest::default()
    } else {
        crate::extract::require_json(&headers)?;
        crate::extract::parse_json(&body)?
    };
    let kid = state
        .keys
        .rotate(&state.db, request.alg)
        .await
        .map_err(ApiError::Internal)?;
    tracing::info!(kid = %kid, actor = %principal.actor(), "signing key rotated");
    crate::events::record_or_log(
        &state,
        crate::events::Event::new("signing_key.rotated", principal.actor())
            .details(json!({"kid": kid})),
    )
    .await;
    Ok(Json(
        json!({"kid": kid, "alg": request.alg.unwrap_or(state.config.signing_alg)}),
    ))
}
