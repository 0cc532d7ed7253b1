//! [`ConfigService`]: every config operation, guarded by the policy engine.
//!
//! Resources are `crn:capstan:config:<tenant>:namespace/<ns>/env/<env>/key/<key>`; operations on
//! a whole environment (reading all of it, watching, history, rollback, rollouts) use the key
//! `*`, so a policy granting `namespace/payments/*` covers them and one granting only some keys
//! does not. A namespace's schema is `namespace/<ns>/schema`. Every guarded call carries
//! `config:Namespace`, `config:Environment` and (for one key) `config:Key` in its context.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use capstan_core::authz::{guard, Authorizer, Caller, GuardError};
use capstan_core::clock::Clock;
use capstan_core::crn::Crn;
use capstan_core::crypto::MasterKey;
use capstan_core::rng::Rng;
use capstan_proto::config::{
    ConfigSnapshot, ConfigValue, Diff, History, HistoryEntry, PatchRequest, RolloutRequest,
    RolloutView,
};
use serde::Deserialize;
use serde_json::Value;

use crate::codec::Codec;
use crate::error::ConfigError;
use crate::hub::Hub;
use crate::model::{
    self, check_env, check_key, check_match, check_namespace, check_rollout_name, Entry, EnvState,
    KeyDelta, Kind, Revision, Rollout, RolloutDelta, Viewer,
};
use crate::schema::Schema;
use crate::store::{Commit, ConfigStore, EnvKey, StoredEnv};

/// The `[service.config]` section of the server's configuration file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigSection {
    /// Watch streams one server holds at most (each is a connection too: see
    /// `max_connections`). Default 20,000.
    pub max_watchers: Option<usize>,
    /// Watch streams one principal may hold on one server. Default 1,000.
    pub max_watchers_per_principal: Option<usize>,
    /// Revisions a watcher may fall behind before it is dropped. Default 256.
    pub watch_buffer: Option<usize>,
    /// Seconds between heartbeat comments on idle watch streams. Default 15.
    pub heartbeat_seconds: Option<u64>,
    /// Longest long poll (`wait=`), seconds. Default 60.
    pub max_wait_seconds: Option<u64>,
    /// Revisions kept in each environment's change log. Default 1,000.
    pub history_revisions: Option<i64>,
    /// Log rows older than this are compacted, seconds. Default 7 days.
    pub history_max_age_seconds: Option<i64>,
    /// Largest value (JSON bytes). Default 65,536.
    pub max_value_bytes: Option<usize>,
    /// Most keys in one environment. Default 10,000.
    pub max_keys: Option<usize>,
    /// How often an open watch stream re-checks its caller's permissions, seconds. Default 60.
    pub reauthorize_seconds: Option<u64>,
}

/// The effective settings.
#[derive(Debug, Clone)]
pub struct Settings {
    /// See [`ConfigSection::max_watchers`].
    pub max_watchers: usize,
    /// See [`ConfigSection::max_watchers_per_principal`].
    pub max_watchers_per_principal: usize,
    /// See [`ConfigSection::watch_buffer`].
    pub watch_buffer: usize,
    /// See [`ConfigSection::heartbeat_seconds`].
    pub heartbeat: Duration,
    /// See [`ConfigSection::max_wait_seconds`].
    pub max_wait: Duration,
    /// See [`ConfigSection::history_revisions`].
    pub history_revisions: i64,
    /// See [`ConfigSection::history_max_age_seconds`].
    pub history_max_age: i64,
    /// See [`ConfigSection::max_value_bytes`].
    pub max_value_bytes: usize,
    /// See [`ConfigSection::max_keys`].
    pub max_keys: usize,
    /// See [`ConfigSection::reauthorize_seconds`].
    pub reauthorize: Duration,
}

impl From<&ConfigSection> for Settings {
    fn from(s: &ConfigSection) -> Settings {
        Settings {
            max_watchers: s.max_watchers.unwrap_or(20_000),
            max_watchers_per_principal: s.max_watchers_per_principal.unwrap_or(1000).max(1),
            watch_buffer: s.watch_buffer.unwrap_or(256).clamp(1, 65_536),
            heartbeat: Duration::from_secs(s.heartbeat_seconds.unwrap_or(15).max(1)),
            max_wait: Duration::from_secs(s.max_wait_seconds.unwrap_or(60).max(1))
                .min(capstan_http::LONG_POLL_MAX),
            history_revisions: s.history_revisions.unwrap_or(1000).clamp(1, 1_000_000),
            history_max_age: s
                .history_max_age_seconds
                .unwrap_or(7 * 86_400)
                .clamp(60, 100 * 365 * 86_400),
            max_value_bytes: s.max_value_bytes.unwrap_or(65_536).max(16),
            max_keys: s.max_keys.unwrap_or(10_000).max(1),
            reauthorize: Duration::from_secs(s.reauthorize_seconds.unwrap_or(60).clamp(1, 3600)),
        }
    }
}

/// Compiled schemas by their text (the text is read in each write's transaction, so no cache
/// entry can be stale: a changed schema is different text).
type SchemaCache = RwLock<HashMap<String, Arc<Schema>>>;

/// The config service.
pub struct ConfigService {
    pub(crate) settings: Settings,
    store: Arc<dyn ConfigStore>,
    codec: Arc<Codec>,
    clock: Arc<dyn Clock>,
    authorizer: Arc<dyn Authorizer>,
    pub(crate) hub: Arc<Hub>,
    schemas: SchemaCache,
}

