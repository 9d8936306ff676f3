//! The database: one `sqlx::AnyPool` over SQLite (default, a WAL-mode file in the data directory)
//! or PostgreSQL (`DATABASE_URL=postgres://...`), so every query is written once.
//! Portability rules for queries: `$1`-style placeholders, only BIGINT (i64), TEXT (String) and
//! BLOB/BYTEA (`Vec<u8>`) columns, timestamps as Unix seconds, no booleans, no SUM without a cast.
//! Migrations are embedded from `migrations/sqlite` and `migrations/postgres` and run at start.

use std::borrow::Cow;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use sqlx::any::AnyPoolOptions;
use sqlx::migrate::{Migration, MigrationSource, MigrationType, Migrator};
use sqlx::{AnyPool, SqlSafeStr as _};

use crate::config::Config;

/// Which engine is behind the pool; almost nothing needs to know.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DbKind {
    /// SQLite file.
    Sqlite,
    /// PostgreSQL server.
    Postgres,
}

/// A connected, migrated database.
#[derive(Clone, Debug)]
pub struct Db {
    /// The pool every query runs on, but the bulk writers'.
    pub pool: AnyPool,
    /// The pool of the bulk writers (usage ingestion and the detector's findings). With SQLite, two
    /// connections that commit without syncing the WAL to disk (`synchronous = NORMAL`): a commit
    /// survives a crash of the process (the WAL is in the operating system's hands) and is on disk at
    /// the next checkpoint (every second, which syncs the WAL first), so a power loss can lose the last
    /// second of usage, never a revocation or an issued token, which commit on `pool` (`synchronous =
    /// FULL`, synced at each commit, which also syncs every bulk commit before it). With PostgreSQL,
    /// the same pool as `pool`; bulk transactions turn `synchronous_commit` off for themselves
    /// ([`Db::begin_bulk`]).
    pub bulk: AnyPool,
    /// The engine behind it.
    pub kind: DbKind,
    /// The URL it was opened with (PostgreSQL LISTEN needs it for its own connection).
    pub url: String,
    /// Turns at SQLite's single write lock for this process's long-lived writers (usage ingestion) and
    /// revocations: a queue, so a revocation is woken the moment the ingestion transaction before it
    /// commits instead of polling SQLite's busy handler (whose sleeps grow to 100 ms), and in which
    /// bulk writers give way to waiting priority writers (see [`Db::bulk_write_turn`]).
    write_turn: std::sync::Arc<WriteTurn>,
}

/// SQLite's write lock as this process queues for it: a fair mutex, plus the number of priority
/// writers waiting for it, for which bulk writers stand aside.
#[derive(Debug, Default)]
struct WriteTurn {
    lock: tokio::sync::Mutex<()>,
    /// Priority writers waiting for `lock`.
    urgent: std::sync::atomic::AtomicUsize,
    /// Woken when no priority writer waits any more.
    clear: tokio::sync::Notify,
}

/// A priority writer counted as waiting until it holds the lock (or gives up waiting).
struct Waiting<'a>(&'a WriteTurn);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        if self
            .0
            .urgent
            .fetch_sub(1, std::sync::atomic::Ordering::AcqRel)
            == 1
        {
            self.0.clear.notify_waiters();
        }
    }
}

/// How long a SQLite connection waits for the write lock before a statement fails with "database is
/// locked".
pub const SQLITE_BUSY_TIMEOUT: Duration = Duration::from_secs(15);

/// A bulk writer's turn at SQLite's write lock, held across several of its transactions; see
/// [`Db::bulk_turn`].
pub struct BulkTurn<'a> {
    db: &'a Db,
    guard: Option<tokio::sync::MutexGuard<'a, ()>>,
}

