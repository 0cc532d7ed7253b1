//! The service registry: a service added as a new one would be (its crate plus one line) is
//! routed, guarded, documented, measured and fed; `--services` serves exactly what it names.

use std::time::{Duration, Instant};

use capstan_tests::{Ctx, TestServer};
use reqwest::Method;
use serde_json::{json, Value};

async fn admin_token(s: &TestServer) -> String {
    let admin = s.admin().await;
    s.token("default", &admin, &[]).await
}

/// A throwaway service, added through the registry as a new service would be: one route
/// guarded by the platform's authorizer, one feed topic, one metric.
mod echo {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::{Arc, Mutex};

    use axum::extract::State;
    use axum::routing::get;
    use axum::Json;
    use capstan_core::authz::{Authorizer, TokenVerifier};
    use capstan_core::crn::Crn;
    use capstan_db::{Change, Feed};
    use capstan_http::{
        guard, Api, ApiResult, Bearer, Metric, Platform, Registration, RouteList, Routes, Service,
        ServiceConfig,
    };
    use serde_json::{json, Value};
    use utoipa::OpenApi;

    /// The echo service's own section, `[service.echo]`.
    #[derive(Debug, Default, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct EchoConfig {
        /// Put before every key the service records.
        #[serde(default)]
        pub prefix: String,
    }

    pub struct Echo {
        pub prefix: String,
        pub feed: Arc<Feed>,
        pub authorizer: Arc<dyn Authorizer>,
        pub seen: Mutex<Vec<String>>,
        pub count: AtomicU64,
    }

    /// Read what the echo service has seen on its topic.
    #[utoipa::path(get, path = "/v1/echo", responses((status = 200)), security(("bearer" = [])))]
    async fn read(State(echo): State<Api<Echo>>, Bearer(caller): Bearer) -> ApiResult<Json<Value>> {
        let resource = Crn::new("echo", &caller.tenant, "thing");
        guard(
            echo.authorizer.as_ref(),
            &caller,
            "echo:Read",
            &resource,
            &[],
        )
        .await?;
        let seen = echo.seen.lock().unwrap().clone();
        Ok(Json(json!({ "seen": seen })))
    }

    /// Publish a change on the echo topic.
    #[utoipa::path(post, path = "/v1/echo", responses((status = 200)), security(("bearer" = [])))]
    async fn publish(
        State(echo): State<Api<Echo>>,
        Bearer(caller): Bearer,
    ) -> ApiResult<Json<Value>> {
        let resource = Crn::new("echo", &caller.tenant, "thing");
        guard(
            echo.authorizer.as_ref(),
            &caller,
            "echo:Publish",
            &resource,
            &[],
        )
        .await?;
        echo.feed
            .publish(caller.tenant.as_str(), "echo", caller.principal.as_str(), 0)
            .await?;
        Ok(Json(json!({})))
    }

    /// Takes longer than any test's request timeout.
    #[utoipa::path(get, path = "/v1/echo/slow", responses((status = 200)))]
    async fn slow() -> Json<Value> {
        tokio::time::sleep(std::time::Duration::from_secs(30)).await;
        Json(json!({}))
    }

    #[derive(OpenApi)]
    #[openapi(paths(read, publish, slow))]
    struct EchoApi;

    #[async_trait::async_trait]
    impl Service for Echo {
        fn name(&self) -> &'static str {
            "echo"
        }

        fn routes(self: Arc<Self>, verifier: Arc<dyn TokenVerifier>) -> Routes {
            RouteList::new()
                .route("/v1/echo", get(read).post(publish))
                .route("/v1/echo/slow", get(slow))
                .with_state(Api::new(self, verifier))
        }

        fn openapi(&self) -> utoipa::openapi::OpenApi {
            EchoApi::openapi()
        }

        fn topics(&self) -> &[&'static str] {
            &["echo"]
        }

        fn on_change(&self, change: &Change) {
            self.seen
                .lock()
                .unwrap()
                .push(format!("{}{}", self.prefix, change.key));
            self.count.fetch_add(1, Ordering::Relaxed);
        }

        fn metrics(&self) -> Vec<Metric> {
            vec![Metric::counter(
                "capstan_echo_changes_total",
                "Changes the echo service received.",
                self.count.load(Ordering::Relaxed),
            )]
        }
    }

    /// The one line a new service adds to the registry.
    pub fn registration() -> Registration {
        Registration::new("echo", |p: &Platform, section: &ServiceConfig| {
            let config: EchoConfig = section.parse()?;
            Ok(Arc::new(Echo {
                prefix: config.prefix,
                feed: p.feed.clone(),
                authorizer: p.authorizer.clone(),
                seen: Mutex::new(Vec::new()),
                count: AtomicU64::new(0),
            }) as Arc<dyn Service>)
        })
    }
}

capstan_tests::on_both_backends!(
    a_service_added_through_the_registry_is_routed_documented_measured_and_fed,
    services_serve_exactly_what_they_name,
    a_service_section_with_a_mistake_stops_the_server_with_a_clear_message,
    a_request_over_the_timeout_is_a_json_503,
);

