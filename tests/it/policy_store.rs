//! Policy store conformance (the store traits, through `SqlPolicyStore`): the same assertions for every backend.

use capstan_db::{on_pool, Db};
use capstan_policy::store::*;
use capstan_tests::Ctx;

capstan_tests::on_both_backends!(
    versions_keep_the_newest_five_and_the_newest_is_default,
    groups_members_and_attachments_cascade,
    boundaries_tags_and_keyed_documents,
    revisions_and_load_are_tenant_scoped,
    decisions_are_batched_filtered_and_pruned,
);

async fn tenants(db: &Db, ids: &[&str]) -> SqlPolicyStore {
    for id in ids {
        on_pool!(db, |p| {
            sqlx::query(
                "INSERT INTO core_tenants (id, signing_alg, created_at) VALUES ($1, 'ES256', 0)",
            )
            .bind(*id)
            .execute(p)
            .await
            .map(|r| r.rows_affected())
        })
        .unwrap();
    }
    SqlPolicyStore::new(db.clone())
}

async fn versions_keep_the_newest_five_and_the_newest_is_default(ctx: &Ctx) {
    let db = ctx.db();
    let s = tenants(&db, &["a", "b"]).await;
    for i in 1..=7 {
        assert_eq!(
            s.put_version("a", "P", &format!("{{\"v\":{i}}}"), i)
                .await
                .unwrap(),
            i
        );
    }
    s.put_version("b", "P", "{}", 1).await.unwrap();
    let list = s.list_policies("a").await.unwrap();
    assert_eq!(list, vec![("P".to_string(), 7, vec![3, 4, 5, 6, 7])]);
    let current = s.get_version("a", "P", None).await.unwrap().unwrap();
    assert_eq!(
        (
            current.version,
            current.is_default,
            current.document.as_str()
        ),
        (7, true, "{\"v\":7}")
    );
    let versions = s.list_versions("a", "P").await.unwrap();
    assert_eq!(
        versions
            .iter()
            .map(|v| (v.version, v.is_default, v.created_at))
            .collect::<Vec<_>>(),
        vec![
            (3, false, 3),
            (4, false, 4),
            (5, false, 5),
            (6, false, 6),
            (7, true, 7)
        ]
    );
    assert!(s.list_versions("a", "Q").await.unwrap().is_empty());
    assert_eq!(s.list_versions("b", "P").await.unwrap().len(), 1);
    let old = s.get_version("a", "P", Some(4)).await.unwrap().unwrap();
    assert_eq!((old.version, old.is_default, old.created_at), (4, false, 4));
    assert!(s.get_version("a", "P", Some(2)).await.unwrap().is_none());
    assert!(s.get_version("a", "Q", None).await.unwrap().is_none());
    assert!(s.delete_policy("a", "P", 100).await.unwrap());
    assert!(!s.delete_policy("a", "P", 100).await.unwrap());
    assert!(s.list_policies("a").await.unwrap().is_empty());
    // The other tenant's policy of the same name is untouched; a recreated one starts at 1.
    assert_eq!(s.list_policies("b").await.unwrap().len(), 1);
    assert_eq!(s.put_version("a", "P", "{}", 9).await.unwrap(), 1);
}

async fn groups_members_and_attachments_cascade(ctx: &Ctx) {
    let db = ctx.db();
    let s = tenants(&db, &["a", "b"]).await;
    assert!(s.put_group("a", "dev", 1).await.unwrap());
    assert!(!s.put_group("a", "dev", 2).await.unwrap(), "idempotent");
    assert!(s.put_group("a", "org", 1).await.unwrap());
    assert!(s.group_exists("a", "dev").await.unwrap());
    assert!(!s.group_exists("a", "ops").await.unwrap());
    s.add_member("a", "dev", "svc_x", 100).await.unwrap();
    s.add_member("a", "dev", "svc_x", 100).await.unwrap();
    s.add_member("a", "org", "group:dev", 100).await.unwrap();
    assert_eq!(
        s.list_groups("a").await.unwrap(),
        vec![
            ("dev".to_string(), vec!["svc_x".to_string()]),
            ("org".to_string(), vec!["group:dev".to_string()])
        ]
    );
    assert!(s.list_groups("b").await.unwrap().is_empty());
    s.attach("a", "group", "dev", "P", 100).await.unwrap();
    s.attach("a", "group", "dev", "P", 100).await.unwrap();
    s.attach("a", "principal", "svc_x", "P", 100).await.unwrap();
    assert_eq!(s.uses("a", "P").await.unwrap(), 2);
    let rows = s.load("a").await.unwrap();
    assert_eq!(rows.members.len(), 2);
    assert_eq!(rows.attachments.len(), 2);
    assert!(s.remove_member("a", "dev", "svc_x", 100).await.unwrap());
    assert!(!s.remove_member("a", "dev", "svc_x", 100).await.unwrap());
    // Deleting a group removes its members, its membership in other groups, and its attachments.
    s.add_member("a", "dev", "svc_y", 100).await.unwrap();
    assert!(s.delete_group("a", "dev", 100).await.unwrap());
    assert!(!s.delete_group("a", "dev", 100).await.unwrap());
    let rows = s.load("a").await.unwrap();
    assert!(rows.members.is_empty(), "{:?}", rows.members);
    assert_eq!(
        rows.attachments,
        vec![(
            "principal".to_string(),
            "svc_x".to_string(),
            "P".to_string()
        )]
    );
    assert!(s.detach("a", "principal", "svc_x", "P", 100).await.unwrap());
    assert!(!s.detach("a", "principal", "svc_x", "P", 100).await.unwrap());
    assert_eq!(s.uses("a", "P").await.unwrap(), 0);
}

