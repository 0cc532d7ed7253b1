//! The command line, as clap definitions. `capstanctl docs` renders these into `docs/cli.md`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

mod config;
mod trace;
pub use config::*;
pub use trace::*;

/// Operate Capstan from a terminal, over its HTTP API.
///
/// Exit codes: 0 ok, 1 error, 2 usage, 3 denied (a 403, or `authorize` answering Deny),
/// 4 not found.
#[derive(Debug, Parser)]
#[command(name = "capstanctl", disable_version_flag = true, max_term_width = 100)]
pub struct Cli {
    /// Capstan's address [default: the current context, else http://127.0.0.1:8470].
    #[arg(long, global = true, env = "CAPSTAN_ADDR", value_name = "URL")]
    pub addr: Option<String>,
    /// Tenant [default: the login's tenant, else `default`].
    #[arg(long, global = true, env = "CAPSTAN_TENANT")]
    pub tenant: Option<String>,
    /// Output of reads [default: table on a terminal, JSON otherwise].
    #[arg(short, long, global = true, value_enum)]
    pub output: Option<Format>,
    /// Where logins are kept [default: $XDG_CONFIG_HOME/capstan or ~/.config/capstan].
    #[arg(long, global = true, env = "CAPSTAN_CONFIG_DIR", value_name = "DIR")]
    pub config_dir: Option<PathBuf>,
    /// A PEM file of extra root certificates to trust (a private CA).
    #[arg(long, global = true, env = "CAPSTAN_CACERT", value_name = "FILE")]
    pub ca_file: Option<PathBuf>,
    /// Print capstanctl's version, and the server's when it is reachable.
    #[arg(short = 'V', long)]
    pub version: bool,
    /// The command.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Aligned columns for people.
    Table,
    /// JSON, as the API answers.
    Json,
    /// YAML.
    Yaml,
}

/// The commands; each maps to one API call.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Log in with a client's id and secret (client credentials) and keep them for this
    /// address. The secret is read without echo, from stdin (--client-secret-stdin) or from
    /// CAPSTAN_CLIENT_SECRET; never from the command line.
    Login(LoginArgs),
    /// Forget the login for this address.
    Logout,
    /// List the addresses logged in to (the current one marked), or switch.
    Contexts {
        /// `use ADDR` makes ADDR the current context.
        #[command(subcommand)]
        command: Option<ContextsCommand>,
    },
    /// Tenants (admins of `default` only).
    #[command(subcommand)]
    Tenants(TenantsCommand),
    /// OAuth2 clients (principals).
    #[command(subcommand)]
    Clients(ClientsCommand),
    /// The tenant's signing keys.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Print a fresh access token of the logged-in client, for scripts.
    Token {
        /// Audience to ask for [default: capstan].
        #[arg(long)]
        audience: Option<String>,
        /// Scopes to ask for.
        #[arg(long = "scope")]
        scopes: Vec<String>,
    },
    /// Introspect a token (RFC 7662) as the logged-in client.
    Introspect {
        /// The token.
        token: String,
    },
    /// Revoke a token (RFC 7009) as the logged-in client.
    Revoke {
        /// The token.
        token: String,
    },
    /// Managed policies.
    #[command(subcommand)]
    Policies(PoliciesCommand),
    /// Attach a policy to a principal or a group.
    Attach(AttachArgs),
    /// Detach a policy from a principal or a group.
    Detach(AttachArgs),
    /// Groups of principals.
    #[command(subcommand)]
    Groups(GroupsCommand),
    /// A principal's permissions boundary.
    #[command(subcommand)]
    Boundary(BoundaryCommand),
    /// A principal's tags.
    #[command(subcommand)]
    Tags(TagsCommand),
    /// Resource policies, keyed by CRN pattern.
    #[command(name = "resource-policies", subcommand)]
    ResourcePolicies(KeyedCommand),
    /// Guardrails (tenant-wide limits), keyed by name.
    #[command(subcommand)]
    Guardrails(KeyedCommand),
    /// Ask the policy engine for a decision; prints the decision, the reason and the
    /// statements that decided. Exit code 3 when denied.
    Authorize(AuthorizeArgs),
    /// Decide requests before and after proposed changes, without applying them; the
    /// decisions that change come first.
    Simulate(SimulateArgs),
    /// The decision log.
    Decisions(DecisionsArgs),
    /// X.509-SVIDs: issue one (key and CSR made here; the key never leaves this machine) or
    /// show one.
    #[command(subcommand)]
    Svid(SvidCommand),
    /// The trust bundle (SPIFFE format, or PEM with --pem).
    Bundle {
        /// The roots as PEM instead of the SPIFFE bundle.
        #[arg(long)]
        pem: bool,
    },
    /// The identity service's CAs: list, rotate, taint.
    #[command(subcommand)]
    Ca(CaCommand),
    /// Registration entries: a principal's SPIFFE ID path, DNS names and SVID lifetime.
    #[command(subcommand)]
    Entries(EntriesCommand),
    /// Single-use join tokens for workloads without credentials yet.
    #[command(name = "join-token", subcommand)]
    JoinToken(JoinTokenCommand),
    /// Dynamic config: JSON values per namespace and environment, with revisions, history,
    /// schemas and rollouts, pushed to watchers.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Traces the collector stored: services, operations, search, and one trace as a tree.
    #[command(subcommand)]
    Traces(TracesCommand),
    /// Print a shell completion script.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print this reference as Markdown (docs/cli.md).
    Docs,
}

