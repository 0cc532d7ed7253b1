-- Core: tenants, principals and the change feed that keeps server caches coherent.
CREATE TABLE core_tenants (
    id          TEXT PRIMARY KEY,
    signing_alg TEXT NOT NULL,
    created_at  BIGINT NOT NULL
);

-- Every principal, whatever its kind, so ids never collide across kinds or tenants.
CREATE TABLE core_principals (
    id         TEXT PRIMARY KEY,
    tenant     TEXT NOT NULL REFERENCES core_tenants (id) ON DELETE CASCADE,
    kind       TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX core_principals_tenant ON core_principals (tenant);

CREATE TABLE core_changes (
    seq        BIGSERIAL PRIMARY KEY,
    tenant     TEXT NOT NULL,
    topic      TEXT NOT NULL,
    key        TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX core_changes_created_at ON core_changes (created_at);

-- Auth: OAuth2 clients (service principals), signing keys, revoked tokens.
CREATE TABLE auth_clients (
    id                         TEXT PRIMARY KEY REFERENCES core_principals (id) ON DELETE CASCADE,
    tenant                     TEXT NOT NULL REFERENCES core_tenants (id) ON DELETE CASCADE,
    name                       TEXT NOT NULL,
    secret_hash                BYTEA NOT NULL,
    previous_secret_hash       BYTEA,
    previous_secret_expires_at BIGINT,
    scopes                     TEXT NOT NULL,
    audiences                  TEXT NOT NULL,
    token_ttl_seconds          BIGINT,
    is_admin                   BOOLEAN NOT NULL DEFAULT FALSE,
    created_at                 BIGINT NOT NULL,
    updated_at                 BIGINT NOT NULL
);
CREATE INDEX auth_clients_tenant ON auth_clients (tenant, created_at);

CREATE TABLE auth_signing_keys (
    tenant             TEXT NOT NULL REFERENCES core_tenants (id) ON DELETE CASCADE,
    kid                TEXT NOT NULL,
    alg                TEXT NOT NULL,
    public_jwk         TEXT NOT NULL,
    private_key_sealed BYTEA NOT NULL,
    created_at         BIGINT NOT NULL,
    activates_at       BIGINT NOT NULL,
    PRIMARY KEY (tenant, kid)
);

CREATE TABLE auth_revocations (
    seq        BIGSERIAL PRIMARY KEY,
    tenant     TEXT NOT NULL,
    jti        TEXT NOT NULL,
    expires_at BIGINT NOT NULL,
    revoked_at BIGINT NOT NULL,
    UNIQUE (tenant, jti)
);
CREATE INDEX auth_revocations_expires_at ON auth_revocations (expires_at);
