//! `edgewarden-admin`: the admin API binary. Parses flags and environment, then either serves the API
//! (`serve`) or performs one administrative action (`api-key create`, `user create`) on the same
//! database and exits. All behaviour lives in the library.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use edgewarden_admin::auth::{create_checked_api_key, create_user, set_password, Role};
use edgewarden_admin::config::{Config, MasterKeySource, RateLimit, ServeLimits};
use edgewarden_admin::db::Db;
use edgewarden_admin::events::Event;
use edgewarden_admin::keys::SigningAlg;
use edgewarden_admin::{app, AppState};

/// EdgeWarden admin API: issues, refreshes, revokes and introspects tokens and publishes the
/// revocation feed that EdgeWarden edges poll.
#[derive(Parser, Debug)]
#[command(
    name = "edgewarden-admin",
    version,
    about,
    after_help = "Each subcommand has flags of its own, each with its environment variable:\n  \
    edgewarden-admin serve --help            every serve flag (listen address, issuer, master key, \
    timeouts and limits, login lockout, usage, anomaly, event and webhook settings)\n  \
    edgewarden-admin api-key create --help   roles, --client-id, --edge\n  \
    edgewarden-admin user --help             user create, user password\n  \
    edgewarden-admin issuer --help           trusted foreign issuers"
)]
struct Cli {
    #[command(flatten)]
    common: Common,
    #[command(subcommand)]
    command: Command,
}

/// Flags every subcommand honours.
#[derive(Args, Debug)]
struct Common {
    /// Directory for the SQLite database and the default master key file (created if missing).
    #[arg(
        long,
        env = "EDGEWARDEN_DATA_DIR",
        default_value = "./edgewarden-data",
        global = true
    )]
    data_dir: PathBuf,
    /// Database to use instead of the SQLite file in the data directory: `postgres://user@host/db`
    /// (shared by replicas) or `sqlite:///path/file.db`.
    #[arg(long, env = "DATABASE_URL", global = true)]
    database_url: Option<String>,
    /// Log filter, e.g. `info` or `edgewarden_admin=debug`.
    #[arg(long, env = "EDGEWARDEN_LOG", default_value = "info", global = true)]
    log: String,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the HTTP API.
    Serve(Box<ServeArgs>),
    /// Manage API keys.
    #[command(subcommand, name = "api-key")]
    ApiKey(ApiKeyCommand),
    /// Manage dashboard users.
    #[command(subcommand)]
    User(UserCommand),
    /// Manage the foreign issuers whose tokens may be revoked (as `POST /api/v1/issuers`).
    #[command(subcommand)]
    Issuer(IssuerCommand),
}

#[derive(Subcommand, Debug)]
enum IssuerCommand {
    /// Trust a foreign issuer: its `iss` and one source of its keys.
    Add {
        /// The issuer exactly as its tokens carry it in `iss`.
        #[arg(long)]
        issuer: String,
        /// Where the issuer publishes its JWKS (http or https).
        #[arg(
            long,
            conflicts_with = "jwks_file",
            required_unless_present = "jwks_file"
        )]
        jwks_uri: Option<String>,
        /// A file holding the issuer's JWKS document (`{"keys": [...]}`).
        #[arg(long)]
        jwks_file: Option<PathBuf>,
        /// The longest lifetime of the issuer's access tokens, in seconds: its subject and client
        /// revocations stay in the feed this long (default 86400).
        #[arg(long)]
        max_token_lifetime: Option<i64>,
    },
    /// List the trusted foreign issuers as JSON.
    List,
    /// Stop trusting a foreign issuer; revocations already recorded for it stay until they expire.
    Remove {
        /// The issuer as registered.
        #[arg(long)]
        issuer: String,
    },
}

