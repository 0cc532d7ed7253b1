//! Storage of the config service behind one trait, [`ConfigStore`], and its SQL implementation
//! over [`capstan_db::Db`] (each query written once, run on Postgres or SQLite). The
//! conformance suite in the workspace `tests/` runs it on both backends.
//!
//! Rows hold values as the service gives them: JSON text, or for a secret the sealed bytes in
//! base64; the store never sees a secret in clear. Every write bumps the namespace-environment's
//! counter row first (`INSERT … ON CONFLICT DO UPDATE … RETURNING`), which locks it until the
//! commit: revisions are gap-free and commit-ordered. The write's change-feed row (`config`,
//! key `<ns>/<env>`) commits with it.

use async_trait::async_trait;
use capstan_db::{append_change, on_pool, BeginWrite, Db, DbError, Feed};
use std::sync::Arc;

use crate::error::ConfigError;

/// Feed topic of value and rollout changes (key: `<ns>/<env>`).
pub const TOPIC_VALUES: &str = "config";
/// Feed topic of schema changes (key: the namespace).
pub const TOPIC_SCHEMA: &str = "config.schema";

/// An environment's value rows (snapshot reads and writes read the same way).
const VALUES_OF_ENV: &str = "SELECT key, value, secret FROM config_values \
     WHERE tenant = $1 AND ns = $2 AND env = $3 ORDER BY key";
/// An environment's rollout rows.
const ROLLOUTS_OF_ENV: &str = "SELECT name, body, revision FROM config_rollouts \
     WHERE tenant = $1 AND ns = $2 AND env = $3 ORDER BY name";

/// A namespace-environment of a tenant.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EnvKey {
    /// The tenant.
    pub tenant: String,
    /// The namespace.
    pub ns: String,
    /// The environment.
    pub env: String,
}

impl EnvKey {
    /// The change-feed key: `<ns>/<env>` (neither may hold `/`).
    pub fn feed_key(&self) -> String {
        format!("{}/{}", self.ns, self.env)
    }

    /// The key of a feed row of `tenant`.
    pub fn from_feed(tenant: &str, key: &str) -> Option<EnvKey> {
        let (ns, env) = key.split_once('/')?;
        Some(EnvKey {
            tenant: tenant.to_owned(),
            ns: ns.to_owned(),
            env: env.to_owned(),
        })
    }
}

/// A value row: JSON text, or base64 sealed bytes when secret.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct StoredValue {
    /// The key.
    pub key: String,
    /// The stored text.
    pub value: String,
    /// Whether `value` is sealed.
    pub secret: bool,
}

/// A rollout row (its body is the service's JSON).
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct StoredRollout {
    /// Its name.
    pub name: String,
    /// Its body.
    pub body: String,
    /// The revision that last changed it.
    pub revision: i64,
}

/// A namespace-environment as stored, at one revision.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoredEnv {
    /// The revision (0: never written).
    pub revision: i64,
    /// Its values.
    pub values: Vec<StoredValue>,
    /// Its rollouts.
    pub rollouts: Vec<StoredRollout>,
    /// Its namespace's schema, read in the write's transaction (writes only; on Postgres the
    /// row is share-locked, so a schema change waits for writes in flight).
    pub schema: Option<String>,
}

/// A change-log row.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct StoredLog {
    /// The revision.
    pub revision: i64,
    /// Who made it.
    pub actor: String,
    /// When.
    pub at: i64,
    /// Why (`write`, `rollback`, …).
    pub kind: String,
    /// The deltas (the service's JSON; secrets sealed).
    pub body: String,
}

/// What one write stores: the planner's answer, given the state it applies to.
#[derive(Debug, Clone, Default)]
pub struct Commit {
    /// Values to insert or replace.
    pub upserts: Vec<StoredValue>,
    /// Keys to delete.
    pub deletes: Vec<String>,
    /// A rollout to replace (`Some(body)`) or drop (`None`).
    pub rollout: Option<(String, Option<String>)>,
    /// Who.
    pub actor: String,
    /// When.
    pub at: i64,
    /// Why.
    pub kind: String,
    /// The change-log body.
    pub body: String,
    /// Nothing to store: the transaction is rolled back (no revision is made) and the write
    /// answers the current revision.
    pub noop: bool,
}

impl Commit {
    /// A write that changes nothing.
    pub fn noop() -> Commit {
        Commit {
            noop: true,
            ..Commit::default()
        }
    }
}

