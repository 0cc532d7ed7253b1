//! The config domain, with no HTTP or SQL in it: names, the state of a namespace-environment at
//! one revision, revisions as deltas that apply forward and undo backward, rollout targeting,
//! and what one caller sees of it all.
//!
//! A revision records, for every key it touched, the value before and after, and for a rollout
//! it touched, the rollout before and after. So the state at any revision still in the log is the
//! current state with the newer revisions undone ([`EnvState::undo`]), which is how history,
//! diff, rollback and a watcher's resume work without a snapshot per revision.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use capstan_proto::config::{ConfigSnapshot, DiffEntry, KeyChange, RolloutMatch, WatchEvent, MASK};
use serde_json::Value;

use crate::error::ConfigError;

/// Longest namespace, environment and rollout name.
pub const MAX_NAME: usize = 64;
/// Longest key.
pub const MAX_KEY: usize = 256;
/// Keys that would shadow the environment's own endpoints.
pub const RESERVED_KEYS: [&str; 5] = ["watch", "history", "diff", "rollback", "rollouts"];
/// The environment of a namespace written without one.
pub const DEFAULT_ENV: &str = "default";

fn check_chars(what: &str, s: &str, max: usize, extra: &[u8]) -> Result<(), ConfigError> {
    if s.is_empty() || s.len() > max {
        return Err(ConfigError::BadRequest(format!(
            "{what} must be 1-{max} characters"
        )));
    }
    if !s
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || extra.contains(&b))
    {
        let allowed: String = extra.iter().map(|b| *b as char).collect();
        return Err(ConfigError::BadRequest(format!(
            "{what} may hold only letters, digits and {allowed}"
        )));
    }
    if s == "." || s == ".." {
        return Err(ConfigError::BadRequest(format!("{what} cannot be {s}")));
    }
    Ok(())
}

/// A namespace name: 1-64 of `A-Za-z0-9._-`.
pub fn check_namespace(s: &str) -> Result<(), ConfigError> {
    check_chars("a namespace", s, MAX_NAME, b"._-")
}

/// An environment name: like a namespace, and not `schema` (the namespace's schema endpoint).
pub fn check_env(s: &str) -> Result<(), ConfigError> {
    check_chars("an environment", s, MAX_NAME, b"._-")?;
    if s == "schema" {
        return Err(ConfigError::BadRequest(
            "`schema` is reserved and cannot name an environment".into(),
        ));
    }
    Ok(())
}

/// A key: 1-256 of `A-Za-z0-9._:-`, not one of [`RESERVED_KEYS`].
pub fn check_key(s: &str) -> Result<(), ConfigError> {
    check_chars("a key", s, MAX_KEY, b"._:-")?;
    if RESERVED_KEYS.contains(&s) {
        return Err(ConfigError::BadRequest(format!(
            "`{s}` is reserved and cannot name a key"
        )));
    }
    Ok(())
}

/// A rollout name: like a namespace.
pub fn check_rollout_name(s: &str) -> Result<(), ConfigError> {
    check_chars("a rollout name", s, MAX_NAME, b"._-")
}

/// One stored value, in clear (in memory only; sealed at rest when secret).
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// The JSON value.
    pub value: Value,
    /// Whether it is a secret.
    pub secret: bool,
}

/// A rollout: whom it matches, and the values they see instead of the base ones.
#[derive(Debug, Clone, PartialEq)]
pub struct Rollout {
    /// Whom it applies to.
    pub matcher: RolloutMatch,
    /// Its values.
    pub set: BTreeMap<String, Entry>,
    /// The revision that last changed it.
    pub revision: i64,
}

/// Checks a rollout's targeting: exactly one of tags, principals, percentage, each bounded.
pub fn check_match(m: &RolloutMatch) -> Result<(), ConfigError> {
    let given =
        m.tags.is_some() as u8 + m.principals.is_some() as u8 + m.percentage.is_some() as u8;
    if given != 1 {
        return Err(ConfigError::BadRequest(
            "match must hold exactly one of tags, principals or percentage".into(),
        ));
    }
    if let Some(t) = &m.tags {
        if t.is_empty() || t.len() > 20 {
            return Err(ConfigError::BadRequest(
                "match.tags must hold 1-20 tags".into(),
            ));
        }
        for (k, v) in t {
            if k.is_empty() || k.len() > 128 || v.len() > 256 {
                return Err(ConfigError::BadRequest(
                    "a tag key is 1-128 characters and a value at most 256".into(),
                ));
            }
            if k.chars().chain(v.chars()).any(char::is_control) {
                return Err(ConfigError::BadRequest(
                    "tags cannot hold control characters".into(),
                ));
            }
        }
    }
    if let Some(p) = &m.principals {
        if p.is_empty() || p.len() > 1000 {
            return Err(ConfigError::BadRequest(
                "match.principals must hold 1-1000 principal ids".into(),
            ));
        }
        for id in p {
            capstan_core::ids::PrincipalId::parse(id).map_err(|_| {
                ConfigError::BadRequest(format!("match.principals: `{id}` is not a principal id"))
            })?;
        }
    }
    if let Some(pct) = m.percentage {
        if pct > 100 {
            return Err(ConfigError::BadRequest(
                "match.percentage must be 0-100".into(),
            ));
        }
    }
    Ok(())
}

