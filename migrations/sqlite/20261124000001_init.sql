-- Core: tenants, principals and the change feed that keeps server caches coherent.
CREATE TABLE core_tenants (
    id          TEXT PRIMARY KEY,
    signing_alg TEXT NOT NULL,
    created_at  INTEGER NOT NULL
);

-- Every principal, whatever its kind, so ids never collide across kinds or tenants.
CREATE TABLE core_principals (
    id         TEXT PRIMARY KEY,
    tenant     TEXT NOT NULL REFERENCES core_tenants (id) ON DELETE CASCADE,
    kind       TEXT NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE INDEX core_principals_tenant ON core_principals (tenant);

CREATE TABLE core_changes (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant     TEXT NOT NULL,
    topic      TEXT NOT NULL,
    key        TEXT NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE INDEX core_changes_created_at ON core_changes (created_at);

-- Auth: OAuth2 clients (service principals), signing keys, revoked tokens.
CREATE TABLE auth_clients (
    id                         TEXT PRIMARY KEY REFERENCES core_principals (id) ON DELETE CASCADE,
    tenant                     TEXT NOT NULL REFERENCES core_tenants (id) ON DELETE CASCADE,
    name                       TEXT NOT NULL,
    secret_hash                BLOB NOT NULL,
    previous_secret_hash       BLOB,
    previous_secret_expires_at INTEGER,
    scopes                     TEXT NOT NULL,
    audiences                  TEXT NOT NULL,
    token_ttl_seconds          INTEGER,
    is_admin                   INTEGER NOT NULL DEFAULT 0,
    created_at                 INTEGER NOT NULL,
    updated_at                 INTEGER NOT NULL
);
CREATE INDEX auth_clients_tenant ON auth_clients (tenant, created_at);

CREATE TABLE auth_signing_keys (
    tenant             TEXT NOT NULL REFERENCES core_tenants (id) ON DELETE CASCADE,
    kid                TEXT NOT NULL,
    alg                TEXT NOT NULL,
    public_jwk         TEXT NOT NULL,
    private_key_sealed BLOB NOT NULL,
    created_at         INTEGER NOT NULL,
    activates_at       INTEGER NOT NULL,
    PRIMARY KEY (tenant, kid)
);

CREATE TABLE auth_revocations (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant     TEXT NOT NULL,
    jti        TEXT NOT NULL,
    expires_at INTEGER NOT NULL,
    revoked_at INTEGER NOT NULL,
    UNIQUE (tenant, jti)
);
CREATE INDEX auth_revocations_expires_at ON auth_revocations (expires_at);
