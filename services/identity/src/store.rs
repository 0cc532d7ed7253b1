//! Storage of the identity service behind one trait, [`IdentityStore`], and its SQL
//! implementation over [`capstan_db::Db`] (each query written once, run on Postgres or SQLite).
//! The conformance suite in the workspace `tests/` runs it on both backends.
//!
//! CA writes append a change-feed row (`identity.ca`, key: the CA id) in their transaction, so
//! every server reloads its CAs; entry writes append `identity.entry` (key: the principal).

use std::sync::Arc;

use async_trait::async_trait;
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use capstan_core::clock::UnixTime;
use capstan_core::ids::{PrincipalId, TenantId};
use capstan_db::{on_pool, write_tx, Db, DbError, Feed};

use crate::model::{CaRecord, Entry, JoinToken, SvidRecord};

/// Feed topic of CA changes (tenant `default`: CAs belong to the deployment).
pub const TOPIC_CA: &str = "identity.ca";
/// Feed topic of registration entries.
pub const TOPIC_ENTRY: &str = "identity.entry";

/// Everything the identity service stores.
#[async_trait]
pub trait IdentityStore: Send + Sync {
    /// Every CA generation, oldest first.
    async fn list_cas(&self) -> Result<Vec<CaRecord>, DbError>;
    /// Stores a new CA; [`DbError::Conflict`] if its generation exists (another server made it).
    async fn insert_ca(&self, ca: &CaRecord, now: UnixTime) -> Result<(), DbError>;
    /// Moves the activation of a CA still prepared at `now` (untainted, not yet active) to
    /// `at`; false if there is no such CA.
    async fn activate_ca(&self, id: &str, at: UnixTime, now: UnixTime) -> Result<bool, DbError>;
    /// Marks a CA tainted at `at` (once: a second taint keeps the first time); false if none.
    async fn taint_ca(&self, id: &str, at: UnixTime) -> Result<bool, DbError>;

    /// Creates an entry; [`DbError::Conflict`] if the principal has one or the path is taken.
    async fn create_entry(&self, e: &Entry) -> Result<(), DbError>;
    /// Replaces an entry; false if none. [`DbError::Conflict`] if the path is taken.
    async fn update_entry(&self, e: &Entry) -> Result<bool, DbError>;
    /// A principal's entry.
    async fn get_entry(
        &self,
        tenant: &TenantId,
        principal: &PrincipalId,
    ) -> Result<Option<Entry>, DbError>;
    /// The tenant's entries, by principal.
    async fn list_entries(&self, tenant: &TenantId) -> Result<Vec<Entry>, DbError>;
    /// Deletes a principal's entry; false if none.
    async fn delete_entry(
        &self,
        tenant: &TenantId,
        principal: &PrincipalId,
        now: UnixTime,
    ) -> Result<bool, DbError>;
    /// The entry whose path is `path` (its SPIFFE ID's path under the tenant).
    async fn entry_by_path(&self, tenant: &TenantId, path: &str) -> Result<Option<Entry>, DbError>;
    /// The record of the certificate with this serial.
    async fn get_svid(&self, serial: &str) -> Result<Option<SvidRecord>, DbError>;
    /// Records issued certificates (one statement for the batch).
    async fn record_svids(&self, rs: &[SvidRecord]) -> Result<(), DbError>;
    /// The newest records of a tenant (of one principal if given), newest first.
    async fn list_svids(
        &self,
        tenant: &TenantId,
        principal: Option<&PrincipalId>,
        limit: i64,
    ) -> Result<Vec<SvidRecord>, DbError>;
    /// Drops records of certificates that expired before `before`; how many.
    async fn prune_svids(&self, before: UnixTime) -> Result<u64, DbError>;

