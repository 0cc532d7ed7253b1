//! Storage conformance: the same assertions for every backend.

use capstan_auth::model::{Client, StoredKey, Tenant};
use capstan_auth::store::{ClientStore, KeyStore, RevocationStore, SqlStore, TenantStore};
use capstan_core::ids::{PrincipalId, PrincipalKind, TenantId};
use capstan_core::jwt::{Alg, Jwk};
use capstan_core::rng::SystemRng;
use capstan_db::{Db, DbError};
use capstan_tests::Ctx;

capstan_tests::on_both_backends!(
    migrations_are_applied_and_idempotent,
    tenants_round_trip_and_conflict,
    clients_are_tenant_scoped,
    principal_ids_never_collide,
    secrets_rotate_with_grace,
    keys_round_trip_in_activation_order,
    revocations_are_idempotent_and_ordered,
    change_feed_orders_and_prunes,
);

fn tid(s: &str) -> TenantId {
    TenantId::parse(s).unwrap()
}

async fn with_tenants(db: &Db, ids: &[&str]) -> SqlStore {
    let store = SqlStore::new(db.clone());
    for id in ids {
        store
            .create_tenant(&Tenant {
                id: tid(id),
                signing_alg: Alg::ES256,
                created_at: 100,
            })
            .await
            .unwrap();
    }
    store
}

fn client(tenant: &str, name: &str, at: i64) -> Client {
    Client {
        id: PrincipalId::generate(PrincipalKind::Service, &SystemRng::new()).unwrap(),
        tenant: tid(tenant),
        name: name.into(),
        secret_hash: vec![1, 2, 3],
        previous_secret: None,
        scopes: vec!["a".into(), "b:c".into()],
        audiences: vec!["api".into()],
        token_ttl_seconds: Some(120),
        admin: false,
        tls_client_auth_san_uri: Some(format!("spiffe://capstan.local/t/{tenant}/{name}")),
        created_at: at,
        updated_at: at,
    }
}

fn key(tenant: &str, kid: &str, activates: i64) -> StoredKey {
    StoredKey {
        tenant: tid(tenant),
        kid: kid.into(),
        alg: Alg::EdDSA,
        public_jwk: Jwk {
            kty: "OKP".into(),
            kid: kid.into(),
            use_: "sig".into(),
            alg: "EdDSA".into(),
            crv: Some("Ed25519".into()),
            x: Some("abc".into()),
            y: None,
            n: None,
            e: None,
        },
        private_key_sealed: vec![9; 40],
        created_at: 10,
        activates_at: activates,
    }
}

async fn migrations_are_applied_and_idempotent(ctx: &Ctx) {
    let db = ctx.db();
    assert!(db.pending_migrations().await.unwrap().is_empty());
    db.migrate().await.unwrap();
    db.ping().await.unwrap();
    assert!(db.pending_migrations().await.unwrap().is_empty());
}

async fn tenants_round_trip_and_conflict(ctx: &Ctx) {
    let db = ctx.db();
    let store = with_tenants(&db, &["beta", "alpha"]).await;
    let got = store.get_tenant(&tid("alpha")).await.unwrap().unwrap();
    assert_eq!(got.signing_alg, Alg::ES256);
    assert_eq!(got.created_at, 100);
    assert!(store.get_tenant(&tid("nope")).await.unwrap().is_none());
    let ids: Vec<String> = store
        .list_tenants()
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.id.to_string())
        .collect();
    assert_eq!(ids, ["alpha", "beta"]);
    let dup = store.create_tenant(&got).await;
    assert!(matches!(dup, Err(DbError::Conflict)), "{dup:?}");
    assert!(store
        .set_signing_alg(&tid("alpha"), Alg::RS256, 200)
        .await
        .unwrap());
    assert!(!store
        .set_signing_alg(&tid("nope"), Alg::RS256, 200)
        .await
        .unwrap());
    let got = store.get_tenant(&tid("alpha")).await.unwrap().unwrap();
    assert_eq!(got.signing_alg, Alg::RS256);
}

async fn clients_are_tenant_scoped(ctx: &Ctx) {
    let db = ctx.db();
    let store = with_tenants(&db, &["a", "b"]).await;
    let c1 = client("a", "one", 1);
    let mut c2 = client("a", "two", 2);
    c2.admin = true;
    c2.token_ttl_seconds = None;
    let c3 = client("b", "three", 3);
    for c in [&c1, &c2, &c3] {
        store.create_client(c).await.unwrap();
    }
    assert_eq!(
        store.get_client(&tid("a"), &c1.id).await.unwrap().unwrap(),
        c1
    );
    assert_eq!(
        store.get_client(&tid("a"), &c2.id).await.unwrap().unwrap(),
        c2
    );
    // Another tenant's client is invisible.
    assert!(store.get_client(&tid("b"), &c1.id).await.unwrap().is_none());
    let names: Vec<String> = store
        .list_clients(&tid("a"))
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.name)
        .collect();
    assert_eq!(names, ["one", "two"]);
    assert!(store.has_admin(&tid("a")).await.unwrap());
    assert!(!store.has_admin(&tid("b")).await.unwrap());
    // Deleting from the wrong tenant does nothing.
    assert!(!store.delete_client(&tid("b"), &c1.id, 200).await.unwrap());
    assert!(store.delete_client(&tid("a"), &c1.id, 200).await.unwrap());
    assert!(!store.delete_client(&tid("a"), &c1.id, 200).await.unwrap());
    assert!(store.get_client(&tid("a"), &c1.id).await.unwrap().is_none());
    assert_eq!(store.list_clients(&tid("a")).await.unwrap().len(), 1);
}

