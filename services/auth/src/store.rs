//! Storage of the issuer's aggregates, behind one trait each.
//!
//! [`SqlStore`] implements them all over [`capstan_db::Db`]: each query is written once and runs
//! on Postgres or SQLite through `on_pool!`. The conformance suite in the workspace `tests/`
//! runs unchanged against both backends. Every query is tenant-scoped.
//!
//! Every write that other servers must see appends its change-feed row in its own transaction
//! (the outbox): `client` (key: client id), `tenant` (key: tenant id, for its keys) and
//! `revocation` (key: `<jti> <exp>`).

use async_trait::async_trait;
use capstan_core::clock::UnixTime;
use capstan_core::ids::{PrincipalId, PrincipalKind, TenantId};
use capstan_core::jwt::{Alg, Jwk};
use std::sync::Arc;

use capstan_db::{on_pool, write_tx, Db, DbError, Feed};

use crate::model::{Client, Revocation, StoredKey, Tenant};

/// Tenants.
#[async_trait]
pub trait TenantStore: Send + Sync {
    /// Creates a tenant; [`DbError::Conflict`] if it exists.
    async fn create_tenant(&self, t: &Tenant) -> Result<(), DbError>;
    /// Reads a tenant.
    async fn get_tenant(&self, id: &TenantId) -> Result<Option<Tenant>, DbError>;
    /// Every tenant, by id.
    async fn list_tenants(&self) -> Result<Vec<Tenant>, DbError>;
    /// Changes the algorithm of future signing keys.
    async fn set_signing_alg(
        &self,
        id: &TenantId,
        alg: Alg,
        now: UnixTime,
    ) -> Result<bool, DbError>;
}

/// OAuth2 clients (and their principal rows).
#[async_trait]
pub trait ClientStore: Send + Sync {
    /// Creates the principal and the client; [`DbError::Conflict`] if the id exists.
    async fn create_client(&self, c: &Client) -> Result<(), DbError>;
    /// Reads a client of a tenant.
    async fn get_client(
        &self,
        tenant: &TenantId,
        id: &PrincipalId,
    ) -> Result<Option<Client>, DbError>;
    /// The tenant's clients, oldest first.
    async fn list_clients(&self, tenant: &TenantId) -> Result<Vec<Client>, DbError>;
    /// Deletes a client and its principal; false if there was none.
    async fn delete_client(
        &self,
        tenant: &TenantId,
        id: &PrincipalId,
        now: UnixTime,
    ) -> Result<bool, DbError>;
    /// Replaces the secret hash, keeping `previous` as the grace-period secret.
    async fn set_secret(
        &self,
        tenant: &TenantId,
        id: &PrincipalId,
        secret_hash: &[u8],
        previous: Option<(&[u8], UnixTime)>,
        now: UnixTime,
    ) -> Result<bool, DbError>;
    /// Whether the tenant has at least one admin client.
    async fn has_admin(&self, tenant: &TenantId) -> Result<bool, DbError>;
}

/// Signing keys.
#[async_trait]
pub trait KeyStore: Send + Sync {
    /// Stores a new key.
    async fn insert_key(&self, k: &StoredKey) -> Result<(), DbError>;
    /// The tenant's keys.
    async fn list_keys(&self, tenant: &TenantId) -> Result<Vec<StoredKey>, DbError>;
    /// Withdraws keys (from the JWKS and from signing); returns how many existed.
    async fn delete_keys(
        &self,
        tenant: &TenantId,
        kids: &[String],
        now: UnixTime,
    ) -> Result<u64, DbError>;
}

/// Revoked tokens.
#[async_trait]
pub trait RevocationStore: Send + Sync {
    /// Records a revocation (idempotent).
    async fn revoke(
        &self,
        tenant: &TenantId,
        jti: &str,
        expires_at: UnixTime,
        now: UnixTime,
    ) -> Result<(), DbError>;
    /// Revocations with `seq > after`, oldest first.
    async fn revocations_after(&self, after: i64, limit: i64) -> Result<Vec<Revocation>, DbError>;
    /// Drops revocations of tokens that expired before `now`.
    async fn prune_revocations(&self, now: UnixTime) -> Result<u64, DbError>;
}

/// Everything the issuer stores.
pub trait AuthStore: TenantStore + ClientStore + KeyStore + RevocationStore {}

impl<T: TenantStore + ClientStore + KeyStore + RevocationStore> AuthStore for T {}

/// Feed topic of client changes (key: client id).
pub const TOPIC_CLIENT: &str = "client";
/// Feed topic of a tenant's keys or settings (key: tenant id).
pub const TOPIC_TENANT: &str = "tenant";
/// Feed topic of revocations (key: `<jti> <exp>`).
pub const TOPIC_REVOCATION: &str = "revocation";