    /// Stores a join token (its hash).
    async fn insert_join_token(&self, t: &JoinToken) -> Result<(), DbError>;
    /// Uses a join token: atomically marks it used if it exists, is unused and unexpired, and
    /// returns it; `None` otherwise (so two concurrent uses cannot both succeed).
    async fn use_join_token(
        &self,
        hash: &[u8],
        now: UnixTime,
    ) -> Result<Option<JoinToken>, DbError>;
    /// A join token that can still be used (exists, unused, unexpired), without using it.
    async fn peek_join_token(
        &self,
        hash: &[u8],
        now: UnixTime,
    ) -> Result<Option<JoinToken>, DbError>;
    /// Whether `principal` exists in `tenant`.
    async fn principal_exists(
        &self,
        tenant: &TenantId,
        principal: &PrincipalId,
    ) -> Result<bool, DbError>;
    /// Records the serial a used join token yielded.
    async fn set_join_token_serial(&self, hash: &[u8], serial: &str) -> Result<(), DbError>;
    /// Drops join tokens that expired before `before`; how many.
    async fn prune_join_tokens(&self, before: UnixTime) -> Result<u64, DbError>;
}

/// [`IdentityStore`] over the database.
pub struct SqlIdentityStore {
    db: Db,
    feed: Option<Arc<Feed>>,
}

impl SqlIdentityStore {
    /// Wraps a migrated database.
    pub fn new(db: Db) -> Self {
        SqlIdentityStore { db, feed: None }
    }

    /// Wakes `feed` after every committed write that appended to it.
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

fn corrupt(what: &str) -> DbError {
    DbError::Corrupt(what.to_owned())
}

const CA_COLUMNS: &str = "id, generation, origin, key_type, cert_der, intermediates, root_der, \
    key_sealed, jwt_kid, jwt_public, jwt_key_sealed, not_before, not_after, created_at, \
    activates_at, tainted_at";

#[derive(sqlx::FromRow)]
struct CaRow {
    id: String,
    generation: i64,
    origin: String,
    key_type: String,
    cert_der: Vec<u8>,
    intermediates: String,
    root_der: Vec<u8>,
    key_sealed: Vec<u8>,
    jwt_kid: String,
    jwt_public: String,
    jwt_key_sealed: Vec<u8>,
    not_before: i64,
    not_after: i64,
    created_at: i64,
    activates_at: i64,
    tainted_at: Option<i64>,
}

impl CaRow {
    fn into_record(self) -> Result<CaRecord, DbError> {
        let intermediates: Vec<String> =
            serde_json::from_str(&self.intermediates).map_err(|_| corrupt("intermediates"))?;
        Ok(CaRecord {
            id: self.id,
            generation: self.generation,
            origin: self.origin,
            key_type: self.key_type,
            cert_der: self.cert_der,
            intermediates_der: intermediates
                .iter()
                .map(|b| STANDARD.decode(b))
                .collect::<Result<_, _>>()
                .map_err(|_| corrupt("intermediates"))?,
            root_der: self.root_der,
            key_sealed: self.key_sealed,
            jwt_kid: self.jwt_kid,
            jwt_public: serde_json::from_str(&self.jwt_public).map_err(|_| corrupt("jwt key"))?,
            jwt_key_sealed: self.jwt_key_sealed,
            not_before: self.not_before,
            not_after: self.not_after,
            created_at: self.created_at,
            activates_at: self.activates_at,
            tainted_at: self.tainted_at,
        })
    }
}

type EntryRow = (
    String,
    String,
    Option<String>,
    String,
    Option<i64>,
    i64,
    i64,
);

const ENTRY_COLUMNS: &str =
    "tenant, principal, spiffe_path, dns_names, ttl_seconds, created_at, updated_at";

fn entry_from_row(r: EntryRow) -> Result<Entry, DbError> {
    Ok(Entry {
        tenant: TenantId::parse(&r.0).map_err(|_| corrupt("tenant"))?,
        principal: PrincipalId::parse(&r.1).map_err(|_| corrupt("principal"))?,
        spiffe_path: r.2,
        dns_names: serde_json::from_str(&r.3).map_err(|_| corrupt("dns names"))?,
        ttl_seconds: r.4,
        created_at: r.5,
        updated_at: r.6,
    })
}

type SvidRow = (String, String, String, String, String, String, i64, i64);

fn svid_from_row(r: SvidRow) -> Result<SvidRecord, DbError> {
    Ok(SvidRecord {
        serial: r.0,
        tenant: TenantId::parse(&r.1).map_err(|_| corrupt("tenant"))?,
        principal: PrincipalId::parse(&r.2).map_err(|_| corrupt("principal"))?,
        spiffe_id: r.3,
        ca_id: r.4,
        via: r.5,
        issued_at: r.6,
        not_after: r.7,
    })
}

type JoinRow = (
    Vec<u8>,
    String,
    String,
    i64,
    i64,
    Option<i64>,
    Option<String>,
);

fn join_from_row(r: JoinRow) -> Result<JoinToken, DbError> {
    Ok(JoinToken {
        hash: r.0,
        tenant: TenantId::parse(&r.1).map_err(|_| corrupt("tenant"))?,
        principal: PrincipalId::parse(&r.2).map_err(|_| corrupt("principal"))?,
        created_at: r.3,
        expires_at: r.4,
        used: r.5.map(|at| (at, r.6.unwrap_or_default())),
    })
}

const SYSTEM: &str = capstan_core::ids::DEFAULT_TENANT;

#[async_trait]
impl IdentityStore for SqlIdentityStore {
    async fn list_cas(&self) -> Result<Vec<CaRecord>, DbError> {
        let sql = format!("SELECT {CA_COLUMNS} FROM identity_cas ORDER BY generation");
        let rows: Vec<CaRow> = on_pool!(&self.db, |p| sqlx::query_as(&sql).fetch_all(p).await)?;
        rows.into_iter().map(CaRow::into_record).collect()
    }

