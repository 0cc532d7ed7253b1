//! mTLS with SPIFFE identities: SDK-issued SVIDs in rustls handshakes between two workloads
//! (peer SPIFFE IDs verified against the bundle and an allow-list; another trust domain, an
//! expired SVID, a CA-flagged leaf and an ID outside the allow-list refused), CA rotation that
//! never breaks a handshake, and Capstan itself serving HTTPS (`--tls`) where a client's SVID
//! authenticates its principal.

use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, SanType};
use reqwest::Method;
use rustls::pki_types::ServerName;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use x509_parser::prelude::{FromDer, X509Certificate};

use capstan_core::clock::Clock;
use capstan_sdk::spiffe::{PeerPolicy, SvidSource};
use capstan_sdk::{ApiClient, Capstan, Credentials};
use capstan_server::tls::TlsMode;
use capstan_tests::{Creds, Ctx, TestServer};

capstan_tests::on_both_backends!(
    sdk_svids_authenticate_both_ends_of_a_handshake,
    rotation_and_taint_never_break_handshakes,
    capstan_serves_https_and_authenticates_svids,
    tls_client_auth_binds_tokens_to_the_certificate,
    svid_authentication_follows_the_issuance_record,
    tls_files_are_reloaded_when_they_change,
    an_sdk_watch_over_https_is_written_outside_hyper,
);

/// A client allowed to get its own SVIDs, and an SVID source for it.
async fn workload(s: &TestServer, admin_token: &str, name: &str) -> (Creds, Arc<SvidSource>) {
    let c = s
        .create_client(
            admin_token,
            json!({ "name": name, "audiences": ["capstan"] }),
        )
        .await;
    let (status, v) = s
        .api(
            Method::PUT,
            &format!("/v1/principals/{}/policies/IdentityWorkload", c.id),
            admin_token,
            None,
        )
        .await;
    assert!(status == 200 || status == 204, "{v}");
    let capstan = Capstan::new(&s.base, "default").unwrap();
    let api = capstan.api(capstan.token_source(&c.id, &c.secret, &[]));
    let src = SvidSource::start_with_clock(api, s.clock.clone())
        .await
        .unwrap();
    (c, src)
}

fn id_of(c: &Creds) -> String {
    format!("spiffe://capstan.local/t/default/{}", c.id)
}

/// One handshake and one echoed message between a server and a client configuration;
/// the error of whichever side failed.
async fn handshake(
    server: rustls::ServerConfig,
    client: rustls::ClientConfig,
) -> Result<(), String> {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
    let server_task = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let mut tls = acceptor
            .accept(tcp)
            .await
            .map_err(|e| format!("server: {e}"))?;
        let mut buf = [0u8; 5];
        tls.read_exact(&mut buf)
            .await
            .map_err(|e| format!("server read: {e}"))?;
        tls.write_all(&buf).await.map_err(|e| e.to_string())?;
        tls.flush().await.map_err(|e| e.to_string())?;
        Ok::<(), String>(())
    });
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
    let tcp = TcpStream::connect(addr).await.unwrap();
    let client_result = async {
        let mut tls = connector
            .connect(ServerName::try_from("workload").unwrap(), tcp)
            .await
            .map_err(|e| format!("client: {e}"))?;
        tls.write_all(b"hello")
            .await
            .map_err(|e| format!("client write: {e}"))?;
        let mut buf = [0u8; 5];
        tls.read_exact(&mut buf)
            .await
            .map_err(|e| format!("client read: {e}"))?;
        assert_eq!(&buf, b"hello");
        Ok::<(), String>(())
    }
    .await;
    let server_result = server_task.await.unwrap();
    match (client_result, server_result) {
        (Ok(()), Ok(())) => Ok(()),
        (c, s) => Err(format!("{c:?} / {s:?}")),
    }
}