#[derive(Args, Debug)]
struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "EDGEWARDEN_LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// The `iss` of issued tokens and base URL of the discovery documents; defaults to `http://<listen>`.
    #[arg(long, env = "EDGEWARDEN_ISSUER")]
    issuer: Option<String>,
    /// Master key that encrypts signing keys at rest: 64 hex characters or base64 of 32 bytes.
    /// Replicas sharing a database must share it. Takes precedence over --master-key-file.
    #[arg(long, env = "EDGEWARDEN_MASTER_KEY", hide_env_values = true)]
    master_key: Option<String>,
    /// File holding the master key; created with mode 0600 (and a warning) if missing.
    /// Defaults to `<data-dir>/master.key`.
    #[arg(long, env = "EDGEWARDEN_MASTER_KEY_FILE")]
    master_key_file: Option<PathBuf>,
    /// Algorithm of generated signing keys: ES256, EdDSA or RS256.
    #[arg(long, env = "EDGEWARDEN_SIGNING_ALG", default_value = "ES256")]
    signing_alg: SigningAlg,
    /// Audience of tokens whose client registers none.
    #[arg(
        long,
        env = "EDGEWARDEN_DEFAULT_AUDIENCE",
        default_value = "edgewarden"
    )]
    default_audience: String,
    /// Upper bound on any access token's lifetime, in seconds.
    #[arg(long, env = "EDGEWARDEN_MAX_TOKEN_LIFETIME", default_value_t = 86_400)]
    max_token_lifetime: u64,
    /// Lifetime of a refresh-token family, in seconds (rotation keeps the family's expiry).
    #[arg(long, env = "EDGEWARDEN_REFRESH_TOKEN_LIFETIME", default_value_t = 30 * 86_400)]
    refresh_token_lifetime: u64,
    /// Lifetime of dashboard sessions, in seconds.
    #[arg(long, env = "EDGEWARDEN_SESSION_LIFETIME", default_value_t = 8 * 3600)]
    session_lifetime: u64,
    /// Mark the session cookie `Secure` (set when the API is served over HTTPS).
    #[arg(long, env = "EDGEWARDEN_COOKIE_SECURE")]
    cookie_secure: bool,
    /// Longest long-poll (`wait=`) a feed request may hold, in seconds.
    #[arg(long, env = "EDGEWARDEN_FEED_MAX_WAIT", default_value_t = 30)]
    feed_max_wait: u64,
    /// Token-endpoint requests per second allowed per caller (burst twice that).
    #[arg(long, env = "EDGEWARDEN_TOKEN_RATE", default_value_t = 50.0)]
    token_rate: f64,
    /// Failed-or-not login attempts allowed per address per minute.
    #[arg(long, env = "EDGEWARDEN_LOGIN_RATE", default_value_t = 5)]
    login_per_minute: u32,
    /// Most connections open at once; at the bound the longest idle one is closed to make room. Nine
    /// tenths of them may be held requests (long-polls, event streams): one per edge. The open-file
    /// limit is raised to fit, or the bound lowered to the limit with a warning.
    #[arg(long, env = "EDGEWARDEN_MAX_CONNECTIONS", default_value_t = 16_384)]
    max_connections: usize,
    /// Seconds a client has to send a complete request header (also bounds a keep-alive wait).
    #[arg(long, env = "EDGEWARDEN_HEADER_TIMEOUT", default_value_t = 10)]
    header_timeout: u64,
    /// Seconds a client has to send a complete request body.
    #[arg(long, env = "EDGEWARDEN_BODY_TIMEOUT", default_value_t = 30)]
    body_timeout: u64,
    /// Seconds a connection may stay open with no request in progress.
    #[arg(long, env = "EDGEWARDEN_IDLE_TIMEOUT", default_value_t = 60)]
    idle_timeout: u64,
    /// Password hash computations allowed at once (default: the number of cores); logins beyond
    /// wait up to two seconds for a slot, then get 429 with Retry-After.
    #[arg(long, env = "EDGEWARDEN_PASSWORD_CONCURRENCY")]
    password_concurrency: Option<usize>,
    /// Wrong passwords in a row after which an account is locked, from any address (0: never).
    #[arg(long, env = "EDGEWARDEN_LOGIN_LOCKOUT_FAILURES", default_value_t = 10)]
    login_lockout_failures: u32,
    /// First lockout in seconds; each further wrong password doubles it, up to 15 minutes.
    #[arg(long, env = "EDGEWARDEN_LOGIN_LOCKOUT", default_value_t = 60)]
    login_lockout: u64,
    /// Do not create a first admin user when none exists.
    #[arg(long, env = "EDGEWARDEN_NO_BOOTSTRAP_ADMIN")]
    no_bootstrap_admin: bool,
    #[command(flatten)]
    usage: edgewarden_admin::usage::UsageArgs,
    #[command(flatten)]
    anomalies: edgewarden_admin::anomalies::AnomalyArgs,
    #[command(flatten)]
    webhooks: edgewarden_admin::webhooks::WebhookArgs,
}