    async fn insert_ca(&self, ca: &CaRecord, now: UnixTime) -> Result<(), DbError> {
        let intermediates = serde_json::to_string(
            &ca.intermediates_der
                .iter()
                .map(|d| STANDARD.encode(d))
                .collect::<Vec<_>>(),
        )
        .map_err(|_| corrupt("intermediates"))?;
        let jwt_public = serde_json::to_string(&ca.jwt_public).map_err(|_| corrupt("jwk"))?;
        let sql = format!(
            "INSERT INTO identity_cas ({CA_COLUMNS}) VALUES \
             ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)"
        );
        write_tx!(self, SYSTEM, TOPIC_CA, ca.id.as_str(), now, |tx| {
            sqlx::query(&sql)
                .bind(&ca.id)
                .bind(ca.generation)
                .bind(&ca.origin)
                .bind(&ca.key_type)
                .bind(&ca.cert_der)
                .bind(&intermediates)
                .bind(&ca.root_der)
                .bind(&ca.key_sealed)
                .bind(&ca.jwt_kid)
                .bind(&jwt_public)
                .bind(&ca.jwt_key_sealed)
                .bind(ca.not_before)
                .bind(ca.not_after)
                .bind(ca.created_at)
                .bind(ca.activates_at)
                .bind(ca.tainted_at)
                .execute(&mut *tx)
                .await?
                .rows_affected()
        });
        Ok(())
    }

    async fn activate_ca(&self, id: &str, at: UnixTime, now: UnixTime) -> Result<bool, DbError> {
        let n = write_tx!(self, SYSTEM, TOPIC_CA, id, now, |tx| {
            sqlx::query(
                "UPDATE identity_cas SET activates_at = $2 \
                 WHERE id = $1 AND tainted_at IS NULL AND activates_at > $3",
            )
            .bind(id)
            .bind(at)
            .bind(now)
            .execute(&mut *tx)
            .await?
            .rows_affected()
        });
        Ok(n == 1)
    }