/// The bucket (0-99) of `principal` for rollout `name`: a stable hash, so a principal stays in
/// or out of a percentage rollout as long as the percentage does not shrink below its bucket.
pub fn bucket(principal: &str, name: &str) -> u8 {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(principal.as_bytes());
    ctx.update(&[0]);
    ctx.update(name.as_bytes());
    let d = ctx.finish();
    let mut first = [0u8; 8];
    first.copy_from_slice(&d.as_ref()[..8]);
    (u64::from_be_bytes(first) % 100) as u8
}

/// Who is looking: what decides which rollouts apply and whether secrets show.
#[derive(Debug, Clone, Default)]
pub struct Viewer {
    /// The principal id.
    pub principal: String,
    /// Its tags.
    pub tags: BTreeMap<String, String>,
    /// Whether it may read secrets in clear.
    pub read_secrets: bool,
}

impl Viewer {
    /// Whether rollout `name` with `m` applies to this viewer.
    pub fn matches(&self, name: &str, m: &RolloutMatch) -> bool {
        if let Some(tags) = &m.tags {
            return tags.iter().all(|(k, v)| self.tags.get(k) == Some(v));
        }
        if let Some(p) = &m.principals {
            return p.contains(&self.principal);
        }
        if let Some(pct) = m.percentage {
            return bucket(&self.principal, name) < pct;
        }
        false
    }

    fn shown(&self, e: &Entry) -> (Value, bool) {
        if e.secret && !self.read_secrets {
            (Value::String(MASK.into()), true)
        } else {
            (e.value.clone(), false)
        }
    }
}

/// The base value of a key and the rollouts, as one viewer resolves them: the first matching
/// rollout (by name) that sets the key wins.
fn resolve<'a>(
    base: Option<&'a Entry>,
    rollouts: &'a BTreeMap<String, Rollout>,
    viewer: &Viewer,
    key: &str,
) -> Option<&'a Entry> {
    rollouts
        .iter()
        .filter(|(_, r)| r.set.contains_key(key))
        .find(|(name, r)| viewer.matches(name, &r.matcher))
        .and_then(|(_, r)| r.set.get(key))
        .or(base)
}

/// Why a revision was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// PUT, DELETE or PATCH.
    Write,
    /// A rollback to an earlier revision.
    Rollback,
    /// A rollout created or changed.
    Rollout,
    /// A rollout merged into the base.
    Promote,
    /// A rollout dropped.
    Abort,
}

impl Kind {
    /// Its name in history.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Write => "write",
            Kind::Rollback => "rollback",
            Kind::Rollout => "rollout",
            Kind::Promote => "promote",
            Kind::Abort => "abort",
        }
    }

    /// The kind named `s`.
    pub fn parse(s: &str) -> Option<Kind> {
        Some(match s {
            "write" => Kind::Write,
            "rollback" => Kind::Rollback,
            "rollout" => Kind::Rollout,
            "promote" => Kind::Promote,
            "abort" => Kind::Abort,
            _ => return None,
        })
    }
}

/// A base key a revision changed.
#[derive(Debug, Clone, PartialEq)]
pub struct KeyDelta {
    /// The key.
    pub key: String,
    /// Before (absent: the key did not exist).
    pub before: Option<Entry>,
    /// After (absent: deleted).
    pub after: Option<Entry>,
}

/// A rollout a revision changed.
#[derive(Debug, Clone, PartialEq)]
pub struct RolloutDelta {
    /// Its name.
    pub name: String,
    /// Before (absent: new).
    pub before: Option<Rollout>,
    /// After (absent: dropped).
    pub after: Option<Rollout>,
}

