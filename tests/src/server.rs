//! Booting real servers on port 0 and talking to them over HTTP, as a user would.

use std::sync::Arc;

use crate::db::TestDatabase;
use capstan_auth::AuthService;
use capstan_core::clock::{Clock, ManualClock, SystemClock};
use capstan_core::crypto::MasterKey;
use capstan_core::ids::TenantId;
use capstan_core::rng::SystemRng;
use capstan_server::{Server, Settings};
use serde_json::{json, Value};

/// A fresh database and the master key every server on it shares.
pub struct Ctx {
    /// The database.
    pub db: TestDatabase,
    /// The master key.
    pub master: MasterKey,
}

impl Ctx {
    /// A fresh SQLite database.
    pub async fn sqlite() -> Ctx {
        Ctx {
            db: TestDatabase::sqlite().await.expect("sqlite"),
            master: MasterKey::generate(&SystemRng::new()).unwrap(),
        }
    }

    /// A fresh Postgres database, or `None` (reported on stderr) when `DATABASE_URL` is unset.
    pub async fn postgres() -> Option<Ctx> {
        let db = crate::db::postgres_or_skip().await?;
        Some(Ctx {
            db,
            master: MasterKey::generate(&SystemRng::new()).unwrap(),
        })
    }

    /// The database handle.
    pub fn db(&self) -> capstan_db::Db {
        self.db.db.clone()
    }

    /// Server settings for this database and master key.
    pub fn settings(&self) -> Settings {
        Settings::new(self.db.url.clone(), self.master.clone())
    }

    /// A server on this database with a manual clock starting at the real time.
    pub async fn server(&self) -> TestServer {
        self.server_with(self.settings()).await
    }

    /// A server with the given settings.
    pub async fn server_with(&self, settings: Settings) -> TestServer {
        self.server_with_registry(settings, capstan_server::app::registry())
            .await
    }

    /// A server with the given settings and the services of `registry` (a test adds its own).
    pub async fn server_with_registry(
        &self,
        settings: Settings,
        registry: Vec<capstan_http::Registration>,
    ) -> TestServer {
        let clock = Arc::new(ManualClock::new(SystemClock.now()));
        let rng = Arc::new(SystemRng::new());
        let server = Server::start_with(&settings, clock.clone(), rng, true, registry)
            .await
            .expect("server starts");
        // Requests go to the bound address; the issuer is the public URL (shared by a cluster).
        let base = format!("http://{}", server.addr);
        TestServer {
            server,
            clock,
            base,
            http: reqwest::Client::new(),
        }
    }

    /// Removes the database.
    pub async fn cleanup(self) {
        self.db.cleanup().await;
    }
}

/// Client credentials.
#[derive(Debug, Clone)]
pub struct Creds {
    /// Client id.
    pub id: String,
    /// Client secret.
    pub secret: String,
}

impl Creds {
    /// The credentials in an API answer that shows a secret (`client_id`, `client_secret`).
    pub fn from_json(v: &Value) -> Creds {
        Creds {
            id: v["client_id"].as_str().expect("client_id").to_owned(),
            secret: v["client_secret"]
                .as_str()
                .expect("client_secret")
                .to_owned(),
        }
    }
}

/// A running server with its manual clock and an HTTP client.
pub struct TestServer {
    /// The server.
    pub server: Server,
    /// Its clock (tests move it instead of sleeping).
    pub clock: Arc<ManualClock>,
    /// `http://<bound address>`.
    pub base: String,
    /// An HTTP client.
    pub http: reqwest::Client,
}

impl TestServer {
    /// The issuer.
    pub fn auth(&self) -> &Arc<AuthService> {
        &self.server.app.auth
    }

    /// The running service named `name` (to call its housekeeping, say).
    pub fn service(&self, name: &str) -> Arc<dyn capstan_http::Service> {
        self.server
            .app
            .services
            .iter()
            .find(|r| r.service.name() == name)
            .expect("the service runs")
            .service
            .clone()
    }

    /// The URL of `path` on this server.
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// The `/metrics` text.
    pub async fn metrics(&self) -> String {
        let r = self.http.get(self.url("/metrics")).send().await.unwrap();
        r.text().await.unwrap()
    }

    /// A new admin client of the default tenant (as `capstan dev`/`bootstrap` make).
    pub async fn admin(&self) -> Creds {
        let c = self
            .auth()
            .create_admin_client(&TenantId::default_tenant(), "admin")
            .await
            .unwrap();
        Creds {
            id: c.client.client_id,
            secret: c.client_secret,
        }
    }

    /// POSTs a form to a tenant's OAuth endpoint with client_secret_basic.
    pub async fn oauth(
        &self,
        tenant: &str,
        endpoint: &str,
        creds: &Creds,
        form: &[(&str, &str)],
    ) -> reqwest::Response {
        self.http
            .post(self.url(&format!("/t/{tenant}/oauth2/{endpoint}")))
            .basic_auth(&creds.id, Some(&creds.secret))
            .form(form)
            .send()
            .await
            .unwrap()
    }

    /// A client_credentials token (panics unless 200).
    pub async fn token(&self, tenant: &str, creds: &Creds, form: &[(&str, &str)]) -> String {
        let mut f = vec![("grant_type", "client_credentials")];
        f.extend_from_slice(form);
        let r = self.oauth(tenant, "token", creds, &f).await;
        assert_eq!(r.status(), 200, "token request failed");
        let body: Value = r.json().await.unwrap();
        body["access_token"].as_str().unwrap().to_owned()
    }

    /// Introspects `token` (panics unless 200).
    pub async fn introspect(&self, tenant: &str, creds: &Creds, token: &str) -> Value {
        let r = self
            .oauth(tenant, "introspect", creds, &[("token", token)])
            .await;
        assert_eq!(r.status(), 200);
        r.json().await.unwrap()
    }

