//! Storage conformance of the identity service: the same assertions on every backend.

use capstan_auth::model::{Client, Tenant};
use capstan_auth::store::{ClientStore, SqlStore, TenantStore};
use capstan_core::ids::{PrincipalId, PrincipalKind, TenantId};
use capstan_core::jwt::{Alg, Jwk};
use capstan_core::rng::SystemRng;
use capstan_db::DbError;
use capstan_identity::model::{CaRecord, Entry, JoinToken, SvidRecord};
use capstan_identity::store::{IdentityStore, SqlIdentityStore};
use capstan_tests::Ctx;

capstan_tests::on_both_backends!(
    cas_round_trip_activate_and_taint,
    entries_are_unique_per_principal_and_path,
    svid_records_batch_list_and_prune,
    join_tokens_are_single_use,
);

fn tid(s: &str) -> TenantId {
    TenantId::parse(s).unwrap()
}

/// Tenants `acme` and `other`, and a principal in each; the identity store.
async fn setup(ctx: &Ctx) -> (SqlIdentityStore, PrincipalId, PrincipalId, PrincipalId) {
    let auth = SqlStore::new(ctx.db());
    for t in ["acme", "other"] {
        auth.create_tenant(&Tenant {
            id: tid(t),
            signing_alg: Alg::ES256,
            created_at: 100,
        })
        .await
        .unwrap();
    }
    let mut ids = Vec::new();
    for t in ["acme", "acme", "other"] {
        let id = PrincipalId::generate(PrincipalKind::Service, &SystemRng::new()).unwrap();
        auth.create_client(&Client {
            id: id.clone(),
            tenant: tid(t),
            name: "svc".into(),
            secret_hash: vec![1],
            previous_secret: None,
            scopes: vec![],
            audiences: vec!["api".into()],
            token_ttl_seconds: None,
            admin: false,
            tls_client_auth_san_uri: None,
            created_at: 100,
            updated_at: 100,
        })
        .await
        .unwrap();
        ids.push(id);
    }
    let c = ids.pop().unwrap();
    let b = ids.pop().unwrap();
    let a = ids.pop().unwrap();
    (SqlIdentityStore::new(ctx.db()), a, b, c)
}

fn ca(generation: i64, activates_at: i64) -> CaRecord {
    CaRecord {
        id: format!("g{generation}"),
        generation,
        origin: "generated".into(),
        key_type: "ec-p256".into(),
        cert_der: vec![generation as u8; 8],
        intermediates_der: vec![vec![7, 7], vec![8]],
        root_der: vec![generation as u8; 8],
        key_sealed: vec![9; 16],
        jwt_kid: format!("kid{generation}"),
        jwt_public: Jwk {
            kty: "EC".into(),
            kid: format!("kid{generation}"),
            use_: "jwt-svid".into(),
            alg: "ES256".into(),
            crv: Some("P-256".into()),
            x: Some("x".into()),
            y: Some("y".into()),
            n: None,
            e: None,
        },
        jwt_key_sealed: vec![10; 16],
        not_before: 1000,
        not_after: 1_000_000,
        created_at: 1000,
        activates_at,
        tainted_at: None,
    }
}

async fn cas_round_trip_activate_and_taint(ctx: &Ctx) {
    let (store, ..) = setup(ctx).await;
    assert!(store.list_cas().await.unwrap().is_empty());
    store.insert_ca(&ca(2, 5000), 1000).await.unwrap();
    store.insert_ca(&ca(1, 1000), 1000).await.unwrap();
    // A generation is made once: a second server making the same one gets a conflict.
    assert!(matches!(
        store.insert_ca(&ca(1, 1000), 1000).await,
        Err(DbError::Conflict)
    ));
    let cas = store.list_cas().await.unwrap();
    assert_eq!(
        cas,
        vec![ca(1, 1000), ca(2, 5000)],
        "round trip, oldest first"
    );

    // Activating a prepared CA earlier; an active one (or an unknown id) is left alone.
    assert!(store.activate_ca("g2", 3000, 3000).await.unwrap());
    assert!(!store.activate_ca("g1", 500, 3000).await.unwrap());
    assert!(!store.activate_ca("g9", 3000, 3000).await.unwrap());
    let cas = store.list_cas().await.unwrap();
    assert_eq!((cas[0].activates_at, cas[1].activates_at), (1000, 3000));

    // A taint keeps its first time.
    assert!(store.taint_ca("g1", 4000).await.unwrap());
    assert!(store.taint_ca("g1", 4500).await.unwrap());
    assert!(!store.taint_ca("g9", 4000).await.unwrap());
    assert_eq!(store.list_cas().await.unwrap()[0].tainted_at, Some(4000));
}