impl BulkTurn<'_> {
    /// Called between two transactions: when a priority writer (a revocation) waits, hands it the turn
    /// and waits for it again, so the revocation waits for one statement of the bulk writer instead of
    /// all of them (the anomaly detector's refreshes held the turn 35-120 ms in the abuse bench).
    pub async fn give_way(&mut self) {
        if self.guard.is_none()
            || self
                .db
                .write_turn
                .urgent
                .load(std::sync::atomic::Ordering::Acquire)
                == 0
        {
            return;
        }
        self.guard = None;
        self.guard = self.db.bulk_write_turn().await;
    }
}

/// Runs `work` every `every` (a late tick waits for the next period) and logs its failures once, not
/// every period: `failed` at `level` with the error when they start, `recovered` when it succeeds again.
pub(crate) fn spawn_repeating<F, Fut>(
    every: Duration,
    level: tracing::Level,
    failed: &'static str,
    recovered: &'static str,
    mut work: F,
) -> tokio::task::JoinHandle<()>
where
    F: FnMut() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<(), String>> + Send,
{
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut failing = false;
        loop {
            tick.tick().await;
            match work().await {
                Ok(()) if failing => {
                    failing = false;
                    tracing::info!("{recovered}");
                }
                Ok(()) => {}
                Err(e) if !failing => {
                    failing = true;
                    if level == tracing::Level::ERROR {
                        tracing::error!(error = %e, "{failed}");
                    } else {
                        tracing::warn!(error = %e, "{failed}");
                    }
                }
                Err(_) => {}
            }
        }
    })
}

/// How often the checkpointer folds SQLite's WAL into the database file.
pub const CHECKPOINT_EVERY: Duration = Duration::from_secs(1);

/// WAL frames (of one 4 KiB page each) past which the checkpointer restarts the log
/// ([`Db::spawn_checkpointer`]): 16 MiB, a few hundred usage transactions.
pub const WAL_RESTART_FRAMES: i64 = 4_096;

/// Longest the checkpointer's restart waits for readers to leave the WAL while it holds the write turn.
const WAL_RESTART_WAIT: Duration = Duration::from_millis(20);

/// Rows one retention statement deletes at most, so pruning never holds SQLite's write lock for long.
const PRUNE_CHUNK: i64 = 5_000;