    async fn taint_ca(&self, id: &str, at: UnixTime) -> Result<bool, DbError> {
        let n = write_tx!(self, SYSTEM, TOPIC_CA, id, at, |tx| {
            sqlx::query(
                "UPDATE identity_cas SET tainted_at = COALESCE(tainted_at, $2) WHERE id = $1",
            )
            .bind(id)
            .bind(at)
            .execute(&mut *tx)
            .await?
            .rows_affected()
        });
        Ok(n == 1)
    }

    async fn create_entry(&self, e: &Entry) -> Result<(), DbError> {
        let dns = serde_json::to_string(&e.dns_names).map_err(|_| corrupt("dns"))?;
        let sql = format!(
            "INSERT INTO identity_entries ({ENTRY_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7)"
        );
        write_tx!(
            self,
            e.tenant.as_str(),
            TOPIC_ENTRY,
            e.principal.as_str(),
            e.updated_at,
            |tx| {
                sqlx::query(&sql)
                    .bind(e.tenant.as_str())
                    .bind(e.principal.as_str())
                    .bind(&e.spiffe_path)
                    .bind(&dns)
                    .bind(e.ttl_seconds)
                    .bind(e.created_at)
                    .bind(e.updated_at)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected()
            }
        );
        Ok(())
    }

    async fn update_entry(&self, e: &Entry) -> Result<bool, DbError> {
        let dns = serde_json::to_string(&e.dns_names).map_err(|_| corrupt("dns"))?;
        let n = write_tx!(
            self,
            e.tenant.as_str(),
            TOPIC_ENTRY,
            e.principal.as_str(),
            e.updated_at,
            |tx| {
                sqlx::query(
                    "UPDATE identity_entries SET spiffe_path = $3, dns_names = $4, \
                     ttl_seconds = $5, updated_at = $6 WHERE tenant = $1 AND principal = $2",
                )
                .bind(e.tenant.as_str())
                .bind(e.principal.as_str())
                .bind(&e.spiffe_path)
                .bind(&dns)
                .bind(e.ttl_seconds)
                .bind(e.updated_at)
                .execute(&mut *tx)
                .await?
                .rows_affected()
            }
        );
        Ok(n == 1)
    }

    async fn get_entry(
        &self,
        tenant: &TenantId,
        principal: &PrincipalId,
    ) -> Result<Option<Entry>, DbError> {
        let sql = format!(
            "SELECT {ENTRY_COLUMNS} FROM identity_entries WHERE tenant = $1 AND principal = $2"
        );
        let row: Option<EntryRow> = on_pool!(&self.db, |p| {
            sqlx::query_as(&sql)
                .bind(tenant.as_str())
                .bind(principal.as_str())
                .fetch_optional(p)
                .await
        })?;
        row.map(entry_from_row).transpose()
    }

    async fn list_entries(&self, tenant: &TenantId) -> Result<Vec<Entry>, DbError> {
        let sql = format!(
            "SELECT {ENTRY_COLUMNS} FROM identity_entries WHERE tenant = $1 ORDER BY principal"
        );
        let rows: Vec<EntryRow> = on_pool!(&self.db, |p| {
            sqlx::query_as(&sql)
                .bind(tenant.as_str())
                .fetch_all(p)
                .await
        })?;
        rows.into_iter().map(entry_from_row).collect()
    }

    async fn delete_entry(
        &self,
        tenant: &TenantId,
        principal: &PrincipalId,
        now: UnixTime,
    ) -> Result<bool, DbError> {
        let n = write_tx!(
            self,
            tenant.as_str(),
            TOPIC_ENTRY,
            principal.as_str(),
            now,
            |tx| {
                sqlx::query("DELETE FROM identity_entries WHERE tenant = $1 AND principal = $2")
                    .bind(tenant.as_str())
                    .bind(principal.as_str())
                    .execute(&mut *tx)
                    .await?
                    .rows_affected()
            }
        );
        Ok(n == 1)
    }

