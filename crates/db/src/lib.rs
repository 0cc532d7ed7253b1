//! Capstan's database handle.
//!
//! [`Db`] is a Postgres or a SQLite pool. Stores write each query once and run it on whichever
//! backend is configured through [`on_pool!`]; where the dialects differ, a store matches on the
//! variant itself. Migrations live in `migrations/{postgres,sqlite}` and are embedded in the binary.
//!
//! The change feed ([`feed`], table `core_changes`) is how servers sharing a database learn that a
//! cached object changed: writers append `(tenant, topic, key)` in the transaction of the write,
//! and one runner per server reads the rows after its cursor and hands them to subscribers.

use std::str::FromStr;
use std::time::Duration;

use sqlx::migrate::Migrator;
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::sqlite::SqliteSynchronous;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};

pub mod feed;
pub use feed::{Feed, FeedCursor, Subscriber};

static PG_MIGRATIONS: Migrator = sqlx::migrate!("../../migrations/postgres");
static SQLITE_MIGRATIONS: Migrator = sqlx::migrate!("../../migrations/sqlite");

/// Errors from the database layer.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// The URL is neither `postgres://` nor `sqlite://`.
    #[error("unsupported database url (expected postgres://… or sqlite://…)")]
    UnsupportedUrl,
    /// A unique constraint was violated.
    #[error("already exists")]
    Conflict,
    /// A stored value did not decode into a domain value.
    #[error("corrupt row: {0}")]
    Corrupt(String),
    /// The database cannot be reached or refuses connections (down, restarting, logins
    /// refused, pool exhausted, busy): the request may succeed if retried later.
    #[error("database unavailable: {0}")]
    Unavailable(sqlx::Error),
    /// The database failed.
    #[error(transparent)]
    Sqlx(sqlx::Error),
    /// Migrations failed.
    #[error(transparent)]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

impl From<sqlx::Error> for DbError {
    fn from(e: sqlx::Error) -> Self {
        match &e {
            sqlx::Error::Database(d) if d.is_unique_violation() => DbError::Conflict,
            _ if is_unavailable(&e) => DbError::Unavailable(e),
            _ => DbError::Sqlx(e),
        }
    }
}

impl DbError {
    /// Whether the failure is the database being unreachable (worth a retry), not a bug.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, DbError::Unavailable(_))
    }
}

/// Connection-level failures: the network, the pool, and the server codes that mean "not now"
/// (Postgres SQLSTATE classes 08 connection exception, 28 invalid authorization — a role whose
/// logins are refused —, 53 insufficient resources, 57P operator intervention, and the retryable
/// 57014, 25006, 40001, 40P01; SQLite busy, locked, I/O and cannot-open).
fn is_unavailable(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(d) => {
            let code = d.code();
            let code = code.as_deref().unwrap_or("");
            match d.try_downcast_ref::<sqlx::postgres::PgDatabaseError>() {
                Some(_) => {
                    code.starts_with("08")
                        || code.starts_with("28")
                        || code.starts_with("53")
                        || code.starts_with("57P")
                        // canceled (statement timeout), read-only during a failover,
                        // serialization failure and deadlock: retryable.
                        || matches!(code, "57014" | "25006" | "40001" | "40P01")
                }
                // SQLite extended codes keep the primary code in the low byte.
                None => matches!(code.parse::<i32>().map(|c| c & 0xff), Ok(5 | 6 | 10 | 14)),
            }
        }
        _ => false,
    }
}

/// A pool on one of the supported backends.
#[derive(Debug, Clone)]
pub enum Db {
    /// PostgreSQL: the production store.
    Postgres(PgPool),
    /// SQLite: the embedded store of `capstan dev`.
    Sqlite(SqlitePool),
}

/// Runs `$body` with `$p` bound to the concrete pool, so one query text serves both backends.
#[macro_export]
macro_rules! on_pool {
    ($db:expr, |$p:ident| $body:expr) => {
        match $db {
            $crate::Db::Postgres($p) => $body,
            $crate::Db::Sqlite($p) => $body,
        }
    };
}

