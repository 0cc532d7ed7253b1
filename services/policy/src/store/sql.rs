//! [`SqlPolicyStore`]: the policy store traits over Postgres and SQLite, each query written once
//! (`on_pool!`), each write one transaction with its revision bump and feed row.

use async_trait::async_trait;
use std::sync::Arc;

use capstan_db::{on_pool, Db, DbError, Feed};

use super::{
    AttachmentStore, GroupStore, Keyed, KeyedDocuments, PolicyVersions, SnapshotSource,
    StoredVersion, TenantRows, KEEP_VERSIONS,
};
use crate::service::{TOPIC_POLICY, TOPIC_POLICY_DELETED};

/// The policy service's SQL store.
#[derive(Clone)]
pub struct SqlPolicyStore {
    pub(super) db: Db,
    /// The server's feed, woken after each committed write (in-process wake-up; other servers
    /// are woken by NOTIFY).
    feed: Option<Arc<Feed>>,
}

/// Runs `$body` in one transaction as `tx`. The body evaluates to `(result, changed)`; when
/// something changed, the tenant's revision is bumped and the feed rows of `$topics` (each a
/// `(topic, key)`) are appended in the same transaction, so a committed change is never missing
/// from the feed (the outbox).
macro_rules! write_tx {
    ($store:expr, $tenant:expr, $now:expr, $topics:expr, |$tx:ident| $body:expr) => {{
        let done = on_pool!(&$store.db, |p| {
            let mut $tx = capstan_db::BeginWrite::begin_write(p).await?;
            let (out, changed) = $body;
            if changed {
                sqlx::query(BUMP_REVISION)
                    .bind($tenant)
                    .execute(&mut *$tx)
                    .await?;
                for (topic, key) in $topics {
                    capstan_db::append_change!($tx, $tenant, topic, key, $now).await?;
                }
            }
            $tx.commit().await?;
            Ok::<_, sqlx::Error>(out)
        });
        if done.is_ok() {
            $store.woke();
        }
        done
    }};
}

/// One statement as a policy write (see [`write_tx!`]); evaluates to whether it changed a row.
macro_rules! write_one {
    ($store:expr, $tenant:expr, $now:expr, $query:expr) => {
        write_tx!($store, $tenant, $now, policy_changed($tenant), |tx| {
            let n = $query.execute(&mut *tx).await?.rows_affected();
            (n > 0, n > 0)
        })
    };
}

const BUMP_REVISION: &str = "INSERT INTO policy_revisions (tenant, revision) VALUES ($1, 1) \
     ON CONFLICT (tenant) DO UPDATE SET revision = policy_revisions.revision + 1 \
     RETURNING revision";