fn entry(tenant: &str, p: &PrincipalId, path: Option<&str>) -> Entry {
    Entry {
        tenant: tid(tenant),
        principal: p.clone(),
        spiffe_path: path.map(String::from),
        dns_names: vec!["a.internal".into(), "b.internal".into()],
        ttl_seconds: Some(600),
        created_at: 100,
        updated_at: 100,
    }
}

async fn entries_are_unique_per_principal_and_path(ctx: &Ctx) {
    let (store, a, b, c) = setup(ctx).await;
    let e = entry("acme", &a, Some("payments/orders"));
    store.create_entry(&e).await.unwrap();
    assert_eq!(
        store.get_entry(&tid("acme"), &a).await.unwrap(),
        Some(e.clone())
    );
    // One entry per principal; one principal per path within a tenant.
    assert!(matches!(
        store.create_entry(&e).await,
        Err(DbError::Conflict)
    ));
    assert!(matches!(
        store
            .create_entry(&entry("acme", &b, Some("payments/orders")))
            .await,
        Err(DbError::Conflict)
    ));
    // Entries without a path do not collide; another tenant may use the same path.
    store.create_entry(&entry("acme", &b, None)).await.unwrap();
    store
        .create_entry(&entry("other", &c, Some("payments/orders")))
        .await
        .unwrap();
    assert_eq!(store.list_entries(&tid("acme")).await.unwrap().len(), 2);
    assert_eq!(store.list_entries(&tid("other")).await.unwrap().len(), 1);
    assert_eq!(
        store
            .entry_by_path(&tid("acme"), "payments/orders")
            .await
            .unwrap()
            .map(|e| e.principal),
        Some(a.clone())
    );
    assert_eq!(
        store
            .entry_by_path(&tid("other"), "payments/orders")
            .await
            .unwrap()
            .map(|e| e.principal),
        Some(c.clone())
    );
    assert!(store
        .entry_by_path(&tid("acme"), "nope")
        .await
        .unwrap()
        .is_none());

    // Updates keep the path unique too.
    let mut taken = entry("acme", &b, Some("payments/orders"));
    taken.updated_at = 200;
    assert!(matches!(
        store.update_entry(&taken).await,
        Err(DbError::Conflict)
    ));
    let mut moved = entry("acme", &b, Some("billing"));
    moved.updated_at = 200;
    assert!(store.update_entry(&moved).await.unwrap());
    assert_eq!(
        store.get_entry(&tid("acme"), &b).await.unwrap(),
        Some(moved)
    );
    // Tenant-scoped: a principal id under another tenant is not found.
    assert!(!store.update_entry(&entry("other", &a, None)).await.unwrap());
    assert!(store.get_entry(&tid("other"), &a).await.unwrap().is_none());

    assert!(store.delete_entry(&tid("acme"), &a, 300).await.unwrap());
    assert!(!store.delete_entry(&tid("acme"), &a, 300).await.unwrap());
    assert!(store
        .entry_by_path(&tid("acme"), "payments/orders")
        .await
        .unwrap()
        .is_none());
}

fn record(serial: &str, tenant: &str, p: &PrincipalId, at: i64) -> SvidRecord {
    SvidRecord {
        serial: serial.into(),
        tenant: tid(tenant),
        principal: p.clone(),
        spiffe_id: format!("spiffe://capstan.local/t/{tenant}/{p}"),
        ca_id: "g1".into(),
        via: "bearer".into(),
        issued_at: at,
        not_after: at + 3600,
    }
}