/// One revision of a namespace-environment.
#[derive(Debug, Clone, PartialEq)]
pub struct Revision {
    /// The revision number.
    pub revision: i64,
    /// Who made it.
    pub actor: String,
    /// When (Unix seconds).
    pub at: i64,
    /// Why.
    pub kind: Kind,
    /// The base keys it changed.
    pub keys: Vec<KeyDelta>,
    /// The rollout it changed.
    pub rollout: Option<RolloutDelta>,
}

/// A namespace-environment at one revision.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EnvState {
    /// The revision (0: never written).
    pub revision: i64,
    /// The base values.
    pub values: BTreeMap<String, Entry>,
    /// The rollouts, by name (shared with published events; copied on change).
    pub rollouts: Arc<BTreeMap<String, Rollout>>,
}

/// What one revision changed, for fan-out: the touched keys with their base values after it,
/// and the rollouts after it. Every watcher resolves its own view from it.
#[derive(Debug, Clone)]
pub struct Published {
    /// The revision.
    pub revision: i64,
    /// Every key whose resolved value may have changed for someone, with its base value after.
    pub keys: Vec<(String, Option<Entry>)>,
    /// The rollouts after the revision.
    pub rollouts: Arc<BTreeMap<String, Rollout>>,
}

impl Published {
    /// Whether every viewer that may (or may not) read secrets sees this revision alike: no
    /// rollout sets any of its keys, so nothing else about the viewer changes its view.
    pub fn uniform(&self) -> bool {
        self.keys
            .iter()
            .all(|(k, _)| self.rollouts.values().all(|r| !r.set.contains_key(k)))
    }
}

impl EnvState {
    /// Applies `r` (the next revision), and says what it changed.
    pub fn apply(&mut self, r: &Revision) -> Published {
        let mut touched: BTreeSet<String> = BTreeSet::new();
        for d in &r.keys {
            touched.insert(d.key.clone());
            match &d.after {
                Some(e) => self.values.insert(d.key.clone(), e.clone()),
                None => self.values.remove(&d.key),
            };
        }
        if let Some(rd) = &r.rollout {
            for side in [&rd.before, &rd.after].into_iter().flatten() {
                touched.extend(side.set.keys().cloned());
            }
            let rollouts = Arc::make_mut(&mut self.rollouts);
            match &rd.after {
                Some(a) => rollouts.insert(rd.name.clone(), a.clone()),
                None => rollouts.remove(&rd.name),
            };
        }
        self.revision = r.revision;
        Published {
            revision: r.revision,
            keys: touched
                .into_iter()
                .map(|k| {
                    let v = self.values.get(&k).cloned();
                    (k, v)
                })
                .collect(),
            rollouts: self.rollouts.clone(),
        }
    }

    /// Undoes `r` (the current revision): the state one revision earlier.
    pub fn undo(&mut self, r: &Revision) {
        for d in r.keys.iter().rev() {
            match &d.before {
                Some(e) => self.values.insert(d.key.clone(), e.clone()),
                None => self.values.remove(&d.key),
            };
        }
        if let Some(rd) = &r.rollout {
            let rollouts = Arc::make_mut(&mut self.rollouts);
            match &rd.before {
                Some(b) => rollouts.insert(rd.name.clone(), b.clone()),
                None => rollouts.remove(&rd.name),
            };
        }
        self.revision = r.revision - 1;
    }

    /// The state at `target`, undoing `newer` (the revisions after `target` up to this state's,
    /// oldest first). `None` when `newer` does not reach back to `target` (compacted).
    pub fn at(&self, target: i64, newer: &[Revision]) -> Option<EnvState> {
        if target > self.revision || target < 0 {
            return None;
        }
        let mut s = self.clone();
        for r in newer.iter().rev() {
            if r.revision <= target {
                continue;
            }
            if r.revision != s.revision {
                return None;
            }
            s.undo(r);
        }
        (s.revision == target).then_some(s)
    }

    /// What `viewer` sees: base values with its rollouts resolved, secrets masked unless it
    /// may read them.
    pub fn view(&self, viewer: &Viewer) -> ConfigSnapshot {
        let mut keys: BTreeSet<&String> = self.values.keys().collect();
        for (name, r) in self.rollouts.iter() {
            if viewer.matches(name, &r.matcher) {
                keys.extend(r.set.keys());
            }
        }
        let mut values = BTreeMap::new();
        let mut secrets = Vec::new();
        for k in keys {
            if let Some(e) = resolve(self.values.get(k), &self.rollouts, viewer, k) {
                if e.secret {
                    secrets.push(k.clone());
                }
                values.insert(k.clone(), viewer.shown(e).0);
            }
        }
        ConfigSnapshot {
            revision: self.revision,
            values,
            secrets,
        }
    }