/// Opens a transaction that will write. On SQLite it takes the write lock at once (`BEGIN
/// IMMEDIATE`, waiting up to the busy timeout): a deferred transaction that reads and then
/// writes fails at once with `SQLITE_BUSY_SNAPSHOT` when another connection committed in
/// between, which no busy timeout retries. On Postgres it is a plain `BEGIN`.
pub trait BeginWrite {
    /// The backend.
    type Database: sqlx::Database;
    /// `BEGIN` for a transaction that writes.
    fn begin_write(
        &self,
    ) -> impl std::future::Future<
        Output = Result<sqlx::Transaction<'static, Self::Database>, sqlx::Error>,
    > + Send;
}

impl BeginWrite for PgPool {
    type Database = sqlx::Postgres;
    fn begin_write(
        &self,
    ) -> impl std::future::Future<
        Output = Result<sqlx::Transaction<'static, sqlx::Postgres>, sqlx::Error>,
    > + Send {
        self.begin()
    }
}

impl BeginWrite for SqlitePool {
    type Database = sqlx::Sqlite;
    fn begin_write(
        &self,
    ) -> impl std::future::Future<
        Output = Result<sqlx::Transaction<'static, sqlx::Sqlite>, sqlx::Error>,
    > + Send {
        self.begin_with("BEGIN IMMEDIATE")
    }
}

/// One entry of the change feed.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Change {
    /// Position in the feed.
    pub seq: i64,
    /// The tenant the changed object belongs to.
    pub tenant: String,
    /// What kind of object changed (`client`, `keys`, `tenant`, …).
    pub topic: String,
    /// Which object changed.
    pub key: String,
}

