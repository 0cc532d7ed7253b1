-- Policy: managed policy versions, groups, attachments, boundaries, tags, resource policies,
-- guardrails, a per-tenant revision counter and the decision log.
CREATE TABLE policy_versions (
    tenant     TEXT NOT NULL REFERENCES core_tenants (id) ON DELETE CASCADE,
    name       TEXT NOT NULL,
    version    INTEGER NOT NULL,
    document   TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (tenant, name, version)
);

-- The default version of each managed policy.
CREATE TABLE policy_defaults (
    tenant  TEXT NOT NULL REFERENCES core_tenants (id) ON DELETE CASCADE,
    name    TEXT NOT NULL,
    version INTEGER NOT NULL,
    PRIMARY KEY (tenant, name)
);

CREATE TABLE policy_groups (
    tenant     TEXT NOT NULL REFERENCES core_tenants (id) ON DELETE CASCADE,
    name       TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (tenant, name)
);

-- member is a principal id or "group:<name>" (nested groups).
CREATE TABLE policy_group_members (
    tenant     TEXT NOT NULL,
    group_name TEXT NOT NULL,
    member     TEXT NOT NULL,
    PRIMARY KEY (tenant, group_name, member),
    FOREIGN KEY (tenant, group_name) REFERENCES policy_groups (tenant, name) ON DELETE CASCADE
);

-- target_kind is 'principal' or 'group'.
CREATE TABLE policy_attachments (
    tenant      TEXT NOT NULL REFERENCES core_tenants (id) ON DELETE CASCADE,
    target_kind TEXT NOT NULL,
    target      TEXT NOT NULL,
    policy      TEXT NOT NULL,
    PRIMARY KEY (tenant, target_kind, target, policy)
);
CREATE INDEX policy_attachments_policy ON policy_attachments (tenant, policy);

CREATE TABLE policy_boundaries (
    tenant    TEXT NOT NULL REFERENCES core_tenants (id) ON DELETE CASCADE,
    principal TEXT NOT NULL,
    policy    TEXT NOT NULL,
    PRIMARY KEY (tenant, principal)
);

CREATE TABLE policy_tags (
    tenant    TEXT NOT NULL REFERENCES core_tenants (id) ON DELETE CASCADE,
    principal TEXT NOT NULL,
    key       TEXT NOT NULL,
    value     TEXT NOT NULL,
    PRIMARY KEY (tenant, principal, key)
);

CREATE TABLE policy_resource_policies (
    tenant     TEXT NOT NULL REFERENCES core_tenants (id) ON DELETE CASCADE,
    resource   TEXT NOT NULL,
    document   TEXT NOT NULL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (tenant, resource)
);

CREATE TABLE policy_guardrails (
    tenant     TEXT NOT NULL REFERENCES core_tenants (id) ON DELETE CASCADE,
    name       TEXT NOT NULL,
    document   TEXT NOT NULL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (tenant, name)
);

CREATE TABLE policy_revisions (
    tenant   TEXT PRIMARY KEY REFERENCES core_tenants (id) ON DELETE CASCADE,
    revision INTEGER NOT NULL
);

CREATE TABLE policy_decisions (
    seq             INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant          TEXT NOT NULL,
    principal       TEXT NOT NULL,
    action          TEXT NOT NULL,
    resource        TEXT NOT NULL,
    decision        TEXT NOT NULL,
    reason          TEXT NOT NULL,
    policy_revision INTEGER NOT NULL,
    context         TEXT NOT NULL,
    at              INTEGER NOT NULL
);
CREATE INDEX policy_decisions_tenant_at ON policy_decisions (tenant, at);

-- Administrators created before the policy engine existed keep their access.
INSERT INTO policy_attachments (tenant, target_kind, target, policy)
SELECT tenant, 'principal', id, 'AdministratorAccess' FROM auth_clients WHERE is_admin;