/// A handler that does not answer within `request_timeout_seconds` (one stuck on storage) gets
/// the same answer as an outage: 503, `Retry-After`, a JSON body with the request id.
async fn a_request_over_the_timeout_is_a_json_503(ctx: &Ctx) {
    let mut settings = ctx.settings();
    settings.services = vec!["auth".into(), "policy".into(), "echo".into()];
    settings.request_timeout = std::time::Duration::from_secs(1);
    let s = ctx
        .server_with_registry(settings, vec![echo::registration()])
        .await;
    let r = s.http.get(s.url("/v1/echo/slow")).send().await.unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["retry-after"], "1");
    let id = r.headers()["x-request-id"].to_str().unwrap().to_owned();
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"], "unavailable");
    assert_eq!(body["request_id"], id.as_str());
    s.shutdown().await;
}

async fn a_service_added_through_the_registry_is_routed_documented_measured_and_fed(ctx: &Ctx) {
    let mut settings = ctx.settings();
    settings.public_url = Some("http://capstan.test".into());
    settings.services = vec!["auth".into(), "policy".into(), "echo".into()];
    // Its own configuration section, `[service.echo]`.
    settings
        .service_config
        .insert("echo".into(), json!({"prefix": "seen-"}));
    let a = ctx
        .server_with_registry(settings.clone(), vec![echo::registration()])
        .await;
    let b = ctx
        .server_with_registry(settings, vec![echo::registration()])
        .await;
    let token = admin_token(&a).await;

    // Routed, and guarded by the policy engine like every API.
    let (status, body) = b.api(Method::GET, "/v1/echo", &token, None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["seen"], json!([]));
    let orders = a
        .create_client(&token, json!({"name": "orders", "audiences": ["capstan"]}))
        .await;
    let orders_token = a.token("default", &orders, &[]).await;
    let (status, body) = a.api(Method::GET, "/v1/echo", &orders_token, None).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["action"], "echo:Read");

    // In the OpenAPI document.
    let doc: Value = a.get_json("/openapi.json").await;
    assert!(
        doc["paths"]["/v1/echo"]["get"].is_object(),
        "{}",
        doc["paths"]
    );

    // A change published on one server reaches the service on the other through the feed.
    let (status, body) = a.api(Method::POST, "/v1/echo", &token, None).await;
    assert_eq!(status, 200, "{body}");
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let (_, body) = b.api(Method::GET, "/v1/echo", &token, None).await;
        if let Some([key]) = body["seen"].as_array().map(Vec::as_slice) {
            // The key is the publisher's principal, with the configured prefix.
            assert!(key.as_str().unwrap().starts_with("seen-svc_"), "{key}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the change did not reach server b: {body}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // In /metrics.
    let metrics = b.metrics().await;
    assert!(
        metrics.contains("capstan_echo_changes_total 1"),
        "{metrics}"
    );
    a.shutdown().await;
    b.shutdown().await;
}

async fn services_serve_exactly_what_they_name(ctx: &Ctx) {
    let mut settings = ctx.settings();
    settings.public_url = Some("http://capstan.test".into());
    let issuer = ctx.server_with(settings.clone()).await;
    settings.services = vec!["policy".into()];
    let policy_only = ctx.server_with(settings).await;
    let token = admin_token(&issuer).await;
    // The issuer's routes are not served, its tokens are still verified.
    for path in ["/v1/clients", "/v1/tenants", "/v1/keys"] {
        let (status, _) = policy_only.api(Method::GET, path, &token, None).await;
        assert_eq!(status, 404, "{path}");
    }
    let r = policy_only
        .http
        .get(policy_only.url("/t/default/oauth2/jwks"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let (status, body) = policy_only
        .api(Method::GET, "/v1/policies", &token, None)
        .await;
    assert_eq!(status, 200, "{body}");
    let doc: Value = policy_only.get_json("/openapi.json").await;
    assert!(doc["paths"]["/v1/policies"].is_object());
    assert!(doc["paths"].get("/v1/clients").is_none());
    issuer.shutdown().await;
    policy_only.shutdown().await;
}

async fn a_service_section_with_a_mistake_stops_the_server_with_a_clear_message(ctx: &Ctx) {
    use std::sync::Arc;

    use capstan_core::clock::SystemClock;
    use capstan_core::rng::SystemRng;
    use capstan_server::Server;

    let start = |settings: capstan_server::Settings| async move {
        Server::start_with(
            &settings,
            Arc::new(SystemClock),
            Arc::new(SystemRng::new()),
            true,
            vec![echo::registration()],
        )
        .await
    };
    let mut settings = ctx.settings();
    settings.services = vec!["auth".into(), "policy".into(), "echo".into()];
    settings
        .service_config
        .insert("echo".into(), json!({"prefx": "typo-"}));
    let err = start(settings.clone()).await.err().expect("refused");
    let text = err.to_string();
    assert!(
        text.contains("service echo") && text.contains("prefx"),
        "{text}"
    );

    settings.service_config.clear();
    settings
        .service_config
        .insert("nope".into(), json!({"a": 1}));
    let err = start(settings).await.err().expect("refused");
    assert!(err.to_string().contains("[service.nope]"), "{err}");
}
