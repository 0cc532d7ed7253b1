//! Storage conformance of the config service: the same assertions on every backend.

use std::sync::Arc;

use capstan_auth::model::Tenant;
use capstan_auth::store::{SqlStore, TenantStore};
use capstan_config::store::{Commit, ConfigStore, EnvKey, SqlConfigStore, StoredEnv, StoredValue};
use capstan_config::ConfigError;
use capstan_core::ids::TenantId;
use capstan_core::jwt::Alg;
use capstan_tests::Ctx;

capstan_tests::on_both_backends!(
    writes_make_gap_free_revisions_with_their_log,
    a_refused_plan_leaves_no_trace,
    concurrent_writers_get_distinct_consecutive_revisions,
    log_reads_and_compaction,
    schemas_round_trip,
);

async fn setup(ctx: &Ctx) -> SqlConfigStore {
    let auth = SqlStore::new(ctx.db());
    for t in ["acme", "other"] {
        auth.create_tenant(&Tenant {
            id: TenantId::parse(t).unwrap(),
            signing_alg: Alg::ES256,
            created_at: 100,
        })
        .await
        .unwrap();
    }
    SqlConfigStore::new(ctx.db())
}

fn env(tenant: &str, ns: &str, env: &str) -> EnvKey {
    EnvKey {
        tenant: tenant.into(),
        ns: ns.into(),
        env: env.into(),
    }
}

/// A planner setting `key` to `value` (JSON text), logging `body`.
fn set(
    key: &str,
    value: &str,
    at: i64,
) -> impl Fn(&StoredEnv) -> Result<Commit, ConfigError> + Sync {
    let (key, value) = (key.to_owned(), value.to_owned());
    move |_cur: &StoredEnv| {
        Ok(Commit {
            upserts: vec![StoredValue {
                key: key.clone(),
                value: value.clone(),
                secret: false,
            }],
            actor: "svc_test".into(),
            at,
            kind: "write".into(),
            body: format!("{{\"keys\":[{{\"key\":\"{key}\"}}]}}"),
            ..Commit::default()
        })
    }
}

async fn writes_make_gap_free_revisions_with_their_log(ctx: &Ctx) {
    let store = setup(ctx).await;
    let e = env("acme", "payments", "prod");
    assert_eq!(store.load(&e).await.unwrap(), StoredEnv::default());
    assert_eq!(store.write(&e, &set("a", "1", 10)).await.unwrap(), 1);
    assert_eq!(store.write(&e, &set("b", "2", 11)).await.unwrap(), 2);
    // The planner sees the state it applies to.
    let seen = std::sync::Mutex::new(None);
    let plan = |cur: &StoredEnv| {
        *seen.lock().unwrap() = Some(cur.clone());
        set("a", "3", 12)(cur)
    };
    assert_eq!(store.write(&e, &plan).await.unwrap(), 3);
    let before = seen.lock().unwrap().clone().unwrap();
    assert_eq!(before.revision, 2);
    assert_eq!(before.values.len(), 2);
    let now = store.load(&e).await.unwrap();
    assert_eq!(now.revision, 3);
    assert_eq!(
        now.values,
        [
            StoredValue {
                key: "a".into(),
                value: "3".into(),
                secret: false
            },
            StoredValue {
                key: "b".into(),
                value: "2".into(),
                secret: false
            },
        ]
    );
    // Deletes and rollouts.
    let del = |_: &StoredEnv| {
        Ok(Commit {
            deletes: vec!["b".into()],
            rollout: Some(("canary".into(), Some("{}".into()))),
            actor: "svc_test".into(),
            at: 13,
            kind: "write".into(),
            body: "{}".into(),
            ..Commit::default()
        })
    };
    assert_eq!(store.write(&e, &del).await.unwrap(), 4);
    let now = store.load(&e).await.unwrap();
    assert_eq!(now.values.len(), 1);
    assert_eq!(now.rollouts.len(), 1);
    assert_eq!(now.rollouts[0].revision, 4);
    let drop_rollout = |_: &StoredEnv| {
        Ok(Commit {
            rollout: Some(("canary".into(), None)),
            actor: "svc_test".into(),
            at: 14,
            kind: "abort".into(),
            body: "{}".into(),
            ..Commit::default()
        })
    };
    store.write(&e, &drop_rollout).await.unwrap();
    assert!(store.load(&e).await.unwrap().rollouts.is_empty());
    // Other environments, namespaces and tenants count on their own.
    assert_eq!(
        store
            .write(&env("acme", "payments", "staging"), &set("a", "1", 10))
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        store
            .write(&env("other", "payments", "prod"), &set("a", "1", 10))
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        store.list_envs("acme", "payments").await.unwrap(),
        ["prod", "staging"]
    );
    // Every write logged its revision, and appended a feed row.
    let log = store.log_after(&e, 0, 100).await.unwrap();
    assert_eq!(
        log.iter().map(|l| l.revision).collect::<Vec<_>>(),
        [1, 2, 3, 4, 5]
    );
    assert_eq!(log[4].kind, "abort");
    let changes = ctx.db().changes_after(0, 100).await.unwrap();
    assert_eq!(
        changes
            .iter()
            .filter(|c| c.topic == "config" && c.tenant == "acme" && c.key == "payments/prod")
            .count(),
        5
    );
}

