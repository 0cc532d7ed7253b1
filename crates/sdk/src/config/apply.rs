//! Events applied to a snapshot: pure functions over the wire types, so the watcher's
//! bookkeeping is tested without a server.

use capstan_proto::config::{ConfigSnapshot, KeyChange, WatchEvent, MASK};

use super::events::ConfigEvent;

pub(super) fn empty() -> ConfigSnapshot {
    ConfigSnapshot {
        revision: 0,
        values: Default::default(),
        secrets: Vec::new(),
    }
}

/// The snapshot after `ev`, and the change to report (none for a first snapshot). `None`:
/// nothing to apply (a change already applied, or one without a snapshot to apply it to).
pub(super) fn apply(
    current: Option<&ConfigSnapshot>,
    ev: ConfigEvent,
) -> Option<(ConfigSnapshot, Option<WatchEvent>)> {
    match ev {
        ConfigEvent::Reset(next) => {
            let report = current.map(|old| WatchEvent {
                revision: next.revision,
                changes: differences(old, &next),
            });
            Some((next, report))
        }
        ConfigEvent::Change(c) => {
            let old = current?;
            if c.revision <= old.revision {
                return None;
            }
            let mut next = old.clone();
            next.revision = c.revision;
            for k in &c.changes {
                if k.deleted {
                    next.values.remove(&k.key);
                    next.secrets.retain(|s| s != &k.key);
                } else if let Some(v) = &k.value {
                    next.values.insert(k.key.clone(), v.clone());
                    if k.masked && !next.secrets.contains(&k.key) {
                        next.secrets.push(k.key.clone());
                    }
                }
            }
            Some((next, Some(c)))
        }
    }
}

/// The keys whose values differ from `old` to `new`, as changes.
fn differences(old: &ConfigSnapshot, new: &ConfigSnapshot) -> Vec<KeyChange> {
    let mut out = Vec::new();
    for (k, v) in &new.values {
        if old.values.get(k) != Some(v) {
            out.push(KeyChange {
                key: k.clone(),
                value: Some(v.clone()),
                deleted: false,
                masked: new.secrets.contains(k) && v.as_str() == Some(MASK),
            });
        }
    }
    for k in old.values.keys().filter(|k| !new.values.contains_key(*k)) {
        out.push(KeyChange {
            key: k.clone(),
            value: None,
            deleted: true,
            masked: false,
        });
    }
    out.sort_by(|a, b| a.key.cmp(&b.key));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn snap(revision: i64, values: Value) -> ConfigSnapshot {
        serde_json::from_value(json!({"revision": revision, "values": values})).unwrap()
    }

    fn change(revision: i64, changes: Value) -> ConfigEvent {
        ConfigEvent::Change(
            serde_json::from_value(json!({"revision": revision, "changes": changes})).unwrap(),
        )
    }

    #[test]
    fn changes_apply_in_order_and_old_ones_are_skipped() {
        let s = snap(3, json!({"a": 1, "b": 2}));
        let (next, report) = apply(
            Some(&s),
            change(4, json!([{"key": "a", "value": 10}, {"key": "b", "deleted": true}, {"key": "c", "value": "x"}])),
        )
        .unwrap();
        assert_eq!(next, snap(4, json!({"a": 10, "c": "x"})));
        assert_eq!(report.unwrap().changes.len(), 3);
        assert!(
            apply(Some(&next), change(4, json!([{"key": "a", "value": 0}]))).is_none(),
            "a replay"
        );
        assert!(
            apply(None, change(5, json!([]))).is_none(),
            "nothing to apply it to"
        );
    }

    #[test]
    fn a_reset_reports_the_differences_but_a_first_snapshot_nothing() {
        let (first, report) = apply(None, ConfigEvent::Reset(snap(5, json!({"a": 1})))).unwrap();
        assert!(report.is_none());
        let (_, report) = apply(
            Some(&first),
            ConfigEvent::Reset(snap(9, json!({"a": 2, "b": true}))),
        )
        .unwrap();
        let report = report.unwrap();
        assert_eq!(report.revision, 9);
        let keys: Vec<(&str, bool)> = report
            .changes
            .iter()
            .map(|c| (c.key.as_str(), c.deleted))
            .collect();
        assert_eq!(keys, vec![("a", false), ("b", false)]);
        let (_, report) = apply(Some(&first), ConfigEvent::Reset(snap(9, json!({})))).unwrap();
        assert!(report.unwrap().changes[0].deleted);
    }

    #[test]
    fn masked_secrets_are_tracked() {
        let s = snap(1, json!({}));
        let (next, _) = apply(
            Some(&s),
            change(2, json!([{"key": "pw", "value": MASK, "masked": true}])),
        )
        .unwrap();
        assert_eq!(next.secrets, vec!["pw".to_owned()]);
        let (next, _) = apply(
            Some(&next),
            change(3, json!([{"key": "pw", "deleted": true}])),
        )
        .unwrap();
        assert!(next.secrets.is_empty());
    }
}