#[derive(Subcommand, Debug)]
enum ApiKeyCommand {
    /// Create an API key and print it (the key is shown only this once).
    Create {
        /// What the key may do: admin (everything), auditor (read only), edge (revocation feed and
        /// usage reports), service (issue, refresh, revoke and introspect for its own client).
        #[arg(long)]
        role: Role,
        /// A name to recognise the key by in audit records.
        #[arg(long)]
        name: Option<String>,
        /// The client a service key acts for (required for --role service; the client must exist).
        #[arg(long)]
        client_id: Option<String>,
        /// For --role edge: an edge name (`edge_name` in the filter's configuration) the key may poll
        /// the feed and report usage as; repeat for several. A poll or report under any other name is
        /// refused. Without it the edge key is unbound and may act as any edge.
        #[arg(long = "edge", value_name = "NAME")]
        edges: Vec<String>,
    },
}

#[derive(Subcommand, Debug)]
enum UserCommand {
    /// Create a dashboard admin user.
    Create {
        /// Login name.
        #[arg(long)]
        username: String,
        /// Password (at least 12 characters); when omitted a random one is generated and printed.
        #[arg(long, env = "EDGEWARDEN_USER_PASSWORD", hide_env_values = true)]
        password: Option<String>,
        /// Role of the user: admin or auditor.
        #[arg(long, default_value = "admin")]
        role: Role,
    },
    /// Set a dashboard user's password and end all of the user's sessions (for instance the first
    /// admin's one-time password, or a forgotten one). Logged-in users change their own with
    /// `POST /api/v1/session/password`.
    Password {
        /// Login name.
        #[arg(long)]
        username: String,
        /// New password (at least 12 characters); when omitted a random one is generated and printed.
        #[arg(long, env = "EDGEWARDEN_USER_PASSWORD", hide_env_values = true)]
        password: Option<String>,
    },
}

/// The actor recorded for actions taken with this binary's subcommands.
const CLI_ACTOR: &str = "cli";

/// Records an event for an action taken on the command line, as the API records its own, so an
/// auditor sees keys and users created outside the API. A running server streams it and delivers it
/// to webhooks when its dispatcher next reads the table.
async fn cli_event(db: &Db, event: Event) -> anyhow::Result<()> {
    let mut conn = db.pool.acquire().await?;
    edgewarden_admin::events::record(
        &edgewarden_admin::events::EventBus::new(),
        db,
        &mut conn,
        event,
    )
    .await
    .context("the action is done, but its event could not be recorded")?;
    Ok(())
}

fn base_config(common: &Common) -> Config {
    let mut config = Config::new(&common.data_dir);
    config.database_url = common.database_url.clone().filter(|u| !u.is_empty());
    config
}

