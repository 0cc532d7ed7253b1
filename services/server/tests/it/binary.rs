//! The real `capstan` binary, as an operator runs it.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use capstan_core::crypto::MasterKey;
use capstan_core::rng::SystemRng;
use capstan_tests::db::{create_postgres_database, drop_postgres_database, unique_name};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use capstan_tests::server::verify_with_jwks;

const BIN: &str = env!("CARGO_BIN_EXE_capstan");

pub(crate) fn capstan(args: &[&str]) -> Command {
    let mut c = Command::new(BIN);
    c.args(args)
        .env_remove("CAPSTAN_MASTER_KEY")
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .env("CAPSTAN_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    c
}

/// Starts a server command and waits for its "listening on ADDR" line; returns the child, the
/// address and the lines printed before it.
pub(crate) async fn start(mut cmd: Command) -> (Child, String, Vec<String>) {
    let mut child = cmd.spawn().expect("spawn capstan");
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let mut seen = Vec::new();
    let found = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if let Some(rest) = line.split("listening on ").nth(1) {
                let addr = rest.split_whitespace().next().unwrap().to_owned();
                return Some(addr);
            }
            seen.push(line);
        }
        None
    })
    .await;
    let Ok(Some(addr)) = found else {
        let out = child.wait_with_output().await.unwrap();
        panic!(
            "capstan did not start: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    // Keep draining stdout so the child never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (child, addr, seen)
}

/// SIGTERM, then expects a clean exit.
pub(crate) async fn terminate(mut child: Child) {
    let pid = child.id().unwrap().to_string();
    let st = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(st.success());
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("exits after SIGTERM")
        .unwrap();
    assert!(status.success(), "graceful shutdown exits 0, got {status}");
}

/// The README tour in miniature: the printed admin credential creates a client whose token
/// verifies against the JWKS with a standard JWT library.
async fn admin_creates_client_whose_token_verifies(base: &str, admin_id: &str, admin_secret: &str) {
    let http = reqwest::Client::new();
    let token_url = format!("{base}/t/default/oauth2/token");
    let r: Value = http
        .post(&token_url)
        .basic_auth(admin_id, Some(admin_secret))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let admin_token = r["access_token"].as_str().expect("admin token").to_owned();
    let created: Value = http
        .post(format!("{base}/v1/clients"))
        .bearer_auth(&admin_token)
        .json(&json!({"name": "orders", "scopes": ["orders:read"], "audiences": ["orders-api"]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let r: Value = http
        .post(&token_url)
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", created["client_id"].as_str().unwrap()),
            ("client_secret", created["client_secret"].as_str().unwrap()),
            ("scope", "orders:read"),
        ])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = r["access_token"].as_str().expect("client token");
    let jwks: Value = http
        .get(format!("{base}/t/default/oauth2/jwks"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let claims =
        verify_with_jwks(&jwks, token, &format!("{base}/t/default"), "orders-api").unwrap();
    assert_eq!(claims["sub"], created["client_id"]);
}

fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[tokio::test]
async fn dev_runs_on_sqlite_and_reuses_its_admin() {
    let dir = std::env::temp_dir().join(unique_name("capstan_dev"));
    let data = dir.to_str().unwrap();
    let dev = || capstan(&["dev", "--data-dir", data, "--listen", "127.0.0.1:0"]);
    let (child, addr, printed) = start(dev()).await;
    assert!(
        printed
            .iter()
            .any(|l| l.contains("created the admin client")),
        "{printed:?}"
    );
    let admin: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("admin.json")).unwrap()).unwrap();
    assert_eq!(mode(&dir.join("admin.json")), 0o600);
    assert_eq!(mode(&dir.join("master.key")), 0o600);
    // The data directory and the database (with its WAL files) are the owner's only.
    assert_eq!(mode(&dir), 0o700);
    for f in ["capstan.db", "capstan.db-wal", "capstan.db-shm"] {
        if dir.join(f).exists() {
            assert_eq!(mode(&dir.join(f)), 0o600, "{f}");
        }
    }
    assert!(dir.join("capstan.db-wal").exists());
    let printed_all = printed.join("\n");
    assert!(
        printed_all.contains(admin["client_secret"].as_str().unwrap()),
        "secret printed once"
    );
    let base = format!("http://{addr}");
    let (id, secret) = (
        admin["client_id"].as_str().unwrap(),
        admin["client_secret"].as_str().unwrap(),
    );
    admin_creates_client_whose_token_verifies(&base, id, secret).await;
    terminate(child).await;

    // Second start: same database, same admin, nothing new printed.
    let (child, addr, printed) = start(dev()).await;
    assert!(
        printed
            .iter()
            .any(|l| l.contains("admin credentials are in")),
        "{printed:?}"
    );
    assert!(!printed.join("\n").contains(secret));
    admin_creates_client_whose_token_verifies(&format!("http://{addr}"), id, secret).await;
    terminate(child).await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn bad_configuration_is_refused_with_a_clear_message() {
    let dir = std::env::temp_dir().join(unique_name("capstan_cfg"));
    let data = dir.to_str().unwrap();
    let db = format!("sqlite://{}/x.db", data);
    // (arguments, environment, expected words on stderr)
    type Case<'a> = (Vec<&'a str>, Vec<(&'a str, &'a str)>, &'a str);
    let cases: Vec<Case> = vec![
        (
            vec!["serve", "--database-url", &db],
            vec![],
            "CAPSTAN_MASTER_KEY",
        ),
        (
            vec!["serve"],
            vec![(
                "CAPSTAN_MASTER_KEY",
                "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
            )],
            "database",
        ),
        (
            vec!["dev", "--data-dir", data, "--services", "auth,nope"],
            vec![],
            "unknown service \"nope\"",
        ),
        (
            // An unknown variable is a warning naming the closest known one (Kubernetes
            // injects CAPSTAN_SERVICE_HOST and friends, which are not even that); the command
            // then fails for its own reason.
            vec!["migrate", "--database-url", "mysql://x"],
            vec![("CAPSTAN_LISTN", "x"), ("CAPSTAN_SERVICE_HOST", "10.0.0.1")],
            "unknown environment variable CAPSTAN_LISTN is ignored (did you mean CAPSTAN_LISTEN?)",
        ),
        (
            vec!["serve", "--database-url", &db],
            vec![("CAPSTAN_MASTER_KEY", "short")],
            "master key",
        ),
        (
            vec!["migrate", "--database-url", "mysql://x"],
            vec![],
            "unsupported database url",
        ),
    ];
    for (args, env, want) in cases {
        let mut cmd = capstan(&args);
        for (k, v) in &env {
            cmd.env(k, v);
        }
        let out = cmd.output().await.unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(stderr.contains(want), "{args:?}: {stderr}");
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// Kubernetes injects service-link variables for a Service named `capstan` into every pod of its
/// namespace; they are not settings and draw no warning.
#[tokio::test]
async fn kubernetes_service_links_are_not_settings() {
    let out = capstan(&["migrate", "--database-url", "mysql://x"])
        .env("CAPSTAN_SERVICE_HOST", "10.0.0.1")
        .env("CAPSTAN_SERVICE_PORT", "8470")
        .env("CAPSTAN_PORT", "tcp://10.0.0.1:8470")
        .env("CAPSTAN_PORT_8470_TCP_ADDR", "10.0.0.1")
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("unsupported database url"), "{stderr}");
    assert!(!stderr.contains("unknown environment variable"), "{stderr}");
}

#[tokio::test]
async fn migrate_bootstrap_serve_on_postgres() {
    let Ok(admin_url) = std::env::var("DATABASE_URL") else {
        eprintln!("SKIPPED on Postgres: DATABASE_URL is not set");
        return;
    };
    let name = unique_name("capstan_t");
    let url = create_postgres_database(&admin_url, &name).await.unwrap();
    let key = MasterKey::generate(&SystemRng::new()).unwrap().to_base64();

    // Several replicas migrating at once all succeed.
    let runs: Vec<_> = (0..3)
        .map(|_| capstan(&["migrate", "--database-url", &url]).output())
        .collect();
    for out in futures_join(runs).await {
        let out = out.unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    let bootstrap = |force: bool| {
        let mut args = vec!["bootstrap", "--database-url", url.as_str()];
        if force {
            args.push("--force");
        }
        let mut c = capstan(&args);
        c.env("CAPSTAN_MASTER_KEY", &key);
        c.output()
    };
    let out = bootstrap(false).await.unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let creds: Value = serde_json::from_slice(&out.stdout).unwrap();
    let again = bootstrap(false).await.unwrap();
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("--force"));
    let forced = bootstrap(true).await.unwrap();
    assert!(forced.status.success());

    let mut cmd = capstan(&[
        "serve",
        "--database-url",
        &url,
        "--listen",
        "127.0.0.1:0",
        "--no-migrate",
    ]);
    cmd.env("CAPSTAN_MASTER_KEY", &key);
    let (child, addr, _) = start(cmd).await;
    let base = format!("http://{addr}");
    let ready: Value = reqwest::get(format!("{base}/readyz"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ready, json!({"status": "ready", "database": "postgres"}));
    admin_creates_client_whose_token_verifies(
        &base,
        creds["client_id"].as_str().unwrap(),
        creds["client_secret"].as_str().unwrap(),
    )
    .await;
    terminate(child).await;

    // A server with the wrong master key refuses to start instead of failing every request.
    let wrong = MasterKey::generate(&SystemRng::new()).unwrap().to_base64();
    let mut cmd = capstan(&["serve", "--database-url", &url, "--listen", "127.0.0.1:0"]);
    cmd.env("CAPSTAN_MASTER_KEY", &wrong);
    let out = cmd.output().await.unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("master key"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    drop_postgres_database(&admin_url, &name).await.unwrap();
}

async fn futures_join<F>(fs: Vec<F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handles: Vec<_> = fs.into_iter().map(tokio::spawn).collect();
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.unwrap());
    }
    out
}

/// Reads one HTTP/1.1 request (head and `Content-Length` body) from `stream`.
async fn read_request(stream: &mut tokio::net::TcpStream) -> Option<(String, Vec<u8>)> {
    use tokio::io::AsyncReadExt;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
        let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
            continue;
        };
        let head = String::from_utf8_lossy(&buf[..end]).to_string();
        let len: usize = head
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse().ok())?
            })
            .unwrap_or(0);
        if buf.len() >= end + 4 + len {
            return Some((head, buf[end + 4..end + 4 + len].to_vec()));
        }
    }
}