async fn boundaries_tags_and_keyed_documents(ctx: &Ctx) {
    let db = ctx.db();
    let s = tenants(&db, &["a"]).await;
    s.set_boundary("a", "svc_x", "B1", 100).await.unwrap();
    s.set_boundary("a", "svc_x", "B2", 100).await.unwrap();
    assert_eq!(s.uses("a", "B2").await.unwrap(), 1);
    assert_eq!(s.uses("a", "B1").await.unwrap(), 0);
    s.set_tags(
        "a",
        "svc_x",
        &[("team".into(), "pay".into()), ("env".into(), "prod".into())],
        100,
    )
    .await
    .unwrap();
    s.set_tags("a", "svc_x", &[("team".into(), "ops".into())], 100)
        .await
        .unwrap();
    let rows = s.load("a").await.unwrap();
    assert_eq!(
        rows.boundaries,
        vec![("svc_x".to_string(), "B2".to_string())]
    );
    assert_eq!(
        rows.tags,
        vec![("svc_x".to_string(), "team".to_string(), "ops".to_string())]
    );
    assert!(s.delete_boundary("a", "svc_x", 100).await.unwrap());
    assert!(!s.delete_boundary("a", "svc_x", 100).await.unwrap());
    for table in [Keyed::ResourcePolicy, Keyed::Guardrail] {
        s.put_keyed(table, "a", "k1", "{\"x\":1}", 5).await.unwrap();
        s.put_keyed(table, "a", "k1", "{\"x\":2}", 6).await.unwrap();
        assert_eq!(
            s.get_keyed(table, "a", "k1").await.unwrap(),
            Some(("{\"x\":2}".to_string(), 6))
        );
        assert!(s.get_keyed(table, "a", "k2").await.unwrap().is_none());
        s.put_keyed(table, "a", "k0", "{}", 7).await.unwrap();
        assert_eq!(
            s.list_keyed(table, "a").await.unwrap(),
            vec![
                ("k0".to_string(), "{}".to_string(), 7),
                ("k1".to_string(), "{\"x\":2}".to_string(), 6)
            ]
        );
        s.delete_keyed(table, "a", "k0", 100).await.unwrap();
        assert!(s.delete_keyed(table, "a", "k1", 100).await.unwrap());
        assert!(!s.delete_keyed(table, "a", "k1", 100).await.unwrap());
    }
}

async fn revisions_and_load_are_tenant_scoped(ctx: &Ctx) {
    let db = ctx.db();
    let s = tenants(&db, &["a", "b"]).await;
    assert_eq!(s.load("a").await.unwrap().revision, 0);
    assert_eq!(s.bump_revision("a").await.unwrap(), 1);
    assert_eq!(s.bump_revision("a").await.unwrap(), 2);
    assert_eq!(s.bump_revision("b").await.unwrap(), 1);
    s.put_version("a", "P", "{\"a\":1}", 1).await.unwrap();
    s.put_version("a", "P", "{\"a\":2}", 2).await.unwrap();
    s.put_version("b", "Q", "{}", 1).await.unwrap();
    s.put_keyed(Keyed::Guardrail, "b", "g", "{}", 1)
        .await
        .unwrap();
    assert!(s
        .list_keyed(Keyed::Guardrail, "a")
        .await
        .unwrap()
        .is_empty());
    assert_eq!(s.list_keyed(Keyed::Guardrail, "b").await.unwrap().len(), 1);
    let a = s.load("a").await.unwrap();
    // Two explicit bumps, then every write bumps the revision in its own transaction.
    assert_eq!(a.revision, 4);
    assert_eq!(a.defaults, vec![("P".to_string(), 2)]);
    assert!(a.guardrails.is_empty());
    assert_eq!(
        s.default_documents("a").await.unwrap(),
        vec![("P".to_string(), 2, "{\"a\":2}".to_string())]
    );
    let b = s.load("b").await.unwrap();
    assert_eq!(b.revision, 3);
    assert_eq!(b.defaults, vec![("Q".to_string(), 1)]);
    assert_eq!(b.guardrails.len(), 1);
    // The outbox: each write appended its feed row; a write that changed nothing did not.
    assert!(!s.detach("a", "principal", "nobody", "P", 3).await.unwrap());
    let feed: Vec<(String, String)> = db
        .changes_after(0, 100)
        .await
        .unwrap()
        .into_iter()
        .map(|c| (c.tenant, c.topic))
        .collect();
    let policy = |t: &str| (t.to_string(), "policy".to_string());
    assert_eq!(
        feed,
        vec![policy("a"), policy("a"), policy("b"), policy("b")]
    );
    assert_eq!(s.load("a").await.unwrap().revision, 4);
}