/// jemalloc, not glibc's malloc: see the dependency's note in Cargo.toml.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    // One line with the whole cause chain, never a backtrace: this is what operators read.
    match run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_new(&cli.common.log).context("bad --log filter")?,
        )
        .with_writer(std::io::stderr)
        .init();
    let mut config = base_config(&cli.common);
    match cli.command {
        Command::Serve(args) => {
            config.issuer = args
                .issuer
                .clone()
                .unwrap_or_else(|| format!("http://{}", args.listen));
            config.master_key = match (&args.master_key, &args.master_key_file) {
                (Some(key), _) => MasterKeySource::Inline(key.clone()),
                (None, Some(file)) => MasterKeySource::File(file.clone()),
                (None, None) => MasterKeySource::File(config.data_dir.join("master.key")),
            };
            config.signing_alg = args.signing_alg;
            config.default_audience = args.default_audience.clone();
            config.max_token_lifetime_seconds = args.max_token_lifetime;
            config.refresh_token_lifetime_seconds = args.refresh_token_lifetime;
            config.session_lifetime_seconds = args.session_lifetime;
            config.cookie_secure = args.cookie_secure;
            config.feed_max_wait_seconds = args.feed_max_wait;
            config.token_rate_limit = RateLimit {
                burst: (args.token_rate * 2.0).ceil() as u32,
                per_second: args.token_rate,
            };
            config.login_rate_limit = RateLimit {
                burst: args.login_per_minute,
                per_second: f64::from(args.login_per_minute) / 60.0,
            };
            config.bootstrap_admin = !args.no_bootstrap_admin;
            if let Some(n) = args.password_concurrency {
                config.password_concurrency = n.max(1);
            }
            config.login_lockout_failures = args.login_lockout_failures;
            config.login_lockout = Duration::from_secs(args.login_lockout);
            config.login_lockout_max = config.login_lockout.max(Duration::from_secs(15 * 60));
            config.serve = ServeLimits {
                max_connections: args.max_connections.max(1),
                header_timeout: Duration::from_secs(args.header_timeout.max(1)),
                body_timeout: Duration::from_secs(args.body_timeout.max(1)),
                idle_timeout: Duration::from_secs(args.idle_timeout.max(1)),
            };
            config.usage = args.usage.config();
            config.anomalies = args.anomalies.config();
            config.webhooks = args.webhooks.config();
            serve(config, args.listen).await
        }
        Command::ApiKey(ApiKeyCommand::Create {
            role,
            name,
            client_id,
            edges,
        }) => {
            let db = Db::connect(&config).await?;
            let name = name.unwrap_or_else(|| format!("{role} key"));
            let key = create_checked_api_key(&db, role, &name, client_id.as_deref(), &edges)
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            cli_event(
                &db,
                Event::new("api_key.created", CLI_ACTOR).details(serde_json::json!({
                    "id": key.id, "role": key.role, "name": key.name,
                    "client_id": key.client_id, "edges": key.edges,
                })),
            )
            .await?;
            eprintln!(
                "created {} api key {} ({}); it is shown only once:",
                key.role, key.id, key.name
            );
            if key.role == Role::Edge && key.edges.is_empty() {
                eprintln!("warning: this edge key is bound to no edge name and may act as any edge; pass --edge <name> to bind it");
            }
            println!("{}", key.key);
            Ok(())
        }
        Command::Issuer(IssuerCommand::Add {
            issuer,
            jwks_uri,
            jwks_file,
            max_token_lifetime,
        }) => {
            let jwks = match jwks_file {
                Some(file) => {
                    let text = std::fs::read_to_string(&file)
                        .with_context(|| format!("cannot read --jwks-file {}", file.display()))?;
                    Some(
                        serde_json::from_str(&text).with_context(|| {
                            format!("--jwks-file {} is not json", file.display())
                        })?,
                    )
                }
                None => None,
            };
            let db = Db::connect(&config).await?;
            let request = edgewarden_admin::issuers::NewIssuerRequest {
                issuer,
                jwks_uri,
                jwks,
                max_token_lifetime_seconds: max_token_lifetime,
            };
            let bus = edgewarden_admin::events::EventBus::new();
            let trusted = edgewarden_admin::issuers::register(&db, &bus, request, "cli")
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            eprintln!("trusted issuer {:?}", trusted.issuer);
            Ok(())
        }
        Command::Issuer(IssuerCommand::Remove { issuer }) => {
            let db = Db::connect(&config).await?;
            let bus = edgewarden_admin::events::EventBus::new();
            edgewarden_admin::issuers::unregister(&db, &bus, &issuer, "cli")
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            eprintln!("no longer trusting issuer {issuer:?}");
            Ok(())
        }
        Command::Issuer(IssuerCommand::List) => {
            let db = Db::connect(&config).await?;
            let all = edgewarden_admin::issuers::all(&db).await?;
            println!("{}", serde_json::to_string_pretty(&all)?);
            Ok(())
        }
        Command::User(UserCommand::Create {
            username,
            password,
            role,
        }) => {
            if !matches!(role, Role::Admin | Role::Auditor) {
                anyhow::bail!("dashboard users are admin or auditor, not {role}");
            }
            let db = Db::connect(&config).await?;
            let (password, generated) = match password {
                Some(p) => (p, false),
                None => (edgewarden_admin::secrets::random_secret(""), true),
            };
            create_user(&db, &config.argon2, &username, &password, role)
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            cli_event(
                &db,
                Event::new("user.created", CLI_ACTOR)
                    .details(serde_json::json!({"username": username, "role": role})),
            )
            .await?;
            eprintln!("created {role} user {username:?}");
            if generated {
                println!("{password}");
            }
            Ok(())
        }
        Command::User(UserCommand::Password { username, password }) => {
            let db = Db::connect(&config).await?;
            let (password, generated) = match password {
                Some(p) => (p, false),
                None => (edgewarden_admin::secrets::random_secret(""), true),
            };
            let ended = set_password(&db, &config.argon2, &username, &password)
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            cli_event(
                &db,
                Event::new("user.password_changed", CLI_ACTOR).details(
                    serde_json::json!({"username": username, "other_sessions_ended": ended}),
                ),
            )
            .await?;
            eprintln!("set the password of user {username:?}; {ended} of their sessions ended");
            if generated {
                println!("{password}");
            }
            Ok(())
        }
    }
}