    /// One key as `viewer` sees it: (value, secret, masked).
    pub fn view_key(&self, viewer: &Viewer, key: &str) -> Option<(Value, bool, bool)> {
        let e = resolve(self.values.get(key), &self.rollouts, viewer, key)?;
        let (v, masked) = viewer.shown(e);
        Some((v, e.secret, masked))
    }

    /// The clear values `viewer` would resolve, for schema validation of a rollout.
    pub fn resolved_object(&self, viewer: &Viewer) -> Value {
        let all = Viewer {
            read_secrets: true,
            ..viewer.clone()
        };
        Value::Object(self.view(&all).values.into_iter().collect())
    }

    /// The base values as one JSON object (what the namespace's schema validates).
    pub fn base_object(&self) -> Value {
        Value::Object(
            self.values
                .iter()
                .map(|(k, e)| (k.clone(), e.value.clone()))
                .collect(),
        )
    }
}

impl Published {
    /// The event `viewer` gets for this revision: each touched key as it now resolves for it.
    pub fn view(&self, viewer: &Viewer) -> WatchEvent {
        let changes = self
            .keys
            .iter()
            .map(
                |(k, base)| match resolve(base.as_ref(), &self.rollouts, viewer, k) {
                    Some(e) => {
                        let (value, masked) = viewer.shown(e);
                        KeyChange {
                            key: k.clone(),
                            value: Some(value),
                            deleted: false,
                            masked,
                        }
                    }
                    None => KeyChange {
                        key: k.clone(),
                        value: None,
                        deleted: true,
                        masked: false,
                    },
                },
            )
            .collect();
        WatchEvent {
            revision: self.revision,
            changes,
        }
    }
}

/// The base keys that differ between two states. A key is masked (unless `viewer` may read
/// secrets) when it is secret on either side or in `secret` (secret now, or by the schema): a
/// value stored before its key was sealed must not show through history.
pub fn diff(
    from: &EnvState,
    to: &EnvState,
    viewer: &Viewer,
    secret: &BTreeSet<String>,
) -> Vec<DiffEntry> {
    let keys: BTreeSet<&String> = from.values.keys().chain(to.values.keys()).collect();
    keys.into_iter()
        .filter(|k| from.values.get(*k) != to.values.get(*k))
        .map(|k| {
            let hidden = !viewer.read_secrets
                && (secret.contains(k.as_str())
                    || from.values.get(k).is_some_and(|e| e.secret)
                    || to.values.get(k).is_some_and(|e| e.secret));
            let show = |e: &Entry| {
                if hidden {
                    Value::String(MASK.into())
                } else {
                    e.value.clone()
                }
            };
            DiffEntry {
                key: k.clone(),
                before: from.values.get(k).map(show),
                after: to.values.get(k).map(show),
            }
        })
        .collect()
}

/// The deltas that turn `current` into `target` (a rollback): every key whose value differs.
/// A key secret now (or in `secret`) stays secret whatever it was at `target`.
pub fn deltas_to(
    current: &EnvState,
    target: &EnvState,
    secret: &BTreeSet<String>,
) -> Vec<KeyDelta> {
    let keys: BTreeSet<&String> = current.values.keys().chain(target.values.keys()).collect();
    keys.into_iter()
        .filter_map(|k| {
            let before = current.values.get(k).cloned();
            let after = target.values.get(k).map(|e| Entry {
                value: e.value.clone(),
                secret: e.secret
                    || secret.contains(k.as_str())
                    || before.as_ref().is_some_and(|b| b.secret),
            });
            (before != after).then(|| KeyDelta {
                key: k.clone(),
                before,
                after,
            })
        })
        .collect()
}

