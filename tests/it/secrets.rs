//! What lands in the database: client secrets and private keys never in clear.

use std::sync::Arc;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use capstan_auth::admin::NewClient;
use capstan_auth::store::SqlStore;
use capstan_auth::{AuthConfig, AuthService};
use capstan_core::authz::AdminOnly;
use capstan_core::clock::ManualClock;
use capstan_core::crypto::MasterKey;
use capstan_core::ids::TenantId;
use capstan_core::jwt::{Alg, SigningKey};
use capstan_core::rng::SystemRng;
use capstan_db::{on_pool, Db};
use capstan_tests::Ctx;

capstan_tests::on_both_backends!(secrets_and_private_keys_are_never_stored_in_clear);

/// Every text and blob column of a table, as bytes.
async fn raw_cells(db: &Db, sql: &str) -> Vec<Vec<u8>> {
    let rows: Vec<(String, Vec<u8>)> =
        on_pool!(db, |p| sqlx::query_as(sql).fetch_all(p).await).unwrap();
    rows.into_iter()
        .flat_map(|(a, b)| [a.into_bytes(), b])
        .collect()
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

async fn secrets_and_private_keys_are_never_stored_in_clear(ctx: &Ctx) {
    let db = ctx.db();
    let rng = Arc::new(SystemRng::new());
    let master = MasterKey::generate(rng.as_ref()).unwrap();
    let svc = AuthService::new(
        AuthConfig::default(),
        Arc::new(SqlStore::new(db.clone())),
        &master,
        Arc::new(ManualClock::new(1_800_000_000)),
        rng,
        Arc::new(AdminOnly),
    )
    .unwrap();
    let tenant = TenantId::parse("t1").unwrap();
    assert!(svc.ensure_tenant(&tenant, Alg::ES256).await.unwrap());
    let created = svc
        .create_client_unchecked(
            &tenant,
            NewClient {
                name: "svc".into(),
                scopes: vec![],
                audiences: vec!["api".into()],
                token_ttl_seconds: None,
                permissions_boundary: None,
                token_endpoint_auth_method: None,
                tls_client_auth_san_uri: None,
            },
            false,
        )
        .await
        .unwrap();
    let secret = created.client_secret.as_bytes().to_vec();
    assert!(secret.len() >= 43, "secret carries at least 256 bits");

    let client_cells = raw_cells(
        &db,
        "SELECT name || scopes || audiences || id, secret_hash FROM auth_clients",
    )
    .await;
    assert!(!client_cells.is_empty());
    for cell in &client_cells {
        assert!(!contains(cell, &secret), "client secret stored in clear");
        assert!(
            !contains(cell, &secret[4..]),
            "client secret body stored in clear"
        );
    }

    let key_cells = raw_cells(
        &db,
        "SELECT public_jwk, private_key_sealed FROM auth_signing_keys",
    )
    .await;
    assert_eq!(key_cells.len(), 2);
    let jwk: serde_json::Value = serde_json::from_slice(&key_cells[0]).unwrap();
    let sealed = &key_cells[1];
    // A PKCS#8 P-256 key embeds its public point; the sealed blob must not show it, and must not
    // parse as a private key.
    let x = URL_SAFE_NO_PAD.decode(jwk["x"].as_str().unwrap()).unwrap();
    assert!(
        !contains(sealed, &x),
        "public point visible: key stored in clear"
    );
    let kid = jwk["kid"].as_str().unwrap();
    assert!(SigningKey::from_pkcs8(kid, Alg::ES256, sealed).is_err());
}
