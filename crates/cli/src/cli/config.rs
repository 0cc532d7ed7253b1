//! `capstanctl config`: the dynamic config service.

use clap::{Args, Subcommand};

/// `config`.
#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Show every key of a namespace-environment (as the logged-in principal sees it), or one
    /// key.
    Get {
        /// The namespace and environment.
        #[command(flatten)]
        at: NsEnv,
        /// Only this key.
        key: Option<String>,
    },
    /// Set a key. VALUE is JSON (`42`, `true`, `{"a":1}`, `"quoted"`); anything that is not
    /// JSON is taken as a string.
    Set {
        /// The namespace and environment.
        #[command(flatten)]
        at: NsEnv,
        /// The key.
        key: String,
        /// The value.
        #[arg(allow_hyphen_values = true)]
        value: String,
        /// Store it as a secret (masked for readers without config:ReadSecret).
        #[arg(long)]
        secret: bool,
        /// Only if the namespace-environment is still at this revision (else exit 1, 409).
        #[arg(long, value_name = "REV")]
        if_match: Option<i64>,
    },
    /// Delete a key.
    Delete {
        /// The namespace and environment.
        #[command(flatten)]
        at: NsEnv,
        /// The key.
        key: String,
        /// Only if the namespace-environment is still at this revision.
        #[arg(long, value_name = "REV")]
        if_match: Option<i64>,
    },
    /// Set and delete keys in one revision: from a file (a PatchRequest, JSON or YAML: `set`,
    /// `delete`, `secret`, `expect_revision`; `-` for stdin) and/or flags.
    Patch {
        /// The namespace and environment.
        #[command(flatten)]
        at: NsEnv,
        /// The patch document.
        #[arg(long, value_name = "FILE")]
        file: Option<String>,
        /// `KEY=VALUE` to set, VALUE as for `config set` (repeatable).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
        /// A key to delete (repeatable).
        #[arg(long = "delete", value_name = "KEY")]
        delete: Vec<String>,
        /// A key of --set to store as a secret (repeatable).
        #[arg(long = "secret", value_name = "KEY")]
        secret: Vec<String>,
        /// Only if the namespace-environment is still at this revision.
        #[arg(long, value_name = "REV")]
        expect_revision: Option<i64>,
    },
    /// The revisions, newest first: who made each, when, and which keys it changed.
    History {
        /// The namespace and environment.
        #[command(flatten)]
        at: NsEnv,
        /// At most this many.
        #[arg(long)]
        limit: Option<i64>,
        /// Only revisions older than this one.
        #[arg(long, value_name = "REV")]
        before: Option<i64>,
    },
    /// The keys that differ between two revisions.
    Diff {
        /// The namespace and environment.
        #[command(flatten)]
        at: NsEnv,
        /// From this revision.
        #[arg(long, value_name = "REV")]
        from: i64,
        /// To this revision.
        #[arg(long, value_name = "REV")]
        to: i64,
    },
    /// Make a new revision with the values of an old one.
    Rollback {
        /// The namespace and environment.
        #[command(flatten)]
        at: NsEnv,
        /// The revision to restore.
        #[arg(long, value_name = "REV")]
        to: i64,
    },
    /// Print each change as one JSON line as it happens (first everything, as a `reset`
    /// event, unless --since is given), resuming after disconnects, until interrupted.
    Watch {
        /// The namespace and environment.
        #[command(flatten)]
        at: NsEnv,
        /// Start after this revision (no `reset` first).
        #[arg(long, value_name = "REV")]
        since: Option<i64>,
        /// Exit after this many events.
        #[arg(long, value_name = "N")]
        count: Option<u64>,
    },
    /// A namespace's JSON Schema: every value written to it must satisfy it.
    #[command(subcommand)]
    Schema(SchemaCommand),
    /// Rollouts: values that only some principals see, until promoted or aborted.
    #[command(subcommand)]
    Rollout(RolloutCommand),
}

/// A namespace and an environment.
#[derive(Debug, Clone, Args)]
pub struct NsEnv {
    /// The namespace.
    pub ns: String,
    /// The environment.
    pub env: String,
}

/// `config schema`.
#[derive(Debug, Subcommand)]
pub enum SchemaCommand {
    /// Show a namespace's schema.
    Get {
        /// The namespace.
        ns: String,
    },
    /// Set a namespace's schema from FILE (JSON or YAML; stdin with `-`).
    Set {
        /// The namespace.
        ns: String,
        /// The schema [default: stdin].
        #[arg(long, value_name = "FILE", default_value = "-")]
        file: String,
    },
    /// Remove a namespace's schema.
    Delete {
        /// The namespace.
        ns: String,
    },
}

/// `config rollout`.
#[derive(Debug, Subcommand)]
pub enum RolloutCommand {
    /// List the rollouts of a namespace-environment.
    List {
        /// The namespace and environment.
        #[command(flatten)]
        at: NsEnv,
    },
    /// Show a rollout.
    Get {
        /// The namespace and environment.
        #[command(flatten)]
        at: NsEnv,
        /// The rollout.
        name: String,
    },
    /// Create or replace a rollout: from a file (a RolloutRequest, JSON or YAML: `match`,
    /// `set`), or whom it matches (one of --percentage, --principal, --tag) and --set.
    Set {
        /// The namespace and environment.
        #[command(flatten)]
        at: NsEnv,
        /// The rollout.
        name: String,
        /// The rollout document (`-` for stdin).
        #[arg(long, value_name = "FILE", conflicts_with_all = ["percentage", "principals", "tags", "set"])]
        file: Option<String>,
        /// Match this percentage (0-100) of principals.
        #[arg(long, value_name = "N", conflicts_with_all = ["principals", "tags"])]
        percentage: Option<u8>,
        /// Match this principal (repeatable).
        #[arg(long = "principal", value_name = "ID", conflicts_with = "tags")]
        principals: Vec<String>,
        /// Match principals with this tag, `KEY=VALUE` (repeatable: all of them).
        #[arg(long = "tag", value_name = "KEY=VALUE")]
        tags: Vec<String>,
        /// `KEY=VALUE` the matching principals see, VALUE as for `config set` (repeatable).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
    },
    /// Make a rollout's values everyone's, and end it.
    Promote {
        /// The namespace and environment.
        #[command(flatten)]
        at: NsEnv,
        /// The rollout.
        name: String,
    },
    /// End a rollout; its principals see the base values again.
    Abort {
        /// The namespace and environment.
        #[command(flatten)]
        at: NsEnv,
        /// The rollout.
        name: String,
    },
}