/// `svid`.
#[derive(Debug, Subcommand)]
pub enum SvidCommand {
    /// Make a key and a CSR here, get an X.509-SVID for the logged-in client (or for a join
    /// token's principal), and write DIR/svid.pem (chain), DIR/svid.key (mode 0600) and
    /// DIR/bundle.pem.
    Issue {
        /// Directory to write to (created if needed).
        #[arg(long, value_name = "DIR")]
        out: std::path::PathBuf,
        /// Use a join token (from `join-token create`) instead of the login; read from stdin
        /// when the value is `-`.
        #[arg(long, value_name = "TOKEN")]
        join_token: Option<String>,
    },
    /// Show an SVID: SPIFFE ID, serial, validity, issuer, DNS names.
    Show {
        /// The certificate file (PEM) [svid.pem].
        #[arg(default_value = "svid.pem")]
        file: std::path::PathBuf,
    },
    /// Issued-certificate records (audit), newest first.
    List {
        /// Only this principal's.
        #[arg(long)]
        principal: Option<String>,
        /// At most this many [100].
        #[arg(long)]
        limit: Option<i64>,
    },
}

/// `ca`.
#[derive(Debug, Subcommand)]
pub enum CaCommand {
    /// List CA generations with their slot (prepared, active, retired).
    List,
    /// Prepare a new CA (published at once, signing after the delay); run again to activate
    /// the prepared one now.
    Rotate {
        /// Seconds until the new CA signs [the server's prepare delay].
        #[arg(long, value_name = "SECONDS")]
        activate_in: Option<i64>,
    },
    /// Taint a CA after a compromise: it stops signing at once; holders of its leaves re-issue.
    Taint {
        /// CA id (g1, g2, …).
        id: String,
    },
}

/// `entries`.
#[derive(Debug, Subcommand)]
pub enum EntriesCommand {
    /// Register a principal: its SPIFFE ID path under the tenant, DNS names, SVID lifetime.
    Create {
        /// The principal.
        #[arg(long)]
        principal: String,
        /// Path under spiffe://<td>/t/<tenant>/ (e.g. payments/orders).
        #[arg(long)]
        path: Option<String>,
        /// A DNS name its SVIDs carry (repeatable).
        #[arg(long = "dns")]
        dns_names: Vec<String>,
        /// SVID lifetime in seconds.
        #[arg(long)]
        ttl: Option<i64>,
    },
    /// List entries.
    List,
    /// Show a principal's entry.
    Get {
        /// The principal.
        principal: String,
    },
    /// Replace a principal's entry.
    Update {
        /// The principal.
        principal: String,
        /// Path under spiffe://<td>/t/<tenant>/.
        #[arg(long)]
        path: Option<String>,
        /// A DNS name its SVIDs carry (repeatable).
        #[arg(long = "dns")]
        dns_names: Vec<String>,
        /// SVID lifetime in seconds.
        #[arg(long)]
        ttl: Option<i64>,
    },
    /// Delete a principal's entry (its SVIDs get the default ID again).
    Delete {
        /// The principal.
        principal: String,
    },
}

/// `join-token`.
#[derive(Debug, Subcommand)]
pub enum JoinTokenCommand {
    /// A single-use token that yields one SVID for a principal.
    Create {
        /// The principal.
        #[arg(long)]
        principal: String,
        /// Lifetime in seconds [3600].
        #[arg(long)]
        ttl: Option<i64>,
    },
}