async fn principal_ids_never_collide(ctx: &Ctx) {
    let db = ctx.db();
    let store = with_tenants(&db, &["a", "b"]).await;
    let c1 = client("a", "one", 1);
    store.create_client(&c1).await.unwrap();
    // The same id in another tenant is refused: principal ids are global.
    let mut clash = client("b", "clash", 2);
    clash.id = c1.id.clone();
    let r = store.create_client(&clash).await;
    assert!(matches!(r, Err(DbError::Conflict)), "{r:?}");
    // And the failed insert left nothing behind.
    assert!(store.list_clients(&tid("b")).await.unwrap().is_empty());
}

async fn secrets_rotate_with_grace(ctx: &Ctx) {
    let db = ctx.db();
    let store = with_tenants(&db, &["a"]).await;
    let c = client("a", "one", 1);
    store.create_client(&c).await.unwrap();
    let ok = store
        .set_secret(&tid("a"), &c.id, &[7, 7], Some((&[1, 2, 3], 500)), 50)
        .await
        .unwrap();
    assert!(ok);
    let got = store.get_client(&tid("a"), &c.id).await.unwrap().unwrap();
    assert_eq!(got.secret_hash, vec![7, 7]);
    assert_eq!(got.previous_secret, Some((vec![1, 2, 3], 500)));
    assert_eq!(got.updated_at, 50);
    store
        .set_secret(&tid("a"), &c.id, &[8], None, 60)
        .await
        .unwrap();
    let got = store.get_client(&tid("a"), &c.id).await.unwrap().unwrap();
    assert_eq!(got.previous_secret, None);
    assert!(!store
        .set_secret(&tid("b"), &c.id, &[8], None, 60)
        .await
        .unwrap());
}

async fn keys_round_trip_in_activation_order(ctx: &Ctx) {
    let db = ctx.db();
    let store = with_tenants(&db, &["a", "b"]).await;
    let late = key("a", "k2", 700);
    let early = key("a", "k1", 0);
    store.insert_key(&late).await.unwrap();
    store.insert_key(&early).await.unwrap();
    store.insert_key(&key("b", "k3", 0)).await.unwrap();
    assert_eq!(store.list_keys(&tid("a")).await.unwrap(), vec![early, late]);
    assert_eq!(store.list_keys(&tid("b")).await.unwrap().len(), 1);
    let dup = store.insert_key(&key("a", "k1", 5)).await;
    assert!(matches!(dup, Err(DbError::Conflict)), "{dup:?}");
}

async fn revocations_are_idempotent_and_ordered(ctx: &Ctx) {
    let db = ctx.db();
    let store = with_tenants(&db, &["a"]).await;
    store.revoke(&tid("a"), "j1", 100, 1).await.unwrap();
    store.revoke(&tid("a"), "j1", 100, 2).await.unwrap();
    store.revoke(&tid("a"), "j2", 300, 3).await.unwrap();
    let all = store.revocations_after(0, 100).await.unwrap();
    let jtis: Vec<&str> = all.iter().map(|r| r.jti.as_str()).collect();
    assert_eq!(jtis, ["j1", "j2"]);
    assert!(all[0].seq < all[1].seq);
    let after = store.revocations_after(all[0].seq, 100).await.unwrap();
    assert_eq!(after.len(), 1);
    assert_eq!(after[0].expires_at, 300);
    assert_eq!(store.prune_revocations(200).await.unwrap(), 1);
    assert_eq!(store.revocations_after(0, 100).await.unwrap().len(), 1);
}

async fn change_feed_orders_and_prunes(ctx: &Ctx) {
    let db = ctx.db();
    assert_eq!(db.latest_change().await.unwrap(), 0);
    db.publish_change("a", "client", "svc_x", 10).await.unwrap();
    db.publish_change("a", "tenant", "a", 20).await.unwrap();
    let all = db.changes_after(0, 10).await.unwrap();
    assert_eq!(all.len(), 2);
    assert_eq!(
        (all[0].topic.as_str(), all[0].key.as_str()),
        ("client", "svc_x")
    );
    assert_eq!(db.latest_change().await.unwrap(), all[1].seq);
    assert_eq!(db.changes_after(all[0].seq, 10).await.unwrap().len(), 1);
    assert_eq!(db.changes_after(0, 1).await.unwrap().len(), 1);
    assert_eq!(db.prune_changes(15).await.unwrap(), 1);
    assert_eq!(db.changes_after(0, 10).await.unwrap().len(), 1);
}
