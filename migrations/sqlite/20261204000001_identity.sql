-- Identity: CA generations (the rotation slot follows from the times), registration entries,
-- issued certificates (audit), join tokens (hashed).
CREATE TABLE identity_cas (
    id             TEXT PRIMARY KEY,
    generation     INTEGER NOT NULL UNIQUE,
    origin         TEXT NOT NULL,
    key_type       TEXT NOT NULL,
    cert_der       BLOB NOT NULL,
    intermediates  TEXT NOT NULL,
    root_der       BLOB NOT NULL,
    key_sealed     BLOB NOT NULL,
    jwt_kid        TEXT NOT NULL,
    jwt_public     TEXT NOT NULL,
    jwt_key_sealed BLOB NOT NULL,
    not_before     INTEGER NOT NULL,
    not_after      INTEGER NOT NULL,
    created_at     INTEGER NOT NULL,
    activates_at   INTEGER NOT NULL,
    tainted_at     INTEGER
);

CREATE TABLE identity_entries (
    tenant      TEXT NOT NULL REFERENCES core_tenants (id) ON DELETE CASCADE,
    principal   TEXT NOT NULL REFERENCES core_principals (id) ON DELETE CASCADE,
    spiffe_path TEXT,
    dns_names   TEXT NOT NULL,
    ttl_seconds INTEGER,
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL,
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
    issued_at INTEGER NOT NULL,
    not_after INTEGER NOT NULL
);
CREATE INDEX identity_svids_principal ON identity_svids (tenant, principal, issued_at);
CREATE INDEX identity_svids_not_after ON identity_svids (not_after);

CREATE TABLE identity_join_tokens (
    hash        BLOB PRIMARY KEY,
    tenant      TEXT NOT NULL REFERENCES core_tenants (id) ON DELETE CASCADE,
    principal   TEXT NOT NULL REFERENCES core_principals (id) ON DELETE CASCADE,
    created_at  INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL,
    used_at     INTEGER,
    used_serial TEXT
);
CREATE INDEX identity_join_tokens_expires_at ON identity_join_tokens (expires_at);
