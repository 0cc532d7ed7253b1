//! Wire types of the config service: values, revisions, history, diffs, watch events, schemas
//! and rollouts under `/v1/config/{ns}/{env}`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// What a masked secret reads as for a caller who may not `config:ReadSecret`.
pub const MASK: &str = "********";

/// `GET /v1/config/{ns}/{env}`: every key of a namespace-environment as the caller sees it (base
/// values plus the rollouts that match the caller), at one revision.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ConfigSnapshot {
    /// The revision (0 before the first write).
    pub revision: i64,
    /// Key → JSON value. Secrets the caller may not read show as [`MASK`].
    #[schema(value_type = Object)]
    pub values: BTreeMap<String, Value>,
    /// The keys that are secret.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<String>,
}

/// `GET /v1/config/{ns}/{env}/{key}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ConfigValue {
    /// The key.
    pub key: String,
    /// Its value ([`MASK`] for a secret the caller may not read).
    #[schema(value_type = Object)]
    pub value: Value,
    /// The namespace-environment's revision.
    pub revision: i64,
    /// Whether the key is secret.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub secret: bool,
    /// Whether `value` is masked.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub masked: bool,
}

/// The answer to a write: the new revision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct WriteResult {
    /// The revision the write made.
    pub revision: i64,
}

/// `PATCH /v1/config/{ns}/{env}`: an atomic set of changes.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PatchRequest {
    /// Keys to set.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub set: BTreeMap<String, Value>,
    /// Keys to delete.
    #[serde(default)]
    pub delete: Vec<String>,
    /// Keys of `set` to store as secrets.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secret: Vec<String>,
    /// Apply only if the revision is still this one (409 otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expect_revision: Option<i64>,
}

/// One changed key: `{key, value}` or `{key, deleted: true}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct KeyChange {
    /// The key.
    pub key: String,
    /// The new value (absent when deleted; [`MASK`] for a masked secret).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub value: Option<Value>,
    /// The key was deleted.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub deleted: bool,
    /// Whether `value` is masked.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub masked: bool,
}

/// A watch event (`event: change`, id = the revision).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct WatchEvent {
    /// The revision this event brings the watcher to.
    pub revision: i64,
    /// What changed for this watcher (may be empty when the revision changed nothing it sees).
    pub changes: Vec<KeyChange>,
}

/// One revision in the history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct HistoryEntry {
    /// The revision.
    pub revision: i64,
    /// The principal that made it.
    pub actor: String,
    /// When (Unix seconds).
    pub at: i64,
    /// `write`, `rollback`, `rollout`, `promote` or `abort`.
    pub kind: String,
    /// The base keys it changed.
    pub keys: Vec<String>,
    /// The rollout it concerned, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<String>,
}

/// `GET /v1/config/{ns}/{env}/history`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct History {
    /// Newest first.
    pub entries: Vec<HistoryEntry>,
    /// The oldest revision still in the log (older ones were compacted).
    pub oldest: i64,
}

/// `GET /v1/config/{ns}/{env}/diff?from=&to=`: the base keys that differ between two revisions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Diff {
    /// From this revision.
    pub from: i64,
    /// To this revision.
    pub to: i64,
    /// Each differing key: its value at `to`, or `deleted` if absent at `to`.
    pub changes: Vec<DiffEntry>,
}

/// One differing key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DiffEntry {
    /// The key.
    pub key: String,
    /// Value at `from` (absent if the key did not exist).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub before: Option<Value>,
    /// Value at `to` (absent if the key does not exist).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub after: Option<Value>,
}

/// `POST /v1/config/{ns}/{env}/rollback`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RollbackRequest {
    /// The revision whose base values the new revision restores.
    pub to_revision: i64,
}

/// Whom a rollout applies to: exactly one of the three.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RolloutMatch {
    /// Principals whose tags (`PUT /v1/principals/{p}/tags`) include all of these.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tags: Option<BTreeMap<String, String>>,
    /// These principal ids.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub principals: Option<Vec<String>>,
    /// This percentage (0-100) of principals, by a stable hash of the principal id and the
    /// rollout's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percentage: Option<u8>,
}

/// `PUT /v1/config/{ns}/{env}/rollouts/{name}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RolloutRequest {
    /// Whom it applies to.
    #[serde(rename = "match")]
    pub matcher: RolloutMatch,
    /// The values matching principals see instead of the base ones.
    #[schema(value_type = Object)]
    pub set: BTreeMap<String, Value>,
}

/// A rollout as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RolloutView {
    /// Its name.
    pub name: String,
    /// Whom it applies to.
    #[serde(rename = "match")]
    pub matcher: RolloutMatch,
    /// Its values (secrets masked unless the caller may read them).
    #[schema(value_type = Object)]
    pub set: BTreeMap<String, Value>,
    /// The revision that last changed it.
    pub revision: i64,
}
