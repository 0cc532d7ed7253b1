//! Storage of the policy service: one trait per aggregate, and [`SqlPolicyStore`], their
//! implementation over [`capstan_db::Db`] for Postgres and SQLite (in `sql`). Every query is
//! tenant-scoped; every write bumps the tenant's policy revision and appends its change-feed row
//! in its own transaction (the outbox). The conformance suite in the workspace `tests/` runs the
//! same assertions against both backends.

use async_trait::async_trait;
use capstan_db::DbError;

mod sql;
mod sql_decisions;

pub use sql::SqlPolicyStore;

/// A stored managed policy version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredVersion {
    /// Version number (1, 2, …).
    pub version: i64,
    /// JSON text.
    pub document: String,
    /// Whether it is the default version.
    pub is_default: bool,
    /// Creation time.
    pub created_at: i64,
}

/// Everything that decides a tenant's authorizations, as stored.
#[derive(Debug, Clone, Default)]
pub struct TenantRows {
    /// Revision counter.
    pub revision: i64,
    /// Default versions: (name, version); documents are fetched separately, only when not
    /// already compiled.
    pub defaults: Vec<(String, i64)>,
    /// (group, member).
    pub members: Vec<(String, String)>,
    /// (target kind, target, policy).
    pub attachments: Vec<(String, String, String)>,
    /// (principal, policy).
    pub boundaries: Vec<(String, String)>,
    /// (principal, key, value).
    pub tags: Vec<(String, String, String)>,
    /// (resource pattern, document).
    pub resource_policies: Vec<(String, String)>,
    /// (name, document).
    pub guardrails: Vec<(String, String)>,
}

/// One decision-log record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecisionRecord {
    /// Tenant.
    pub tenant: String,
    /// Principal.
    pub principal: String,
    /// Action.
    pub action: String,
    /// Resource.
    pub resource: String,
    /// `Allow` or `Deny`.
    pub decision: String,
    /// Reason code.
    pub reason: String,
    /// The tenant's policy revision the decision used.
    pub policy_revision: i64,
    /// Extra facts (JSON): matched statements, caller context.
    pub context: String,
    /// When.
    pub at: i64,
    /// The W3C trace id of the request that asked, when it carried a valid `traceparent`.
    pub trace_id: Option<String>,
}

/// Which decisions to list.
#[derive(Debug, Clone, Copy, Default)]
pub struct DecisionFilter<'a> {
    /// Only this principal's.
    pub principal: Option<&'a str>,
    /// Only `Allow` or `Deny`.
    pub decision: Option<&'a str>,
    /// Only those made at or after this time (Unix seconds).
    pub since: Option<i64>,
    /// Only those after this sequence number, oldest first.
    pub after: Option<i64>,
    /// Only those made for requests of this trace (a W3C trace id).
    pub trace_id: Option<&'a str>,
    /// At most this many.
    pub limit: i64,
}

/// How many versions of a managed policy are kept.
pub const KEEP_VERSIONS: i64 = 5;

/// Managed policy versions (the newest [`KEEP_VERSIONS`] kept, the newest the default).
#[async_trait]
pub trait PolicyVersions: Send + Sync {
    /// Stores a new version of a managed policy, makes it the default and keeps the newest
    /// [`KEEP_VERSIONS`]. Returns the version.
    async fn put_version(
        &self,
        tenant: &str,
        name: &str,
        document: &str,
        now: i64,
    ) -> Result<i64, DbError>;
    /// A version (the default one when `version` is `None`).
    async fn get_version(
        &self,
        tenant: &str,
        name: &str,
        version: Option<i64>,
    ) -> Result<Option<StoredVersion>, DbError>;
    /// Every managed policy: (name, default version, stored versions).
    async fn list_policies(&self, tenant: &str) -> Result<Vec<(String, i64, Vec<i64>)>, DbError>;
    /// The stored versions of one managed policy, oldest first (empty when there is none).
    async fn list_versions(&self, tenant: &str, name: &str) -> Result<Vec<StoredVersion>, DbError>;
    /// Deletes a managed policy with all its versions.
    async fn delete_policy(&self, tenant: &str, name: &str, now: i64) -> Result<bool, DbError>;
    /// How many principals and groups use a policy (attachments and boundaries).
    async fn uses(&self, tenant: &str, policy: &str) -> Result<i64, DbError>;
    /// The documents of every default version: (name, version, document).
    async fn default_documents(&self, tenant: &str) -> Result<Vec<(String, i64, String)>, DbError>;
}