async fn sdk_svids_authenticate_both_ends_of_a_handshake(ctx: &Ctx) {
    let s = ctx.server().await;
    let admin = s.admin().await;
    let admin_token = s.token("default", &admin, &[]).await;
    let (a, a_src) = workload(&s, &admin_token, "orders").await;
    let (b, b_src) = workload(&s, &admin_token, "billing").await;
    let (c, c_src) = workload(&s, &admin_token, "intruder").await;
    assert_eq!(a_src.svid().unwrap().spiffe_id, id_of(&a));
    let a_server = || a_src.server_config(PeerPolicy::ids([id_of(&b)])).unwrap();

    // Both sides verify each other.
    handshake(
        a_server(),
        b_src.client_config(PeerPolicy::ids([id_of(&a)])).unwrap(),
    )
    .await
    .unwrap();
    // A predicate works too.
    let prefix = "spiffe://capstan.local/t/default/".to_owned();
    handshake(
        a_src
            .server_config(PeerPolicy::predicate(move |id| id.starts_with(&prefix)))
            .unwrap(),
        b_src.client_config(PeerPolicy::any()).unwrap(),
    )
    .await
    .unwrap();
    // A client outside the server's allow-list, and a server outside the client's.
    let e = handshake(a_server(), c_src.client_config(PeerPolicy::any()).unwrap())
        .await
        .unwrap_err();
    assert!(e.contains("is not allowed"), "{e}");
    let e = handshake(
        a_server(),
        b_src.client_config(PeerPolicy::ids([id_of(&c)])).unwrap(),
    )
    .await
    .unwrap_err();
    assert!(e.contains("not allowed"), "{e}");

    // An SVID of another trust domain (another deployment, its own CA).
    let other_ctx = Ctx::sqlite().await;
    let mut settings = other_ctx.settings();
    settings.trust_domain = "other.org".into();
    let other = other_ctx.server_with(settings).await;
    let other_admin = other.admin().await;
    let other_token = other.token("default", &other_admin, &[]).await;
    let (_, d_src) = workload(&other, &other_token, "orders").await;
    assert!(d_src
        .svid()
        .unwrap()
        .spiffe_id
        .starts_with("spiffe://other.org/"));
    let a_any = || a_src.server_config(PeerPolicy::any()).unwrap();
    assert!(
        handshake(a_any(), d_src.client_config(PeerPolicy::any()).unwrap())
            .await
            .is_err()
    );
    // Even when the other deployment's root is trusted, its trust domain is not ours.
    let mut roots = a_src.bundle();
    roots.extend(d_src.bundle());
    a_src.set_bundle(roots.clone()).unwrap();
    d_src.set_bundle(roots).unwrap();
    let e = handshake(a_any(), d_src.client_config(PeerPolicy::any()).unwrap())
        .await
        .unwrap_err();
    assert!(e.contains("trust domain"), "{e}");
    a_src.set_bundle(b_src.bundle()).unwrap();
    other.shutdown().await;
    other_ctx.cleanup().await;

    // A leaf flagged CA:TRUE under a trusted root (a CA of our own, outside Capstan).
    let root_key = KeyPair::generate().unwrap();
    let mut root_params = CertificateParams::default();
    root_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    root_params.subject_alt_names =
        vec![SanType::URI("spiffe://capstan.local".try_into().unwrap())];
    let root = root_params.self_signed(&root_key).unwrap();
    let issuer = Issuer::new(root_params, root_key);
    let leaf = |ca: bool, id: &str, expired: bool| {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::default();
        if expired {
            let now = time::OffsetDateTime::now_utc();
            p.not_before = now - time::Duration::days(2);
            p.not_after = now - time::Duration::days(1);
        }
        p.is_ca = if ca {
            IsCa::Ca(BasicConstraints::Unconstrained)
        } else {
            IsCa::ExplicitNoCa
        };
        p.subject_alt_names = vec![SanType::URI(id.try_into().unwrap())];
        p.extended_key_usages = vec![
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let cert = p.signed_by(&key, &issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    };
    let root_pem = root.pem();
    let (good, good_key) = leaf(false, "spiffe://capstan.local/t/default/server", false);
    let (flagged, flagged_key) = leaf(true, "spiffe://capstan.local/t/default/client", false);
    let (ok_client, ok_client_key) = leaf(false, "spiffe://capstan.local/t/default/client", false);
    let (expired, expired_key) = leaf(false, "spiffe://capstan.local/t/default/client", true);
    let srv = SvidSource::from_pem(&good, &good_key, &root_pem).unwrap();
    let ok = SvidSource::from_pem(&ok_client, &ok_client_key, &root_pem).unwrap();
    let bad = SvidSource::from_pem(&flagged, &flagged_key, &root_pem).unwrap();
    handshake(
        srv.server_config(PeerPolicy::any()).unwrap(),
        ok.client_config(PeerPolicy::any()).unwrap(),
    )
    .await
    .unwrap();
    let e = handshake(
        srv.server_config(PeerPolicy::any()).unwrap(),
        bad.client_config(PeerPolicy::any()).unwrap(),
    )
    .await
    .unwrap_err();
    assert!(e.contains("CaUsedAsEndEntity"), "{e}");
    let old = SvidSource::from_pem(&expired, &expired_key, &root_pem).unwrap();
    let e = handshake(
        srv.server_config(PeerPolicy::any()).unwrap(),
        old.client_config(PeerPolicy::any()).unwrap(),
    )
    .await
    .unwrap_err();
    assert!(e.contains("Expired"), "{e}");
    s.shutdown().await;
}

fn pem_of(ders: &[rustls::pki_types::CertificateDer<'_>]) -> String {
    use base64::Engine;
    ders.iter()
        .map(|d| {
            let b = base64::engine::general_purpose::STANDARD.encode(d.as_ref());
            let body: Vec<&str> = b
                .as_bytes()
                .chunks(64)
                .map(|c| std::str::from_utf8(c).unwrap())
                .collect();
            format!(
                "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
                body.join("\n")
            )
        })
        .collect()
}

async fn rotation_and_taint_never_break_handshakes(ctx: &Ctx) {
    let s = ctx.server().await;
    let admin = s.admin().await;
    let admin_token = s.token("default", &admin, &[]).await;
    let (a, a_src) = workload(&s, &admin_token, "orders").await;
    let (b, b_src) = workload(&s, &admin_token, "billing").await;
    let both = |x: &Arc<SvidSource>, y: &Arc<SvidSource>, xa: &Creds, ya: &Creds| {
        (
            x.server_config(PeerPolicy::ids([id_of(ya)])).unwrap(),
            y.client_config(PeerPolicy::ids([id_of(xa)])).unwrap(),
        )
    };
    let check = |label: &'static str| {
        let a_src = a_src.clone();
        let b_src = b_src.clone();
        let (a, b) = (a.clone(), b.clone());
        async move {
            let (srv, cli) = both(&a_src, &b_src, &a, &b);
            handshake(srv, cli)
                .await
                .unwrap_or_else(|e| panic!("{label}: {e}"));
            let (srv, cli) = both(&b_src, &a_src, &b, &a);
            handshake(srv, cli)
                .await
                .unwrap_or_else(|e| panic!("{label} (reverse): {e}"));
        }
    };
    check("before").await;

    // Traffic: handshakes both ways, back to back, through the whole rotation.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let traffic = {
        let (a_src, b_src, a, b, stop) = (
            a_src.clone(),
            b_src.clone(),
            a.clone(),
            b.clone(),
            stop.clone(),
        );
        tokio::spawn(async move {
            let (mut ok, mut failed) = (0u32, Vec::new());
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                for (x, y, xa, ya) in [(&a_src, &b_src, &a, &b), (&b_src, &a_src, &b, &a)] {
                    let srv = x.server_config(PeerPolicy::ids([id_of(ya)])).unwrap();
                    let cli = y.client_config(PeerPolicy::ids([id_of(xa)])).unwrap();
                    match handshake(srv, cli).await {
                        Ok(()) => ok += 1,
                        Err(e) => failed.push(e),
                    }
                }
            }
            (ok, failed)
        })
    };

    // Prepare a new CA: published at once; workloads pick up the bundle at their renewal.
    let (status, prepared) = s
        .api(
            Method::POST,
            "/v1/identity/ca/rotate",
            &admin_token,
            Some(json!({})),
        )
        .await;
    assert_eq!(status, 200, "{prepared}");
    a_src.renew().await.unwrap();
    check("prepared, A renewed").await;
    b_src.renew().await.unwrap();
    assert_eq!(b_src.bundle().len(), 2);
    check("prepared").await;

    // Activate it now: B renews under the new CA while A still holds a leaf of the old one.
    let (status, active) = s
        .api(
            Method::POST,
            "/v1/identity/ca/rotate",
            &admin_token,
            Some(json!({})),
        )
        .await;
    assert_eq!(status, 200, "{active}");
    assert_eq!(active["slot"], "active");
    b_src.renew().await.unwrap();
    check("active: A on the old CA, B on the new").await;
    a_src.renew().await.unwrap();
    check("after").await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (ok, failed) = traffic.await.unwrap();
    assert!(
        failed.is_empty(),
        "handshakes failed during the rotation: {failed:?}"
    );
    assert!(ok >= 4, "{ok} handshakes");

    // Taint the active CA: a new one signs at once; leaves of the tainted one still verify
    // until their holders renew, and renewed leaves come from the new CA.
    let id = active["id"].as_str().unwrap();
    let (status, v) = s
        .api(
            Method::POST,
            &format!("/v1/identity/ca/{id}/taint"),
            &admin_token,
            None,
        )
        .await;
    assert_eq!(status, 200, "{v}");
    // Each workload learns it from its next bundle poll, trusts the new root and re-issues.
    // (Their background tasks poll too, so count at least one re-issue each.)
    let (ra, rb) = (a_src.renewals(), b_src.renewals());
    a_src.refresh_bundle().await.unwrap();
    b_src.refresh_bundle().await.unwrap();
    assert!(a_src.renewals() > ra && b_src.renewals() > rb);
    assert_ne!(a_src.svid().unwrap().ca_id, id);
    assert_ne!(b_src.svid().unwrap().ca_id, id);
    check("tainted: both re-issued").await;
    // A poll with nothing tainted re-issues nothing.
    let ra = a_src.renewals();
    a_src.refresh_bundle().await.unwrap();
    assert_eq!(a_src.renewals(), ra);
    let (_, records) = s
        .api(
            Method::GET,
            &format!("/v1/identity/svids?principal={}", b.id),
            &admin_token,
            None,
        )
        .await;
    let current = b_src.svid().unwrap().serial;
    assert!(
        records
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["serial"] == current.as_str() && r["ca_id"] != active["id"]),
        "{records}"
    );
    s.shutdown().await;
}

