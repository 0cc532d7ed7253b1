//! Values, rollouts and revisions to and from their stored form. A secret is sealed under the
//! master key (AES-256-GCM) with its tenant, namespace, environment and key as associated data,
//! so a sealed value copied to another row does not open; the store never sees it in clear.
//!
//! Stored forms: a value row holds JSON text, or base64 of the sealed JSON text when secret. In
//! log and rollout bodies (JSON), a value is `{"value": …}` or `{"sealed": "<base64>"}`.

use std::collections::BTreeMap;
use std::sync::Arc;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use capstan_core::crypto::Sealer;
use capstan_core::rng::Rng;
use capstan_proto::config::RolloutMatch;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::ConfigError;
use crate::model::{Entry, EnvState, KeyDelta, Kind, Revision, Rollout, RolloutDelta};
use crate::store::{EnvKey, StoredEnv, StoredLog, StoredValue};

/// Seals and opens, encodes and decodes.
pub struct Codec {
    sealer: Sealer,
    rng: Arc<dyn Rng>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoredEntry {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    value: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    sealed: Option<String>,
}

#[derive(Serialize, Deserialize)]
struct StoredRolloutBody {
    #[serde(rename = "match")]
    matcher: RolloutMatch,
    set: BTreeMap<String, StoredEntry>,
    revision: i64,
}

#[derive(Serialize, Deserialize)]
struct StoredDelta {
    key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    before: Option<StoredEntry>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    after: Option<StoredEntry>,
}

#[derive(Serialize, Deserialize)]
struct StoredRolloutDelta {
    name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    before: Option<StoredRolloutBody>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    after: Option<StoredRolloutBody>,
}

#[derive(Serialize, Deserialize)]
struct StoredRevision {
    keys: Vec<StoredDelta>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    rollout: Option<StoredRolloutDelta>,
}

fn corrupt(what: &str) -> ConfigError {
    ConfigError::Internal(format!("corrupt stored config: {what}"))
}

impl Codec {
    /// A codec sealing with `sealer`.
    pub fn new(sealer: Sealer, rng: Arc<dyn Rng>) -> Codec {
        Codec { sealer, rng }
    }

    fn aad(env: &EnvKey, key: &str) -> Vec<u8> {
        format!(
            "capstan-config\0{}\0{}\0{}\0{key}",
            env.tenant, env.ns, env.env
        )
        .into_bytes()
    }

    fn seal(&self, env: &EnvKey, key: &str, v: &Value) -> Result<String, ConfigError> {
        let text = serde_json::to_vec(v).map_err(|e| ConfigError::Internal(e.to_string()))?;
        let sealed = self
            .sealer
            .seal(self.rng.as_ref(), &text, &Self::aad(env, key))?;
        Ok(STANDARD.encode(sealed))
    }

    fn open(&self, env: &EnvKey, key: &str, sealed: &str) -> Result<Value, ConfigError> {
        let bytes = STANDARD
            .decode(sealed)
            .map_err(|_| corrupt("sealed value is not base64"))?;
        let text = self.sealer.open(&bytes, &Self::aad(env, key))?;
        serde_json::from_slice(&text).map_err(|_| corrupt("sealed value is not JSON"))
    }

    fn entry_out(&self, env: &EnvKey, key: &str, e: &Entry) -> Result<StoredEntry, ConfigError> {
        Ok(if e.secret {
            StoredEntry {
                value: None,
                sealed: Some(self.seal(env, key, &e.value)?),
            }
        } else {
            StoredEntry {
                value: Some(e.value.clone()),
                sealed: None,
            }
        })
    }

    fn entry_in(&self, env: &EnvKey, key: &str, s: StoredEntry) -> Result<Entry, ConfigError> {
        match (s.value, s.sealed) {
            (Some(value), None) => Ok(Entry {
                value,
                secret: false,
            }),
            (None, Some(sealed)) => Ok(Entry {
                value: self.open(env, key, &sealed)?,
                secret: true,
            }),
            _ => Err(corrupt("a value must be either clear or sealed")),
        }
    }

    /// A value row.
    pub fn row(&self, env: &EnvKey, key: &str, e: &Entry) -> Result<StoredValue, ConfigError> {
        let value = if e.secret {
            self.seal(env, key, &e.value)?
        } else {
            serde_json::to_string(&e.value).map_err(|e| ConfigError::Internal(e.to_string()))?
        };
        Ok(StoredValue {
            key: key.to_owned(),
            value,
            secret: e.secret,
        })
    }

    /// A value row, decoded.
    pub fn from_row(&self, env: &EnvKey, r: &StoredValue) -> Result<Entry, ConfigError> {
        let value = if r.secret {
            self.open(env, &r.key, &r.value)?
        } else {
            serde_json::from_str(&r.value).map_err(|_| corrupt("value is not JSON"))?
        };
        Ok(Entry {
            value,
            secret: r.secret,
        })
    }

    fn rollout_out(&self, env: &EnvKey, r: &Rollout) -> Result<StoredRolloutBody, ConfigError> {
        let mut set = BTreeMap::new();
        for (k, e) in &r.set {
            set.insert(k.clone(), self.entry_out(env, k, e)?);
        }
        Ok(StoredRolloutBody {
            matcher: r.matcher.clone(),
            set,
            revision: r.revision,
        })
    }