/// `login`.
#[derive(Debug, Args)]
pub struct LoginArgs {
    /// The client id [default: prompted, or CAPSTAN_CLIENT_ID].
    #[arg(long)]
    pub client_id: Option<String>,
    /// Read the client secret from the first line of stdin.
    #[arg(long)]
    pub client_secret_stdin: bool,
    /// Use the admin credentials `capstan dev` wrote to DATA_DIR/admin.json.
    #[arg(long, value_name = "DATA_DIR", num_args = 0..=1, default_missing_value = ".capstan")]
    pub dev: Option<PathBuf>,
}

/// `contexts use`.
#[derive(Debug, Subcommand)]
pub enum ContextsCommand {
    /// Make ADDR the current context.
    Use {
        /// The address.
        addr: String,
    },
}

/// `tenants`.
#[derive(Debug, Subcommand)]
pub enum TenantsCommand {
    /// List tenants.
    List,
    /// Create a tenant with its first key and admin client (whose secret is shown once).
    Create {
        /// Tenant id.
        id: String,
        /// ES256 (default), EdDSA or RS256.
        #[arg(long)]
        signing_alg: Option<String>,
    },
}

/// `clients`.
#[derive(Debug, Subcommand)]
pub enum ClientsCommand {
    /// Create a client; its secret is shown once.
    Create {
        /// Name.
        #[arg(long)]
        name: String,
        /// A scope it may request (repeatable).
        #[arg(long = "scope")]
        scopes: Vec<String>,
        /// An audience it may request (repeatable; at least one).
        #[arg(long = "audience")]
        audiences: Vec<String>,
        /// Token lifetime in seconds.
        #[arg(long)]
        token_ttl: Option<i64>,
        /// A policy to set as its permissions boundary.
        #[arg(long)]
        permissions_boundary: Option<String>,
        /// Authenticate with its X.509-SVID over mTLS (RFC 8705 tls_client_auth) instead of
        /// its secret; its tokens are bound to the certificate.
        #[arg(long)]
        tls_client_auth: bool,
        /// The certificate URI SAN it must present [its own SPIFFE ID].
        #[arg(long, requires = "tls_client_auth")]
        tls_client_auth_san_uri: Option<String>,
    },
    /// List clients.
    List,
    /// Show a client.
    Get {
        /// Client id.
        id: String,
    },
    /// Delete a client; its tokens stop working everywhere.
    Delete {
        /// Client id.
        id: String,
    },
    /// Give a client a new secret (shown once).
    RotateSecret {
        /// Client id.
        id: String,
        /// Seconds the old secret keeps working.
        #[arg(long)]
        grace_period: Option<i64>,
    },
}

/// `keys`.
#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// List published signing keys.
    List,
    /// Publish a new signing key.
    Rotate {
        /// Algorithm of the new key.
        #[arg(long)]
        alg: Option<String>,
        /// Seconds before it signs.
        #[arg(long)]
        publish_delay: Option<i64>,
        /// Emergency rotation: sign at once, withdraw keys still waiting.
        #[arg(long)]
        supersede: bool,
    },
    /// Withdraw a key from the JWKS at once.
    Delete {
        /// Key id (base64url: it may start with `-`).
        #[arg(allow_hyphen_values = true)]
        kid: String,
    },
}

/// `policies`.
#[derive(Debug, Subcommand)]
pub enum PoliciesCommand {
    /// Write a new default version of a managed policy from FILE (or stdin with `-`).
    Put {
        /// Policy name.
        name: String,
        /// The document [default: stdin].
        #[arg(default_value = "-")]
        file: String,
    },
    /// Show a policy (the default version, or --version).
    Get {
        /// Policy name.
        name: String,
        /// A stored version.
        #[arg(long)]
        version: Option<i64>,
    },
    /// List managed and built-in policies.
    List,
    /// Delete a managed policy (refused while attached).
    Delete {
        /// Policy name.
        name: String,
    },
    /// Check a document without saving it: errors with JSON paths, and warnings.
    Validate {
        /// The document [default: stdin].
        #[arg(default_value = "-")]
        file: String,
        /// `resource` for a resource policy.
        #[arg(long)]
        kind: Option<String>,
    },
    /// List the stored versions of a policy.
    Versions {
        /// Policy name.
        name: String,
    },
}

/// `attach` and `detach`.
#[derive(Debug, Args)]
#[command(group = clap::ArgGroup::new("target").required(true).args(["principal", "group"]))]
pub struct AttachArgs {
    /// Policy name.
    pub policy: String,
    /// The principal (client id).
    #[arg(long)]
    pub principal: Option<String>,
    /// The group.
    #[arg(long)]
    pub group: Option<String>,
}