async fn capstan_serves_https_and_authenticates_svids(ctx: &Ctx) {
    let mut settings = ctx.settings();
    settings.tls = Some(TlsMode::SelfIssued {
        dns_names: vec!["localhost".into()],
    });
    let s = ctx.server_with(settings).await;
    let identity = s.server.app.workload_identity().unwrap();
    let roots = identity.trust_roots().await.unwrap();
    let bundle_pem = pem_of(
        &roots
            .iter()
            .map(|r| rustls::pki_types::CertificateDer::from(r.clone()))
            .collect::<Vec<_>>(),
    );
    let port = s.server.addr.port();
    let base = format!("https://localhost:{port}");
    assert!(s.server.public_url.starts_with("https://"));

    // A standard HTTPS client trusting the bundle: the server's certificate checks out for
    // localhost; without a client certificate /v1 wants a bearer token.
    let plain = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(bundle_pem.as_bytes()).unwrap())
        .build()
        .unwrap();
    let r = plain.get(format!("{base}/healthz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let r = plain
        .post(format!("{base}/v1/identity/jwt-svids"))
        .json(&json!({ "audience": "x" }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);

    // A workload gets its SVID over HTTPS with its bearer token, through the SDK.
    let capstan = sdk_over_tls(&base, &bundle_pem);
    let admin = s.admin().await;
    let admin_token = {
        let t = capstan.token_source(&admin.id, &admin.secret, &[]);
        t.token(Some("capstan")).await.unwrap().secret().to_owned()
    };
    let api = ApiClient::new(
        &base,
        capstan.transport().clone(),
        Credentials::Token(capstan_sdk::AccessToken::new(admin_token.clone())),
    );
    let c: Value = api
        .call(
            Method::POST,
            "/v1/clients",
            &[],
            Some(&json!({ "name": "orders", "audiences": ["capstan"] })),
        )
        .await
        .unwrap();
    let id = c["client_id"].as_str().unwrap().to_owned();
    api.call(
        Method::PUT,
        &format!("/v1/principals/{id}/policies/IdentityWorkload"),
        &[],
        None,
    )
    .await
    .unwrap();
    let src = SvidSource::start_with_clock(
        capstan.api(capstan.token_source(&id, c["client_secret"].as_str().unwrap(), &[])),
        s.clock.clone(),
    )
    .await
    .unwrap();

    // With its SVID on the connection, it is authenticated without a bearer token: it gets a
    // JWT-SVID and renews its X.509-SVID over mTLS. The server is verified by its SPIFFE ID.
    let mut tls = src
        .client_config(PeerPolicy::ids(["spiffe://capstan.local/capstan/server"]))
        .unwrap();
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    let mtls = reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .build()
        .unwrap();
    let r = mtls
        .post(format!("{base}/v1/identity/jwt-svids"))
        .json(&json!({ "audience": "billing" }))
        .send()
        .await
        .unwrap();
    let status = r.status();
    let v: Value = r.json().await.unwrap();
    assert_eq!(status, 201, "{v}");
    assert_eq!(
        v["spiffe_id"],
        format!("spiffe://capstan.local/t/default/{id}").as_str()
    );
    let key = KeyPair::generate().unwrap();
    let csr = CertificateParams::default()
        .serialize_request(&key)
        .unwrap()
        .pem()
        .unwrap();
    let r = mtls
        .post(format!("{base}/v1/identity/svids"))
        .json(&json!({ "csr": csr }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    // Its narrow grant still applies: listing certificates is not in it.
    let r = mtls
        .get(format!("{base}/v1/identity/svids"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);

    // Deleting the client ends what its certificate can do.
    api.call(Method::DELETE, &format!("/v1/clients/{id}"), &[], None)
        .await
        .unwrap();
    let r = mtls
        .post(format!("{base}/v1/identity/jwt-svids"))
        .json(&json!({ "audience": "billing" }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);

    // The server renews its own certificate at half-life.
    let before = s.server.tls.as_ref().unwrap().serving_serial();
    s.clock.advance(1900);
    s.server.tls.as_ref().unwrap().refresh().await.unwrap();
    assert_ne!(s.server.tls.as_ref().unwrap().serving_serial(), before);
    let now = s.clock.now();
    assert!(now > 0);
    s.shutdown().await;
}

/// A TLS server of this context, a client trusting its bundle, and the bundle (PEM).
/// The SDK for the default tenant of the HTTPS server at `base`, trusting its bundle.
fn sdk_over_tls(base: &str, bundle_pem: &str) -> Capstan {
    let transport = capstan_sdk::TransportConfig {
        root_certificates_pem: vec![bundle_pem.as_bytes().to_vec()],
        ..Default::default()
    };
    Capstan::with_transport(
        base,
        "default",
        capstan_sdk::Transport::new(transport).unwrap(),
    )
    .unwrap()
}

async fn tls_server(ctx: &Ctx) -> (TestServer, String, reqwest::Client, String) {
    let mut settings = ctx.settings();
    settings.tls = Some(TlsMode::SelfIssued {
        dns_names: vec!["localhost".into()],
    });
    let s = ctx.server_with(settings).await;
    let roots = s
        .server
        .app
        .workload_identity()
        .unwrap()
        .trust_roots()
        .await
        .unwrap();
    let bundle_pem = pem_of(
        &roots
            .into_iter()
            .map(rustls::pki_types::CertificateDer::from)
            .collect::<Vec<_>>(),
    );
    let plain = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(bundle_pem.as_bytes()).unwrap())
        .build()
        .unwrap();
    let base = format!("https://localhost:{}", s.server.addr.port());
    (s, base, plain, bundle_pem)
}

/// An HTTPS client presenting `src`'s SVID and verifying Capstan's server SVID.
fn mtls_client(src: &SvidSource) -> reqwest::Client {
    let mut tls = src
        .client_config(PeerPolicy::ids(["spiffe://capstan.local/capstan/server"]))
        .unwrap();
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .build()
        .unwrap()
}

/// An SVID for the join token's principal, as a fixed SVID source.
async fn svid_by_join_token(
    plain: &reqwest::Client,
    base: &str,
    join_token: &str,
    bundle_pem: &str,
) -> Arc<SvidSource> {
    let key = KeyPair::generate().unwrap();
    let csr = CertificateParams::default()
        .serialize_request(&key)
        .unwrap()
        .pem()
        .unwrap();
    let r = plain
        .post(format!("{base}/v1/identity/svids"))
        .header("authorization", format!("JoinToken {join_token}"))
        .json(&json!({ "csr": csr }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let v: Value = r.json().await.unwrap();
    SvidSource::from_pem(
        v["svid_chain_pem"].as_str().unwrap(),
        &key.serialize_pem(),
        bundle_pem,
    )
    .unwrap()
}

async fn tls_client_auth_binds_tokens_to_the_certificate(ctx: &Ctx) {
    let (s, base, plain, bundle_pem) = tls_server(ctx).await;
    let admin = s.admin().await;
    let token_url = format!("{base}/t/default/oauth2/token");
    let admin_token: String = {
        let r = plain
            .post(&token_url)
            .basic_auth(&admin.id, Some(&admin.secret))
            .form(&[("grant_type", "client_credentials")])
            .send()
            .await
            .unwrap();
        let v: Value = r.json().await.unwrap();
        v["access_token"].as_str().unwrap().to_owned()
    };
    let call = |method: Method, path: &str, body: Option<Value>| {
        let mut req = plain
            .request(method, format!("{base}{path}"))
            .bearer_auth(&admin_token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        async move {
            let r = req.send().await.unwrap();
            let status = r.status().as_u16();
            (status, r.json::<Value>().await.unwrap_or(Value::Null))
        }
    };

    // The discovery document advertises it.
    let d: Value = plain
        .get(format!("{base}/t/default/.well-known/openid-configuration"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(d["token_endpoint_auth_methods_supported"]
        .as_array()
        .unwrap()
        .contains(&json!("tls_client_auth")));
    assert_eq!(d["tls_client_certificate_bound_access_tokens"], true);

    // A client registered for tls_client_auth: its certificate subject defaults to its own
    // SPIFFE ID. It gets its first SVID with a join token, then authenticates with it.
    let mut clients = Vec::new();
    for name in ["orders", "billing"] {
        let (status, c) = call(
            Method::POST,
            "/v1/clients",
            Some(json!({ "name": name, "audiences": ["capstan"],
                "token_endpoint_auth_method": "tls_client_auth" })),
        )
        .await;
        assert_eq!(status, 201, "{c}");
        let id = c["client_id"].as_str().unwrap().to_owned();
        assert_eq!(c["token_endpoint_auth_method"], "tls_client_auth");
        assert_eq!(
            c["tls_client_auth_san_uri"],
            format!("spiffe://capstan.local/t/default/{id}").as_str()
        );
        let (status, v) = call(
            Method::PUT,
            &format!("/v1/principals/{id}/policies/IdentityWorkload"),
            None,
        )
        .await;
        assert!(status == 200 || status == 204, "{v}");
        let (status, jt) = call(
            Method::POST,
            "/v1/identity/join-tokens",
            Some(json!({ "principal": id })),
        )
        .await;
        assert_eq!(status, 201, "{jt}");
        let src =
            svid_by_join_token(&plain, &base, jt["token"].as_str().unwrap(), &bundle_pem).await;
        clients.push((id, c["client_secret"].as_str().unwrap().to_owned(), src));
    }
    let (id, secret, src) = &clients[0];
    let (_, _, other_src) = &clients[1];
    let mtls = mtls_client(src);
    let other_mtls = mtls_client(other_src);

    // Its secret does not work; its certificate does, and only for itself.
    let r = plain
        .post(&token_url)
        .basic_auth(id, Some(secret))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = other_mtls
        .post(&token_url)
        .form(&[("grant_type", "client_credentials"), ("client_id", id)])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = plain
        .post(&token_url)
        .form(&[("grant_type", "client_credentials"), ("client_id", id)])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = mtls
        .post(&token_url)
        .form(&[("grant_type", "client_credentials"), ("client_id", id)])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    let token = v["access_token"].as_str().unwrap().to_owned();

    // The token names the certificate it is bound to.
    use base64::Engine;
    let leaf = src.svid().unwrap().chain()[0].to_vec();
    let digest = ring_sha256(&leaf);
    let x5t = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(digest);
    let payload = token.split('.').nth(1).unwrap();
    let claims: Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap(),
    )
    .unwrap();
    assert_eq!(claims["cnf"]["x5t#S256"], x5t.as_str());
    assert_eq!(claims["sub"], id.as_str());

    // Good with that certificate; refused without one and with another.
    let use_token = |client: &reqwest::Client| {
        client
            .post(format!("{base}/v1/identity/jwt-svids"))
            .bearer_auth(&token)
            .json(&json!({ "audience": "billing" }))
            .send()
    };
    assert_eq!(use_token(&mtls).await.unwrap().status(), 201);
    let r = use_token(&plain).await.unwrap();
    assert_eq!(r.status(), 401);
    assert!(r.text().await.unwrap().contains("bound"));
    assert_eq!(use_token(&other_mtls).await.unwrap().status(), 401);
    // The SVID endpoint checks the binding too.
    let key = KeyPair::generate().unwrap();
    let csr = CertificateParams::default()
        .serialize_request(&key)
        .unwrap()
        .pem()
        .unwrap();
    let r = other_mtls
        .post(format!("{base}/v1/identity/svids"))
        .bearer_auth(&token)
        .json(&json!({ "csr": csr }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);

    // Introspection reports the binding, for resource servers to check.
    let r = plain
        .post(format!("{base}/t/default/oauth2/introspect"))
        .basic_auth(&admin.id, Some(&admin.secret))
        .form(&[("token", token.as_str())])
        .send()
        .await
        .unwrap();
    let i: Value = r.json().await.unwrap();
    assert_eq!(i["active"], true);
    assert_eq!(i["cnf"]["x5t#S256"], x5t.as_str());

    // The SDK's offline verifier enforces it as well.
    let capstan = sdk_over_tls(&base, &bundle_pem).with_clock(s.clock.clone());
    let verifier = capstan.verifier("capstan").await.unwrap();
    verifier
        .verify_presented(&token, Some(leaf.as_slice()))
        .await
        .unwrap();
    assert!(verifier.verify(&token).await.is_err());
    let other_leaf = other_src.svid().unwrap().chain()[0].to_vec();
    let e = verifier
        .verify_presented(&token, Some(other_leaf.as_slice()))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("bound"), "{e}");
    s.shutdown().await;
}

fn ring_sha256(data: &[u8]) -> Vec<u8> {
    ring::digest::digest(&ring::digest::SHA256, data)
        .as_ref()
        .to_vec()
}

/// What the review found: a certificate authenticates only as the principal it was issued to
/// (by its record, not its path), never when forged with the CA key or signed by a tainted CA,
/// and only for principals allowed the API audience. DNS names are the deployment's to assign,
/// and /v1/authorize refuses a certificate-bound token it cannot check.
async fn svid_authentication_follows_the_issuance_record(ctx: &Ctx) {
    let (s, base, plain, bundle_pem) = tls_server(ctx).await;
    let admin = s.admin().await;
    let admin_token = https_token(&plain, &base, "default", &admin).await;
    let call = |method: Method, path: &str, body: Option<Value>| {
        let mut req = plain
            .request(method, format!("{base}{path}"))
            .bearer_auth(&admin_token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        async move {
            let r = req.send().await.unwrap();
            let status = r.status().as_u16();
            (status, r.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    let mut ids = Vec::new();
    for (name, audience) in [
        ("orders", "capstan"),
        ("billing", "capstan"),
        ("nocapstan", "other-api"),
    ] {
        let (status, c) = call(
            Method::POST,
            "/v1/clients",
            Some(json!({ "name": name, "audiences": [audience] })),
        )
        .await;
        assert_eq!(status, 201, "{c}");
        let id = c["client_id"].as_str().unwrap().to_owned();
        call(
            Method::PUT,
            &format!("/v1/principals/{id}/policies/IdentityWorkload"),
            None,
        )
        .await;
        ids.push(id);
    }
    let svid_for = |id: String| {
        let call = &call;
        let (plain, base, bundle_pem) = (&plain, &base, &bundle_pem);
        async move {
            let (status, jt) = call(
                Method::POST,
                "/v1/identity/join-tokens",
                Some(json!({ "principal": id })),
            )
            .await;
            assert_eq!(status, 201, "{jt}");
            svid_by_join_token(plain, base, jt["token"].as_str().unwrap(), bundle_pem).await
        }
    };
    let jwt_svid = |client: reqwest::Client| {
        let base = base.clone();
        async move {
            let r = client
                .post(format!("{base}/v1/identity/jwt-svids"))
                .json(&json!({ "audience": "x" }))
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            (status, r.json::<Value>().await.unwrap_or(Value::Null))
        }
    };

    // A path handed to another principal: the old SVID still authenticates its own principal.
    let (a, b) = (ids[0].clone(), ids[1].clone());
    let (status, v) = call(
        Method::POST,
        "/v1/identity/entries",
        Some(json!({ "principal": a, "spiffe_path": "payments/orders" })),
    )
    .await;
    assert_eq!(status, 201, "{v}");
    let a_src = svid_for(a.clone()).await;
    assert_eq!(
        a_src.svid().unwrap().spiffe_id,
        "spiffe://capstan.local/t/default/payments/orders"
    );
    call(Method::DELETE, &format!("/v1/identity/entries/{a}"), None).await;
    let (status, v) = call(
        Method::POST,
        "/v1/identity/entries",
        Some(json!({ "principal": b, "spiffe_path": "payments/orders" })),
    )
    .await;
    assert_eq!(status, 201, "{v}");
    let (status, v) = jwt_svid(mtls_client(&a_src)).await;
    assert_eq!(status, 201, "{v}");
    assert_eq!(
        v["spiffe_id"],
        format!("spiffe://capstan.local/t/default/{a}").as_str(),
        "the holder is A (its record), not B (the path's owner now)"
    );

    // A principal not allowed the API audience cannot call the API with its SVID either.
    let n_src = svid_for(ids[2].clone()).await;
    let (status, _) = jwt_svid(mtls_client(&n_src)).await;
    assert_eq!(status, 401);

    // A certificate forged with the CA's key (as a thief of it would): chains, but has no
    // issuance record, so it authenticates nobody.
    let (sealed, cert_der): (Vec<u8>, Vec<u8>) = match ctx.db() {
        capstan_db::Db::Postgres(p) => {
            sqlx::query_as("SELECT key_sealed, cert_der FROM identity_cas WHERE id = 'g1'")
                .fetch_one(&p)
                .await
                .unwrap()
        }
        capstan_db::Db::Sqlite(p) => {
            sqlx::query_as("SELECT key_sealed, cert_der FROM identity_cas WHERE id = 'g1'")
                .fetch_one(&p)
                .await
                .unwrap()
        }
    };
    let ca_key = ctx
        .master
        .sealer()
        .unwrap()
        .open(&sealed, b"capstan/identity-ca/g1")
        .unwrap();
    let issuer = Issuer::from_ca_cert_der(
        &rustls::pki_types::CertificateDer::from(cert_der),
        KeyPair::try_from(ca_key.as_slice()).unwrap(),
    )
    .unwrap();
    let forged_key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::default();
    p.is_ca = IsCa::ExplicitNoCa;
    p.subject_alt_names = vec![SanType::URI(
        format!("spiffe://capstan.local/t/default/{}", admin.id)
            .as_str()
            .try_into()
            .unwrap(),
    )];
    p.extended_key_usages = vec![
        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
    ];
    p.serial_number = Some(rcgen::SerialNumber::from_slice(&[0x42; 16]));
    let forged = p.signed_by(&forged_key, &issuer).unwrap();
    let forged_src =
        SvidSource::from_pem(&forged.pem(), &forged_key.serialize_pem(), &bundle_pem).unwrap();
    let (status, v) = jwt_svid(mtls_client(&forged_src)).await;
    assert_eq!(status, 401, "a forged admin certificate: {v}");

    // After a taint, SVIDs of that CA authenticate nobody here, at once.
    let b_src = svid_for(b.clone()).await;
    assert_eq!(jwt_svid(mtls_client(&b_src)).await.0, 201);
    let (status, v) = call(Method::POST, "/v1/identity/ca/g1/taint", None).await;
    assert_eq!(status, 200, "{v}");
    s.server.tls.as_ref().unwrap().refresh().await.unwrap();
    let r = mtls_client(&b_src)
        .post(format!("{base}/v1/identity/jwt-svids"))
        .json(&json!({ "audience": "x" }))
        .send()
        .await;
    assert!(
        r.as_ref().map_or(true, |r| r.status() == 401),
        "an SVID of a tainted CA: {r:?}"
    );

    // DNS names are the deployment's: another tenant's admin cannot put one in an SVID.
    let (status, t) = call(Method::POST, "/v1/tenants", Some(json!({ "id": "acme" }))).await;
    assert_eq!(status, 201, "{t}");
    let acme = Creds::from_json(&t["admin_client"]);
    let acme_token = https_token(&plain, &base, "acme", &acme).await;
    let r = plain
        .post(format!("{base}/v1/identity/entries"))
        .bearer_auth(&acme_token)
        .json(&json!({ "principal": acme.id, "dns_names": ["localhost"] }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["action"], "identity:AssignDnsName", "{body}");

    // /v1/authorize cannot check a certificate-bound token's binding: it refuses it.
    let (status, c) = call(
        Method::POST,
        "/v1/clients",
        Some(json!({ "name": "bound", "audiences": ["capstan"],
            "token_endpoint_auth_method": "tls_client_auth" })),
    )
    .await;
    assert_eq!(status, 201);
    let bound_id = c["client_id"].as_str().unwrap().to_owned();
    call(
        Method::PUT,
        &format!("/v1/principals/{bound_id}/policies/IdentityWorkload"),
        None,
    )
    .await;
    let bound_src = svid_for(bound_id.clone()).await;
    let r = mtls_client(&bound_src)
        .post(format!("{base}/t/default/oauth2/token"))
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", bound_id.as_str()),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let token = r.json::<Value>().await.unwrap()["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let (status, v) = call(
        Method::POST,
        "/v1/authorize",
        Some(json!({ "token": token, "action": "identity:IssueSvid", "resource": "*" })),
    )
    .await;
    assert_eq!(status, 400, "{v}");
    s.shutdown().await;
}

/// A client_credentials token over HTTPS.
async fn https_token(plain: &reqwest::Client, base: &str, tenant: &str, c: &Creds) -> String {
    let r = plain
        .post(format!("{base}/t/{tenant}/oauth2/token"))
        .basic_auth(&c.id, Some(&c.secret))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .unwrap();
    let v: Value = r.json().await.unwrap();
    v["access_token"]
        .as_str()
        .unwrap_or_else(|| panic!("{v}"))
        .to_owned()
}

/// `--tls-cert/--tls-key`: the server serves the files and picks up new ones (as cert-manager
/// rotates them) without a restart; a broken file keeps the previous certificate.
async fn tls_files_are_reloaded_when_they_change(ctx: &Ctx) {
    let dir = std::env::temp_dir().join(capstan_tests::db::unique_name("capstan_tls"));
    std::fs::create_dir_all(&dir).unwrap();
    let root_key = KeyPair::generate().unwrap();
    let mut rp = CertificateParams::default();
    rp.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let root = rp.self_signed(&root_key).unwrap();
    let issuer = Issuer::new(rp, root_key);
    let (cert_file, key_file) = (dir.join("tls.crt"), dir.join("tls.key"));
    let issue = |serial: u8| {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        p.serial_number = Some(rcgen::SerialNumber::from_slice(&[serial; 8]));
        let cert = p.signed_by(&key, &issuer).unwrap();
        std::fs::write(&cert_file, cert.pem()).unwrap();
        std::fs::write(&key_file, key.serialize_pem()).unwrap();
    };
    issue(0x11);
    let mut settings = ctx.settings();
    settings.tls = Some(TlsMode::Files {
        cert: cert_file.clone(),
        key: key_file.clone(),
    });
    let s = ctx.server_with(settings).await;
    let tls = s.server.tls.clone().unwrap();
    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(root.pem().as_bytes()).unwrap())
        .build()
        .unwrap();
    let url = format!("https://localhost:{}/healthz", s.server.addr.port());
    assert_eq!(client.get(&url).send().await.unwrap().status(), 200);
    assert_eq!(tls.serving_serial(), vec![0x11; 8]);

    issue(0x22);
    tls.refresh().await.unwrap();
    assert_eq!(tls.serving_serial(), vec![0x22; 8]);
    // A fresh connection gets the new certificate.
    let fresh = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(root.pem().as_bytes()).unwrap())
        .tls_info(true)
        .build()
        .unwrap();
    let r = fresh.get(&url).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let der = r
        .extensions()
        .get::<reqwest::tls::TlsInfo>()
        .and_then(|i| i.peer_certificate().map(<[u8]>::to_vec))
        .unwrap();
    let (_, served) = X509Certificate::from_der(&der).unwrap();
    assert_eq!(served.raw_serial(), &[0x22; 8]);

    // A half-written file is refused and the current certificate kept.
    std::fs::write(&cert_file, "-----BEGIN CERTIFICATE-----\nnot base64\n").unwrap();
    assert!(tls.refresh().await.is_err());
    assert_eq!(tls.serving_serial(), vec![0x22; 8]);
    assert_eq!(fresh.get(&url).send().await.unwrap().status(), 200);
    s.shutdown().await;
    let _ = std::fs::remove_dir_all(dir);
}

/// The SDK's config watch over HTTPS: on a TLS connection of its own, so the server writes it
/// outside hyper (through rustls), and changes still arrive.
async fn an_sdk_watch_over_https_is_written_outside_hyper(ctx: &Ctx) {
    let (s, base, plain, bundle_pem) = tls_server(ctx).await;
    let capstan = sdk_over_tls(&base, &bundle_pem);
    let admin = s.admin().await;
    let cfg = capstan_sdk::config::ConfigClient::new(capstan.api(capstan.token_source(
        &admin.id,
        &admin.secret,
        &[],
    )));
    let opts = capstan_sdk::config::PutOptions::default;
    cfg.put("orders", "prod", "k", &json!(1), opts())
        .await
        .unwrap();
    let w = cfg.watcher("orders", "prod").start().await.unwrap();
    assert_eq!(w.get::<i64>("k").unwrap(), Some(1));
    let metrics = plain
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l == "capstan_http_direct_streams 1"),
        "the HTTPS watch was not written directly"
    );
    let r = cfg
        .put("orders", "prod", "k", &json!(2), opts())
        .await
        .unwrap()
        .revision;
    let got = tokio::time::timeout(std::time::Duration::from_secs(5), w.wait_for_revision(r))
        .await
        .expect("the change arrives over HTTPS");
    assert_eq!(got, r);
    assert_eq!(w.get::<i64>("k").unwrap(), Some(2));
    drop(w);
    s.shutdown().await;
}