async fn svid_records_batch_list_and_prune(ctx: &Ctx) {
    let (store, a, b, c) = setup(ctx).await;
    store.record_svids(&[]).await.unwrap();
    // A batch bigger than one statement's natural size.
    let batch: Vec<SvidRecord> = (0..600)
        .map(|i| {
            record(
                &format!("{i:032x}"),
                "acme",
                if i % 2 == 0 { &a } else { &b },
                1000 + i,
            )
        })
        .collect();
    store.record_svids(&batch).await.unwrap();
    store
        .record_svids(&[record("ff", "other", &c, 5000)])
        .await
        .unwrap();
    // A serial is recorded once.
    assert!(store
        .record_svids(&[record("ff", "other", &c, 5000)])
        .await
        .is_err());

    let newest = store.list_svids(&tid("acme"), None, 3).await.unwrap();
    assert_eq!(
        newest.iter().map(|r| r.issued_at).collect::<Vec<_>>(),
        vec![1599, 1598, 1597]
    );
    assert_eq!(newest[0], batch[599]);
    let only_a = store
        .list_svids(&tid("acme"), Some(&a), 1000)
        .await
        .unwrap();
    assert_eq!(only_a.len(), 300);
    assert!(only_a.iter().all(|r| r.principal == a));
    assert_eq!(
        store
            .list_svids(&tid("other"), None, 10)
            .await
            .unwrap()
            .len(),
        1
    );

    // Records of certificates expired before the cut are pruned.
    assert_eq!(store.prune_svids(1000 + 3600 + 100).await.unwrap(), 100);
    assert_eq!(
        store
            .list_svids(&tid("acme"), None, 1000)
            .await
            .unwrap()
            .len(),
        500
    );
}

async fn join_tokens_are_single_use(ctx: &Ctx) {
    let (store, a, ..) = setup(ctx).await;
    assert!(store.principal_exists(&tid("acme"), &a).await.unwrap());
    assert!(!store.principal_exists(&tid("other"), &a).await.unwrap());
    let t = JoinToken {
        hash: vec![1; 32],
        tenant: tid("acme"),
        principal: a.clone(),
        created_at: 1000,
        expires_at: 2000,
        used: None,
    };
    store.insert_join_token(&t).await.unwrap();
    store
        .insert_join_token(&JoinToken {
            hash: vec![2; 32],
            expires_at: 1500,
            ..t.clone()
        })
        .await
        .unwrap();
    assert_eq!(
        store.peek_join_token(&t.hash, 1100).await.unwrap(),
        Some(t.clone())
    );
    // Used once; the second use and later peeks find nothing.
    let used = store.use_join_token(&t.hash, 1200).await.unwrap().unwrap();
    assert_eq!(used.principal, a);
    assert!(store.use_join_token(&t.hash, 1201).await.unwrap().is_none());
    assert!(store
        .peek_join_token(&t.hash, 1202)
        .await
        .unwrap()
        .is_none());
    store.set_join_token_serial(&t.hash, "abcd").await.unwrap();
    // Expired tokens cannot be used; unknown ones neither.
    assert!(store
        .use_join_token(&[2; 32], 1500)
        .await
        .unwrap()
        .is_none());
    assert!(store
        .use_join_token(&[3; 32], 1000)
        .await
        .unwrap()
        .is_none());
    // Two concurrent uses of a fresh token: exactly one wins.
    store
        .insert_join_token(&JoinToken {
            hash: vec![4; 32],
            ..t.clone()
        })
        .await
        .unwrap();
    let (x, y) = tokio::join!(
        store.use_join_token(&[4; 32], 1300),
        store.use_join_token(&[4; 32], 1300)
    );
    assert_eq!(
        [x.unwrap().is_some(), y.unwrap().is_some()]
            .iter()
            .filter(|w| **w)
            .count(),
        1
    );
    assert_eq!(store.prune_join_tokens(1600).await.unwrap(), 1);
}