async fn a_refused_plan_leaves_no_trace(ctx: &Ctx) {
    let store = setup(ctx).await;
    let e = env("acme", "payments", "prod");
    store.write(&e, &set("a", "1", 10)).await.unwrap();
    let refuse =
        |_: &StoredEnv| -> Result<Commit, ConfigError> { Err(ConfigError::Conflict("no".into())) };
    assert!(matches!(
        store.write(&e, &refuse).await,
        Err(ConfigError::Conflict(_))
    ));
    // The counter bump rolled back with it: the next write is revision 2.
    assert_eq!(store.load(&e).await.unwrap().revision, 1);
    assert_eq!(store.write(&e, &set("a", "2", 11)).await.unwrap(), 2);
    assert_eq!(store.log_after(&e, 0, 10).await.unwrap().len(), 2);
}

async fn concurrent_writers_get_distinct_consecutive_revisions(ctx: &Ctx) {
    let store = Arc::new(setup(ctx).await);
    let e = env("acme", "payments", "prod");
    let tasks: Vec<_> = (0..6)
        .map(|w| {
            let store = store.clone();
            let e = e.clone();
            tokio::spawn(async move {
                let mut revs = Vec::new();
                for i in 0..10 {
                    let key = format!("w{w}");
                    let value = i.to_string();
                    loop {
                        match store.write(&e, &set(&key, &value, 10)).await {
                            Ok(r) => {
                                revs.push(r);
                                break;
                            }
                            // SQLite's single writer may report busy under contention.
                            Err(ConfigError::Db(d)) if d.is_unavailable() => {
                                tokio::time::sleep(std::time::Duration::from_millis(5)).await
                            }
                            Err(other) => panic!("{other}"),
                        }
                    }
                }
                revs
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in tasks {
        let revs = t.await.unwrap();
        // Each writer's revisions increase.
        assert!(revs.windows(2).all(|w| w[0] < w[1]));
        all.extend(revs);
    }
    all.sort();
    assert_eq!(all, (1..=60).collect::<Vec<i64>>());
    let log = store.log_after(&e, 0, 1000).await.unwrap();
    assert_eq!(log.len(), 60);
}

async fn log_reads_and_compaction(ctx: &Ctx) {
    let store = setup(ctx).await;
    let e = env("acme", "app", "prod");
    let other = env("acme", "app", "staging");
    for i in 0..10 {
        store
            .write(&e, &set("k", &i.to_string(), 100 + i))
            .await
            .unwrap();
    }
    for i in 0..3 {
        store
            .write(&other, &set("k", &i.to_string(), 100 + i))
            .await
            .unwrap();
    }
    let newest = store.log_before(&e, i64::MAX, 3).await.unwrap();
    assert_eq!(
        newest.iter().map(|l| l.revision).collect::<Vec<_>>(),
        [10, 9, 8]
    );
    let page = store.log_before(&e, 8, 2).await.unwrap();
    assert_eq!(page.iter().map(|l| l.revision).collect::<Vec<_>>(), [7, 6]);
    let after = store.log_after(&e, 7, 2).await.unwrap();
    assert_eq!(after.iter().map(|l| l.revision).collect::<Vec<_>>(), [8, 9]);
    assert_eq!(store.oldest_log(&e).await.unwrap(), Some(1));
    // By count: each environment keeps its last 4.
    let n = store.compact(4, 0).await.unwrap();
    assert_eq!(n, 6);
    assert_eq!(store.oldest_log(&e).await.unwrap(), Some(7));
    assert_eq!(store.oldest_log(&other).await.unwrap(), Some(1));
    // By age: rows written before 108 go, whatever the count.
    store.compact(1000, 108).await.unwrap();
    assert_eq!(store.oldest_log(&e).await.unwrap(), Some(9));
    assert_eq!(store.oldest_log(&other).await.unwrap(), None);
    // Values are untouched by compaction.
    assert_eq!(store.load(&other).await.unwrap().revision, 3);
}

async fn schemas_round_trip(ctx: &Ctx) {
    let store = setup(ctx).await;
    assert_eq!(store.get_schema("acme", "app").await.unwrap(), None);
    store
        .put_schema("acme", "app", "{\"type\":\"object\"}", 10)
        .await
        .unwrap();
    store.put_schema("acme", "app", "{}", 11).await.unwrap();
    assert_eq!(
        store.get_schema("acme", "app").await.unwrap().as_deref(),
        Some("{}")
    );
    assert_eq!(store.get_schema("other", "app").await.unwrap(), None);
    assert!(store.delete_schema("acme", "app", 12).await.unwrap());
    assert!(!store.delete_schema("acme", "app", 12).await.unwrap());
    let changes = ctx.db().changes_after(0, 100).await.unwrap();
    assert_eq!(
        changes
            .iter()
            .filter(|c| c.topic == "config.schema")
            .count(),
        3
    );
}