#[tokio::test]
async fn spans_are_exported_over_otlp_when_configured() {
    use tokio::io::AsyncWriteExt;
    // A minimal OTLP/HTTP receiver that reports what reaches it.
    let receiver = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", receiver.local_addr().unwrap());
    let (tx, mut rx) = tokio::sync::mpsc::channel::<(String, Vec<u8>)>(16);
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = receiver.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                while let Some(req) = read_request(&mut stream).await {
                    let _ = tx.send(req).await;
                    let ok = b"HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n";
                    if stream.write_all(ok).await.is_err() {
                        break;
                    }
                }
            });
        }
    });

    let dir = std::env::temp_dir().join(unique_name("capstan_otel"));
    let mut cmd = capstan(&[
        "dev",
        "--data-dir",
        dir.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
    ]);
    cmd.env("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint)
        .env("OTEL_BSP_SCHEDULE_DELAY", "100")
        .env("CAPSTAN_LOG", "info");
    let (child, addr, _) = start(cmd).await;
    for _ in 0..3 {
        reqwest::get(format!("http://{addr}/healthz"))
            .await
            .unwrap();
    }
    let (head, body) = tokio::time::timeout(Duration::from_secs(20), rx.recv())
        .await
        .expect("an OTLP export arrives")
        .unwrap();
    assert!(head.starts_with("POST /v1/traces "), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: application/x-protobuf"),
        "{head}"
    );
    assert!(!body.is_empty());
    // The spans name the service and the route.
    assert!(contains_bytes(&body, b"capstan"), "service.name missing");
    assert!(contains_bytes(&body, b"/healthz"), "route missing");
    terminate(child).await;
    let _ = std::fs::remove_dir_all(dir);
}