/// `groups`.
#[derive(Debug, Subcommand)]
pub enum GroupsCommand {
    /// Create a group.
    Create {
        /// Group name.
        group: String,
    },
    /// Delete a group with its memberships and attachments.
    Delete {
        /// Group name.
        group: String,
    },
    /// Add a member (a principal id, or `group:<name>`).
    AddMember {
        /// Group name.
        group: String,
        /// The member.
        member: String,
    },
    /// Remove a member.
    RemoveMember {
        /// Group name.
        group: String,
        /// The member.
        member: String,
    },
    /// List groups with their members and policies.
    List,
}

/// `boundary`.
#[derive(Debug, Subcommand)]
pub enum BoundaryCommand {
    /// Bound a principal by a policy.
    Set {
        /// The principal.
        principal: String,
        /// The policy.
        policy: String,
    },
    /// Remove a principal's boundary.
    Clear {
        /// The principal.
        principal: String,
    },
}

/// `tags`.
#[derive(Debug, Subcommand)]
pub enum TagsCommand {
    /// Replace a principal's tags.
    Set {
        /// The principal.
        principal: String,
        /// `key=value` (repeatable; none clears them).
        tags: Vec<String>,
    },
}

/// `resource-policies` and `guardrails`.
#[derive(Debug, Subcommand)]
pub enum KeyedCommand {
    /// Write one from FILE (or stdin with `-`).
    Put {
        /// The CRN pattern (resource policies) or name (guardrails).
        key: String,
        /// The document [default: stdin].
        #[arg(default_value = "-")]
        file: String,
    },
    /// Show one.
    Get {
        /// The CRN pattern or name.
        key: String,
    },
    /// Delete one.
    Delete {
        /// The CRN pattern or name.
        key: String,
    },
    /// List them.
    List,
}

/// `authorize`.
#[derive(Debug, Args)]
#[command(group = clap::ArgGroup::new("who").required(true).args(["principal", "token"]))]
pub struct AuthorizeArgs {
    /// The principal asking.
    #[arg(long)]
    pub principal: Option<String>,
    /// Or an access token (principal, scopes and client from it).
    #[arg(long)]
    pub token: Option<String>,
    /// `<service>:<Action>`.
    #[arg(long)]
    pub action: String,
    /// The resource's CRN.
    #[arg(long)]
    pub resource: String,
    /// A condition key `k=v` (repeatable; a repeated key makes a list).
    #[arg(long = "context", value_name = "K=V")]
    pub context: Vec<String>,
}

/// `simulate`.
#[derive(Debug, Args)]
#[command(group = clap::ArgGroup::new("cases").required(true).args(["requests", "replay"]))]
pub struct SimulateArgs {
    /// A JSON file with a list of changes (`{"op": "put_policy", "name", "document"}`,
    /// `delete_policy`, `attach`, `detach`), as `/v1/simulate` takes them.
    #[arg(long, value_name = "FILE")]
    pub changes: Option<String>,
    /// A new version of a policy from a file: `NAME=FILE` (repeatable; applied before the
    /// changes of --changes).
    #[arg(long = "put-policy", value_name = "NAME=FILE")]
    pub put_policy: Vec<String>,
    /// A JSON file with a list of authorization requests to decide.
    #[arg(long, value_name = "FILE")]
    pub requests: Option<String>,
    /// Or re-decide the last N recorded decisions.
    #[arg(long, value_name = "N")]
    pub replay: Option<i64>,
}

/// `decisions`.
#[derive(Debug, Args)]
pub struct DecisionsArgs {
    /// Only this principal's.
    #[arg(long)]
    pub principal: Option<String>,
    /// Only `Allow` or `Deny`.
    #[arg(long)]
    pub decision: Option<String>,
    /// Only since: Unix seconds, or a duration ago (`90s`, `10m`, `2h`, `1d`).
    #[arg(long)]
    pub since: Option<String>,
    /// At most this many [default: 100].
    #[arg(long)]
    pub limit: Option<i64>,
    /// Only the decisions of this trace (W3C trace id, 32 hex digits): the calls made with its
    /// `traceparent`.
    #[arg(long)]
    pub trace_id: Option<String>,
    /// Keep printing new decisions as they are made.
    #[arg(short, long)]
    pub follow: bool,
}