fn filter<'a>(
    principal: Option<&'a str>,
    decision: Option<&'a str>,
    since: Option<i64>,
    limit: i64,
) -> DecisionFilter<'a> {
    DecisionFilter {
        principal,
        decision,
        since,
        limit,
        ..Default::default()
    }
}

fn record(tenant: &str, principal: &str, decision: &str, at: i64) -> DecisionRecord {
    DecisionRecord {
        tenant: tenant.into(),
        principal: principal.into(),
        action: "orders:Get".into(),
        resource: "crn:capstan:orders:a:x".into(),
        decision: decision.into(),
        reason: if decision == "Allow" {
            "allowed"
        } else {
            "implicit_deny"
        }
        .into(),
        policy_revision: 3,
        context: "{\"matched\":[]}".into(),
        at,
        trace_id: None,
    }
}

async fn decisions_are_batched_filtered_and_pruned(ctx: &Ctx) {
    let db = ctx.db();
    let s = tenants(&db, &["a"]).await;
    s.insert_decisions(&[]).await.unwrap();
    let batch: Vec<DecisionRecord> = (0..600)
        .map(|i| {
            record(
                "a",
                if i % 2 == 0 { "svc_x" } else { "svc_y" },
                if i % 3 == 0 { "Deny" } else { "Allow" },
                i,
            )
        })
        .chain([record("b", "svc_x", "Deny", 1)])
        .collect();
    s.insert_decisions(&batch).await.unwrap();
    let all = s
        .list_decisions("a", &filter(None, None, None, 1000))
        .await
        .unwrap();
    assert_eq!(all.len(), 600, "other tenants' decisions are not listed");
    assert_eq!(all[0].1.at, 599, "newest first");
    assert_eq!(all[0].1, record("a", "svc_y", "Allow", 599));
    // Following the log: the oldest after a sequence number first.
    let after = s
        .list_decisions(
            "a",
            &DecisionFilter {
                after: Some(all[5].0),
                limit: 1000,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(after.len(), 5);
    assert!(after.windows(2).all(|w| w[0].0 < w[1].0));
    assert_eq!(after[4].1.at, 599);
    let x_denies = s
        .list_decisions("a", &filter(Some("svc_x"), Some("Deny"), None, 1000))
        .await
        .unwrap();
    assert_eq!(x_denies.len(), 100);
    assert!(x_denies
        .iter()
        .all(|(_, d)| d.principal == "svc_x" && d.decision == "Deny"));
    assert_eq!(
        s.list_decisions("a", &filter(None, None, Some(590), 1000))
            .await
            .unwrap()
            .len(),
        10
    );
    assert_eq!(
        s.list_decisions("a", &filter(None, None, None, 5))
            .await
            .unwrap()
            .len(),
        5
    );

    // A trace's decisions, and only this tenant's.
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let traced = |tenant: &str, at: i64| DecisionRecord {
        trace_id: Some(trace.into()),
        ..record(tenant, "svc_t", "Deny", at)
    };
    // One batch mixes traced and untraced rows, as the log writer's do.
    s.insert_decisions(&[
        traced("a", 600),
        record("a", "svc_u", "Allow", 600),
        traced("b", 600),
        traced("a", 601),
    ])
    .await
    .unwrap();
    let by_trace = |trace_id| DecisionFilter {
        trace_id: Some(trace_id),
        limit: 1000,
        ..Default::default()
    };
    let of_trace = s.list_decisions("a", &by_trace(trace)).await.unwrap();
    assert_eq!(
        of_trace.iter().map(|(_, d)| d.clone()).collect::<Vec<_>>(),
        [traced("a", 601), traced("a", 600)],
        "newest first, the trace id read back"
    );
    assert!(s
        .list_decisions("a", &by_trace("0af7651916cd43dd8448eb211c80319c"))
        .await
        .unwrap()
        .is_empty());
    // Combined with the other filters.
    assert!(s
        .list_decisions(
            "a",
            &DecisionFilter {
                principal: Some("svc_x"),
                ..by_trace(trace)
            }
        )
        .await
        .unwrap()
        .is_empty());
    assert_eq!(
        s.list_decisions("a", &filter(None, None, None, 1000))
            .await
            .unwrap()
            .len(),
        603,
        "without the filter, traced and untraced decisions are listed"
    );

    assert_eq!(s.prune_decisions(300).await.unwrap(), 301);
    assert_eq!(
        s.list_decisions("a", &filter(None, None, None, 1000))
            .await
            .unwrap()
            .len(),
        303
    );
}
