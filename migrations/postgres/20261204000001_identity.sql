-- Identity: CA generations (the rotation slot follows from the times), registration entries,
-- issued certificates (audit), join tokens (hashed).
CREATE TABLE identity_cas (
    id             TEXT PRIMARY KEY,
    generation     BIGINT NOT NULL UNIQUE,
    origin         TEXT NOT NULL,
    key_type       TEXT NOT NULL,
    cert_der       BYTEA NOT NULL,
    intermediates  TEXT NOT NULL,
    root_der       BYTEA NOT NULL,
    key_sealed     BYTEA NOT NULL,
    jwt_kid        TEXT NOT NULL,
    jwt_public     TEXT NOT NULL,
    jwt_key_sealed BYTEA NOT NULL,
    not_before     BIGINT NOT NULL,
    not_after      BIGINT NOT NULL,
    created_at     BIGINT NOT NULL,
    activates_at   BIGINT NOT NULL,
    tainted_at     BIGINT
);

CREATE TABLE identity_entries (
    tenant      TEXT NOT NULL REFERENCES core_tenants (id) ON DELETE CASCADE,
    principal   TEXT NOT NULL REFERENCES core_principals (id) ON DELETE CASCADE,
    spiffe_path TEXT,
    dns_names   TEXT NOT NULL,
    ttl_seconds BIGINT,
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL,
    PRIMARY KEY (tenant, principal)
);
CREATE UNIQUE INDEX identity_entries_path ON identity_entries (tenant, spiffe_path);

CREATE TABLE identity_svids (
    serial    TEXT PRIMARY KEY,
    tenant    TEXT NOT NULL,
    principal TEXT NOT NULL,
    spiffe_id TEXT NOT NULL,
    ca_id     TEXT NOT NULL,
    via       TEXT NOT NULL,
    issued_at BIGINT NOT NULL,
    not_after BIGINT NOT NULL
);
CREATE INDEX identity_svids_principal ON identity_svids (tenant, principal, issued_at);
CREATE INDEX identity_svids_not_after ON identity_svids (not_after);

CREATE TABLE identity_join_tokens (
    hash        BYTEA PRIMARY KEY,
    tenant      TEXT NOT NULL REFERENCES core_tenants (id) ON DELETE CASCADE,
    principal   TEXT NOT NULL REFERENCES core_principals (id) ON DELETE CASCADE,
    created_at  BIGINT NOT NULL,
    expires_at  BIGINT NOT NULL,
    used_at     BIGINT,
    used_serial TEXT
);
CREATE INDEX identity_join_tokens_expires_at ON identity_join_tokens (expires_at);