async fn serve(config: Config, listen: SocketAddr) -> anyhow::Result<()> {
    let bootstrap = config.bootstrap_admin;
    let data_dir = config.data_dir.clone();
    let mut config = config;
    edgewarden_admin::serve::fit_descriptor_limit(&mut config.serve);
    let state = AppState::new(config).await?;
    if bootstrap {
        if let Some(password) = state.bootstrap_admin().await? {
            // Never printed: stdout and stderr of a service end up in its log. A file only the
            // service's user can read holds it until the operator has used it.
            let path = data_dir.join(INITIAL_PASSWORD_FILE);
            match write_private(&path, &format!("{password}\n")) {
                Ok(()) => tracing::warn!(
                    path = %path.display(),
                    "created the first admin user \"admin\"; its one-time password is in this file \
                     (mode 0600): log in, change it (`edgewarden-admin user password --username admin`, \
                     or POST /api/v1/session/password) and delete the file"
                ),
                Err(e) => tracing::error!(
                    path = %path.display(),
                    error = format!("{e:#}"),
                    "created the first admin user \"admin\" but cannot write its password file; \
                     set a password with `edgewarden-admin user password --username admin`"
                ),
            }
        }
    }
    let listener = edgewarden_admin::serve::listen(listen, &state.config.serve)
        .with_context(|| format!("cannot listen on {listen}"))?;
    tracing::info!(listen = %listener.local_addr()?, kid = %state.keys.active_kid(), "edgewarden admin api serving");
    let limits = state.config.serve.clone();
    edgewarden_admin::serve::serve(listener, app(state), limits, async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await?;
    Ok(())
}

/// Where `serve` puts the first admin's one-time password, in the data directory.
const INITIAL_PASSWORD_FILE: &str = "initial-admin-password";

/// Writes `text` to `path` readable by this user only (0600), creating the directory (0700) if needed.
fn write_private(path: &std::path::Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    if let Some(dir) = path.parent() {
        if !dir.exists() {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt as _;
                std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
            }
        }
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    // An older file keeps its mode through open(); make it private before writing.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    }
    file.write_all(text.as_bytes())?;
    Ok(())
}
