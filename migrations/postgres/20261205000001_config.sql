-- Dynamic config: per namespace-environment a revision counter (bumped in every write's
-- transaction: gap-free and commit-ordered), the current values (secrets sealed), the rollouts,
-- the change log (each revision's keys before and after; compacted by count and age), and one
-- JSON Schema per namespace.
CREATE TABLE config_envs (
    tenant    TEXT NOT NULL REFERENCES core_tenants (id) ON DELETE CASCADE,
    ns        TEXT NOT NULL,
    env       TEXT NOT NULL,
    revision  BIGINT NOT NULL,
    PRIMARY KEY (tenant, ns, env)
);

CREATE TABLE config_values (
    tenant    TEXT NOT NULL,
    ns        TEXT NOT NULL,
    env       TEXT NOT NULL,
    key       TEXT NOT NULL,
    value     TEXT NOT NULL,
    secret    BOOLEAN NOT NULL,
    revision  BIGINT NOT NULL,
    PRIMARY KEY (tenant, ns, env, key),
    FOREIGN KEY (tenant, ns, env) REFERENCES config_envs (tenant, ns, env) ON DELETE CASCADE
);

CREATE TABLE config_rollouts (
    tenant    TEXT NOT NULL,
    ns        TEXT NOT NULL,
    env       TEXT NOT NULL,
    name      TEXT NOT NULL,
    body      TEXT NOT NULL,
    revision  BIGINT NOT NULL,
    PRIMARY KEY (tenant, ns, env, name),
    FOREIGN KEY (tenant, ns, env) REFERENCES config_envs (tenant, ns, env) ON DELETE CASCADE
);

CREATE TABLE config_log (
    tenant    TEXT NOT NULL,
    ns        TEXT NOT NULL,
    env       TEXT NOT NULL,
    revision  BIGINT NOT NULL,
    actor     TEXT NOT NULL,
    at        BIGINT NOT NULL,
    kind      TEXT NOT NULL,
    body      TEXT NOT NULL,
    PRIMARY KEY (tenant, ns, env, revision),
    FOREIGN KEY (tenant, ns, env) REFERENCES config_envs (tenant, ns, env) ON DELETE CASCADE
);
CREATE INDEX config_log_at ON config_log (at);

CREATE TABLE config_schemas (
    tenant     TEXT NOT NULL REFERENCES core_tenants (id) ON DELETE CASCADE,
    ns         TEXT NOT NULL,
    body       TEXT NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (tenant, ns)
);