/// The SQL implementation for Postgres and SQLite.
#[derive(Clone)]
pub struct SqlStore {
    db: Db,
    /// The server's feed, woken after each committed write that appended to it (in-process
    /// wake-up; other servers are woken by NOTIFY).
    feed: Option<Arc<Feed>>,
}

impl SqlStore {
    /// Wraps a migrated database.
    pub fn new(db: Db) -> Self {
        SqlStore { db, feed: None }
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

type TenantRow = (String, String, i64);

fn tenant_from_row((id, alg, created_at): TenantRow) -> Result<Tenant, DbError> {
    Ok(Tenant {
        id: TenantId::parse(&id).map_err(|_| corrupt("tenant id"))?,
        signing_alg: Alg::parse(&alg).map_err(|_| corrupt("tenant alg"))?,
        created_at,
    })
}

#[async_trait]
impl TenantStore for SqlStore {
    async fn create_tenant(&self, t: &Tenant) -> Result<(), DbError> {
        on_pool!(&self.db, |p| {
            sqlx::query(
                "INSERT INTO core_tenants (id, signing_alg, created_at) VALUES ($1, $2, $3)",
            )
            .bind(t.id.as_str())
            .bind(t.signing_alg.as_str())
            .bind(t.created_at)
            .execute(p)
            .await
            .map(|r| r.rows_affected())
        })?;
        Ok(())
    }

    async fn get_tenant(&self, id: &TenantId) -> Result<Option<Tenant>, DbError> {
        let row: Option<TenantRow> = on_pool!(&self.db, |p| {
            sqlx::query_as("SELECT id, signing_alg, created_at FROM core_tenants WHERE id = $1")
                .bind(id.as_str())
                .fetch_optional(p)
                .await
        })?;
        row.map(tenant_from_row).transpose()
    }

    async fn list_tenants(&self) -> Result<Vec<Tenant>, DbError> {
        let rows: Vec<TenantRow> = on_pool!(&self.db, |p| {
            sqlx::query_as("SELECT id, signing_alg, created_at FROM core_tenants ORDER BY id")
                .fetch_all(p)
                .await
        })?;
        rows.into_iter().map(tenant_from_row).collect()
    }

    async fn set_signing_alg(
        &self,
        id: &TenantId,
        alg: Alg,
        now: UnixTime,
    ) -> Result<bool, DbError> {
        let n = write_tx!(self, id.as_str(), TOPIC_TENANT, id.as_str(), now, |tx| {
            sqlx::query("UPDATE core_tenants SET signing_alg = $2 WHERE id = $1")
                .bind(id.as_str())
                .bind(alg.as_str())
                .execute(&mut *tx)
                .await?
                .rows_affected()
        });
        Ok(n == 1)
    }
}

#[derive(sqlx::FromRow)]
struct ClientRow {
    id: String,
    tenant: String,
    name: String,
    secret_hash: Vec<u8>,
    previous_secret_hash: Option<Vec<u8>>,
    previous_secret_expires_at: Option<i64>,
    scopes: String,
    audiences: String,
    token_ttl_seconds: Option<i64>,
    is_admin: bool,
    tls_client_auth_san_uri: Option<String>,
    created_at: i64,
    updated_at: i64,
}

const CLIENT_COLUMNS: &str = "id, tenant, name, secret_hash, previous_secret_hash, \
    previous_secret_expires_at, scopes, audiences, token_ttl_seconds, is_admin, \
    tls_client_auth_san_uri, created_at, updated_at";

impl ClientRow {
    fn into_client(self) -> Result<Client, DbError> {
        let list = |s: &str| serde_json::from_str::<Vec<String>>(s).map_err(|_| corrupt("list"));
        Ok(Client {
            id: PrincipalId::parse(&self.id).map_err(|_| corrupt("client id"))?,
            tenant: TenantId::parse(&self.tenant).map_err(|_| corrupt("tenant id"))?,
            name: self.name,
            secret_hash: self.secret_hash,
            previous_secret: self
                .previous_secret_hash
                .zip(self.previous_secret_expires_at),
            scopes: list(&self.scopes)?,
            audiences: list(&self.audiences)?,
            token_ttl_seconds: self.token_ttl_seconds,
            admin: self.is_admin,
            tls_client_auth_san_uri: self.tls_client_auth_san_uri,
            created_at: self.created_at,
            updated_at: self.updated_at,
        })
    }
}

fn json_list(v: &[String]) -> String {
    serde_json::Value::from(v.to_vec()).to_string()
}

#[async_trait]
impl ClientStore for SqlStore {
    async fn create_client(&self, c: &Client) -> Result<(), DbError> {
        let (prev_hash, prev_exp) = match &c.previous_secret {
            Some((h, e)) => (Some(h.clone()), Some(*e)),
            None => (None, None),
        };
        write_tx!(
            self,
            c.tenant.as_str(),
            TOPIC_CLIENT,
            c.id.as_str(),
            c.created_at,
            |tx| {
                sqlx::query("INSERT INTO core_principals (id, tenant, kind, created_at) VALUES ($1, $2, $3, $4)")
                    .bind(c.id.as_str())
                    .bind(c.tenant.as_str())
                    .bind(PrincipalKind::Service.as_str())
                    .bind(c.created_at)
                    .execute(&mut *tx)
                    .await?;
                sqlx::query(
                    "INSERT INTO auth_clients (id, tenant, name, secret_hash, previous_secret_hash, \
                     previous_secret_expires_at, scopes, audiences, token_ttl_seconds, is_admin, \
                     created_at, updated_at, tls_client_auth_san_uri) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
                )
                .bind(c.id.as_str())
                .bind(c.tenant.as_str())
                .bind(&c.name)
                .bind(&c.secret_hash)
                .bind(prev_hash)
                .bind(prev_exp)
                .bind(json_list(&c.scopes))
                .bind(json_list(&c.audiences))
                .bind(c.token_ttl_seconds)
                .bind(c.admin)
                .bind(c.created_at)
                .bind(c.updated_at)
                .bind(&c.tls_client_auth_san_uri)
                .execute(&mut *tx)
                .await?;
                1
            }
        );
        Ok(())
    }

    async fn get_client(
        &self,
        tenant: &TenantId,
        id: &PrincipalId,
    ) -> Result<Option<Client>, DbError> {
        let sql =
            format!("SELECT {CLIENT_COLUMNS} FROM auth_clients WHERE tenant = $1 AND id = $2");
        let row: Option<ClientRow> = on_pool!(&self.db, |p| {
            sqlx::query_as(&sql)
                .bind(tenant.as_str())
                .bind(id.as_str())
                .fetch_optional(p)
                .await
        })?;
        row.map(ClientRow::into_client).transpose()
    }

    async fn list_clients(&self, tenant: &TenantId) -> Result<Vec<Client>, DbError> {
        let sql = format!(
            "SELECT {CLIENT_COLUMNS} FROM auth_clients WHERE tenant = $1 ORDER BY created_at, id"
        );
        let rows: Vec<ClientRow> = on_pool!(&self.db, |p| {
            sqlx::query_as(&sql)
                .bind(tenant.as_str())
                .fetch_all(p)
                .await
        })?;
        rows.into_iter().map(ClientRow::into_client).collect()
    }

    async fn delete_client(
        &self,
        tenant: &TenantId,
        id: &PrincipalId,
        now: UnixTime,
    ) -> Result<bool, DbError> {
        // The client row goes with its principal (ON DELETE CASCADE).
        let n = write_tx!(
            self,
            tenant.as_str(),
            TOPIC_CLIENT,
            id.as_str(),
            now,
            |tx| {
                sqlx::query("DELETE FROM core_principals WHERE tenant = $1 AND id = $2")
                    .bind(tenant.as_str())
                    .bind(id.as_str())
                    .execute(&mut *tx)
                    .await?
                    .rows_affected()
            }
        );
        Ok(n == 1)
    }

    async fn set_secret(
        &self,
        tenant: &TenantId,
        id: &PrincipalId,
        secret_hash: &[u8],
        previous: Option<(&[u8], UnixTime)>,
        now: UnixTime,
    ) -> Result<bool, DbError> {
        let (prev_hash, prev_exp) = match previous {
            Some((h, e)) => (Some(h.to_vec()), Some(e)),
            None => (None, None),
        };
        let n = write_tx!(
            self,
            tenant.as_str(),
            TOPIC_CLIENT,
            id.as_str(),
            now,
            |tx| {
                sqlx::query(
                    "UPDATE auth_clients SET secret_hash = $3, previous_secret_hash = $4, \
                 previous_secret_expires_at = $5, updated_at = $6 WHERE tenant = $1 AND id = $2",
                )
                .bind(tenant.as_str())
                .bind(id.as_str())
                .bind(secret_hash)
                .bind(prev_hash)
                .bind(prev_exp)
                .bind(now)
                .execute(&mut *tx)
                .await?
                .rows_affected()
            }
        );
        Ok(n == 1)
    }

    async fn has_admin(&self, tenant: &TenantId) -> Result<bool, DbError> {
        let row: Option<(String,)> = on_pool!(&self.db, |p| {
            sqlx::query_as("SELECT id FROM auth_clients WHERE tenant = $1 AND is_admin LIMIT 1")
                .bind(tenant.as_str())
                .fetch_optional(p)
                .await
        })?;
        Ok(row.is_some())
    }
}

type KeyRow = (String, String, String, String, Vec<u8>, i64, i64);

#[async_trait]
impl KeyStore for SqlStore {
    async fn insert_key(&self, k: &StoredKey) -> Result<(), DbError> {
        let jwk = serde_json::to_string(&k.public_jwk).map_err(|_| corrupt("jwk"))?;
        let tenant = k.tenant.as_str();
        write_tx!(self, tenant, TOPIC_TENANT, tenant, k.created_at, |tx| {
            sqlx::query(
                "INSERT INTO auth_signing_keys (tenant, kid, alg, public_jwk, private_key_sealed, \
                 created_at, activates_at) VALUES ($1, $2, $3, $4, $5, $6, $7)",
            )
            .bind(tenant)
            .bind(&k.kid)
            .bind(k.alg.as_str())
            .bind(&jwk)
            .bind(&k.private_key_sealed)
            .bind(k.created_at)
            .bind(k.activates_at)
            .execute(&mut *tx)
            .await?
            .rows_affected()
        });
        Ok(())
    }

    async fn delete_keys(
        &self,
        tenant: &TenantId,
        kids: &[String],
        now: UnixTime,
    ) -> Result<u64, DbError> {
        Ok(write_tx!(
            self,
            tenant.as_str(),
            TOPIC_TENANT,
            tenant.as_str(),
            now,
            |tx| {
                let mut n = 0;
                for kid in kids {
                    n +=
                        sqlx::query("DELETE FROM auth_signing_keys WHERE tenant = $1 AND kid = $2")
                            .bind(tenant.as_str())
                            .bind(kid)
                            .execute(&mut *tx)
                            .await?
                            .rows_affected();
                }
                n
            }
        ))
    }

    async fn list_keys(&self, tenant: &TenantId) -> Result<Vec<StoredKey>, DbError> {
        let rows: Vec<KeyRow> = on_pool!(&self.db, |p| {
            sqlx::query_as(
                "SELECT tenant, kid, alg, public_jwk, private_key_sealed, created_at, activates_at \
                 FROM auth_signing_keys WHERE tenant = $1 ORDER BY activates_at, created_at",
            )
            .bind(tenant.as_str())
            .fetch_all(p)
            .await
        })?;
        rows.into_iter()
            .map(
                |(tenant, kid, alg, jwk, sealed, created_at, activates_at)| {
                    Ok(StoredKey {
                        tenant: TenantId::parse(&tenant).map_err(|_| corrupt("tenant id"))?,
                        kid,
                        alg: Alg::parse(&alg).map_err(|_| corrupt("key alg"))?,
                        public_jwk: serde_json::from_str::<Jwk>(&jwk)
                            .map_err(|_| corrupt("jwk"))?,
                        private_key_sealed: sealed,
                        created_at,
                        activates_at,
                    })
                },
            )
            .collect()
    }
}

#[async_trait]
impl RevocationStore for SqlStore {
    async fn revoke(
        &self,
        tenant: &TenantId,
        jti: &str,
        expires_at: UnixTime,
        now: UnixTime,
    ) -> Result<(), DbError> {
        let key = format!("{jti} {expires_at}");
        write_tx!(self, tenant.as_str(), TOPIC_REVOCATION, &key, now, |tx| {
            sqlx::query(
                "INSERT INTO auth_revocations (tenant, jti, expires_at, revoked_at) \
                 VALUES ($1, $2, $3, $4) ON CONFLICT (tenant, jti) DO NOTHING",
            )
            .bind(tenant.as_str())
            .bind(jti)
            .bind(expires_at)
            .bind(now)
            .execute(&mut *tx)
            .await?
            .rows_affected()
        });
        Ok(())
    }

    async fn revocations_after(&self, after: i64, limit: i64) -> Result<Vec<Revocation>, DbError> {
        let rows: Vec<(i64, String, String, i64)> = on_pool!(&self.db, |p| {
            sqlx::query_as(
                "SELECT seq, tenant, jti, expires_at FROM auth_revocations WHERE seq > $1 \
                 ORDER BY seq LIMIT $2",
            )
            .bind(after)
            .bind(limit)
            .fetch_all(p)
            .await
        })?;
        Ok(rows
            .into_iter()
            .map(|(seq, tenant, jti, expires_at)| Revocation {
                seq,
                tenant,
                jti,
                expires_at,
            })
            .collect())
    }

    async fn prune_revocations(&self, now: UnixTime) -> Result<u64, DbError> {
        Ok(on_pool!(&self.db, |p| {
            sqlx::query("DELETE FROM auth_revocations WHERE expires_at < $1")
                .bind(now)
                .execute(p)
                .await
                .map(|r| r.rows_affected())
        })?)
    }
}