    fn rollout_in(&self, env: &EnvKey, b: StoredRolloutBody) -> Result<Rollout, ConfigError> {
        let mut set = BTreeMap::new();
        for (k, s) in b.set {
            let e = self.entry_in(env, &k, s)?;
            set.insert(k, e);
        }
        Ok(Rollout {
            matcher: b.matcher,
            set,
            revision: b.revision,
        })
    }

    /// A rollout row's body.
    pub fn rollout_body(&self, env: &EnvKey, r: &Rollout) -> Result<String, ConfigError> {
        serde_json::to_string(&self.rollout_out(env, r)?)
            .map_err(|e| ConfigError::Internal(e.to_string()))
    }

    /// A rollout row, decoded.
    pub fn rollout(&self, env: &EnvKey, body: &str) -> Result<Rollout, ConfigError> {
        let b: StoredRolloutBody =
            serde_json::from_str(body).map_err(|_| corrupt("rollout body"))?;
        self.rollout_in(env, b)
    }

    /// The log body of a revision.
    pub fn revision_body(&self, env: &EnvKey, r: &Revision) -> Result<String, ConfigError> {
        let mut keys = Vec::with_capacity(r.keys.len());
        for d in &r.keys {
            keys.push(StoredDelta {
                key: d.key.clone(),
                before: d
                    .before
                    .as_ref()
                    .map(|e| self.entry_out(env, &d.key, e))
                    .transpose()?,
                after: d
                    .after
                    .as_ref()
                    .map(|e| self.entry_out(env, &d.key, e))
                    .transpose()?,
            });
        }
        let rollout = match &r.rollout {
            Some(rd) => Some(StoredRolloutDelta {
                name: rd.name.clone(),
                before: rd
                    .before
                    .as_ref()
                    .map(|x| self.rollout_out(env, x))
                    .transpose()?,
                after: rd
                    .after
                    .as_ref()
                    .map(|x| self.rollout_out(env, x))
                    .transpose()?,
            }),
            None => None,
        };
        serde_json::to_string(&StoredRevision { keys, rollout })
            .map_err(|e| ConfigError::Internal(e.to_string()))
    }

    /// A log row, decoded.
    pub fn revision(&self, env: &EnvKey, l: &StoredLog) -> Result<Revision, ConfigError> {
        let b: StoredRevision = serde_json::from_str(&l.body).map_err(|_| corrupt("log body"))?;
        let mut keys = Vec::with_capacity(b.keys.len());
        for d in b.keys {
            let before = d
                .before
                .map(|s| self.entry_in(env, &d.key, s))
                .transpose()?;
            let after = d.after.map(|s| self.entry_in(env, &d.key, s)).transpose()?;
            keys.push(KeyDelta {
                key: d.key,
                before,
                after,
            });
        }
        let rollout = match b.rollout {
            Some(rd) => Some(RolloutDelta {
                before: rd.before.map(|x| self.rollout_in(env, x)).transpose()?,
                after: rd.after.map(|x| self.rollout_in(env, x)).transpose()?,
                name: rd.name,
            }),
            None => None,
        };
        Ok(Revision {
            revision: l.revision,
            actor: l.actor.clone(),
            at: l.at,
            kind: Kind::parse(&l.kind).ok_or_else(|| corrupt("log kind"))?,
            keys,
            rollout,
        })
    }

    /// A log row with every value of `keys` sealed (`None` if it held none of them in clear):
    /// when a key becomes secret, its history must not keep it readable.
    pub fn reseal(
        &self,
        env: &EnvKey,
        l: &StoredLog,
        keys: &std::collections::BTreeSet<String>,
    ) -> Result<Option<String>, ConfigError> {
        let mut r = self.revision(env, l)?;
        let mut changed = false;
        let mut seal = |key: &str, e: &mut Entry| {
            if keys.contains(key) && !e.secret {
                e.secret = true;
                changed = true;
            }
        };
        for d in &mut r.keys {
            for e in [&mut d.before, &mut d.after].into_iter().flatten() {
                seal(&d.key, e);
            }
        }
        if let Some(rd) = &mut r.rollout {
            for side in [&mut rd.before, &mut rd.after].into_iter().flatten() {
                for (k, e) in side.set.iter_mut() {
                    seal(k, e);
                }
            }
        }
        if !changed {
            return Ok(None);
        }
        self.revision_body(env, &r).map(Some)
    }

    /// The base keys a log row changed and the rollout it concerned, without opening secrets
    /// (for history).
    pub fn summary(l: &StoredLog) -> Result<(Vec<String>, Option<String>), ConfigError> {
        let b: StoredRevision = serde_json::from_str(&l.body).map_err(|_| corrupt("log body"))?;
        Ok((
            b.keys.into_iter().map(|d| d.key).collect(),
            b.rollout.map(|r| r.name),
        ))
    }

    /// A stored namespace-environment, decoded.
    pub fn state(&self, env: &EnvKey, s: &StoredEnv) -> Result<EnvState, ConfigError> {
        let mut values = BTreeMap::new();
        for r in &s.values {
            values.insert(r.key.clone(), self.from_row(env, r)?);
        }
        let mut rollouts = BTreeMap::new();
        for r in &s.rollouts {
            rollouts.insert(r.name.clone(), self.rollout(env, &r.body)?);
        }
        Ok(EnvState {
            revision: s.revision,
            values,
            rollouts: Arc::new(rollouts),
        })
    }
}