/// Deletes the rows of `table` matching `condition` (SQL with `$1` bound to `bound`) in chunks of
/// `PRUNE_CHUNK`, each its own short statement, pausing between them so other writers get the lock.
/// `table` and `condition` are constants of the callers, never input. Returns the rows deleted.
pub async fn delete_in_chunks(
    db: &Db,
    table: &str,
    condition: &str,
    bound: i64,
) -> Result<u64, sqlx::Error> {
    // The physical row id: every SQLite table without `WITHOUT ROWID` has a rowid, every PostgreSQL row a ctid.
    let row_id = match db.kind {
        DbKind::Sqlite => "rowid",
        DbKind::Postgres => "ctid",
    };
    let sql = format!(
        "DELETE FROM {table} WHERE {row_id} IN (SELECT {row_id} FROM {table} WHERE {condition} LIMIT {PRUNE_CHUNK})"
    );
    let mut deleted = 0;
    loop {
        let done = sqlx::query(sqlx::AssertSqlSafe(sql.clone()))
            .bind(bound)
            .execute(&db.pool)
            .await?
            .rows_affected();
        deleted += done;
        if (done as i64) < PRUNE_CHUNK {
            return Ok(deleted);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Current time in Unix seconds.
pub fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// (version, name, sql) of each SQLite migration; the file is `NNNN_name.sql`.
const SQLITE_MIGRATIONS: &[(i64, &str, &str)] = &[
    (
        1,
        "initial",
        include_str!("../migrations/sqlite/0001_initial.sql"),
    ),
    (
        2,
        "observability",
        include_str!("../migrations/sqlite/0002_observability.sql"),
    ),
    (
        3,
        "dashboard_indexes",
        include_str!("../migrations/sqlite/0003_dashboard_indexes.sql"),
    ),
    (
        4,
        "foreign_issuers",
        include_str!("../migrations/sqlite/0004_foreign_issuers.sql"),
    ),
    (
        5,
        "usage_flood",
        include_str!("../migrations/sqlite/0005_usage_flood.sql"),
    ),
    (
        6,
        "edge_key_names",
        include_str!("../migrations/sqlite/0006_edge_key_names.sql"),
    ),
    (
        7,
        "issuer_token_lifetime",
        include_str!("../migrations/sqlite/0007_issuer_token_lifetime.sql"),
    ),
    (
        8,
        "edge_instances",
        include_str!("../migrations/sqlite/0008_edge_instances.sql"),
    ),
    (
        9,
        "usage_rollup_in_writer",
        include_str!("../migrations/sqlite/0009_usage_rollup_in_writer.sql"),
    ),
    (
        10,
        "address_failure_minutes",
        include_str!("../migrations/sqlite/0010_address_failure_minutes.sql"),
    ),
    (
        12,
        "usage_journal",
        include_str!("../migrations/sqlite/0012_usage_journal.sql"),
    ),
    (
        13,
        "one_live_anomaly",
        include_str!("../migrations/sqlite/0013_one_live_anomaly.sql"),
    ),
];
/// (version, name, sql) of each PostgreSQL migration.
const POSTGRES_MIGRATIONS: &[(i64, &str, &str)] = &[
    (
        1,
        "initial",
        include_str!("../migrations/postgres/0001_initial.sql"),
    ),
    (
        2,
        "observability",
        include_str!("../migrations/postgres/0002_observability.sql"),
    ),
    (
        3,
        "dashboard_indexes",
        include_str!("../migrations/postgres/0003_dashboard_indexes.sql"),
    ),
    (
        4,
        "foreign_issuers",
        include_str!("../migrations/postgres/0004_foreign_issuers.sql"),
    ),
    (
        5,
        "usage_flood",
        include_str!("../migrations/postgres/0005_usage_flood.sql"),
    ),
    (
        6,
        "edge_key_names",
        include_str!("../migrations/postgres/0006_edge_key_names.sql"),
    ),
    (
        7,
        "issuer_token_lifetime",
        include_str!("../migrations/postgres/0007_issuer_token_lifetime.sql"),
    ),
    (
        8,
        "edge_instances",
        include_str!("../migrations/postgres/0008_edge_instances.sql"),
    ),
    (
        9,
        "usage_rollup_in_writer",
        include_str!("../migrations/postgres/0009_usage_rollup_in_writer.sql"),
    ),
    (
        10,
        "address_failure_minutes",
        include_str!("../migrations/postgres/0010_address_failure_minutes.sql"),
    ),
    (
        11,
        "usage_fillfactor",
        include_str!("../migrations/postgres/0011_usage_fillfactor.sql"),
    ),
    (
        12,
        "usage_journal",
        include_str!("../migrations/postgres/0012_usage_journal.sql"),
    ),
    (
        13,
        "one_live_anomaly",
        include_str!("../migrations/postgres/0013_one_live_anomaly.sql"),
    ),
];

/// Migrations compiled into the binary, so it runs from any directory.
#[derive(Debug)]
struct Embedded(&'static [(i64, &'static str, &'static str)]);

impl<'s> MigrationSource<'s> for Embedded {
    fn resolve(
        self,
    ) -> futures_core::future::BoxFuture<'s, Result<Vec<Migration>, sqlx::error::BoxDynError>> {
        Box::pin(async move {
            Ok(self
                .0
                .iter()
                .map(|(version, name, sql)| {
                    Migration::new(
                        *version,
                        Cow::Borrowed(*name),
                        MigrationType::Simple,
                        sql.into_sql_str(),
                        false,
                    )
                })
                .collect())
        })
    }
}

/// The options of a pool of at most `connections` connections; `bulk` SQLite connections commit without
/// syncing the WAL (see [`Db::bulk`]).
fn pool_options(kind: DbKind, connections: u32, bulk: bool) -> AnyPoolOptions {
    AnyPoolOptions::new()
        .max_connections(connections)
        // A connection to a local SQLite file does not go stale, and the check before each use is a
        // round trip to the connection's worker thread: one more thread hop on every query.
        .test_before_acquire(kind != DbKind::Sqlite)
        .acquire_timeout(Duration::from_secs(10))
        .after_connect(move |conn, _| {
            Box::pin(async move {
                if kind == DbKind::Sqlite {
                    // A writer that finds SQLite's write lock taken waits for it (up to this long)
                    // instead of failing with "database is locked". Usage ingestion holds the lock
                    // for one short transaction at a time, so revocations wait milliseconds.
                    sqlx::query(sqlx::AssertSqlSafe(format!(
                        "PRAGMA busy_timeout = {}",
                        SQLITE_BUSY_TIMEOUT.as_millis()
                    )))
                    .execute(&mut *conn)
                    .await?;
                    // No commit checkpoints the WAL into the database file: the checkpointer task
                    // does (`Db::spawn_checkpointer`). SQLite's automatic checkpoint runs inside the
                    // commit that crosses 1,000 WAL pages, so a revocation committing during a usage
                    // flood paid for copying the flood's pages and syncing the file.
                    sqlx::query("PRAGMA wal_autocheckpoint = 0")
                        .execute(&mut *conn)
                        .await?;
                    if bulk {
                        sqlx::query("PRAGMA synchronous = NORMAL")
                            .execute(&mut *conn)
                            .await?;
                    }
                }
                Ok(())
            })
        })
}

impl Db {
    /// A transaction on the bulk writers' pool ([`Db::bulk`]); with PostgreSQL, one whose commit does not
    /// wait for the server's WAL flush (`SET LOCAL synchronous_commit = off`: a crash of the PostgreSQL
    /// server, not of this replica, can lose its last few hundred milliseconds of usage).
    pub async fn begin_bulk(&self) -> Result<sqlx::Transaction<'static, sqlx::Any>, sqlx::Error> {
        let mut tx = self.bulk.begin().await?;
        if self.kind == DbKind::Postgres {
            sqlx::query("SET LOCAL synchronous_commit = off")
                .execute(&mut *tx)
                .await?;
        }
        Ok(tx)
    }

    /// Opens the database the configuration names (creating the SQLite file and data directory if
    /// missing) and runs the migrations.
    pub async fn connect(config: &Config) -> anyhow::Result<Db> {
        sqlx::any::install_default_drivers();
        let (url, kind) = if config.is_postgres() {
            (
                config.database_url.clone().unwrap_or_default(),
                DbKind::Postgres,
            )
        } else if let Some(url) = config
            .database_url
            .as_deref()
            .filter(|u| u.starts_with("sqlite:"))
        {
            (url.to_owned(), DbKind::Sqlite)
        } else {
            let created = !config.data_dir.exists();
            std::fs::create_dir_all(&config.data_dir).with_context(|| {
                format!("cannot create data directory {}", config.data_dir.display())
            })?;
            let path = config.data_dir.join("edgewarden.db");
            private_store(&config.data_dir, &path, created)?;
            (
                format!("sqlite://{}?mode=rwc", path.display()),
                DbKind::Sqlite,
            )
        };
        if let Some(other) = config.database_url.as_deref() {
            if kind == DbKind::Sqlite && !other.starts_with("sqlite:") {
                anyhow::bail!(
                    "DATABASE_URL must start with postgres:// or sqlite:, got {}",
                    redact(other)
                );
            }
        }
        let pool = pool_options(kind, if kind == DbKind::Sqlite { 8 } else { 16 }, false)
            .connect(&url)
            .await
            .with_context(|| format!("cannot open database {}", redact(&url)))?;
        if kind == DbKind::Sqlite {
            // WAL lets feed reads proceed while a revocation is written; the mode is stored in the file.
            sqlx::query("PRAGMA journal_mode=WAL")
                .execute(&pool)
                .await
                .context("cannot enable WAL mode")?;
        }
        let bulk = if kind == DbKind::Sqlite {
            pool_options(kind, 2, true)
                .connect(&url)
                .await
                .with_context(|| format!("cannot open database {}", redact(&url)))?
        } else {
            pool.clone()
        };
        let db = Db {
            pool,
            bulk,
            kind,
            url,
            write_turn: Default::default(),
        };
        db.migrate().await?;
        Ok(db)
    }

    /// Starts the task that checkpoints SQLite's WAL into the database file every
    /// [`CHECKPOINT_EVERY`] (`PRAGMA wal_checkpoint(PASSIVE)`: it neither takes the write lock nor waits
    /// for readers), off every writer's commit; `None` with PostgreSQL. Connections have SQLite's
    /// automatic checkpoint turned off, so without this task the WAL would only be folded in when the
    /// last connection closes.
    ///
    /// A passive checkpoint never lets the WAL start over while writes go on: the log restarts from its
    /// beginning only at a write after a checkpoint that copied every frame, and under a steady stream of
    /// usage transactions a frame always arrives after the checkpoint began. The WAL then grew without end
    /// (2 GB in a 30 s usage bench), and every commit wrote to new blocks of the file, which the kernel
    /// zeroes first (7-13% of the service's CPU in the usage bench). So when a passive checkpoint leaves
    /// more than [`WAL_RESTART_FRAMES`] frames in the log, the checkpointer takes a bulk write turn (a
    /// waiting revocation goes first) and runs `wal_checkpoint(RESTART)`, which copies the few frames
    /// written since and waits up to [`WAL_RESTART_WAIT`] for readers to leave the log, so the next commit
    /// writes the WAL from its start again, into blocks the file already has (usage bench, SQLite: the
    /// WAL stays under about 100 MB, and batches per second rose from 153-160 to 192).
    pub fn spawn_checkpointer(&self) -> Option<tokio::task::JoinHandle<()>> {
        if self.kind != DbKind::Sqlite {
            return None;
        }
        let db = self.clone();
        Some(spawn_repeating(
            CHECKPOINT_EVERY,
            tracing::Level::WARN,
            "cannot checkpoint SQLite's WAL; retrying every second",
            "SQLite WAL checkpoints succeed again",
            move || {
                let db = db.clone();
                async move {
                    db.checkpoint(WAL_RESTART_FRAMES)
                        .await
                        .map(drop)
                        .map_err(|e| e.to_string())
                }
            },
        ))
    }

    /// One round of the checkpointer ([`Db::spawn_checkpointer`], which passes [`WAL_RESTART_FRAMES`]):
    /// a passive checkpoint, then a restarting one under a bulk write turn when the WAL still holds more
    /// than `restart_over` frames. Returns the frames in the log at the passive checkpoint and whether
    /// the log was restarted. SQLite only.
    pub async fn checkpoint(&self, restart_over: i64) -> Result<(i64, bool), sqlx::Error> {
        // (busy, frames in the log, frames copied into the database file)
        let (_, log, _): (i64, i64, i64) = sqlx::query_as("PRAGMA wal_checkpoint(PASSIVE)")
            .fetch_one(&self.pool)
            .await?;
        if log <= restart_over {
            return Ok((log, false));
        }
        // With the write turn held, readers are what a restart waits for: it waits at most
        // `WAL_RESTART_WAIT` for them (the turn keeps revocations waiting meanwhile), and if they stay it
        // copies what it can, like a passive checkpoint, and the next round tries again. The connection
        // is ready before the turn is taken, so no revocation waits for the pool behind it.
        let mut conn = self.pool.acquire().await?;
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "PRAGMA busy_timeout = {}",
            WAL_RESTART_WAIT.as_millis()
        )))
        .execute(&mut *conn)
        .await?;
        let turn = self.bulk_write_turn().await;
        let restart: Result<(i64, i64, i64), sqlx::Error> =
            sqlx::query_as("PRAGMA wal_checkpoint(RESTART)")
                .fetch_one(&mut *conn)
                .await;
        drop(turn);
        let restored = sqlx::query(sqlx::AssertSqlSafe(format!(
            "PRAGMA busy_timeout = {}",
            SQLITE_BUSY_TIMEOUT.as_millis()
        )))
        .execute(&mut *conn)
        .await;
        if restored.is_err() {
            // Never hand a connection with the short wait back to the pool.
            conn.close_on_drop();
        }
        let (busy, _, _) = restart?;
        restored?;
        Ok((log, busy == 0))
    }

    /// Waits for this process's turn to write to SQLite (see `write_turn`), ahead of any bulk writer
    /// waiting ([`Db::bulk_write_turn`]); the turn lasts until the
    /// guard is dropped, after the transaction commits. `None` with PostgreSQL, whose writers do not
    /// share one lock.
    pub async fn write_turn(&self) -> Option<tokio::sync::MutexGuard<'_, ()>> {
        if self.kind != DbKind::Sqlite {
            return None;
        }
        let turn = &*self.write_turn;
        turn.urgent
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        let waiting = Waiting(turn);
        let guard = turn.lock.lock().await;
        drop(waiting);
        Some(guard)
    }

    /// [`Db::write_turn`] for bulk writers (usage ingestion, anomaly detection): it waits while any
    /// priority writer waits, and a bulk writer that got the lock with one waiting hands it on, so a
    /// revocation waits for at most the one bulk transaction in progress, never for a queue of them.
    pub async fn bulk_write_turn(&self) -> Option<tokio::sync::MutexGuard<'_, ()>> {
        if self.kind != DbKind::Sqlite {
            return None;
        }
        let turn = &*self.write_turn;
        loop {
            let clear = turn.clear.notified();
            tokio::pin!(clear);
            // Registered before the check, so a notification between the two is not missed.
            clear.as_mut().enable();
            if turn.urgent.load(std::sync::atomic::Ordering::Acquire) == 0 {
                let guard = turn.lock.lock().await;
                if turn.urgent.load(std::sync::atomic::Ordering::Acquire) == 0 {
                    return Some(guard);
                }
                drop(guard);
            }
            clear.await;
        }
    }

    /// [`Db::bulk_write_turn`] for a bulk writer that writes in several transactions (or autocommit
    /// statements) and can hand the turn to a waiting priority writer between two of them
    /// ([`BulkTurn::give_way`]).
    pub async fn bulk_turn(&self) -> BulkTurn<'_> {
        BulkTurn {
            db: self,
            guard: self.bulk_write_turn().await,
        }
    }

    /// Applies the embedded migrations for this engine.
    pub async fn migrate(&self) -> anyhow::Result<()> {
        let source = match self.kind {
            DbKind::Sqlite => Embedded(SQLITE_MIGRATIONS),
            DbKind::Postgres => Embedded(POSTGRES_MIGRATIONS),
        };
        let migrator = Migrator::new(source)
            .await
            .context("cannot load migrations")?;
        migrator
            .run(&self.pool)
            .await
            .context("cannot run migrations")?;
        Ok(())
    }
}

/// Removes a password from a database URL before it is shown in an error.
pub fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        _ => url.to_owned(),
    }
}

/// Keeps the SQLite store private to the service's user: a directory this process creates gets mode
/// 0700, and the database file is created 0600 before SQLite opens it (SQLite gives its WAL and
/// shared-memory files the database file's mode). An existing directory's mode is the operator's.
#[cfg(unix)]
fn private_store(dir: &std::path::Path, db: &std::path::Path, created: bool) -> anyhow::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    if created {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("cannot make {} private (mode 0700)", dir.display()))?;
    }
    if !db.exists() {
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(db)
            .with_context(|| format!("cannot create {} (mode 0600)", db.display()))?;
    }
    Ok(())
}

#[cfg(not(unix))]
fn private_store(
    _dir: &std::path::Path,
    _db: &std::path::Path,
    _created: bool,
) -> anyhow::Result<()> {
    Ok(())
}
