//! Runtime configuration of the admin API, filled from flags and environment variables by `main.rs`
//! and built directly by tests.
//! Every knob lives here so handlers never read the environment themselves.

use std::path::PathBuf;
use std::time::Duration;

use crate::keys::SigningAlg;

/// Argon2id cost parameters used for dashboard passwords and client secrets.
#[derive(Clone, Debug)]
pub struct Argon2Params {
    /// Memory cost in KiB.
    pub memory_kib: u32,
    /// Number of passes.
    pub iterations: u32,
    /// Degree of parallelism.
    pub parallelism: u32,
}

impl Argon2Params {
    /// OWASP's recommended floor for argon2id (19 MiB, 2 passes, 1 lane): the production default.
    pub const PRODUCTION: Argon2Params = Argon2Params {
        memory_kib: 19 * 1024,
        iterations: 2,
        parallelism: 1,
    };
    /// The cheapest parameters argon2 accepts; only for test suites, which hash hundreds of secrets.
    pub const INSECURE_FAST_FOR_TESTS: Argon2Params = Argon2Params {
        memory_kib: 8,
        iterations: 1,
        parallelism: 1,
    };
}

/// A token bucket's shape: `burst` requests at once, refilled at `per_second`.
#[derive(Clone, Copy, Debug)]
pub struct RateLimit {
    /// Bucket capacity.
    pub burst: u32,
    /// Tokens added per second.
    pub per_second: f64,
}

/// Bounds of the HTTP server (see `serve.rs` for the design).
#[derive(Clone, Debug)]
pub struct ServeLimits {
    /// Most connections open at once; at the bound the longest idle one is closed for a new one.
    pub max_connections: usize,
    /// Time a client has to send a complete request header (also bounds a keep-alive wait).
    pub header_timeout: Duration,
    /// Time a client has to send a complete request body, from its header.
    pub body_timeout: Duration,
    /// Time a connection may stay open with no request in progress.
    pub idle_timeout: Duration,
}

impl ServeLimits {
    /// Requests that may be held open at once (event streams and waiting feed long-polls): all but a
    /// tenth of the connection bound, so held requests alone can never fill it.
    pub fn max_held_requests(&self) -> usize {
        self.max_connections
            .saturating_sub((self.max_connections / 10).max(1))
    }
}

impl Default for ServeLimits {
    fn default() -> ServeLimits {
        ServeLimits {
            max_connections: 16_384,
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
        }
    }
}

/// Where the master key that encrypts signing keys at rest comes from.
#[derive(Clone, Debug)]
pub enum MasterKeySource {
    /// The key itself (64 hex characters or base64 of 32 bytes), e.g. from `EDGEWARDEN_MASTER_KEY`.
    Inline(String),
    /// A file holding the key; created with mode 0600 when it does not exist.
    File(PathBuf),
}

/// The complete configuration of one admin API process.
#[derive(Clone, Debug)]
pub struct Config {
    /// Directory for the SQLite file and the default master key file.
    pub data_dir: PathBuf,
    /// `postgres://...` to use PostgreSQL; `None` (or a `sqlite:` URL) for SQLite.
    pub database_url: Option<String>,
    /// The `iss` of every token issued, and the base of the discovery documents.
    pub issuer: String,
    /// Audience used when a request names none and the client has none configured.
    pub default_audience: String,
    /// Algorithm of newly generated signing keys.
    pub signing_alg: SigningAlg,
    /// Master key source for encrypting signing keys at rest.
    pub master_key: MasterKeySource,
    /// Upper bound on any access token's lifetime, whatever a client allows.
    pub max_token_lifetime_seconds: u64,
    /// Lifetime of refresh tokens.
    pub refresh_token_lifetime_seconds: u64,
    /// Lifetime of dashboard sessions.
    pub session_lifetime_seconds: u64,
    /// Whether the session cookie carries `Secure` (set it when served over HTTPS).
    pub cookie_secure: bool,
    /// Longest long-poll a feed request may ask for.
    pub feed_max_wait_seconds: u64,
    /// How often each replica re-reads the feed cursor and signing keys from the database,
    /// a safety net under LISTEN/NOTIFY.
    pub refresh_interval_seconds: u64,
    /// How long a validated API key stays cached in memory before it is looked up again.
    pub api_key_cache_seconds: u64,
    /// Rate limit of `POST /api/v1/session` per client address.
    pub login_rate_limit: RateLimit,
    /// Password hash computations (argon2id) allowed at once; logins beyond wait for a slot.
    pub password_concurrency: usize,
    /// How long a login waits for a hashing slot before it is refused with 429 and `Retry-After`.
    pub password_wait: Duration,
    /// Wrong passwords in a row after which an account is locked (0: never).
    pub login_lockout_failures: u32,
    /// First lockout; each further wrong password doubles it, up to [`Config::login_lockout_max`].
    pub login_lockout: Duration,
    /// Longest lockout.
    pub login_lockout_max: Duration,
    /// Rate limit of the token endpoints per caller.
    pub token_rate_limit: RateLimit,
    /// Argon2id parameters.
    pub argon2: Argon2Params,
    /// Create a first admin with a one-time password when there is none.
    pub bootstrap_admin: bool,
    /// Usage ingestion limits and retention.
    pub usage: crate::usage::UsageConfig,
    /// Anomaly detector thresholds.
    pub anomalies: crate::anomalies::AnomalyConfig,
    /// Webhook delivery retries and timeouts.
    pub webhooks: crate::webhooks::WebhookConfig,
    /// Timeouts and the connection bound of the HTTP server.
    pub serve: ServeLimits,
}

impl Config {
    /// A configuration with production defaults, keeping its data in `data_dir`.
    pub fn new(data_dir: impl Into<PathBuf>) -> Config {
        let data_dir = data_dir.into();
        Config {
            master_key: MasterKeySource::File(data_dir.join("master.key")),
            data_dir,
            database_url: None,
            issuer: "http://127.0.0.1:8080".to_owned(),
            default_audience: "edgewarden".to_owned(),
            signing_alg: SigningAlg::Es256,
            max_token_lifetime_seconds: 24 * 3600,
            refresh_token_lifetime_seconds: 30 * 24 * 3600,
            session_lifetime_seconds: 8 * 3600,
            cookie_secure: false,
            feed_max_wait_seconds: 30,
            refresh_interval_seconds: 5,
            api_key_cache_seconds: 10,
            login_rate_limit: RateLimit {
                burst: 5,
                per_second: 5.0 / 60.0,
            },
            password_concurrency: std::thread::available_parallelism().map_or(2, |n| n.get()),
            password_wait: Duration::from_secs(2),
            login_lockout_failures: 10,
            login_lockout: Duration::from_secs(60),
            login_lockout_max: Duration::from_secs(15 * 60),
            token_rate_limit: RateLimit {
                burst: 100,
                per_second: 50.0,
            },
            argon2: Argon2Params::PRODUCTION,
            bootstrap_admin: true,
            usage: crate::usage::UsageConfig::default(),
            anomalies: crate::anomalies::AnomalyConfig::default(),
            webhooks: crate::webhooks::WebhookConfig::default(),
            serve: ServeLimits::default(),
        }
    }

    /// True when `database_url` selects PostgreSQL.
    pub fn is_postgres(&self) -> bool {
        self.database_url
            .as_deref()
            .is_some_and(|u| u.starts_with("postgres://") || u.starts_with("postgresql://"))
    }
}