fn crn(caller: &Caller, ns: &str, env: &str, key: &str) -> Crn {
    Crn::new(
        "config",
        &caller.tenant,
        &format!("namespace/{ns}/env/{env}/key/{key}"),
    )
}

/// The keys a revision turns from clear to secret (their history is sealed after it).
fn newly_secret(keys: &[KeyDelta]) -> BTreeSet<String> {
    keys.iter()
        .filter(|d| {
            d.after.as_ref().is_some_and(|a| a.secret)
                && d.before.as_ref().is_some_and(|b| !b.secret)
        })
        .map(|d| d.key.clone())
        .collect()
}

impl ConfigService {
    /// The service over `store`, sealing secrets under `master_key`.
    pub fn new(
        section: ConfigSection,
        store: Arc<dyn ConfigStore>,
        master_key: &MasterKey,
        clock: Arc<dyn Clock>,
        rng: Arc<dyn Rng>,
        authorizer: Arc<dyn Authorizer>,
    ) -> Result<ConfigService, ConfigError> {
        let settings = Settings::from(&section);
        let codec = Arc::new(Codec::new(master_key.sealer()?, rng));
        let hub = Arc::new(Hub::new(
            store.clone(),
            codec.clone(),
            settings.watch_buffer,
            settings.max_watchers,
            settings.max_watchers_per_principal,
        ));
        Ok(ConfigService {
            settings,
            store,
            codec,
            clock,
            authorizer,
            hub,
            schemas: RwLock::default(),
        })
    }

    /// The effective settings.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// The fan-out hub.
    pub fn hub(&self) -> &Arc<Hub> {
        &self.hub
    }

    /// Checks the names and makes the environment's key.
    pub fn target(&self, caller: &Caller, ns: &str, env: &str) -> Result<EnvKey, ConfigError> {
        check_namespace(ns)?;
        check_env(env)?;
        Ok(EnvKey {
            tenant: caller.tenant.to_string(),
            ns: ns.to_owned(),
            env: env.to_owned(),
        })
    }

    async fn guard(
        &self,
        caller: &Caller,
        action: &str,
        env: &EnvKey,
        key: &str,
    ) -> Result<(), ConfigError> {
        let resource = crn(caller, &env.ns, &env.env, key);
        let mut ctx = vec![
            ("config:Namespace", env.ns.as_str()),
            ("config:Environment", env.env.as_str()),
        ];
        if key != "*" {
            ctx.push(("config:Key", key));
        }
        Ok(guard(self.authorizer.as_ref(), caller, action, &resource, &ctx).await?)
    }

    /// The guard of an act on a namespace's schema (`…:namespace/<ns>/schema`).
    async fn guard_schema(
        &self,
        caller: &Caller,
        action: &str,
        ns: &str,
    ) -> Result<(), ConfigError> {
        let resource = Crn::new("config", &caller.tenant, &format!("namespace/{ns}/schema"));
        Ok(guard(
            self.authorizer.as_ref(),
            caller,
            action,
            &resource,
            &[("config:Namespace", ns)],
        )
        .await?)
    }