    /// Sends a `/v1` request with a bearer token; returns status and JSON body (Null if empty).
    pub async fn api(
        &self,
        method: reqwest::Method,
        path: &str,
        bearer: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut req = self
            .http
            .request(method, self.url(path))
            .bearer_auth(bearer);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let r = req.send().await.unwrap();
        let status = r.status().as_u16();
        let text = r.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// Creates a client through the API as `admin_token`.
    pub async fn create_client(&self, admin_token: &str, body: Value) -> Creds {
        let (status, v) = self
            .api(
                reqwest::Method::POST,
                "/v1/clients",
                admin_token,
                Some(body),
            )
            .await;
        assert_eq!(status, 201, "{v}");
        Creds::from_json(&v)
    }

    /// An admin token, plus a service client "orders" and its token.
    pub async fn orders_client(&self) -> (String, Creds) {
        let admin = self.admin().await;
        let admin_token = self.token("default", &admin, &[]).await;
        let c = self
            .create_client(
                &admin_token,
                json!({"name": "orders", "scopes": ["orders:read", "orders:write"], "audiences": ["orders-api", "billing-api"]}),
            )
            .await;
        (admin_token, c)
    }

    /// GETs `path` without credentials and parses the JSON answer (panics unless JSON).
    pub async fn get_json(&self, path: &str) -> Value {
        self.http
            .get(self.url(path))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// The tenant's JWKS.
    pub async fn jwks(&self, tenant: &str) -> Value {
        self.get_json(&format!("/t/{tenant}/oauth2/jwks")).await
    }

    /// Shuts the server down gracefully.
    pub async fn shutdown(self) {
        self.server.shutdown().await.unwrap();
    }
}

/// Verifies a token with jsonwebtoken (a standard library) against the JWKS, as a resource
/// server would.
pub fn verify_with_jwks(
    jwks: &Value,
    token: &str,
    issuer: &str,
    audience: &str,
) -> Result<Value, jsonwebtoken::errors::Error> {
    verify_with_jwks_at(jwks, token, issuer, audience, true)
}

/// As [`verify_with_jwks`]; with `check_time` false the library skips `exp`/`nbf`, for servers
/// whose manual clock has moved away from the real one.
pub fn verify_with_jwks_at(
    jwks: &Value,
    token: &str,
    issuer: &str,
    audience: &str,
    check_time: bool,
) -> Result<Value, jsonwebtoken::errors::Error> {
    let set: jsonwebtoken::jwk::JwkSet = serde_json::from_value(jwks.clone()).unwrap();
    let header = jsonwebtoken::decode_header(token)?;
    let kid = header.kid.clone().unwrap_or_default();
    let jwk = set
        .find(&kid)
        .ok_or(jsonwebtoken::errors::ErrorKind::InvalidKeyFormat)?;
    let key = jsonwebtoken::DecodingKey::from_jwk(jwk)?;
    let mut v = jsonwebtoken::Validation::new(header.alg);
    v.set_audience(&[audience]);
    v.set_issuer(&[issuer]);
    v.validate_nbf = check_time;
    v.validate_exp = check_time;
    v.leeway = 0;
    v.set_required_spec_claims(&["exp", "nbf", "iat", "iss", "aud", "sub"]);
    assert_eq!(header.typ.as_deref(), Some("at+jwt"));
    Ok(jsonwebtoken::decode::<Value>(token, &key, &v)?.claims)
}

fn b64(v: &Value) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap())
}

/// Forgeries of a valid access token of `tenant` that every verifier must refuse: `alg: none`,
/// HS256 keyed with the public JWK or its `x` (algorithm confusion), a tampered payload under
/// the real signature, `typ: JWT`, and garbage.
pub async fn forged_tokens(
    s: &TestServer,
    tenant: &str,
    token: &str,
) -> Vec<(&'static str, String)> {
    use base64::Engine;
    let b64d = |p: &str| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(p)
            .unwrap()
    };
    let parts: Vec<&str> = token.split('.').collect();
    let header: Value = serde_json::from_slice(&b64d(parts[0])).unwrap();
    let claims: Value = serde_json::from_slice(&b64d(parts[1])).unwrap();
    let kid = header["kid"].as_str().unwrap().to_owned();
    let none = format!(
        "{}.{}.",
        b64(&json!({"alg": "none", "typ": "at+jwt", "kid": kid})),
        parts[1]
    );
    let jwks = s.jwks(tenant).await;
    let key = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kid"] == kid.as_str())
        .unwrap()
        .clone();
    let public = serde_json::to_vec(&key).unwrap();
    let mut hs = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    hs.kid = Some(kid.clone());
    hs.typ = Some("at+jwt".into());
    let hs256 = jsonwebtoken::encode(
        &hs,
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(&public),
    )
    .unwrap();
    let x = key["x"].as_str().unwrap_or("x").as_bytes().to_vec();
    let hs256_x =
        jsonwebtoken::encode(&hs, &claims, &jsonwebtoken::EncodingKey::from_secret(&x)).unwrap();
    let mut more = claims.clone();
    more["scope"] = json!("orders:read orders:write admin");
    let tampered = format!("{}.{}.{}", parts[0], b64(&more), parts[2]);
    let jwt_typ = format!(
        "{}.{}.{}",
        b64(&json!({"alg": header["alg"], "typ": "JWT", "kid": kid})),
        parts[1],
        parts[2]
    );
    vec![
        ("alg none", none),
        ("HS256 with public JWK", hs256),
        ("HS256 with x", hs256_x),
        ("tampered", tampered),
        ("typ JWT", jwt_typ),
        ("garbage", "a.b.c".into()),
    ]
}