/// Groups and their members (a member is a principal id or `group:<name>`).
#[async_trait]
pub trait GroupStore: Send + Sync {
    /// Creates a group (idempotent); true when it was new.
    async fn put_group(&self, tenant: &str, name: &str, now: i64) -> Result<bool, DbError>;
    /// Deletes a group, its memberships (as a group and as a member) and its attachments.
    async fn delete_group(&self, tenant: &str, name: &str, now: i64) -> Result<bool, DbError>;
    /// Whether a group exists.
    async fn group_exists(&self, tenant: &str, name: &str) -> Result<bool, DbError>;
    /// Every group with its members, by name.
    async fn list_groups(&self, tenant: &str) -> Result<Vec<(String, Vec<String>)>, DbError>;
    /// Adds a member (idempotent).
    async fn add_member(
        &self,
        tenant: &str,
        group: &str,
        member: &str,
        now: i64,
    ) -> Result<(), DbError>;
    /// Removes a member; false if it was none.
    async fn remove_member(
        &self,
        tenant: &str,
        group: &str,
        member: &str,
        now: i64,
    ) -> Result<bool, DbError>;
}

/// Attachments of policies to principals and groups, boundaries and tags.
#[async_trait]
pub trait AttachmentStore: Send + Sync {
    /// Attaches a policy to a principal or group (idempotent).
    async fn attach(
        &self,
        tenant: &str,
        kind: &str,
        target: &str,
        policy: &str,
        now: i64,
    ) -> Result<(), DbError>;
    /// Detaches; false if it was not attached.
    async fn detach(
        &self,
        tenant: &str,
        kind: &str,
        target: &str,
        policy: &str,
        now: i64,
    ) -> Result<bool, DbError>;
    /// Sets a principal's permissions boundary.
    async fn set_boundary(
        &self,
        tenant: &str,
        principal: &str,
        policy: &str,
        now: i64,
    ) -> Result<(), DbError>;
    /// Removes a principal's boundary; false if it had none.
    async fn delete_boundary(
        &self,
        tenant: &str,
        principal: &str,
        now: i64,
    ) -> Result<bool, DbError>;
    /// Replaces a principal's tags.
    async fn set_tags(
        &self,
        tenant: &str,
        principal: &str,
        tags: &[(String, String)],
        now: i64,
    ) -> Result<(), DbError>;
}

/// Documents kept one per key: resource policies and guardrails.
#[async_trait]
pub trait KeyedDocuments: Send + Sync {
    /// Upserts a document keyed by name in `policy_resource_policies` (`resource`) or
    /// `policy_guardrails` (`name`).
    async fn put_keyed(
        &self,
        table: Keyed,
        tenant: &str,
        key: &str,
        document: &str,
        now: i64,
    ) -> Result<(), DbError>;
    /// Reads a keyed document.
    async fn get_keyed(
        &self,
        table: Keyed,
        tenant: &str,
        key: &str,
    ) -> Result<Option<(String, i64)>, DbError>;
    /// Every keyed document of the tenant: (key, document, updated_at), by key.
    async fn list_keyed(
        &self,
        table: Keyed,
        tenant: &str,
    ) -> Result<Vec<(String, String, i64)>, DbError>;
    /// Deletes a keyed document; false if there was none.
    async fn delete_keyed(
        &self,
        table: Keyed,
        tenant: &str,
        key: &str,
        now: i64,
    ) -> Result<bool, DbError>;
}

/// What a tenant's compiled snapshot is built from, and its revision.
#[async_trait]
pub trait SnapshotSource: Send + Sync {
    /// Everything that decides the tenant's authorizations.
    async fn load(&self, tenant: &str) -> Result<TenantRows, DbError>;
    /// Increments and returns the tenant's revision.
    async fn bump_revision(&self, tenant: &str) -> Result<i64, DbError>;
}

/// The decision log.
#[async_trait]
pub trait DecisionLog: Send + Sync {
    /// Appends decisions in one statement.
    async fn insert_decisions(&self, batch: &[DecisionRecord]) -> Result<(), DbError>;
    /// A tenant's decisions with their sequence numbers: the newest first, or, with
    /// `filter.after`, the oldest after that sequence number first (to follow the log).
    async fn list_decisions(
        &self,
        tenant: &str,
        filter: &DecisionFilter<'_>,
    ) -> Result<Vec<(i64, DecisionRecord)>, DbError>;
    /// Drops decisions older than `before`.
    async fn prune_decisions(&self, before: i64) -> Result<u64, DbError>;
}

/// Everything the policy service stores.
pub trait PolicyStore:
    PolicyVersions + GroupStore + AttachmentStore + KeyedDocuments + SnapshotSource + DecisionLog
{
}

impl<T> PolicyStore for T where
    T: PolicyVersions
        + GroupStore
        + AttachmentStore
        + KeyedDocuments
        + SnapshotSource
        + DecisionLog
{
}

/// The tables that hold one document per key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keyed {
    /// Resource policies, keyed by CRN pattern.
    ResourcePolicy,
    /// Guardrails, keyed by name.
    Guardrail,
}

impl Keyed {
    pub(crate) fn names(self) -> (&'static str, &'static str) {
        match self {
            Keyed::ResourcePolicy => ("policy_resource_policies", "resource"),
            Keyed::Guardrail => ("policy_guardrails", "name"),
        }
    }
}