/// The feed row every policy change appends: the tenant's snapshot is stale.
fn policy_changed(tenant: &str) -> [(&'static str, &str); 1] {
    [(TOPIC_POLICY, tenant)]
}

impl SqlPolicyStore {
    /// Wraps a migrated database.
    pub fn new(db: Db) -> Self {
        SqlPolicyStore { db, feed: None }
    }

    /// Wakes `feed` after every committed write.
    pub fn with_feed(mut self, feed: Arc<Feed>) -> Self {
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
impl PolicyVersions for SqlPolicyStore {
    /// Stores a new version of a managed policy, makes it the default and keeps the newest
    /// [`KEEP_VERSIONS`]. Returns the version.
    async fn put_version(
        &self,
        tenant: &str,
        name: &str,
        document: &str,
        now: i64,
    ) -> Result<i64, DbError> {
        let postgres = matches!(self.db, Db::Postgres(_));
        let version = write_tx!(self, tenant, now, policy_changed(tenant), |tx| {
            if postgres {
                // Writers of one policy take turns, so concurrent PUTs each get the next version
                // instead of colliding on MAX + 1 (a unique violation).
                sqlx::query(
                    "SELECT pg_advisory_xact_lock(hashtext('policy_versions'), hashtext($1 || '/' || $2))",
                )
                .bind(tenant)
                .bind(name)
                .execute(&mut *tx)
                .await?;
            }
            // On SQLite the first statement writes, so the transaction takes the write lock at
            // once (one that reads first cannot be upgraded after another connection committed).
            let (version,): (i64,) = sqlx::query_as(
                "INSERT INTO policy_versions (tenant, name, version, document, created_at) \
                 SELECT $1, $2, COALESCE(MAX(version), 0) + 1, $3, $4 FROM policy_versions \
                 WHERE tenant = $1 AND name = $2 RETURNING version",
            )
            .bind(tenant)
            .bind(name)
            .bind(document)
            .bind(now)
            .fetch_one(&mut *tx)
            .await?;
            sqlx::query(
                "INSERT INTO policy_defaults (tenant, name, version) VALUES ($1, $2, $3) \
                 ON CONFLICT (tenant, name) DO UPDATE SET version = excluded.version",
            )
            .bind(tenant)
            .bind(name)
            .bind(version)
            .execute(&mut *tx)
            .await?;
            sqlx::query(
                "DELETE FROM policy_versions WHERE tenant = $1 AND name = $2 AND version <= $3",
            )
            .bind(tenant)
            .bind(name)
            .bind(version - KEEP_VERSIONS)
            .execute(&mut *tx)
            .await?;
            (version, true)
        })?;
        Ok(version)
    }

    /// A version (the default one when `version` is `None`).
    async fn get_version(
        &self,
        tenant: &str,
        name: &str,
        version: Option<i64>,
    ) -> Result<Option<StoredVersion>, DbError> {
        let row: Option<(i64, String, i64, i64)> = on_pool!(&self.db, |p| {
            sqlx::query_as(
                "SELECT v.version, v.document, v.created_at, d.version FROM policy_versions v \
                 JOIN policy_defaults d ON d.tenant = v.tenant AND d.name = v.name \
                 WHERE v.tenant = $1 AND v.name = $2 AND v.version = COALESCE($3, d.version)",
            )
            .bind(tenant)
            .bind(name)
            .bind(version)
            .fetch_optional(p)
            .await
        })?;
        Ok(
            row.map(|(version, document, created_at, default)| StoredVersion {
                version,
                document,
                is_default: version == default,
                created_at,
            }),
        )
    }

    /// Every managed policy: (name, default version, stored versions).
    async fn list_policies(&self, tenant: &str) -> Result<Vec<(String, i64, Vec<i64>)>, DbError> {
        let rows: Vec<(String, i64, i64)> = on_pool!(&self.db, |p| {
            sqlx::query_as(
                "SELECT v.name, d.version, v.version FROM policy_versions v \
                 JOIN policy_defaults d ON d.tenant = v.tenant AND d.name = v.name \
                 WHERE v.tenant = $1 ORDER BY v.name, v.version",
            )
            .bind(tenant)
            .fetch_all(p)
            .await
        })?;
        let mut out: Vec<(String, i64, Vec<i64>)> = Vec::new();
        for (name, default, version) in rows {
            match out.last_mut() {
                Some(last) if last.0 == name => last.2.push(version),
                _ => out.push((name, default, vec![version])),
            }
        }
        Ok(out)
    }

    /// The stored versions of one managed policy, oldest first.
    async fn list_versions(&self, tenant: &str, name: &str) -> Result<Vec<StoredVersion>, DbError> {
        let rows: Vec<(i64, String, i64, i64)> = on_pool!(&self.db, |p| {
            sqlx::query_as(
                "SELECT v.version, v.document, v.created_at, d.version FROM policy_versions v \
                 JOIN policy_defaults d ON d.tenant = v.tenant AND d.name = v.name \
                 WHERE v.tenant = $1 AND v.name = $2 ORDER BY v.version",
            )
            .bind(tenant)
            .bind(name)
            .fetch_all(p)
            .await
        })?;
        Ok(rows
            .into_iter()
            .map(|(version, document, created_at, default)| StoredVersion {
                version,
                document,
                is_default: version == default,
                created_at,
            })
            .collect())
    }

    /// Deletes a managed policy with all its versions.
    async fn delete_policy(&self, tenant: &str, name: &str, now: i64) -> Result<bool, DbError> {
        let topics = [(TOPIC_POLICY, tenant), (TOPIC_POLICY_DELETED, name)];
        let n = write_tx!(self, tenant, now, topics, |tx| {
            sqlx::query("DELETE FROM policy_versions WHERE tenant = $1 AND name = $2")
                .bind(tenant)
                .bind(name)
                .execute(&mut *tx)
                .await?;
            let n = sqlx::query("DELETE FROM policy_defaults WHERE tenant = $1 AND name = $2")
                .bind(tenant)
                .bind(name)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            (n, n > 0)
        })?;
        Ok(n > 0)
    }

    /// How many principals and groups use a policy (attachments and boundaries).
    async fn uses(&self, tenant: &str, policy: &str) -> Result<i64, DbError> {
        let (n,): (i64,) = on_pool!(&self.db, |p| {
            sqlx::query_as(
                "SELECT (SELECT COUNT(*) FROM policy_attachments WHERE tenant = $1 AND policy = $2) \
                 + (SELECT COUNT(*) FROM policy_boundaries WHERE tenant = $1 AND policy = $2)",
            )
            .bind(tenant)
            .bind(policy)
            .fetch_one(p)
            .await
        })?;
        Ok(n)
    }

    /// The documents of every default version: (name, version, document).
    async fn default_documents(&self, tenant: &str) -> Result<Vec<(String, i64, String)>, DbError> {
        Ok(on_pool!(&self.db, |p| {
            sqlx::query_as(
                "SELECT v.name, v.version, v.document FROM policy_versions v JOIN policy_defaults d \
                 ON d.tenant = v.tenant AND d.name = v.name AND d.version = v.version WHERE v.tenant = $1",
            )
            .bind(tenant)
            .fetch_all(p)
            .await
        })?)
    }
}

#[async_trait]
impl GroupStore for SqlPolicyStore {
    /// Creates a group (idempotent); true when it was new.
    async fn put_group(&self, tenant: &str, name: &str, now: i64) -> Result<bool, DbError> {
        Ok(write_one!(self, tenant, now, sqlx::query("INSERT INTO policy_groups (tenant, name, created_at) VALUES ($1, $2, $3) ON CONFLICT (tenant, name) DO NOTHING")
                .bind(tenant)
                .bind(name)
                .bind(now))?)
    }

    /// Deletes a group, its memberships (as a group and as a member) and its attachments.
    async fn delete_group(&self, tenant: &str, name: &str, now: i64) -> Result<bool, DbError> {
        let as_member = format!("group:{name}");
        let n = write_tx!(self, tenant, now, policy_changed(tenant), |tx| {
            sqlx::query("DELETE FROM policy_group_members WHERE tenant = $1 AND (group_name = $2 OR member = $3)")
                .bind(tenant)
                .bind(name)
                .bind(&as_member)
                .execute(&mut *tx)
                .await?;
            sqlx::query("DELETE FROM policy_attachments WHERE tenant = $1 AND target_kind = 'group' AND target = $2")
                .bind(tenant)
                .bind(name)
                .execute(&mut *tx)
                .await?;
            let n = sqlx::query("DELETE FROM policy_groups WHERE tenant = $1 AND name = $2")
                .bind(tenant)
                .bind(name)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            (n, n > 0)
        })?;
        Ok(n > 0)
    }

    /// Whether a group exists.
    async fn group_exists(&self, tenant: &str, name: &str) -> Result<bool, DbError> {
        let row: Option<(String,)> = on_pool!(&self.db, |p| {
            sqlx::query_as("SELECT name FROM policy_groups WHERE tenant = $1 AND name = $2")
                .bind(tenant)
                .bind(name)
                .fetch_optional(p)
                .await
        })?;
        Ok(row.is_some())
    }

    /// Every group with its members, by name.
    async fn list_groups(&self, tenant: &str) -> Result<Vec<(String, Vec<String>)>, DbError> {
        let rows: Vec<(String, Option<String>)> = on_pool!(&self.db, |p| {
            sqlx::query_as(
                "SELECT g.name, m.member FROM policy_groups g \
                 LEFT JOIN policy_group_members m ON m.tenant = g.tenant AND m.group_name = g.name \
                 WHERE g.tenant = $1 ORDER BY g.name, m.member",
            )
            .bind(tenant)
            .fetch_all(p)
            .await
        })?;
        let mut out: Vec<(String, Vec<String>)> = Vec::new();
        for (name, member) in rows {
            if out.last().is_none_or(|last| last.0 != name) {
                out.push((name, Vec::new()));
            }
            if let (Some(m), Some(last)) = (member, out.last_mut()) {
                last.1.push(m);
            }
        }
        Ok(out)
    }

    /// Adds a member (idempotent).
    async fn add_member(
        &self,
        tenant: &str,
        group: &str,
        member: &str,
        now: i64,
    ) -> Result<(), DbError> {
        write_one!(self, tenant, now, sqlx::query("INSERT INTO policy_group_members (tenant, group_name, member) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING")
                .bind(tenant)
                .bind(group)
                .bind(member))?;
        Ok(())
    }

    /// Removes a member; false if it was none.
    async fn remove_member(
        &self,
        tenant: &str,
        group: &str,
        member: &str,
        now: i64,
    ) -> Result<bool, DbError> {
        Ok(write_one!(self, tenant, now, sqlx::query("DELETE FROM policy_group_members WHERE tenant = $1 AND group_name = $2 AND member = $3")
                .bind(tenant)
                .bind(group)
                .bind(member))?)
    }
}

#[async_trait]
impl AttachmentStore for SqlPolicyStore {
    /// Attaches a policy to a principal or group (idempotent).
    async fn attach(
        &self,
        tenant: &str,
        kind: &str,
        target: &str,
        policy: &str,
        now: i64,
    ) -> Result<(), DbError> {
        write_one!(self, tenant, now, sqlx::query("INSERT INTO policy_attachments (tenant, target_kind, target, policy) VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING")
                .bind(tenant)
                .bind(kind)
                .bind(target)
                .bind(policy))?;
        Ok(())
    }

    /// Detaches; false if it was not attached.
    async fn detach(
        &self,
        tenant: &str,
        kind: &str,
        target: &str,
        policy: &str,
        now: i64,
    ) -> Result<bool, DbError> {
        Ok(write_one!(self, tenant, now, sqlx::query("DELETE FROM policy_attachments WHERE tenant = $1 AND target_kind = $2 AND target = $3 AND policy = $4")
                .bind(tenant)
                .bind(kind)
                .bind(target)
                .bind(policy))?)
    }

    /// Sets a principal's permissions boundary.
    async fn set_boundary(
        &self,
        tenant: &str,
        principal: &str,
        policy: &str,
        now: i64,
    ) -> Result<(), DbError> {
        write_one!(
            self,
            tenant,
            now,
            sqlx::query(
                "INSERT INTO policy_boundaries (tenant, principal, policy) VALUES ($1, $2, $3) \
                 ON CONFLICT (tenant, principal) DO UPDATE SET policy = excluded.policy",
            )
            .bind(tenant)
            .bind(principal)
            .bind(policy)
        )?;
        Ok(())
    }

    /// Removes a principal's boundary; false if it had none.
    async fn delete_boundary(
        &self,
        tenant: &str,
        principal: &str,
        now: i64,
    ) -> Result<bool, DbError> {
        Ok(write_one!(
            self,
            tenant,
            now,
            sqlx::query("DELETE FROM policy_boundaries WHERE tenant = $1 AND principal = $2",)
                .bind(tenant)
                .bind(principal)
        )?)
    }

    /// Replaces a principal's tags.
    async fn set_tags(
        &self,
        tenant: &str,
        principal: &str,
        tags: &[(String, String)],
        now: i64,
    ) -> Result<(), DbError> {
        write_tx!(self, tenant, now, policy_changed(tenant), |tx| {
            sqlx::query("DELETE FROM policy_tags WHERE tenant = $1 AND principal = $2")
                .bind(tenant)
                .bind(principal)
                .execute(&mut *tx)
                .await?;
            for (k, v) in tags {
                sqlx::query("INSERT INTO policy_tags (tenant, principal, key, value) VALUES ($1, $2, $3, $4)")
                    .bind(tenant)
                    .bind(principal)
                    .bind(k)
                    .bind(v)
                    .execute(&mut *tx)
                    .await?;
            }
            ((), true)
        })?;
        Ok(())
    }
}

#[async_trait]
impl KeyedDocuments for SqlPolicyStore {
    /// Upserts a document keyed by name in `policy_resource_policies` (`resource`) or
    /// `policy_guardrails` (`name`).
    async fn put_keyed(
        &self,
        table: Keyed,
        tenant: &str,
        key: &str,
        document: &str,
        now: i64,
    ) -> Result<(), DbError> {
        let (t, k) = table.names();
        let sql = format!(
            "INSERT INTO {t} (tenant, {k}, document, updated_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (tenant, {k}) DO UPDATE SET document = excluded.document, updated_at = excluded.updated_at"
        );
        write_tx!(self, tenant, now, policy_changed(tenant), |tx| {
            sqlx::query(&sql)
                .bind(tenant)
                .bind(key)
                .bind(document)
                .bind(now)
                .execute(&mut *tx)
                .await?;
            ((), true)
        })?;
        Ok(())
    }

    /// Reads a keyed document.
    async fn get_keyed(
        &self,
        table: Keyed,
        tenant: &str,
        key: &str,
    ) -> Result<Option<(String, i64)>, DbError> {
        let (t, k) = table.names();
        let sql = format!("SELECT document, updated_at FROM {t} WHERE tenant = $1 AND {k} = $2");
        Ok(on_pool!(&self.db, |p| {
            sqlx::query_as(&sql)
                .bind(tenant)
                .bind(key)
                .fetch_optional(p)
                .await
        })?)
    }

    /// Every keyed document of the tenant, by key.
    async fn list_keyed(
        &self,
        table: Keyed,
        tenant: &str,
    ) -> Result<Vec<(String, String, i64)>, DbError> {
        let (t, k) = table.names();
        let sql =
            format!("SELECT {k}, document, updated_at FROM {t} WHERE tenant = $1 ORDER BY {k}");
        Ok(on_pool!(&self.db, |p| {
            sqlx::query_as(&sql).bind(tenant).fetch_all(p).await
        })?)
    }

    /// Deletes a keyed document; false if there was none.
    async fn delete_keyed(
        &self,
        table: Keyed,
        tenant: &str,
        key: &str,
        now: i64,
    ) -> Result<bool, DbError> {
        let (t, k) = table.names();
        let sql = format!("DELETE FROM {t} WHERE tenant = $1 AND {k} = $2");
        Ok(write_one!(
            self,
            tenant,
            now,
            sqlx::query(&sql).bind(tenant).bind(key)
        )?)
    }
}

#[async_trait]
impl SnapshotSource for SqlPolicyStore {
    /// Everything that decides the tenant's authorizations.
    async fn load(&self, tenant: &str) -> Result<TenantRows, DbError> {
        let db = &self.db;
        let revision: Option<(i64,)> = on_pool!(db, |p| {
            sqlx::query_as("SELECT revision FROM policy_revisions WHERE tenant = $1")
                .bind(tenant)
                .fetch_optional(p)
                .await
        })?;
        // Every list is "these columns of the tenant's rows".
        macro_rules! rows {
            ($sql:literal) => {
                on_pool!(db, |p| sqlx::query_as($sql).bind(tenant).fetch_all(p).await)?
            };
        }
        let defaults = rows!("SELECT name, version FROM policy_defaults WHERE tenant = $1");
        let members =
            rows!("SELECT group_name, member FROM policy_group_members WHERE tenant = $1");
        let attachments = rows!(
            "SELECT target_kind, target, policy FROM policy_attachments WHERE tenant = $1 ORDER BY policy"
        );
        let boundaries = rows!("SELECT principal, policy FROM policy_boundaries WHERE tenant = $1");
        let tags = rows!("SELECT principal, key, value FROM policy_tags WHERE tenant = $1");
        let resource_policies = rows!(
            "SELECT resource, document FROM policy_resource_policies WHERE tenant = $1 ORDER BY resource"
        );
        let guardrails =
            rows!("SELECT name, document FROM policy_guardrails WHERE tenant = $1 ORDER BY name");
        Ok(TenantRows {
            revision: revision.map_or(0, |(r,)| r),
            defaults,
            members,
            attachments,
            boundaries,
            tags,
            resource_policies,
            guardrails,
        })
    }

    /// Increments and returns the tenant's revision.
    async fn bump_revision(&self, tenant: &str) -> Result<i64, DbError> {
        let (rev,): (i64,) = on_pool!(&self.db, |p| {
            sqlx::query_as(BUMP_REVISION)
                .bind(tenant)
                .fetch_one(p)
                .await
        })?;
        Ok(rev)
    }
}