fn contains_bytes(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// `capstan ca import`: an intermediate signed by the organisation's root becomes the CA, its
/// key sealed at rest; the SVIDs the server then issues chain to that root.
#[tokio::test]
async fn ca_import_chains_svids_to_the_organisation_root() {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    };
    let dir = std::env::temp_dir().join(unique_name("capstan_ca"));
    std::fs::create_dir_all(&dir).unwrap();
    let url = format!("sqlite://{}", dir.join("capstan.db").display());
    let key = MasterKey::generate(&SystemRng::new()).unwrap().to_base64();

    // The organisation's root, and an intermediate for Capstan with the chain in one file.
    let root_key = KeyPair::generate().unwrap();
    let mut rp = CertificateParams::default();
    rp.distinguished_name
        .push(DnType::CommonName, "Example Org Root");
    rp.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    rp.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let root = rp.self_signed(&root_key).unwrap();
    let root_issuer = Issuer::new(rp, root_key);
    let ca_key = KeyPair::generate().unwrap();
    let mut cp = CertificateParams::default();
    cp.distinguished_name
        .push(DnType::CommonName, "Capstan intermediate");
    cp.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    cp.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca = cp.signed_by(&ca_key, &root_issuer).unwrap();
    let cert_file = dir.join("ca.pem");
    let key_file = dir.join("ca.key");
    std::fs::write(&cert_file, format!("{}{}", ca.pem(), root.pem())).unwrap();
    std::fs::write(&key_file, ca_key.serialize_pem()).unwrap();

    // A key that does not match is refused with a clear message.
    let other_key = dir.join("other.key");
    std::fs::write(&other_key, KeyPair::generate().unwrap().serialize_pem()).unwrap();
    let import = |k: &Path| {
        let mut c = capstan(&[
            "ca",
            "import",
            "--database-url",
            &url,
            "--cert",
            cert_file.to_str().unwrap(),
            "--key",
            k.to_str().unwrap(),
        ]);
        c.env("CAPSTAN_MASTER_KEY", &key);
        c.output()
    };
    let bad = import(&other_key).await.unwrap();
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("key"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
    let out = import(&key_file).await.unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let imported: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(imported["id"], "g1");
    // Idempotent, so a deploy hook can run it on every upgrade.
    let again = import(&key_file).await.unwrap();
    assert!(again.status.success());
    let again: Value = serde_json::from_slice(&again.stdout).unwrap();
    assert_eq!(again["id"], "g1");

    // The server uses it: the bundle is the organisation's root; SVIDs chain through the
    // intermediate to it.
    let mut serve = capstan(&["serve", "--database-url", &url, "--listen", "127.0.0.1:0"]);
    serve.env("CAPSTAN_MASTER_KEY", &key);
    let (child, addr, _) = start(serve).await;
    let base = format!("http://{addr}");
    let http = reqwest::Client::new();
    let bundle = http
        .get(format!("{base}/v1/identity/bundle.pem"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(bundle, root.pem());
    let mut boot = capstan(&["bootstrap", "--database-url", &url]);
    boot.env("CAPSTAN_MASTER_KEY", &key);
    let creds: Value = serde_json::from_slice(&boot.output().await.unwrap().stdout).unwrap();
    let token: Value = http
        .post(format!("{base}/t/default/oauth2/token"))
        .basic_auth(
            creds["client_id"].as_str().unwrap(),
            creds["client_secret"].as_str(),
        )
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let leaf_key = KeyPair::generate().unwrap();
    let csr = CertificateParams::default()
        .serialize_request(&leaf_key)
        .unwrap()
        .pem()
        .unwrap();
    let svid: Value = http
        .post(format!("{base}/v1/identity/svids"))
        .bearer_auth(token["access_token"].as_str().unwrap())
        .json(&json!({ "csr": csr }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let chain: Vec<Vec<u8>> = x509_parser::pem::Pem::iter_from_buffer(
        svid["svid_chain_pem"].as_str().unwrap().as_bytes(),
    )
    .map(|p| p.unwrap().contents)
    .collect();
    assert_eq!(chain.len(), 2, "leaf and intermediate, not the root");
    let root_der = rustls_pki_types::CertificateDer::from(root.der().to_vec());
    let anchors = [webpki::anchor_from_trusted_cert(&root_der).unwrap()];
    let leaf = rustls_pki_types::CertificateDer::from(chain[0].clone());
    let inter = [rustls_pki_types::CertificateDer::from(chain[1].clone())];
    let ee = webpki::EndEntityCert::try_from(&leaf).unwrap();
    use capstan_core::clock::Clock;
    let now = Duration::from_secs(capstan_core::clock::SystemClock.now() as u64);
    ee.verify_for_usage(
        webpki::ALL_VERIFICATION_ALGS,
        &anchors,
        &inter,
        rustls_pki_types::UnixTime::since_unix_epoch(now),
        webpki::KeyUsage::client_auth(),
        None,
        None,
    )
    .unwrap();
    terminate(child).await;
    let _ = std::fs::remove_dir_all(dir);
}

/// `--trace-self`: the server's own request spans reach its trace service in process, named by
/// route; the trace receiver itself makes no spans. `--trace-anonymous` is for `dev` only.
#[tokio::test]
async fn dev_traces_itself_when_asked() {
    let dir = std::env::temp_dir().join(unique_name("capstan_self_trace"));
    let data = dir.to_str().unwrap();
    let (child, addr, _) = start(capstan(&[
        "dev",
        "--data-dir",
        data,
        "--listen",
        "127.0.0.1:0",
        "--trace-self",
    ]))
    .await;
    let base = format!("http://{addr}");
    let admin: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("admin.json")).unwrap()).unwrap();
    let http = reqwest::Client::new();
    let token: Value = http
        .post(format!("{base}/t/default/oauth2/token"))
        .basic_auth(
            admin["client_id"].as_str().unwrap(),
            admin["client_secret"].as_str(),
        )
        .form(&[
            ("grant_type", "client_credentials"),
            ("audience", "capstan"),
        ])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = token["access_token"].as_str().unwrap().to_owned();
    let get = |path: String| {
        let http = http.clone();
        let token = token.clone();
        async move {
            http.get(path)
                .bearer_auth(token)
                .send()
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap()
        }
    };
    // An (empty) export: the receiver route must not appear among the spans.
    let r = http
        .post(format!("{base}/v1/traces"))
        .bearer_auth(&token)
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let _ = get(format!("{base}/v1/clients")).await;
    let mut ops = Value::Null;
    for _ in 0..40 {
        ops = get(format!("{base}/api/services/capstan/operations")).await;
        if ops["data"]
            .as_array()
            .is_some_and(|a| a.contains(&json!("GET /v1/clients")))
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let names = ops["data"].as_array().expect("operations");
    assert!(names.contains(&json!("GET /v1/clients")), "{ops}");
    assert!(!names.contains(&json!("POST /v1/traces")), "{ops}");
    let traces = get(format!(
        "{base}/api/traces?service=capstan&operation=GET%20/v1/clients"
    ))
    .await;
    let process = &traces["data"][0]["processes"]["p1"];
    assert!(process["tags"]
        .as_array()
        .unwrap()
        .contains(&json!({"key": "capstan.principal", "type": "string", "value": "capstan"})));
    terminate(child).await;
    let out = capstan(&[
        "serve",
        "--trace-anonymous",
        "--database-url",
        "sqlite://x.db",
    ])
    .env("CAPSTAN_MASTER_KEY", "00".repeat(32))
    .output()
    .await
    .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--trace-anonymous"));
    let _ = std::fs::remove_dir_all(dir);
}
