//! The identity service over HTTP: X.509-SVIDs checked against every rule of the SPIFFE
//! X.509-SVID standard with independent parsers and a real path validator (webpki), CSR
//! attacks, join tokens, registration entries, JWT-SVIDs, the bundle, CA rotation and taint,
//! guards, and CA keys sealed at rest.

use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, IsCa, KeyPair, KeyUsagePurpose, PublicKeyData, SanType,
};
use reqwest::Method;
use rustls_pki_types::{CertificateDer, UnixTime};
use serde_json::{json, Value};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::FromDer;

use capstan_core::clock::Clock;
use capstan_tests::{Creds, Ctx, TestServer};

capstan_tests::on_both_backends!(
    svid_follows_the_x509_svid_standard,
    csr_attacks_are_refused,
    join_token_yields_one_svid,
    entries_shape_svids,
    jwt_svid_verifies_with_the_bundle,
    rotation_and_taint_never_break_verification,
    identity_apis_are_guarded,
    ca_keys_are_sealed_at_rest,
    issuance_per_principal_is_bounded,
);

/// A fresh P-256 key and a CSR for it made with `edit` applied to empty parameters.
fn csr_with(edit: impl FnOnce(&mut CertificateParams)) -> (KeyPair, String) {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::default();
    edit(&mut params);
    let csr = params.serialize_request(&key).unwrap().pem().unwrap();
    (key, csr)
}

fn csr() -> (KeyPair, String) {
    csr_with(|_| {})
}

/// `POST /v1/identity/svids` with the given `Authorization` header value.
async fn issue(s: &TestServer, authorization: &str, csr: &str) -> (u16, Value) {
    let r = s
        .http
        .post(s.url("/v1/identity/svids"))
        .header("authorization", authorization)
        .json(&json!({ "csr": csr }))
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

fn pem_ders(pem: &str) -> Vec<Vec<u8>> {
    x509_parser::pem::Pem::iter_from_buffer(pem.as_bytes())
        .map(|p| p.unwrap().contents)
        .collect()
}

/// Validates a chain to the bundle's roots with webpki, as a TLS peer would, for both usages.
fn validate(chain_pem: &str, bundle_pem: &str, at: i64) -> Result<(), webpki::Error> {
    let chain = pem_ders(chain_pem);
    let roots = pem_ders(bundle_pem);
    let roots: Vec<CertificateDer<'_>> = roots.into_iter().map(CertificateDer::from).collect();
    let anchors: Vec<_> = roots
        .iter()
        .map(|r| webpki::anchor_from_trusted_cert(r).unwrap())
        .collect();
    let leaf = CertificateDer::from(chain[0].clone());
    let intermediates: Vec<CertificateDer<'_>> = chain[1..]
        .iter()
        .cloned()
        .map(CertificateDer::from)
        .collect();
    let ee = webpki::EndEntityCert::try_from(&leaf)?;
    let time = UnixTime::since_unix_epoch(Duration::from_secs(at as u64));
    for usage in [
        webpki::KeyUsage::client_auth(),
        webpki::KeyUsage::server_auth(),
    ] {
        ee.verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            &anchors,
            &intermediates,
            time,
            usage,
            None,
            None,
        )?;
    }
    Ok(())
}

fn uris(cert: &X509Certificate<'_>) -> Vec<String> {
    names(cert, |g| match g {
        GeneralName::URI(u) => Some(u.to_string()),
        _ => None,
    })
}

fn dns(cert: &X509Certificate<'_>) -> Vec<String> {
    names(cert, |g| match g {
        GeneralName::DNSName(d) => Some(d.to_string()),
        _ => None,
    })
}