    async fn entry_by_path(&self, tenant: &TenantId, path: &str) -> Result<Option<Entry>, DbError> {
        let sql = format!(
            "SELECT {ENTRY_COLUMNS} FROM identity_entries WHERE tenant = $1 AND spiffe_path = $2"
        );
        let row: Option<EntryRow> = on_pool!(&self.db, |p| {
            sqlx::query_as(&sql)
                .bind(tenant.as_str())
                .bind(path)
                .fetch_optional(p)
                .await
        })?;
        row.map(entry_from_row).transpose()
    }

    async fn record_svids(&self, rs: &[SvidRecord]) -> Result<(), DbError> {
        if rs.is_empty() {
            return Ok(());
        }
        match &self.db {
            // Eight arrays, one statement: the cheapest batch insert to parse and plan.
            Db::Postgres(p) => {
                let col = |f: fn(&SvidRecord) -> String| rs.iter().map(f).collect::<Vec<_>>();
                sqlx::query(
                    "INSERT INTO identity_svids (serial, tenant, principal, spiffe_id, ca_id, via, \
                     issued_at, not_after) SELECT * FROM UNNEST($1::text[], $2::text[], \
                     $3::text[], $4::text[], $5::text[], $6::text[], $7::bigint[], $8::bigint[])",
                )
                .bind(col(|r| r.serial.clone()))
                .bind(col(|r| r.tenant.to_string()))
                .bind(col(|r| r.principal.to_string()))
                .bind(col(|r| r.spiffe_id.clone()))
                .bind(col(|r| r.ca_id.clone()))
                .bind(col(|r| r.via.clone()))
                .bind(rs.iter().map(|r| r.issued_at).collect::<Vec<_>>())
                .bind(rs.iter().map(|r| r.not_after).collect::<Vec<_>>())
                .execute(p)
                .await?;
            }
            // `($1, …, $8), ($9, …, $16), …`.
            Db::Sqlite(p) => {
                let mut sql = String::from(
                    "INSERT INTO identity_svids (serial, tenant, principal, spiffe_id, ca_id, \
                     via, issued_at, not_after) VALUES ",
                );
                for i in 0..rs.len() {
                    let b = i * 8;
                    if i > 0 {
                        sql.push_str(", ");
                    }
                    sql.push_str(&format!(
                        "(${}, ${}, ${}, ${}, ${}, ${}, ${}, ${})",
                        b + 1,
                        b + 2,
                        b + 3,
                        b + 4,
                        b + 5,
                        b + 6,
                        b + 7,
                        b + 8
                    ));
                }
                let mut q = sqlx::query(&sql);
                for r in rs {
                    q = q
                        .bind(&r.serial)
                        .bind(r.tenant.as_str())
                        .bind(r.principal.as_str())
                        .bind(&r.spiffe_id)
                        .bind(&r.ca_id)
                        .bind(&r.via)
                        .bind(r.issued_at)
                        .bind(r.not_after);
                }
                q.execute(p).await?;
            }
        }
        Ok(())
    }

    async fn get_svid(&self, serial: &str) -> Result<Option<SvidRecord>, DbError> {
        let row: Option<SvidRow> = on_pool!(&self.db, |p| {
            sqlx::query_as(
                "SELECT serial, tenant, principal, spiffe_id, ca_id, via, issued_at, not_after \
                 FROM identity_svids WHERE serial = $1",
            )
            .bind(serial)
            .fetch_optional(p)
            .await
        })?;
        row.map(svid_from_row).transpose()
    }