/// Whether a revision changes nothing (a write of the values already there).
pub fn is_noop(keys: &[KeyDelta]) -> bool {
    keys.iter().all(|d| d.before == d.after)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    fn e(v: Value) -> Entry {
        Entry {
            value: v,
            secret: false,
        }
    }

    fn write(rev: i64, state: &EnvState, set: &[(&str, Value)], del: &[&str]) -> Revision {
        let mut keys: Vec<KeyDelta> = set
            .iter()
            .map(|(k, v)| KeyDelta {
                key: (*k).into(),
                before: state.values.get(*k).cloned(),
                after: Some(e(v.clone())),
            })
            .collect();
        keys.extend(del.iter().map(|k| KeyDelta {
            key: (*k).into(),
            before: state.values.get(*k).cloned(),
            after: None,
        }));
        Revision {
            revision: rev,
            actor: "p".into(),
            at: 0,
            kind: Kind::Write,
            keys,
            rollout: None,
        }
    }

    #[test]
    fn names() {
        assert!(check_namespace("payments").is_ok());
        assert!(check_namespace("").is_err());
        assert!(check_namespace("a/b").is_err());
        assert!(check_namespace("a\u{0}").is_err());
        assert!(check_namespace("..").is_err());
        assert!(check_env("schema").is_err());
        assert!(check_key("db.pool:max-size_2").is_ok());
        assert!(check_key("watch").is_err());
        assert!(check_key(&"k".repeat(257)).is_err());
    }

    #[test]
    fn apply_undo_and_at() {
        let mut s = EnvState::default();
        let mut log = Vec::new();
        for (i, v) in [1, 2, 3].iter().enumerate() {
            let r = write(
                i as i64 + 1,
                &s,
                &[("a", json!(v)), ("b", json!(v * 10))],
                &[],
            );
            s.apply(&r);
            log.push(r);
        }
        let r = write(4, &s, &[], &["b"]);
        s.apply(&r);
        log.push(r);
        let at2 = s.at(2, &log).unwrap();
        assert_eq!(at2.values["a"].value, json!(2));
        assert_eq!(at2.values["b"].value, json!(20));
        assert_eq!(s.at(0, &log).unwrap().values.len(), 0);
        // Compacted: the log no longer reaches revision 1.
        assert!(s.at(1, &log[2..]).is_none());
        let d = diff(&at2, &s, &Viewer::default(), &BTreeSet::new());
        assert_eq!(d.len(), 2);
        let back = deltas_to(&s, &at2, &BTreeSet::new());
        assert_eq!(back.len(), 2);
    }

    #[test]
    fn rollouts_resolve_per_viewer() {
        let mut s = EnvState::default();
        s.apply(&write(1, &s.clone(), &[("limit", json!(10))], &[]));
        let mut set = BTreeMap::new();
        set.insert("limit".to_string(), e(json!(20)));
        let r = Revision {
            revision: 2,
            actor: "p".into(),
            at: 0,
            kind: Kind::Rollout,
            keys: vec![],
            rollout: Some(RolloutDelta {
                name: "canary".into(),
                before: None,
                after: Some(Rollout {
                    matcher: RolloutMatch {
                        tags: Some([("tier".to_string(), "canary".to_string())].into()),
                        ..Default::default()
                    },
                    set,
                    revision: 2,
                }),
            }),
        };
        let p = s.apply(&r);
        let canary = Viewer {
            principal: "svc_a".into(),
            tags: [("tier".to_string(), "canary".to_string())].into(),
            read_secrets: false,
        };
        let other = Viewer {
            principal: "svc_b".into(),
            ..Default::default()
        };
        assert_eq!(s.view(&canary).values["limit"], json!(20));
        assert_eq!(s.view(&other).values["limit"], json!(10));
        assert_eq!(p.view(&canary).changes[0].value, Some(json!(20)));
        assert_eq!(p.view(&other).changes[0].value, Some(json!(10)));
        // A revision touching a key a rollout sets is not the same for every viewer; one
        // touching only other keys is.
        assert!(!p.uniform());
        assert!(!s
            .apply(&write(3, &s.clone(), &[("limit", json!(11))], &[]))
            .uniform());
        let p = s.apply(&write(4, &s.clone(), &[("other", json!(1))], &[]));
        assert!(p.uniform());
        assert_eq!(p.view(&canary), p.view(&other));
    }

    #[test]
    fn buckets_are_stable_and_spread() {
        assert_eq!(bucket("svc_x", "r"), bucket("svc_x", "r"));
        let inside = (0..1000)
            .filter(|i| bucket(&format!("svc_{i}"), "r") < 30)
            .count();
        assert!((200..400).contains(&inside), "{inside}");
    }

    #[test]
    fn secrets_masked() {
        let mut s = EnvState::default();
        let r = Revision {
            revision: 1,
            actor: "p".into(),
            at: 0,
            kind: Kind::Write,
            keys: vec![KeyDelta {
                key: "pw".into(),
                before: None,
                after: Some(Entry {
                    value: json!("hunter2"),
                    secret: true,
                }),
            }],
            rollout: None,
        };
        let p = s.apply(&r);
        let reader = Viewer {
            read_secrets: true,
            ..Default::default()
        };
        assert_eq!(s.view(&Viewer::default()).values["pw"], json!(MASK));
        assert_eq!(s.view(&reader).values["pw"], json!("hunter2"));
        assert!(p.view(&Viewer::default()).changes[0].masked);
    }
}