impl Db {
    /// Connects to `url` (`postgres://…`, `postgresql://…` or `sqlite://…`). SQLite files are
    /// created if missing and run in WAL mode with foreign keys on.
    pub async fn connect(url: &str, max_connections: u32) -> Result<Db, DbError> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let pool = PgPoolOptions::new()
                .max_connections(max_connections)
                .acquire_timeout(Duration::from_secs(5))
                .connect(url)
                .await?;
            Ok(Db::Postgres(pool))
        } else if url.starts_with("sqlite:") {
            let opts = SqliteConnectOptions::from_str(url)?
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Normal)
                .busy_timeout(Duration::from_secs(5))
                .foreign_keys(true);
            let pool = SqlitePoolOptions::new()
                .max_connections(max_connections.clamp(1, 8))
                .acquire_timeout(Duration::from_secs(5))
                .connect_with(opts)
                .await?;
            Ok(Db::Sqlite(pool))
        } else {
            Err(DbError::UnsupportedUrl)
        }
    }

    /// `postgres` or `sqlite`.
    pub fn backend(&self) -> &'static str {
        match self {
            Db::Postgres(_) => "postgres",
            Db::Sqlite(_) => "sqlite",
        }
    }

    fn migrator(&self) -> &'static Migrator {
        match self {
            Db::Postgres(_) => &PG_MIGRATIONS,
            Db::Sqlite(_) => &SQLITE_MIGRATIONS,
        }
    }

    /// Applies pending migrations. Safe to run from several processes at once: Postgres
    /// serialises them with an advisory lock, SQLite with its write lock.
    pub async fn migrate(&self) -> Result<(), DbError> {
        let m = self.migrator();
        on_pool!(self, |p| m.run(p).await)?;
        Ok(())
    }

    /// Versions of embedded migrations that are not applied yet.
    pub async fn pending_migrations(&self) -> Result<Vec<i64>, DbError> {
        let applied: Vec<(i64,)> = match on_pool!(self, |p| {
            sqlx::query_as("SELECT version FROM _sqlx_migrations WHERE success")
                .fetch_all(p)
                .await
        }) {
            Ok(v) => v,
            // No migrations table yet: everything is pending.
            Err(sqlx::Error::Database(_)) => Vec::new(),
            Err(e) => return Err(e.into()),
        };
        Ok(self
            .migrator()
            .iter()
            .map(|m| m.version)
            .filter(|v| !applied.iter().any(|(a,)| a == v))
            .collect())
    }

    /// Round-trips a trivial query.
    pub async fn ping(&self) -> Result<(), DbError> {
        on_pool!(self, |p| sqlx::query("SELECT 1")
            .execute(p)
            .await
            .map(|_| ()))?;
        Ok(())
    }

    /// Appends to the change feed in a statement of its own (writes that have a transaction
    /// append in it with [`append_change!`]).
    pub async fn publish_change(
        &self,
        tenant: &str,
        topic: &str,
        key: &str,
        now: i64,
    ) -> Result<(), DbError> {
        on_pool!(self, |p| {
            let mut conn = p.acquire().await?;
            append_change!(conn, tenant, topic, key, now)
                .await
                .map(|r| r.rows_affected())
        })?;
        Ok(())
    }

    /// The feed entries at these positions (those that exist), oldest first.
    pub async fn changes_at(&self, seqs: &[i64]) -> Result<Vec<Change>, DbError> {
        match self {
            Db::Postgres(p) => Ok(sqlx::query_as(
                "SELECT seq, tenant, topic, key FROM core_changes WHERE seq = ANY($1) ORDER BY seq",
            )
            .bind(seqs)
            .fetch_all(p)
            .await?),
            // SQLite commits one writer at a time, so its feed has no late rows; this path is
            // kept correct, not fast: the range, filtered.
            Db::Sqlite(p) => {
                let (Some(lo), Some(hi)) = (seqs.iter().min(), seqs.iter().max()) else {
                    return Ok(Vec::new());
                };
                let rows: Vec<Change> = sqlx::query_as(
                    "SELECT seq, tenant, topic, key FROM core_changes WHERE seq >= $1 AND seq <= $2 \
                     ORDER BY seq",
                )
                .bind(lo)
                .bind(hi)
                .fetch_all(p)
                .await?;
                Ok(rows.into_iter().filter(|c| seqs.contains(&c.seq)).collect())
            }
        }
    }

    /// Feed entries with `seq > after`, oldest first, at most `limit`.
    pub async fn changes_after(&self, after: i64, limit: i64) -> Result<Vec<Change>, DbError> {
        Ok(on_pool!(self, |p| {
            sqlx::query_as(
                "SELECT seq, tenant, topic, key FROM core_changes WHERE seq > $1 ORDER BY seq LIMIT $2",
            )
            .bind(after)
            .bind(limit)
            .fetch_all(p)
            .await
        })?)
    }

    /// The newest position the feed has handed out, committed or not: the sequence's last value
    /// (Postgres) or `sqlite_sequence` (SQLite), so an empty, pruned table does not read as 0.
    pub async fn latest_change(&self) -> Result<i64, DbError> {
        let (seq,): (Option<i64>,) = match self {
            Db::Postgres(p) => {
                sqlx::query_as(
                    "SELECT GREATEST(COALESCE(pg_sequence_last_value(\
                     pg_get_serial_sequence('core_changes', 'seq')::regclass), 0), \
                     COALESCE((SELECT MAX(seq) FROM core_changes), 0))",
                )
                .fetch_one(p)
                .await?
            }
            Db::Sqlite(p) => {
                sqlx::query_as(
                    "SELECT MAX(COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'core_changes'), 0), \
                     COALESCE((SELECT MAX(seq) FROM core_changes), 0))",
                )
                .fetch_one(p)
                .await?
            }
        };
        Ok(seq.unwrap_or(0))
    }

    /// Deletes feed entries written before `before`.
    pub async fn prune_changes(&self, before: i64) -> Result<u64, DbError> {
        let r = on_pool!(self, |p| {
            sqlx::query("DELETE FROM core_changes WHERE created_at < $1")
                .bind(before)
                .execute(p)
                .await
                .map(|r| r.rows_affected())
        })?;
        Ok(r)
    }
}