/// Value rows as one JSON array of `{key, value, secret}` (the stored text as a string).
fn upserts_json(rows: &[StoredValue]) -> String {
    serde_json::Value::Array(
        rows.iter()
            .map(|r| serde_json::json!({"key": r.key, "value": r.value, "secret": r.secret}))
            .collect(),
    )
    .to_string()
}

/// Rewrites one log row: its new body, or `None` to keep it.
pub type LogRewriter<'a> = &'a (dyn Fn(&StoredLog) -> Result<Option<String>, ConfigError> + Sync);

/// Plans a write from the state it applies to (called inside the write's transaction, with the
/// counter row locked); an error rolls the transaction back.
pub type Planner<'a> = &'a (dyn Fn(&StoredEnv) -> Result<Commit, ConfigError> + Sync);

/// Everything the config service stores.
#[async_trait]
pub trait ConfigStore: Send + Sync {
    /// One consistent snapshot of a namespace-environment (revision, values, rollouts).
    async fn load(&self, env: &EnvKey) -> Result<StoredEnv, DbError>;
    /// Makes the next revision: bumps the counter, reads the state, asks `plan`, stores its
    /// answer and the log row, appends the feed row, commits. The new revision.
    async fn write(&self, env: &EnvKey, plan: Planner<'_>) -> Result<i64, ConfigError>;
    /// Log rows after `after`, oldest first, at most `limit`.
    async fn log_after(
        &self,
        env: &EnvKey,
        after: i64,
        limit: i64,
    ) -> Result<Vec<StoredLog>, DbError>;
    /// Log rows before `before`, newest first, at most `limit`.
    async fn log_before(
        &self,
        env: &EnvKey,
        before: i64,
        limit: i64,
    ) -> Result<Vec<StoredLog>, DbError>;
    /// Rewrites the log rows of `env` that `rewrite` changes (in one transaction); how many.
    async fn rewrite_log(&self, env: &EnvKey, rewrite: LogRewriter<'_>)
        -> Result<u64, ConfigError>;
    /// The oldest revision still in the log.
    async fn oldest_log(&self, env: &EnvKey) -> Result<Option<i64>, DbError>;
    /// Drops log rows older than `before_at`, or more than `keep` revisions behind their
    /// environment's current one; how many.
    async fn compact(&self, keep: i64, before_at: i64) -> Result<u64, DbError>;
    /// The environments of a namespace that have been written.
    async fn list_envs(&self, tenant: &str, ns: &str) -> Result<Vec<String>, DbError>;
    /// A namespace's schema.
    async fn get_schema(&self, tenant: &str, ns: &str) -> Result<Option<String>, DbError>;
    /// Sets a namespace's schema.
    async fn put_schema(&self, tenant: &str, ns: &str, body: &str, now: i64)
        -> Result<(), DbError>;
    /// Drops a namespace's schema; false if none.
    async fn delete_schema(&self, tenant: &str, ns: &str, now: i64) -> Result<bool, DbError>;
}

/// [`ConfigStore`] on Postgres or SQLite.
pub struct SqlConfigStore {
    db: Db,
    feed: Option<Arc<Feed>>,
}

impl SqlConfigStore {
    /// A store on `db`.
    pub fn new(db: Db) -> SqlConfigStore {
        SqlConfigStore { db, feed: None }
    }

    /// Wakes `feed` after each committed write.
    pub fn with_feed(mut self, feed: Arc<Feed>) -> SqlConfigStore {
        self.feed = Some(feed);
        self
    }

    fn woke(&self) {
        if let Some(f) = &self.feed {
            f.wake();
        }
    }
}

#[async_trait]
impl ConfigStore for SqlConfigStore {
    async fn load(&self, env: &EnvKey) -> Result<StoredEnv, DbError> {
        // One snapshot: on Postgres a repeatable-read transaction; SQLite's read transaction
        // is a snapshot already.
        let isolate = match &self.db {
            Db::Postgres(_) => "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY",
            Db::Sqlite(_) => "SELECT 1",
        };
        let out = on_pool!(&self.db, |p| {
            let mut tx = p.begin().await?;
            sqlx::query(isolate).execute(&mut *tx).await?;
            let rev: Option<(i64,)> = sqlx::query_as(
                "SELECT revision FROM config_envs WHERE tenant = $1 AND ns = $2 AND env = $3",
            )
            .bind(&env.tenant)
            .bind(&env.ns)
            .bind(&env.env)
            .fetch_optional(&mut *tx)
            .await?;
            let values: Vec<StoredValue> = sqlx::query_as(VALUES_OF_ENV)
                .bind(&env.tenant)
                .bind(&env.ns)
                .bind(&env.env)
                .fetch_all(&mut *tx)
                .await?;
            let rollouts: Vec<StoredRollout> = sqlx::query_as(ROLLOUTS_OF_ENV)
                .bind(&env.tenant)
                .bind(&env.ns)
                .bind(&env.env)
                .fetch_all(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok::<StoredEnv, sqlx::Error>(StoredEnv {
                revision: rev.map(|r| r.0).unwrap_or(0),
                values,
                rollouts,
                schema: None,
            })
        })?;
        Ok(out)
    }

    async fn write(&self, env: &EnvKey, plan: Planner<'_>) -> Result<i64, ConfigError> {
        let feed_key = env.feed_key();
        let schema_query = match &self.db {
            Db::Postgres(_) => {
                "SELECT body FROM config_schemas WHERE tenant = $1 AND ns = $2 FOR SHARE"
            }
            Db::Sqlite(_) => "SELECT body FROM config_schemas WHERE tenant = $1 AND ns = $2",
        };
        let (upsert_sql, delete_sql) = match &self.db {
            Db::Postgres(_) => (
                "INSERT INTO config_values (tenant, ns, env, key, value, secret, revision) \
                 SELECT $1, $2, $3, x.key, x.value, x.secret, $5 \
                 FROM jsonb_to_recordset($4::jsonb) AS x(key text, value text, secret boolean) \
                 ON CONFLICT (tenant, ns, env, key) DO UPDATE SET value = excluded.value, \
                 secret = excluded.secret, revision = excluded.revision",
                "DELETE FROM config_values WHERE tenant = $1 AND ns = $2 AND env = $3 \
                 AND key IN (SELECT jsonb_array_elements_text($4::jsonb))",
            ),
            Db::Sqlite(_) => (
                "INSERT INTO config_values (tenant, ns, env, key, value, secret, revision) \
                 SELECT $1, $2, $3, json_extract(j.value, '$.key'), \
                 json_extract(j.value, '$.value'), json_extract(j.value, '$.secret'), $5 \
                 FROM json_each($4) AS j WHERE true \
                 ON CONFLICT (tenant, ns, env, key) DO UPDATE SET value = excluded.value, \
                 secret = excluded.secret, revision = excluded.revision",
                "DELETE FROM config_values WHERE tenant = $1 AND ns = $2 AND env = $3 \
                 AND key IN (SELECT value FROM json_each($4))",
            ),
        };
        let rev = on_pool!(&self.db, |p| {
            let mut tx = p.begin_write().await.map_err(DbError::from)?;
            let (rev,): (i64,) = sqlx::query_as(
                "INSERT INTO config_envs (tenant, ns, env, revision) VALUES ($1, $2, $3, 1) \
                 ON CONFLICT (tenant, ns, env) DO UPDATE SET revision = config_envs.revision + 1 \
                 RETURNING revision",
            )
            .bind(&env.tenant)
            .bind(&env.ns)
            .bind(&env.env)
            .fetch_one(&mut *tx)
            .await
            .map_err(DbError::from)?;
            let values: Vec<StoredValue> = sqlx::query_as(VALUES_OF_ENV)
                .bind(&env.tenant)
                .bind(&env.ns)
                .bind(&env.env)
                .fetch_all(&mut *tx)
                .await
                .map_err(DbError::from)?;
            let rollouts: Vec<StoredRollout> = sqlx::query_as(ROLLOUTS_OF_ENV)
                .bind(&env.tenant)
                .bind(&env.ns)
                .bind(&env.env)
                .fetch_all(&mut *tx)
                .await
                .map_err(DbError::from)?;
            let schema: Option<(String,)> = sqlx::query_as(schema_query)
                .bind(&env.tenant)
                .bind(&env.ns)
                .fetch_optional(&mut *tx)
                .await
                .map_err(DbError::from)?;
            let current = StoredEnv {
                revision: rev - 1,
                values,
                rollouts,
                schema: schema.map(|s| s.0),
            };
            // An error here drops the transaction: the counter bump rolls back with it.
            let c = plan(&current)?;
            if c.noop {
                tx.rollback().await.map_err(DbError::from)?;
                return Ok(rev - 1);
            }

            // One statement each for the upserts and the deletes, whatever their number.
            if !c.upserts.is_empty() {
                sqlx::query(upsert_sql)
                    .bind(&env.tenant)
                    .bind(&env.ns)
                    .bind(&env.env)
                    .bind(upserts_json(&c.upserts))
                    .bind(rev)
                    .execute(&mut *tx)
                    .await
                    .map_err(DbError::from)?;
            }
            if !c.deletes.is_empty() {
                sqlx::query(delete_sql)
                    .bind(&env.tenant)
                    .bind(&env.ns)
                    .bind(&env.env)
                    .bind(serde_json::Value::from(c.deletes.clone()).to_string())
                    .execute(&mut *tx)
                    .await
                    .map_err(DbError::from)?;
            }
            match &c.rollout {
                Some((name, Some(body))) => {
                    sqlx::query(
                        "INSERT INTO config_rollouts (tenant, ns, env, name, body, revision) \
                         VALUES ($1, $2, $3, $4, $5, $6) \
                         ON CONFLICT (tenant, ns, env, name) DO UPDATE SET body = excluded.body, \
                         revision = excluded.revision",
                    )
                    .bind(&env.tenant)
                    .bind(&env.ns)
                    .bind(&env.env)
                    .bind(name)
                    .bind(body)
                    .bind(rev)
                    .execute(&mut *tx)
                    .await
                    .map_err(DbError::from)?;
                }
                Some((name, None)) => {
                    sqlx::query(
                        "DELETE FROM config_rollouts \
                         WHERE tenant = $1 AND ns = $2 AND env = $3 AND name = $4",
                    )
                    .bind(&env.tenant)
                    .bind(&env.ns)
                    .bind(&env.env)
                    .bind(name)
                    .execute(&mut *tx)
                    .await
                    .map_err(DbError::from)?;
                }
                None => {}
            }
            sqlx::query(
                "INSERT INTO config_log (tenant, ns, env, revision, actor, at, kind, body) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            )
            .bind(&env.tenant)
            .bind(&env.ns)
            .bind(&env.env)
            .bind(rev)
            .bind(&c.actor)
            .bind(c.at)
            .bind(&c.kind)
            .bind(&c.body)
            .execute(&mut *tx)
            .await
            .map_err(DbError::from)?;
            append_change!(tx, &env.tenant, TOPIC_VALUES, &feed_key, c.at)
                .await
                .map_err(DbError::from)?;
            tx.commit().await.map_err(DbError::from)?;
            Ok::<i64, ConfigError>(rev)
        })?;
        self.woke();
        Ok(rev)
    }

    async fn log_after(
        &self,
        env: &EnvKey,
        after: i64,
        limit: i64,
    ) -> Result<Vec<StoredLog>, DbError> {
        Ok(on_pool!(&self.db, |p| {
            sqlx::query_as(
                "SELECT revision, actor, at, kind, body FROM config_log \
                 WHERE tenant = $1 AND ns = $2 AND env = $3 AND revision > $4 \
                 ORDER BY revision LIMIT $5",
            )
            .bind(&env.tenant)
            .bind(&env.ns)
            .bind(&env.env)
            .bind(after)
            .bind(limit)
            .fetch_all(p)
            .await
        })?)
    }

    async fn log_before(
        &self,
        env: &EnvKey,
        before: i64,
        limit: i64,
    ) -> Result<Vec<StoredLog>, DbError> {
        Ok(on_pool!(&self.db, |p| {
            sqlx::query_as(
                "SELECT revision, actor, at, kind, body FROM config_log \
                 WHERE tenant = $1 AND ns = $2 AND env = $3 AND revision < $4 \
                 ORDER BY revision DESC LIMIT $5",
            )
            .bind(&env.tenant)
            .bind(&env.ns)
            .bind(&env.env)
            .bind(before)
            .bind(limit)
            .fetch_all(p)
            .await
        })?)
    }

    async fn rewrite_log(
        &self,
        env: &EnvKey,
        rewrite: LogRewriter<'_>,
    ) -> Result<u64, ConfigError> {
        let n = on_pool!(&self.db, |p| {
            let mut tx = p.begin_write().await.map_err(DbError::from)?;
            let rows: Vec<StoredLog> = sqlx::query_as(
                "SELECT revision, actor, at, kind, body FROM config_log \
                 WHERE tenant = $1 AND ns = $2 AND env = $3 ORDER BY revision",
            )
            .bind(&env.tenant)
            .bind(&env.ns)
            .bind(&env.env)
            .fetch_all(&mut *tx)
            .await
            .map_err(DbError::from)?;
            let mut n = 0u64;
            for r in &rows {
                if let Some(body) = rewrite(r)? {
                    sqlx::query(
                        "UPDATE config_log SET body = $5 \
                         WHERE tenant = $1 AND ns = $2 AND env = $3 AND revision = $4",
                    )
                    .bind(&env.tenant)
                    .bind(&env.ns)
                    .bind(&env.env)
                    .bind(r.revision)
                    .bind(body)
                    .execute(&mut *tx)
                    .await
                    .map_err(DbError::from)?;
                    n += 1;
                }
            }
            tx.commit().await.map_err(DbError::from)?;
            Ok::<u64, ConfigError>(n)
        })?;
        Ok(n)
    }

    async fn oldest_log(&self, env: &EnvKey) -> Result<Option<i64>, DbError> {
        let r: (Option<i64>,) = on_pool!(&self.db, |p| {
            sqlx::query_as(
                "SELECT MIN(revision) FROM config_log WHERE tenant = $1 AND ns = $2 AND env = $3",
            )
            .bind(&env.tenant)
            .bind(&env.ns)
            .bind(&env.env)
            .fetch_one(p)
            .await
        })?;
        Ok(r.0)
    }

    async fn compact(&self, keep: i64, before_at: i64) -> Result<u64, DbError> {
        let r = on_pool!(&self.db, |p| {
            sqlx::query(
                "DELETE FROM config_log WHERE at < $1 OR revision <= (SELECT e.revision - $2 \
                 FROM config_envs e WHERE e.tenant = config_log.tenant AND e.ns = config_log.ns \
                 AND e.env = config_log.env)",
            )
            .bind(before_at)
            .bind(keep)
            .execute(p)
            .await
            .map(|r| r.rows_affected())
        })?;
        Ok(r)
    }

    async fn list_envs(&self, tenant: &str, ns: &str) -> Result<Vec<String>, DbError> {
        let rows: Vec<(String,)> = on_pool!(&self.db, |p| {
            sqlx::query_as("SELECT env FROM config_envs WHERE tenant = $1 AND ns = $2 ORDER BY env")
                .bind(tenant)
                .bind(ns)
                .fetch_all(p)
                .await
        })?;
        Ok(rows.into_iter().map(|r| r.0).collect())
    }

    async fn get_schema(&self, tenant: &str, ns: &str) -> Result<Option<String>, DbError> {
        let r: Option<(String,)> = on_pool!(&self.db, |p| {
            sqlx::query_as("SELECT body FROM config_schemas WHERE tenant = $1 AND ns = $2")
                .bind(tenant)
                .bind(ns)
                .fetch_optional(p)
                .await
        })?;
        Ok(r.map(|r| r.0))
    }

    async fn put_schema(
        &self,
        tenant: &str,
        ns: &str,
        body: &str,
        now: i64,
    ) -> Result<(), DbError> {
        on_pool!(&self.db, |p| {
            let mut tx = p.begin_write().await?;
            sqlx::query(
                "INSERT INTO config_schemas (tenant, ns, body, updated_at) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (tenant, ns) DO UPDATE SET body = excluded.body, \
                 updated_at = excluded.updated_at",
            )
            .bind(tenant)
            .bind(ns)
            .bind(body)
            .bind(now)
            .execute(&mut *tx)
            .await?;
            append_change!(tx, tenant, TOPIC_SCHEMA, ns, now).await?;
            tx.commit().await?;
            Ok::<(), sqlx::Error>(())
        })?;
        self.woke();
        Ok(())
    }

    async fn delete_schema(&self, tenant: &str, ns: &str, now: i64) -> Result<bool, DbError> {
        let n = on_pool!(&self.db, |p| {
            let mut tx = p.begin_write().await?;
            let n = sqlx::query("DELETE FROM config_schemas WHERE tenant = $1 AND ns = $2")
                .bind(tenant)
                .bind(ns)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            if n > 0 {
                append_change!(tx, tenant, TOPIC_SCHEMA, ns, now).await?;
            }
            tx.commit().await?;
            Ok::<u64, sqlx::Error>(n)
        })?;
        self.woke();
        Ok(n > 0)
    }
}