    async fn list_svids(
        &self,
        tenant: &TenantId,
        principal: Option<&PrincipalId>,
        limit: i64,
    ) -> Result<Vec<SvidRecord>, DbError> {
        let rows: Vec<SvidRow> = on_pool!(&self.db, |p| {
            sqlx::query_as(
                "SELECT serial, tenant, principal, spiffe_id, ca_id, via, issued_at, not_after \
                 FROM identity_svids WHERE tenant = $1 AND ($2 IS NULL OR principal = $2) \
                 ORDER BY issued_at DESC, serial LIMIT $3",
            )
            .bind(tenant.as_str())
            .bind(principal.map(|p| p.as_str()))
            .bind(limit)
            .fetch_all(p)
            .await
        })?;
        rows.into_iter().map(svid_from_row).collect()
    }

    async fn prune_svids(&self, before: UnixTime) -> Result<u64, DbError> {
        Ok(on_pool!(&self.db, |p| {
            sqlx::query("DELETE FROM identity_svids WHERE not_after < $1")
                .bind(before)
                .execute(p)
                .await
                .map(|r| r.rows_affected())
        })?)
    }

    async fn insert_join_token(&self, t: &JoinToken) -> Result<(), DbError> {
        on_pool!(&self.db, |p| {
            sqlx::query(
                "INSERT INTO identity_join_tokens (hash, tenant, principal, created_at, expires_at) \
                 VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(&t.hash)
            .bind(t.tenant.as_str())
            .bind(t.principal.as_str())
            .bind(t.created_at)
            .bind(t.expires_at)
            .execute(p)
            .await
            .map(|r| r.rows_affected())
        })?;
        Ok(())
    }

    async fn use_join_token(
        &self,
        hash: &[u8],
        now: UnixTime,
    ) -> Result<Option<JoinToken>, DbError> {
        let row: Option<JoinRow> = on_pool!(&self.db, |p| {
            sqlx::query_as(
                "UPDATE identity_join_tokens SET used_at = $2 \
                 WHERE hash = $1 AND used_at IS NULL AND expires_at > $2 \
                 RETURNING hash, tenant, principal, created_at, expires_at, used_at, used_serial",
            )
            .bind(hash)
            .bind(now)
            .fetch_optional(p)
            .await
        })?;
        row.map(join_from_row).transpose()
    }

    async fn peek_join_token(
        &self,
        hash: &[u8],
        now: UnixTime,
    ) -> Result<Option<JoinToken>, DbError> {
        let row: Option<JoinRow> = on_pool!(&self.db, |p| {
            sqlx::query_as(
                "SELECT hash, tenant, principal, created_at, expires_at, used_at, used_serial \
                 FROM identity_join_tokens WHERE hash = $1 AND used_at IS NULL AND expires_at > $2",
            )
            .bind(hash)
            .bind(now)
            .fetch_optional(p)
            .await
        })?;
        row.map(join_from_row).transpose()
    }

    async fn principal_exists(
        &self,
        tenant: &TenantId,
        principal: &PrincipalId,
    ) -> Result<bool, DbError> {
        let row: Option<(String,)> = on_pool!(&self.db, |p| {
            sqlx::query_as("SELECT id FROM core_principals WHERE tenant = $1 AND id = $2")
                .bind(tenant.as_str())
                .bind(principal.as_str())
                .fetch_optional(p)
                .await
        })?;
        Ok(row.is_some())
    }
    async fn set_join_token_serial(&self, hash: &[u8], serial: &str) -> Result<(), DbError> {
        on_pool!(&self.db, |p| {
            sqlx::query("UPDATE identity_join_tokens SET used_serial = $2 WHERE hash = $1")
                .bind(hash)
                .bind(serial)
                .execute(p)
                .await
                .map(|r| r.rows_affected())
        })?;
        Ok(())
    }

    async fn prune_join_tokens(&self, before: UnixTime) -> Result<u64, DbError> {
        Ok(on_pool!(&self.db, |p| {
            sqlx::query("DELETE FROM identity_join_tokens WHERE expires_at < $1")
                .bind(before)
                .execute(p)
                .await
                .map(|r| r.rows_affected())
        })?)
    }
}