fn names(
    cert: &X509Certificate<'_>,
    f: impl Fn(&GeneralName<'_>) -> Option<String>,
) -> Vec<String> {
    cert.subject_alternative_name()
        .unwrap()
        .map(|san| san.value.general_names.iter().filter_map(&f).collect())
        .unwrap_or_default()
}

/// An admin token and a service client that may get its own SVIDs (IdentityWorkload).
async fn workload(s: &TestServer, name: &str) -> (String, Creds, String) {
    let admin = s.admin().await;
    let admin_token = s.token("default", &admin, &[]).await;
    let svc = s
        .create_client(
            &admin_token,
            json!({ "name": name, "audiences": ["capstan"] }),
        )
        .await;
    let (status, v) = s
        .api(
            Method::PUT,
            &format!("/v1/principals/{}/policies/IdentityWorkload", svc.id),
            &admin_token,
            None,
        )
        .await;
    assert!(status == 200 || status == 204, "{status} {v}");
    let token = s.token("default", &svc, &[]).await;
    (admin_token, svc, token)
}

async fn svid_follows_the_x509_svid_standard(ctx: &Ctx) {
    let s = ctx.server().await;
    let (_, svc, token) = workload(&s, "orders").await;
    let now = s.clock.now();
    let (key, request) = csr();
    let (status, v) = issue(&s, &format!("Bearer {token}"), &request).await;
    assert_eq!(status, 201, "{v}");
    let expected = format!("spiffe://capstan.local/t/default/{}", svc.id);
    assert_eq!(v["spiffe_id"], expected.as_str());

    let chain = pem_ders(v["svid_chain_pem"].as_str().unwrap());
    assert_eq!(
        chain.len(),
        1,
        "a generated CA is its own root: the chain is the leaf"
    );
    let (_, leaf) = X509Certificate::from_der(&chain[0]).unwrap();
    // Exactly one URI SAN, the principal's SPIFFE ID.
    assert_eq!(uris(&leaf), vec![expected.clone()]);
    // A leaf: CA false; key usage critical with digitalSignature, never keyCertSign/cRLSign.
    let bc = leaf.basic_constraints().unwrap().unwrap();
    assert!(!bc.value.ca);
    let ku = leaf.key_usage().unwrap().unwrap();
    assert!(ku.critical);
    assert!(ku.value.digital_signature());
    assert!(!ku.value.key_cert_sign() && !ku.value.crl_sign());
    let eku = leaf.extended_key_usage().unwrap().unwrap();
    assert!(eku.value.server_auth && eku.value.client_auth);
    // The key is the CSR's; validity backdated a little, one hour by default.
    assert_eq!(
        leaf.public_key().raw,
        key.subject_public_key_info().as_slice()
    );
    let nb = leaf.validity().not_before.timestamp();
    let na = leaf.validity().not_after.timestamp();
    assert!(nb < now && nb >= now - 300, "not_before {nb} vs now {now}");
    assert_eq!(na, v["expires_at"].as_i64().unwrap());
    assert!((na - now - 3600).abs() <= 1);
    assert!(v["renew_after"].as_i64().unwrap() < na);
    // Signed by a root of the bundle, for client and server authentication.
    let bundle_pem = v["bundle_pem"].as_str().unwrap();
    validate(v["svid_chain_pem"].as_str().unwrap(), bundle_pem, now).unwrap();
    let public_pem = s
        .http
        .get(s.url("/v1/identity/bundle.pem"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(public_pem, bundle_pem);
    let root_der = pem_ders(bundle_pem).remove(0);
    let (_, root) = X509Certificate::from_der(&root_der).unwrap();
    assert!(root.basic_constraints().unwrap().unwrap().value.ca);
    assert_eq!(leaf.issuer(), root.subject());
    assert_eq!(
        uris(&root),
        vec!["spiffe://capstan.local".to_owned()],
        "a CA carries the trust domain's ID"
    );

    // Serials are random and unique; each issuance is recorded for audit.
    let (status, v2) = issue(&s, &format!("Bearer {token}"), &request).await;
    assert_eq!(status, 201, "{v2}");
    assert_ne!(v["serial"], v2["serial"]);
    let leaf2_der = pem_ders(v2["svid_chain_pem"].as_str().unwrap()).remove(0);
    let (_, leaf2) = X509Certificate::from_der(&leaf2_der).unwrap();
    assert_ne!(leaf.raw_serial(), leaf2.raw_serial());
    assert!(leaf.raw_serial().len() >= 8);
    let admin_creds = s.admin().await;
    let admin_token = s.token("default", &admin_creds, &[]).await;
    let (status, records) = s
        .api(
            Method::GET,
            &format!("/v1/identity/svids?principal={}", svc.id),
            &admin_token,
            None,
        )
        .await;
    assert_eq!(status, 200, "{records}");
    let records = records.as_array().unwrap();
    assert_eq!(records.len(), 2);
    assert!(records.iter().all(|r| r["spiffe_id"] == expected.as_str()
        && r["via"] == "bearer"
        && r["principal"] == svc.id.as_str()));
    assert!(records.iter().any(|r| r["serial"] == v["serial"]));
    s.shutdown().await;
}

async fn csr_attacks_are_refused(ctx: &Ctx) {
    let s = ctx.server().await;
    let (_, svc, token) = workload(&s, "orders").await;
    let bearer = format!("Bearer {token}");
    let own = format!("spiffe://capstan.local/t/default/{}", svc.id);

    // A CSR asking to be a CA, or for CA key usages, is refused, never honoured.
    let (_, ca_csr) = csr_with(|p| p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained));
    let (status, v) = issue(&s, &bearer, &ca_csr).await;
    assert_eq!(status, 400, "{v}");
    assert!(v.to_string().contains("CA"), "{v}");
    let (_, ku_csr) = csr_with(|p| p.key_usages = vec![KeyUsagePurpose::KeyCertSign]);
    let (status, v) = issue(&s, &bearer, &ku_csr).await;
    assert_eq!(status, 400, "{v}");

    // Someone else's SPIFFE ID, or a DNS name no entry grants.
    let other = "spiffe://capstan.local/t/default/admin".to_owned();
    let (_, foreign) =
        csr_with(|p| p.subject_alt_names = vec![SanType::URI(other.clone().try_into().unwrap())]);
    let (status, v) = issue(&s, &bearer, &foreign).await;
    assert_eq!(status, 400, "{v}");
    let (_, dns_csr) = csr_with(|p| {
        p.subject_alt_names = vec![SanType::DnsName("db.internal".try_into().unwrap())]
    });
    let (status, v) = issue(&s, &bearer, &dns_csr).await;
    assert_eq!(status, 400, "{v}");
    // Asking for its own ID is allowed (and the certificate is still built by Capstan).
    let (_, own_csr) =
        csr_with(|p| p.subject_alt_names = vec![SanType::URI(own.clone().try_into().unwrap())]);
    let (status, v) = issue(&s, &bearer, &own_csr).await;
    assert_eq!(status, 201, "{v}");

    // A CSR whose self-signature does not verify: the signature's last byte flipped.
    let (_, good) = csr();
    let mut der = pem_ders_csr(&good);
    let last = der.len() - 1;
    der[last] ^= 0x01;
    let tampered = pem_encode("CERTIFICATE REQUEST", &der);
    let (status, v) = issue(&s, &bearer, &tampered).await;
    assert_eq!(status, 400, "{v}");
    // A CSR whose subject key was swapped for another (signature by a different key).
    let (other_key, _) = csr();
    let mut swapped = pem_ders_csr(&good);
    let their_spki = other_key.subject_public_key_info();
    let (_, parsed) =
        x509_parser::certification_request::X509CertificationRequest::from_der(&swapped).unwrap();
    let spki = parsed.certification_request_info.subject_pki.raw.to_vec();
    let at = swapped
        .windows(spki.len())
        .position(|w| w == spki.as_slice())
        .unwrap();
    swapped.splice(at..at + spki.len(), their_spki.iter().copied());
    let (status, v) = issue(&s, &bearer, &pem_encode("CERTIFICATE REQUEST", &swapped)).await;
    assert_eq!(status, 400, "{v}");

    // Garbage, oversized, and empty bodies get a 4xx with a JSON reason.
    for bad in ["", "not a csr", &"A".repeat(20_000)] {
        let (status, v) = issue(&s, &bearer, bad).await;
        assert!(status == 400 || status == 413, "{status} {v}");
        assert!(v.is_object(), "{v}");
    }
    // Without credentials, or with a bogus scheme.
    let (status, v) = issue(&s, "Basic Zm9vOmJhcg==", &good).await;
    assert_eq!(status, 401, "{v}");
    let r = s
        .http
        .post(s.url("/v1/identity/svids"))
        .json(&json!({ "csr": good }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    s.shutdown().await;
}

fn pem_ders_csr(pem: &str) -> Vec<u8> {
    x509_parser::pem::Pem::iter_from_buffer(pem.as_bytes())
        .next()
        .unwrap()
        .unwrap()
        .contents
}

fn pem_encode(label: &str, der: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).unwrap());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

async fn join_token_yields_one_svid(ctx: &Ctx) {
    let s = ctx.server().await;
    let admin = s.admin().await;
    let admin_token = s.token("default", &admin, &[]).await;
    let svc = s
        .create_client(
            &admin_token,
            json!({ "name": "batch", "audiences": ["capstan"] }),
        )
        .await;
    let (status, jt) = s
        .api(
            Method::POST,
            "/v1/identity/join-tokens",
            &admin_token,
            Some(json!({ "principal": svc.id, "ttl_seconds": 600 })),
        )
        .await;
    assert_eq!(status, 201, "{jt}");
    let t = jt["token"].as_str().unwrap();
    assert!(t.starts_with("cjt_"));
    let expected = format!("spiffe://capstan.local/t/default/{}", svc.id);
    assert_eq!(jt["spiffe_id"], expected.as_str());

    // A wrong token, then the right one once; a second use is refused.
    let (_, request) = csr();
    let (status, v) = issue(&s, "JoinToken cjt_nottherealone", &request).await;
    assert_eq!(status, 401, "{v}");
    let (status, v) = issue(&s, &format!("JoinToken {t}"), &request).await;
    assert_eq!(status, 201, "{v}");
    assert_eq!(v["spiffe_id"], expected.as_str());
    let (status, again) = issue(&s, &format!("JoinToken {t}"), &request).await;
    assert_eq!(status, 401, "{again}");

    // The use is recorded.
    let (status, records) = s
        .api(
            Method::GET,
            &format!("/v1/identity/svids?principal={}", svc.id),
            &admin_token,
            None,
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(records.as_array().unwrap().len(), 1);
    assert_eq!(records[0]["via"], "join_token");
    assert_eq!(records[0]["serial"], v["serial"]);

    // An expired token is refused; a token for a principal that does not exist is never made.
    let (_, jt2) = s
        .api(
            Method::POST,
            "/v1/identity/join-tokens",
            &admin_token,
            Some(json!({ "principal": svc.id, "ttl_seconds": 60 })),
        )
        .await;
    s.clock.advance(61);
    let (status, _) = issue(
        &s,
        &format!("JoinToken {}", jt2["token"].as_str().unwrap()),
        &request,
    )
    .await;
    assert_eq!(status, 401);
    let admin_token = s.token("default", &admin, &[]).await;
    let (status, v) = s
        .api(
            Method::POST,
            "/v1/identity/join-tokens",
            &admin_token,
            Some(json!({ "principal": "svc_nosuchclient" })),
        )
        .await;
    assert_eq!(status, 404, "{v}");
    // The token is stored only as a hash.
    let raw: Vec<(Vec<u8>,)> = match ctx.db() {
        capstan_db::Db::Postgres(p) => sqlx::query_as("SELECT hash FROM identity_join_tokens")
            .fetch_all(&p)
            .await
            .unwrap(),
        capstan_db::Db::Sqlite(p) => sqlx::query_as("SELECT hash FROM identity_join_tokens")
            .fetch_all(&p)
            .await
            .unwrap(),
    };
    assert_eq!(raw.len(), 2);
    assert!(raw
        .iter()
        .all(|(h,)| !h.windows(t.len()).any(|w| w == t.as_bytes())));
    s.shutdown().await;
}

async fn entries_shape_svids(ctx: &Ctx) {
    let s = ctx.server().await;
    let (admin_token, svc, token) = workload(&s, "orders").await;
    let (status, e) = s
        .api(
            Method::POST,
            "/v1/identity/entries",
            &admin_token,
            Some(json!({
                "principal": svc.id,
                "spiffe_path": "payments/orders",
                "dns_names": ["orders.internal", "orders.payments.svc"],
                "ttl_seconds": 600,
            })),
        )
        .await;
    assert_eq!(status, 201, "{e}");
    assert_eq!(
        e["spiffe_id"],
        "spiffe://capstan.local/t/default/payments/orders"
    );
    // The CSR may ask for names the entry grants.
    let (_, request) = csr_with(|p| {
        p.subject_alt_names = vec![SanType::DnsName("orders.internal".try_into().unwrap())]
    });
    let now = s.clock.now();
    let (status, v) = issue(&s, &format!("Bearer {token}"), &request).await;
    assert_eq!(status, 201, "{v}");
    let leaf_der = pem_ders(v["svid_chain_pem"].as_str().unwrap()).remove(0);
    let (_, leaf) = X509Certificate::from_der(&leaf_der).unwrap();
    assert_eq!(
        uris(&leaf),
        vec!["spiffe://capstan.local/t/default/payments/orders".to_owned()]
    );
    assert_eq!(dns(&leaf), vec!["orders.internal", "orders.payments.svc"]);
    assert!((v["expires_at"].as_i64().unwrap() - now - 600).abs() <= 1);

    // Another principal cannot take the same path; paths stay under the tenant's prefix.
    let other = s
        .create_client(
            &admin_token,
            json!({ "name": "other", "audiences": ["capstan"] }),
        )
        .await;
    let (status, v) = s
        .api(
            Method::POST,
            "/v1/identity/entries",
            &admin_token,
            Some(json!({ "principal": other.id, "spiffe_path": "payments/orders" })),
        )
        .await;
    assert_eq!(status, 409, "{v}");
    for bad in ["../x", "/abs", "a//b", "a/./b", "A%2Fb", "a\u{0}b", ""] {
        let (status, v) = s
            .api(
                Method::POST,
                "/v1/identity/entries",
                &admin_token,
                Some(json!({ "principal": other.id, "spiffe_path": bad })),
            )
            .await;
        assert_eq!(status, 400, "{bad:?}: {v}");
    }
    // A path that could be another principal's default ID is refused.
    let (status, v) = s
        .api(
            Method::POST,
            "/v1/identity/entries",
            &admin_token,
            Some(json!({ "principal": other.id, "spiffe_path": svc.id })),
        )
        .await;
    assert_eq!(status, 400, "{v}");
    // A TTL over the deployment's maximum is refused with the maximum named.
    let (status, v) = s
        .api(
            Method::PUT,
            &format!("/v1/identity/entries/{}", svc.id),
            &admin_token,
            Some(json!({ "ttl_seconds": 30 * 86_400 })),
        )
        .await;
    assert_eq!(status, 400, "{v}");
    assert!(v.to_string().contains("86400"), "{v}");

    // Read, list, update, delete; after the delete the default ID comes back.
    let (status, got) = s
        .api(
            Method::GET,
            &format!("/v1/identity/entries/{}", svc.id),
            &admin_token,
            None,
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(got["ttl_seconds"], 600);
    let (status, list) = s
        .api(Method::GET, "/v1/identity/entries", &admin_token, None)
        .await;
    assert_eq!(status, 200);
    assert_eq!(list.as_array().unwrap().len(), 1);
    let (status, v) = s
        .api(
            Method::PUT,
            &format!("/v1/identity/entries/{}", svc.id),
            &admin_token,
            Some(json!({ "dns_names": ["orders.internal"] })),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["spiffe_path"], Value::Null);
    let (status, _) = s
        .api(
            Method::DELETE,
            &format!("/v1/identity/entries/{}", svc.id),
            &admin_token,
            None,
        )
        .await;
    assert_eq!(status, 204);
    let (status, _) = s
        .api(
            Method::GET,
            &format!("/v1/identity/entries/{}", svc.id),
            &admin_token,
            None,
        )
        .await;
    assert_eq!(status, 404);
    let (status, v) = issue(&s, &format!("Bearer {token}"), &csr().1).await;
    assert_eq!(status, 201);
    assert_eq!(
        v["spiffe_id"],
        format!("spiffe://capstan.local/t/default/{}", svc.id).as_str()
    );
    s.shutdown().await;
}

async fn jwt_svid_verifies_with_the_bundle(ctx: &Ctx) {
    let s = ctx.server().await;
    let (_, svc, token) = workload(&s, "orders").await;
    let (status, v) = s
        .api(
            Method::POST,
            "/v1/identity/jwt-svids",
            &token,
            Some(json!({ "audience": "billing" })),
        )
        .await;
    assert_eq!(status, 201, "{v}");
    let jwt = v["token"].as_str().unwrap();
    let expected = format!("spiffe://capstan.local/t/default/{}", svc.id);
    assert_eq!(v["spiffe_id"], expected.as_str());

    let bundle = s.get_json("/v1/identity/bundle").await;
    let header = jsonwebtoken::decode_header(jwt).unwrap();
    assert_eq!(header.typ.as_deref(), Some("JWT"));
    let kid = header.kid.unwrap();
    let jwk = bundle["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kid"] == kid.as_str())
        .expect("the signing key is in the bundle");
    assert_eq!(jwk["use"], "jwt-svid");
    let jwk: jsonwebtoken::jwk::Jwk = serde_json::from_value(jwk.clone()).unwrap();
    let key = jsonwebtoken::DecodingKey::from_jwk(&jwk).unwrap();
    let mut validation = jsonwebtoken::Validation::new(header.alg);
    validation.set_audience(&["billing"]);
    validation.validate_exp = false;
    validation.set_required_spec_claims(&["exp", "aud", "sub"]);
    let claims = jsonwebtoken::decode::<Value>(jwt, &key, &validation)
        .unwrap()
        .claims;
    assert_eq!(claims["sub"], expected.as_str());
    assert!(claims["exp"].as_i64().unwrap() <= s.clock.now() + 300);
    // Another audience does not accept it.
    validation.set_audience(&["orders"]);
    assert!(jsonwebtoken::decode::<Value>(jwt, &key, &validation).is_err());
    // Bad audiences are refused.
    for bad in [json!([]), json!("a b"), json!("")] {
        let (status, v) = s
            .api(
                Method::POST,
                "/v1/identity/jwt-svids",
                &token,
                Some(json!({ "audience": bad })),
            )
            .await;
        assert_eq!(status, 400, "{v}");
    }
    s.shutdown().await;
}

fn x509_roots(bundle: &Value) -> Vec<String> {
    bundle["keys"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|k| k["use"] == "x509-svid")
        .map(|k| {
            let x5c = k["x5c"].as_array().unwrap();
            assert_eq!(x5c.len(), 1, "one certificate per x509-svid key");
            x5c[0].as_str().unwrap().to_owned()
        })
        .collect()
}

fn bundle_pem_of(bundle: &Value) -> String {
    use base64::Engine;
    x509_roots(bundle)
        .iter()
        .map(|b| {
            pem_encode(
                "CERTIFICATE",
                &base64::engine::general_purpose::STANDARD.decode(b).unwrap(),
            )
        })
        .collect()
}

async fn rotation_and_taint_never_break_verification(ctx: &Ctx) {
    let s = ctx.server().await;
    let (admin_token, svc, token) = workload(&s, "orders").await;
    let admin = s.admin().await;
    let bearer = format!("Bearer {token}");
    let bundle = s.get_json("/v1/identity/bundle").await;
    assert_eq!(x509_roots(&bundle).len(), 1);
    assert_eq!(bundle["spiffe_refresh_hint"], 300);
    let seq1 = bundle["spiffe_sequence"].as_i64().unwrap();
    // Every x509-svid key names its public key and the certificate it comes from.
    let k = bundle["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["use"] == "x509-svid")
        .unwrap();
    assert_eq!(k["kty"], "EC");
    assert_eq!(k["crv"], "P-256");
    let (status, old) = issue(&s, &bearer, &csr().1).await;
    assert_eq!(status, 201);

    // Rotate: the new CA is published at once and signs only after the prepare delay.
    s.clock.advance(1);
    let (status, prepared) = s
        .api(
            Method::POST,
            "/v1/identity/ca/rotate",
            &admin_token,
            Some(json!({})),
        )
        .await;
    assert_eq!(status, 200, "{prepared}");
    assert_eq!(prepared["slot"], "prepared");
    let bundle = s.get_json("/v1/identity/bundle").await;
    assert_eq!(x509_roots(&bundle).len(), 2);
    assert!(bundle["spiffe_sequence"].as_i64().unwrap() > seq1);
    let (_, still_old) = issue(&s, &bearer, &csr().1).await;
    assert_eq!(still_old["ca_id"], old["ca_id"]);
    // Subjects are unique per generation.
    let (_, cas) = s
        .api(Method::GET, "/v1/identity/ca", &admin_token, None)
        .await;
    let subjects: Vec<&str> = cas
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["subject"].as_str().unwrap())
        .collect();
    assert_eq!(subjects.len(), 2);
    assert_ne!(subjects[0], subjects[1]);

    s.clock.advance(3600);
    let now = s.clock.now();
    // Access tokens expire with the clock: fresh ones.
    let admin_token = s.token("default", &admin, &[]).await;
    let bearer = format!("Bearer {}", s.token("default", &svc, &[]).await);
    let (status, new) = issue(&s, &bearer, &csr().1).await;
    assert_eq!(status, 201, "{new}");
    assert_eq!(new["ca_id"], prepared["id"]);
    // Peers with the current bundle accept both the old leaf and the new one.
    let bundle = s.get_json("/v1/identity/bundle").await;
    let pem = bundle_pem_of(&bundle);
    validate(old["svid_chain_pem"].as_str().unwrap(), &pem, now - 60).unwrap();
    validate(new["svid_chain_pem"].as_str().unwrap(), &pem, now).unwrap();
    let (_, cas) = s
        .api(Method::GET, "/v1/identity/ca", &admin_token, None)
        .await;
    let slots: Vec<&str> = cas
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["slot"].as_str().unwrap())
        .collect();
    assert_eq!(slots, vec!["retired", "active"]);

    // Once every leaf of the old CA has expired (max SVID lifetime after it stopped signing),
    // it leaves the bundle.
    s.clock.advance(86_400 + 10);
    let bundle = s.get_json("/v1/identity/bundle").await;
    assert_eq!(x509_roots(&bundle).len(), 1);
    let admin_token = s.token("default", &admin, &[]).await;
    let bearer = format!("Bearer {}", s.token("default", &svc, &[]).await);

    // Taint the active CA: a new one signs at once; the tainted one stays published until its
    // leaves expire, so nothing breaks before clients re-issue.
    let active = prepared["id"].as_str().unwrap();
    let (status, tainted) = s
        .api(
            Method::POST,
            &format!("/v1/identity/ca/{active}/taint"),
            &admin_token,
            None,
        )
        .await;
    assert_eq!(status, 200, "{tainted}");
    assert_eq!(tainted["slot"], "retired");
    assert!(tainted["tainted_at"].is_i64());
    let (status, fresh) = issue(&s, &bearer, &csr().1).await;
    assert_eq!(status, 201, "{fresh}");
    assert_ne!(fresh["ca_id"], tainted["id"]);
    let bundle = s.get_json("/v1/identity/bundle").await;
    assert_eq!(x509_roots(&bundle).len(), 2);
    let (status, v) = s
        .api(
            Method::POST,
            "/v1/identity/ca/nope/taint",
            &admin_token,
            None,
        )
        .await;
    assert_eq!(status, 404, "{v}");
    s.shutdown().await;
}

async fn identity_apis_are_guarded(ctx: &Ctx) {
    let s = ctx.server().await;
    let admin = s.admin().await;
    let admin_token = s.token("default", &admin, &[]).await;
    // A client with no policy at all.
    let bare = s
        .create_client(
            &admin_token,
            json!({ "name": "bare", "audiences": ["capstan"] }),
        )
        .await;
    let bare_token = s.token("default", &bare, &[]).await;
    let (status, v) = issue(&s, &format!("Bearer {bare_token}"), &csr().1).await;
    assert_eq!(status, 403, "{v}");
    assert!(v.to_string().contains("identity:IssueSvid"), "{v}");
    // A workload may get its own SVIDs and nothing else.
    let (_, svc, token) = workload(&s, "orders").await;
    for (method, path, body) in [
        (Method::GET, "/v1/identity/ca", None),
        (Method::POST, "/v1/identity/ca/rotate", Some(json!({}))),
        (Method::GET, "/v1/identity/entries", None),
        (
            Method::POST,
            "/v1/identity/entries",
            Some(json!({ "principal": svc.id, "dns_names": ["evil.example"] })),
        ),
        (
            Method::POST,
            "/v1/identity/join-tokens",
            Some(json!({ "principal": admin.id })),
        ),
        (Method::GET, "/v1/identity/svids", None),
    ] {
        let (status, v) = s.api(method, path, &token, body).await;
        assert_eq!(status, 403, "{path}: {v}");
    }
    // Scoped by the principal's CRN: a policy for one principal's SVIDs only.
    let (status, v) = s
        .api(
            Method::PUT,
            "/v1/policies/OnlyBatchSvids",
            &admin_token,
            Some(
                json!({"Version": "2012-10-17", "Statement": {"Effect": "Allow",
                "Action": "identity:IssueSvid",
                "Resource": "crn:capstan:identity:default:principal/batch-*"}}),
            ),
        )
        .await;
    assert!(status == 200 || status == 201, "{v}");
    let (status, _) = s
        .api(
            Method::PUT,
            &format!("/v1/principals/{}/policies/OnlyBatchSvids", bare.id),
            &admin_token,
            None,
        )
        .await;
    assert!(status == 200 || status == 204);
    let (status, v) = issue(&s, &format!("Bearer {bare_token}"), &csr().1).await;
    assert_eq!(status, 403, "{v}");
    // The bundle is public.
    let r = s
        .http
        .get(s.url("/v1/identity/bundle"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    s.shutdown().await;
}

async fn ca_keys_are_sealed_at_rest(ctx: &Ctx) {
    let s = ctx.server().await;
    let (admin_token, _, _) = workload(&s, "orders").await;
    let (_, cas) = s
        .api(Method::GET, "/v1/identity/ca", &admin_token, None)
        .await;
    assert_eq!(cas.as_array().unwrap().len(), 1);
    let rows: Vec<(Vec<u8>, Vec<u8>)> = match ctx.db() {
        capstan_db::Db::Postgres(p) => {
            sqlx::query_as("SELECT key_sealed, jwt_key_sealed FROM identity_cas")
                .fetch_all(&p)
                .await
                .unwrap()
        }
        capstan_db::Db::Sqlite(p) => {
            sqlx::query_as("SELECT key_sealed, jwt_key_sealed FROM identity_cas")
                .fetch_all(&p)
                .await
                .unwrap()
        }
    };
    assert_eq!(rows.len(), 1);
    for (key, jwt_key) in rows {
        for sealed in [key, jwt_key] {
            // Not a PKCS#8 document, and not loadable as a key.
            assert!(KeyPair::try_from(sealed.as_slice()).is_err());
            assert!(!String::from_utf8_lossy(&sealed).contains("PRIVATE KEY"));
        }
    }
    s.shutdown().await;
}

/// Every issuance adds a record: one principal gets at most
/// `max_svids_per_principal_per_minute` from a server, then 429 with `Retry-After`.
async fn issuance_per_principal_is_bounded(ctx: &Ctx) {
    let mut settings = ctx.settings();
    settings.service_config.insert(
        "identity".into(),
        json!({ "max_svids_per_principal_per_minute": 3 }),
    );
    let s = ctx.server_with(settings).await;
    // Start at a minute boundary, so the window does not roll over mid-test.
    let now = s.clock.now();
    s.clock.advance(60 - now.rem_euclid(60));
    let (_, svc, token) = workload(&s, "orders").await;
    let (_, _, other_token) = workload(&s, "billing").await;
    let bearer = format!("Bearer {token}");
    for _ in 0..3 {
        assert_eq!(issue(&s, &bearer, &csr().1).await.0, 201);
    }
    let r = s
        .http
        .post(s.url("/v1/identity/svids"))
        .header("authorization", &bearer)
        .json(&json!({ "csr": csr().1 }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    let retry: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"], "rate_limited");
    assert!(body["message"].as_str().unwrap().contains(svc.id.as_str()));
    // Another principal is not affected; the next minute the first may go on.
    assert_eq!(
        issue(&s, &format!("Bearer {other_token}"), &csr().1)
            .await
            .0,
        201
    );
    s.clock.advance(60);
    let token = s.token("default", &svc, &[]).await;
    assert_eq!(issue(&s, &format!("Bearer {token}"), &csr().1).await.0, 201);
    s.shutdown().await;
}