    /// Whether the caller may `config:ReadSecret` `key` (`*`: every key): a Deny is `false`,
    /// an outage an error (never a silent unmask or mask).
    async fn may_read_secrets(
        &self,
        caller: &Caller,
        env: &EnvKey,
        key: &str,
    ) -> Result<bool, ConfigError> {
        match self.guard(caller, "config:ReadSecret", env, key).await {
            Ok(()) => Ok(true),
            Err(ConfigError::Guard(GuardError::Forbidden { .. })) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Who the caller is to rollouts and secrets. Tags are read only when a rollout targets
    /// by tags; secrets are asked about only when there are any.
    pub async fn viewer(
        &self,
        caller: &Caller,
        env: &EnvKey,
        state: &EnvState,
        key: &str,
    ) -> Result<Viewer, ConfigError> {
        let mut v = Viewer {
            principal: caller.principal.to_string(),
            ..Viewer::default()
        };
        if state.rollouts.values().any(|r| r.matcher.tags.is_some()) {
            v.tags = self
                .authorizer
                .principal_tags(&caller.tenant, &caller.principal)
                .await
                .map_err(|e| match e {
                    capstan_core::authz::AuthzError::Unavailable => {
                        ConfigError::Guard(GuardError::Unavailable)
                    }
                    _ => ConfigError::Guard(GuardError::Internal),
                })?
                .into_iter()
                .collect();
        }
        let any_secret = state.values.values().any(|e| e.secret)
            || state
                .rollouts
                .values()
                .any(|r| r.set.values().any(|e| e.secret));
        if any_secret {
            v.read_secrets = self.may_read_secrets(caller, env, key).await?;
        }
        Ok(v)
    }

    /// The viewer of a watch stream: its tags always (rollouts may appear later) and whether
    /// it may read secrets.
    pub async fn watch_viewer(&self, caller: &Caller, env: &EnvKey) -> Result<Viewer, ConfigError> {
        let tags = self
            .authorizer
            .principal_tags(&caller.tenant, &caller.principal)
            .await
            .map_err(|e| match e {
                capstan_core::authz::AuthzError::Unavailable => {
                    ConfigError::Guard(GuardError::Unavailable)
                }
                _ => ConfigError::Guard(GuardError::Internal),
            })?;
        Ok(Viewer {
            principal: caller.principal.to_string(),
            tags: tags.into_iter().collect(),
            read_secrets: self.may_read_secrets(caller, env, "*").await?,
        })
    }

    async fn load(&self, env: &EnvKey) -> Result<EnvState, ConfigError> {
        let stored = self.store.load(env).await?;
        self.codec.state(env, &stored)
    }

    /// `GET /v1/config/{ns}/{env}`.
    pub async fn get_env(
        &self,
        caller: &Caller,
        ns: &str,
        env: &str,
    ) -> Result<ConfigSnapshot, ConfigError> {
        let env = self.target(caller, ns, env)?;
        self.guard(caller, "config:GetValue", &env, "*").await?;
        let state = self.load(&env).await?;
        let viewer = self.viewer(caller, &env, &state, "*").await?;
        Ok(state.view(&viewer))
    }

    /// The guard of a long poll (`config:GetValue` on every key), before it waits.
    pub async fn guard_env_read(&self, caller: &Caller, env: &EnvKey) -> Result<(), ConfigError> {
        self.guard(caller, "config:GetValue", env, "*").await
    }

    /// The guard of a watch: `config:Watch` and, since it delivers values, `config:GetValue`,
    /// on every key.
    pub async fn guard_watch(&self, caller: &Caller, env: &EnvKey) -> Result<(), ConfigError> {
        self.guard(caller, "config:Watch", env, "*").await?;
        self.guard(caller, "config:GetValue", env, "*").await
    }

    /// An open watch's periodic check: `Some(may read secrets)` while it may still watch,
    /// `None` once it may not; an error when no decision can be made now.
    pub async fn recheck_watch(
        &self,
        caller: &Caller,
        env: &EnvKey,
    ) -> Result<Option<bool>, ConfigError> {
        match self.guard_watch(caller, env).await {
            Ok(()) => Ok(Some(self.may_read_secrets(caller, env, "*").await?)),
            Err(ConfigError::Guard(GuardError::Forbidden { .. })) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The injected clock's time.
    pub fn now(&self) -> i64 {
        self.clock.now()
    }

    /// What `viewer` sees of `state` (for long polls served from the hub).
    pub async fn view_for(
        &self,
        caller: &Caller,
        env: &EnvKey,
        state: &EnvState,
    ) -> Result<ConfigSnapshot, ConfigError> {
        let viewer = self.viewer(caller, env, state, "*").await?;
        Ok(state.view(&viewer))
    }

    /// `GET /v1/config/{ns}/{env}/{key}`.
    pub async fn get_key(
        &self,
        caller: &Caller,
        ns: &str,
        env: &str,
        key: &str,
    ) -> Result<ConfigValue, ConfigError> {
        let env = self.target(caller, ns, env)?;
        check_key(key)?;
        self.guard(caller, "config:GetValue", &env, key).await?;
        let state = self.load(&env).await?;
        let viewer = self.viewer(caller, &env, &state, key).await?;
        let (value, secret, masked) = state.view_key(&viewer, key).ok_or_else(|| {
            ConfigError::NotFound(format!("no key `{key}` in {}/{}", env.ns, env.env))
        })?;
        Ok(ConfigValue {
            key: key.to_owned(),
            value,
            revision: state.revision,
            secret,
            masked,
        })
    }

    /// `body` compiled (cached by its text). A stored schema that no longer compiles fails
    /// closed: writes are refused.
    fn compiled(&self, body: Option<&str>) -> Result<Option<Arc<Schema>>, ConfigError> {
        let Some(body) = body else {
            return Ok(None);
        };
        if let Some(s) = self
            .schemas
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(body)
        {
            return Ok(Some(s.clone()));
        }
        let v: Value = serde_json::from_str(body)
            .map_err(|_| ConfigError::Internal("stored schema is not JSON".into()))?;
        let compiled =
            Arc::new(Schema::compile(v).map_err(|e| {
                ConfigError::Internal(format!("stored schema does not compile: {e}"))
            })?);
        let mut cache = self.schemas.write().unwrap_or_else(PoisonError::into_inner);
        if cache.len() >= 1000 {
            cache.clear();
        }
        cache.insert(body.to_owned(), compiled.clone());
        Ok(Some(compiled))
    }

    /// The namespace's schema as stored now (outside a write).
    async fn current_schema(
        &self,
        tenant: &str,
        ns: &str,
    ) -> Result<Option<Arc<Schema>>, ConfigError> {
        let body = self.store.get_schema(tenant, ns).await?;
        self.compiled(body.as_deref())
    }

    /// Seals, in the log, the earlier values of keys that just became secret.
    async fn reseal_history(
        &self,
        env: &EnvKey,
        keys: BTreeSet<String>,
    ) -> Result<(), ConfigError> {
        if keys.is_empty() {
            return Ok(());
        }
        let codec = self.codec.clone();
        let rewrite = |l: &crate::store::StoredLog| codec.reseal(env, l, &keys);
        self.store.rewrite_log(env, &rewrite).await?;
        Ok(())
    }

    fn check_value(&self, key: &str, v: &Value) -> Result<(), ConfigError> {
        check_key(key)?;
        let len = serde_json::to_vec(v).map(|b| b.len()).unwrap_or(usize::MAX);
        if len > self.settings.max_value_bytes {
            return Err(ConfigError::BadRequest(format!(
                "the value of `{key}` is {len} bytes; at most {} are allowed",
                self.settings.max_value_bytes
            )));
        }
        Ok(())
    }

    fn commit(
        &self,
        env: &EnvKey,
        r: &Revision,
        rollout: Option<(String, Option<String>)>,
    ) -> Result<Commit, ConfigError> {
        let mut c = Commit {
            actor: r.actor.clone(),
            at: r.at,
            kind: r.kind.as_str().into(),
            body: self.codec.revision_body(env, r)?,
            rollout,
            ..Commit::default()
        };
        for d in &r.keys {
            match &d.after {
                Some(e) => c.upserts.push(self.codec.row(env, &d.key, e)?),
                None => c.deletes.push(d.key.clone()),
            }
        }
        Ok(c)
    }

    fn check_expect(cur: &StoredEnv, expect: Option<i64>) -> Result<(), ConfigError> {
        match expect {
            Some(e) if e != cur.revision => Err(ConfigError::Conflict(format!(
                "the revision is {}, not {e}: re-read and retry",
                cur.revision
            ))),
            _ => Ok(()),
        }
    }

    fn check_against_schema(
        schema: Option<&Schema>,
        state: &EnvState,
        what: &str,
    ) -> Result<(), ConfigError> {
        if let Some(s) = schema {
            s.check(&state.base_object(), what)?;
            for (name, r) in state.rollouts.iter() {
                let mut merged = state.base_object();
                if let Value::Object(m) = &mut merged {
                    for (k, e) in &r.set {
                        m.insert(k.clone(), e.value.clone());
                    }
                }
                s.check(&merged, &format!("rollout `{name}`"))?;
            }
        }
        Ok(())
    }

    /// Sets and deletes base keys in one revision: PUT, DELETE and PATCH. `strict_delete`: a
    /// missing key to delete is a 404 (DELETE) rather than nothing (PATCH).
    #[allow(clippy::too_many_arguments)]
    async fn write_base(
        &self,
        caller: &Caller,
        env: &EnvKey,
        set: BTreeMap<String, Value>,
        secret: Vec<String>,
        delete: Vec<String>,
        expect: Option<i64>,
        strict_delete: bool,
    ) -> Result<i64, ConfigError> {
        let actor = caller.principal.to_string();
        let at = self.clock.now();
        let sealed = std::sync::Mutex::new(BTreeSet::new());
        let plan = |cur: &StoredEnv| -> Result<Commit, ConfigError> {
            Self::check_expect(cur, expect)?;
            let schema = self.compiled(cur.schema.as_deref())?;
            let mut state = self.codec.state(env, cur)?;
            let mut keys = Vec::new();
            for (k, v) in &set {
                let before = state.values.get(k).cloned();
                let is_secret = secret.contains(k)
                    || before.as_ref().is_some_and(|b| b.secret)
                    || schema.as_ref().is_some_and(|s| s.secret_keys.contains(k));
                keys.push(KeyDelta {
                    key: k.clone(),
                    before,
                    after: Some(Entry {
                        value: v.clone(),
                        secret: is_secret,
                    }),
                });
            }
            for k in &delete {
                match state.values.get(k) {
                    Some(b) => keys.push(KeyDelta {
                        key: k.clone(),
                        before: Some(b.clone()),
                        after: None,
                    }),
                    None if strict_delete => {
                        return Err(ConfigError::NotFound(format!(
                            "no key `{k}` in {}/{}",
                            env.ns, env.env
                        )))
                    }
                    None => {}
                }
            }
            let r = Revision {
                revision: cur.revision + 1,
                actor: actor.clone(),
                at,
                kind: Kind::Write,
                keys,
                rollout: None,
            };
            if model::is_noop(&r.keys) {
                return Ok(Commit::noop());
            }
            *sealed.lock().unwrap_or_else(PoisonError::into_inner) = newly_secret(&r.keys);
            state.apply(&r);
            self.check_size(&state)?;
            Self::check_against_schema(schema.as_deref(), &state, "the write")?;
            self.commit(env, &r, None)
        };
        let rev = self.store.write(env, &plan).await?;
        let sealed = std::mem::take(&mut *sealed.lock().unwrap_or_else(PoisonError::into_inner));
        self.reseal_history(env, sealed).await?;
        Ok(rev)
    }

    fn check_size(&self, state: &EnvState) -> Result<(), ConfigError> {
        if state.values.len() > self.settings.max_keys {
            return Err(ConfigError::BadRequest(format!(
                "an environment holds at most {} keys",
                self.settings.max_keys
            )));
        }
        Ok(())
    }

    /// `PUT /v1/config/{ns}/{env}/{key}`.
    #[allow(clippy::too_many_arguments)]
    pub async fn put(
        &self,
        caller: &Caller,
        ns: &str,
        env: &str,
        key: &str,
        value: Value,
        secret: bool,
        if_match: Option<i64>,
    ) -> Result<i64, ConfigError> {
        let env = self.target(caller, ns, env)?;
        self.check_value(key, &value)?;
        self.guard(caller, "config:PutValue", &env, key).await?;
        let secret = if secret { vec![key.to_owned()] } else { vec![] };
        self.write_base(
            caller,
            &env,
            BTreeMap::from([(key.to_owned(), value)]),
            secret,
            vec![],
            if_match,
            false,
        )
        .await
    }

    /// `DELETE /v1/config/{ns}/{env}/{key}`.
    pub async fn delete(
        &self,
        caller: &Caller,
        ns: &str,
        env: &str,
        key: &str,
        if_match: Option<i64>,
    ) -> Result<i64, ConfigError> {
        let env = self.target(caller, ns, env)?;
        check_key(key)?;
        self.guard(caller, "config:DeleteValue", &env, key).await?;
        self.write_base(
            caller,
            &env,
            BTreeMap::new(),
            vec![],
            vec![key.to_owned()],
            if_match,
            true,
        )
        .await
    }

    /// `PATCH /v1/config/{ns}/{env}`: every key guarded, all applied in one revision or none.
    pub async fn patch(
        &self,
        caller: &Caller,
        ns: &str,
        env: &str,
        req: PatchRequest,
    ) -> Result<i64, ConfigError> {
        let env = self.target(caller, ns, env)?;
        if req.set.is_empty() && req.delete.is_empty() {
            return Err(ConfigError::BadRequest(
                "a patch must set or delete at least one key".into(),
            ));
        }
        if req.set.len() + req.delete.len() > 1000 {
            return Err(ConfigError::BadRequest(
                "a patch changes at most 1000 keys".into(),
            ));
        }
        for (k, v) in &req.set {
            self.check_value(k, v)?;
        }
        for k in req.delete.iter().chain(&req.secret) {
            check_key(k)?;
        }
        if let Some(k) = req.delete.iter().find(|k| req.set.contains_key(*k)) {
            return Err(ConfigError::BadRequest(format!(
                "`{k}` is both set and deleted"
            )));
        }
        if let Some(k) = req.secret.iter().find(|k| !req.set.contains_key(*k)) {
            return Err(ConfigError::BadRequest(format!(
                "`{k}` is marked secret but not set"
            )));
        }
        for k in req.set.keys() {
            self.guard(caller, "config:PutValue", &env, k).await?;
        }
        for k in &req.delete {
            self.guard(caller, "config:DeleteValue", &env, k).await?;
        }
        self.write_base(
            caller,
            &env,
            req.set,
            req.secret,
            req.delete,
            req.expect_revision,
            false,
        )
        .await
    }

    /// The current state and the log rows after `from` (decoded), oldest first.
    async fn state_and_log(
        &self,
        env: &EnvKey,
        from: i64,
    ) -> Result<(EnvState, Vec<Revision>), ConfigError> {
        let state = self.load(env).await?;
        let want = (state.revision - from).max(0);
        if want > self.settings.history_revisions.max(1) + 1000 {
            return Ok((state, Vec::new()));
        }
        let rows = self.store.log_after(env, from, want.max(1)).await?;
        let mut log = Vec::with_capacity(rows.len());
        for r in &rows {
            log.push(self.codec.revision(env, r)?);
        }
        Ok((state, log))
    }

    fn gone(env: &EnvKey, rev: i64) -> ConfigError {
        ConfigError::NotFound(format!(
            "revision {rev} of {}/{} is not in the kept history (compacted or never made)",
            env.ns, env.env
        ))
    }

    /// `GET …/history`.
    pub async fn history(
        &self,
        caller: &Caller,
        ns: &str,
        env: &str,
        limit: Option<i64>,
        before: Option<i64>,
    ) -> Result<History, ConfigError> {
        let env = self.target(caller, ns, env)?;
        self.guard(caller, "config:ListHistory", &env, "*").await?;
        let limit = limit.unwrap_or(50).clamp(1, 1000);
        let rows = self
            .store
            .log_before(&env, before.unwrap_or(i64::MAX), limit)
            .await?;
        let mut entries = Vec::with_capacity(rows.len());
        for r in &rows {
            let (keys, rollout) = Codec::summary(r)?;
            entries.push(HistoryEntry {
                revision: r.revision,
                actor: r.actor.clone(),
                at: r.at,
                kind: r.kind.clone(),
                keys,
                rollout,
            });
        }
        Ok(History {
            entries,
            oldest: self.store.oldest_log(&env).await?.unwrap_or(0),
        })
    }

    /// `GET …/diff?from=&to=`: base values (secrets masked unless the caller may read them).
    pub async fn diff(
        &self,
        caller: &Caller,
        ns: &str,
        env: &str,
        from: i64,
        to: Option<i64>,
    ) -> Result<Diff, ConfigError> {
        let env = self.target(caller, ns, env)?;
        if from < 0 || to.is_some_and(|t| t < 0) {
            return Err(ConfigError::BadRequest("revisions are ≥ 0".into()));
        }
        self.guard(caller, "config:ListHistory", &env, "*").await?;
        self.guard(caller, "config:GetValue", &env, "*").await?;
        let lo = to.map_or(from, |t| t.min(from));
        let (state, log) = self.state_and_log(&env, lo).await?;
        let to = to.unwrap_or(state.revision);
        let at_from = state.at(from, &log).ok_or_else(|| Self::gone(&env, from))?;
        let at_to = state.at(to, &log).ok_or_else(|| Self::gone(&env, to))?;
        let mut secret: BTreeSet<String> = self
            .current_schema(&env.tenant, &env.ns)
            .await?
            .map(|s| s.secret_keys.clone())
            .unwrap_or_default();
        secret.extend(
            state
                .values
                .iter()
                .filter(|(_, e)| e.secret)
                .map(|(k, _)| k.clone()),
        );
        let mut viewer = Viewer::default();
        let any_secret = at_from
            .values
            .iter()
            .chain(at_to.values.iter())
            .any(|(k, e)| e.secret || secret.contains(k));
        if any_secret {
            viewer.read_secrets = self.may_read_secrets(caller, &env, "*").await?;
        }
        Ok(Diff {
            from,
            to,
            changes: model::diff(&at_from, &at_to, &viewer, &secret),
        })
    }

    /// `POST …/rollback`: a new revision whose base values are those of `to`. Keys secret now
    /// (or by the schema) stay secret.
    pub async fn rollback(
        &self,
        caller: &Caller,
        ns: &str,
        env: &str,
        to: i64,
    ) -> Result<i64, ConfigError> {
        let env = self.target(caller, ns, env)?;
        if to < 0 {
            return Err(ConfigError::BadRequest("to_revision must be ≥ 0".into()));
        }
        self.guard(caller, "config:Rollback", &env, "*").await?;
        let actor = caller.principal.to_string();
        for _ in 0..5 {
            let (state, log) = self.state_and_log(&env, to).await?;
            let target = state.at(to, &log).ok_or_else(|| Self::gone(&env, to))?;
            let seen = state.revision;
            let at = self.clock.now();
            let plan = |cur: &StoredEnv| -> Result<Commit, ConfigError> {
                if cur.revision != seen {
                    return Err(ConfigError::Conflict("changed concurrently".into()));
                }
                let schema = self.compiled(cur.schema.as_deref())?;
                let secret = schema
                    .as_ref()
                    .map(|s| s.secret_keys.clone())
                    .unwrap_or_default();
                let mut now = state.clone();
                let r = Revision {
                    revision: cur.revision + 1,
                    actor: actor.clone(),
                    at,
                    kind: Kind::Rollback,
                    keys: model::deltas_to(&state, &target, &secret),
                    rollout: None,
                };
                if model::is_noop(&r.keys) {
                    return Ok(Commit::noop());
                }
                now.apply(&r);
                self.check_size(&now)?;
                Self::check_against_schema(schema.as_deref(), &now, &format!("revision {to}"))?;
                self.commit(&env, &r, None)
            };
            match self.store.write(&env, &plan).await {
                Err(ConfigError::Conflict(_)) => continue,
                other => return other,
            }
        }
        Err(ConfigError::Conflict(
            "the environment kept changing; retry the rollback".into(),
        ))
    }

    /// `PUT /v1/config/{ns}/schema`: refused (422) if a current value of any environment
    /// violates it. Validating reveals whether secret values match it, so a caller must be
    /// allowed to read the secrets of every environment that holds any. Keys it annotates
    /// secret are then sealed (and their history) where stored clear; a rollout holding such
    /// a key in clear must be re-put or aborted first (409).
    pub async fn put_schema(
        &self,
        caller: &Caller,
        ns: &str,
        schema: Value,
    ) -> Result<(), ConfigError> {
        check_namespace(ns)?;
        self.guard_schema(caller, "config:PutSchema", ns).await?;
        let body =
            serde_json::to_string(&schema).map_err(|e| ConfigError::BadRequest(e.to_string()))?;
        let compiled = Schema::compile(schema)?;
        let tenant = caller.tenant.to_string();
        let envs = self.store.list_envs(&tenant, ns).await?;
        if envs.len() > 1000 {
            return Err(ConfigError::BadRequest(
                "a namespace with more than 1000 environments cannot take a schema".into(),
            ));
        }
        let mut keys = Vec::with_capacity(envs.len());
        for e in &envs {
            let env = EnvKey {
                tenant: tenant.clone(),
                ns: ns.to_owned(),
                env: e.clone(),
            };
            let state = self.load(&env).await?;
            let holds_secrets = state.values.values().any(|v| v.secret)
                || state
                    .rollouts
                    .values()
                    .any(|r| r.set.values().any(|v| v.secret));
            if holds_secrets {
                self.guard(caller, "config:ReadSecret", &env, "*").await?;
            }
            Self::check_against_schema(Some(&compiled), &state, &format!("environment `{e}`"))?;
            if let Some((name, key)) = state.rollouts.iter().find_map(|(n, r)| {
                r.set
                    .iter()
                    .find(|(k, v)| !v.secret && compiled.secret_keys.contains(*k))
                    .map(|(k, _)| (n.clone(), k.clone()))
            }) {
                return Err(ConfigError::Conflict(format!(
                    "rollout `{name}` of environment `{e}` holds `{key}` in clear, which the \
                     schema makes secret: re-put or abort the rollout first"
                )));
            }
            keys.push(env);
        }
        self.store
            .put_schema(&tenant, ns, &body, self.clock.now())
            .await?;
        for env in keys {
            self.seal_to_schema(caller, &env).await?;
        }
        Ok(())
    }

    /// Rewrites the keys of `env` its schema makes secret, where stored clear, as secrets
    /// (same values, one revision; nothing if none), and seals their history.
    async fn seal_to_schema(&self, caller: &Caller, env: &EnvKey) -> Result<(), ConfigError> {
        let actor = caller.principal.to_string();
        let at = self.clock.now();
        let sealed = std::sync::Mutex::new(BTreeSet::new());
        let plan = |cur: &StoredEnv| -> Result<Commit, ConfigError> {
            let Some(schema) = self.compiled(cur.schema.as_deref())? else {
                return Ok(Commit::noop());
            };
            let state = self.codec.state(env, cur)?;
            let deltas: Vec<KeyDelta> = schema
                .secret_keys
                .iter()
                .filter_map(|k| {
                    let b = state.values.get(k).filter(|b| !b.secret)?;
                    Some(KeyDelta {
                        key: k.clone(),
                        before: Some(b.clone()),
                        after: Some(Entry {
                            value: b.value.clone(),
                            secret: true,
                        }),
                    })
                })
                .collect();
            if deltas.is_empty() {
                return Ok(Commit::noop());
            }
            *sealed.lock().unwrap_or_else(PoisonError::into_inner) = newly_secret(&deltas);
            let r = Revision {
                revision: cur.revision + 1,
                actor: actor.clone(),
                at,
                kind: Kind::Write,
                keys: deltas,
                rollout: None,
            };
            self.commit(env, &r, None)
        };
        self.store.write(env, &plan).await?;
        let sealed = std::mem::take(&mut *sealed.lock().unwrap_or_else(PoisonError::into_inner));
        self.reseal_history(env, sealed).await
    }

    /// `GET /v1/config/{ns}/schema`.
    pub async fn get_schema(&self, caller: &Caller, ns: &str) -> Result<Value, ConfigError> {
        check_namespace(ns)?;
        self.guard_schema(caller, "config:GetSchema", ns).await?;
        match self.current_schema(caller.tenant.as_str(), ns).await? {
            Some(s) => Ok(s.source.clone()),
            None => Err(ConfigError::NotFound(format!(
                "namespace `{ns}` has no schema"
            ))),
        }
    }

    /// `DELETE /v1/config/{ns}/schema`.
    pub async fn delete_schema(&self, caller: &Caller, ns: &str) -> Result<(), ConfigError> {
        check_namespace(ns)?;
        self.guard_schema(caller, "config:DeleteSchema", ns).await?;
        let tenant = caller.tenant.to_string();
        if !self
            .store
            .delete_schema(&tenant, ns, self.clock.now())
            .await?
        {
            return Err(ConfigError::NotFound(format!(
                "namespace `{ns}` has no schema"
            )));
        }
        Ok(())
    }

    fn rollout_view(name: &str, r: &Rollout, read_secrets: bool) -> RolloutView {
        let viewer = Viewer {
            read_secrets,
            ..Viewer::default()
        };
        let masked = EnvState {
            revision: r.revision,
            values: r.set.clone(),
            rollouts: Arc::default(),
        }
        .view(&viewer);
        RolloutView {
            name: name.to_owned(),
            matcher: r.matcher.clone(),
            set: masked.values,
            revision: r.revision,
        }
    }

    /// `PUT …/rollouts/{name}`: creates or replaces a rollout, as a new revision. What a
    /// rollout sets, matching principals read: the caller must be allowed to write every key
    /// it sets (`config:PutValue`), besides `config:ManageRollout`.
    pub async fn put_rollout(
        &self,
        caller: &Caller,
        ns: &str,
        env: &str,
        name: &str,
        req: RolloutRequest,
    ) -> Result<RolloutView, ConfigError> {
        let env = self.target(caller, ns, env)?;
        check_rollout_name(name)?;
        check_match(&req.matcher)?;
        if req.set.is_empty() || req.set.len() > 1000 {
            return Err(ConfigError::BadRequest("a rollout sets 1-1000 keys".into()));
        }
        for (k, v) in &req.set {
            self.check_value(k, v)?;
        }
        self.guard(caller, "config:ManageRollout", &env, "*")
            .await?;
        for k in req.set.keys() {
            self.guard(caller, "config:PutValue", &env, k).await?;
        }
        let actor = caller.principal.to_string();
        let at = self.clock.now();
        let made = std::sync::Mutex::new(None);
        let plan = |cur: &StoredEnv| -> Result<Commit, ConfigError> {
            let schema = self.compiled(cur.schema.as_deref())?;
            let mut state = self.codec.state(&env, cur)?;
            if !state.rollouts.contains_key(name) && state.rollouts.len() >= 50 {
                return Err(ConfigError::BadRequest(
                    "an environment has at most 50 rollouts".into(),
                ));
            }
            let revision = cur.revision + 1;
            let set = req
                .set
                .iter()
                .map(|(k, v)| {
                    let secret = state.values.get(k).is_some_and(|e| e.secret)
                        || schema.as_ref().is_some_and(|s| s.secret_keys.contains(k));
                    (
                        k.clone(),
                        Entry {
                            value: v.clone(),
                            secret,
                        },
                    )
                })
                .collect();
            let after = Rollout {
                matcher: req.matcher.clone(),
                set,
                revision,
            };
            let r = Revision {
                revision,
                actor: actor.clone(),
                at,
                kind: Kind::Rollout,
                keys: vec![],
                rollout: Some(RolloutDelta {
                    name: name.to_owned(),
                    before: state.rollouts.get(name).cloned(),
                    after: Some(after.clone()),
                }),
            };
            state.apply(&r);
            Self::check_against_schema(schema.as_deref(), &state, "the rollout")?;
            let body = self.codec.rollout_body(&env, &after)?;
            *made.lock().unwrap_or_else(PoisonError::into_inner) = Some(after);
            self.commit(&env, &r, Some((name.to_owned(), Some(body))))
        };
        self.store.write(&env, &plan).await?;
        let after = made
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
            .ok_or_else(|| ConfigError::Internal("the rollout was not planned".into()))?;
        let read = if after.set.values().any(|e| e.secret) {
            self.may_read_secrets(caller, &env, "*").await?
        } else {
            false
        };
        Ok(Self::rollout_view(name, &after, read))
    }

    /// `GET …/rollouts` (their values are values: `config:GetValue` on every key too).
    pub async fn list_rollouts(
        &self,
        caller: &Caller,
        ns: &str,
        env: &str,
    ) -> Result<Vec<RolloutView>, ConfigError> {
        let env = self.target(caller, ns, env)?;
        self.guard(caller, "config:GetRollout", &env, "*").await?;
        self.guard(caller, "config:GetValue", &env, "*").await?;
        let state = self.load(&env).await?;
        let read = if state
            .rollouts
            .values()
            .any(|r| r.set.values().any(|e| e.secret))
        {
            self.may_read_secrets(caller, &env, "*").await?
        } else {
            false
        };
        Ok(state
            .rollouts
            .iter()
            .map(|(n, r)| Self::rollout_view(n, r, read))
            .collect())
    }

    /// `GET …/rollouts/{name}`.
    pub async fn get_rollout(
        &self,
        caller: &Caller,
        ns: &str,
        env: &str,
        name: &str,
    ) -> Result<RolloutView, ConfigError> {
        check_rollout_name(name)?;
        self.list_rollouts(caller, ns, env)
            .await?
            .into_iter()
            .find(|r| r.name == name)
            .ok_or_else(|| ConfigError::NotFound(format!("no rollout `{name}`")))
    }

    /// `POST …/rollouts/{name}/promote` (`promote`: merge into the base; the caller must be
    /// allowed to write each key it sets) or `…/abort` (drop).
    pub async fn end_rollout(
        &self,
        caller: &Caller,
        ns: &str,
        env: &str,
        name: &str,
        promote: bool,
    ) -> Result<i64, ConfigError> {
        let env = self.target(caller, ns, env)?;
        check_rollout_name(name)?;
        self.guard(caller, "config:ManageRollout", &env, "*")
            .await?;
        // The keys the caller was allowed to write: the plan refuses a rollout that changed
        // since (it would set keys nobody checked).
        let mut allowed: Option<BTreeSet<String>> = None;
        if promote {
            let state = self.load(&env).await?;
            let r = state
                .rollouts
                .get(name)
                .ok_or_else(|| ConfigError::NotFound(format!("no rollout `{name}`")))?;
            for k in r.set.keys() {
                self.guard(caller, "config:PutValue", &env, k).await?;
            }
            allowed = Some(r.set.keys().cloned().collect());
        }
        let actor = caller.principal.to_string();
        let at = self.clock.now();
        let plan = |cur: &StoredEnv| -> Result<Commit, ConfigError> {
            let schema = self.compiled(cur.schema.as_deref())?;
            let mut state = self.codec.state(&env, cur)?;
            let Some(before) = state.rollouts.get(name).cloned() else {
                return Err(ConfigError::NotFound(format!("no rollout `{name}`")));
            };
            if let Some(allowed) = &allowed {
                if before.set.keys().any(|k| !allowed.contains(k)) {
                    return Err(ConfigError::Conflict(format!(
                        "rollout `{name}` changed while it was being promoted; retry"
                    )));
                }
            }
            let keys = if promote {
                before
                    .set
                    .iter()
                    .map(|(k, e)| {
                        let base = state.values.get(k).cloned();
                        let secret = e.secret
                            || base.as_ref().is_some_and(|b| b.secret)
                            || schema.as_ref().is_some_and(|s| s.secret_keys.contains(k));
                        KeyDelta {
                            key: k.clone(),
                            before: base,
                            after: Some(Entry {
                                value: e.value.clone(),
                                secret,
                            }),
                        }
                    })
                    .collect()
            } else {
                vec![]
            };
            let r = Revision {
                revision: cur.revision + 1,
                actor: actor.clone(),
                at,
                kind: if promote { Kind::Promote } else { Kind::Abort },
                keys,
                rollout: Some(RolloutDelta {
                    name: name.to_owned(),
                    before: Some(before),
                    after: None,
                }),
            };
            state.apply(&r);
            if promote {
                self.check_size(&state)?;
                Self::check_against_schema(schema.as_deref(), &state, "the promotion")?;
            }
            self.commit(&env, &r, Some((name.to_owned(), None)))
        };
        self.store.write(&env, &plan).await
    }

    /// Compacts every change log (by count and age); how many rows went.
    pub async fn compact(&self) -> Result<u64, ConfigError> {
        Ok(self
            .store
            .compact(
                self.settings.history_revisions,
                self.clock.now() - self.settings.history_max_age,
            )
            .await?)
    }

    /// The store (for the resume path of watches).
    pub(crate) fn store(&self) -> &Arc<dyn ConfigStore> {
        &self.store
    }

    /// The codec.
    pub(crate) fn codec(&self) -> &Arc<Codec> {
        &self.codec
    }
}
