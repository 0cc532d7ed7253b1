//! Access tokens by client credentials (RFC 6749 §4.4) through the `oauth2` crate: cached per
//! audience, refreshed ahead of expiry, one request in flight however many tasks ask.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use capstan_core::clock::{Clock, SystemClock, UnixTime};
use oauth2::basic::BasicClient;
use oauth2::{
    AuthType, ClientId, ClientSecret, HttpRequest, HttpResponse, RequestTokenError, Scope,
    TokenResponse, TokenUrl,
};

use crate::transport::Transport;
use crate::Error;

/// A bearer token; its `Debug` does not show it.
#[derive(Clone, PartialEq, Eq)]
pub struct AccessToken(String);

impl AccessToken {
    /// Wraps a token.
    pub fn new(token: String) -> AccessToken {
        AccessToken(token)
    }

    /// The token, to put in an `Authorization: Bearer` header.
    pub fn secret(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AccessToken(…)")
    }
}

/// A token as granted.
#[derive(Debug, Clone)]
pub struct Grant {
    /// The token.
    pub token: AccessToken,
    /// Its lifetime in seconds, as the server said (`expires_in`).
    pub expires_in: Option<u64>,
    /// Granted scopes, space-separated.
    pub scope: Option<String>,
}

/// One client-credentials request through the `oauth2` crate (HTTP Basic client
/// authentication, `audience` as an extra parameter), over `transport` (timeouts, retries on
/// 429/503).
pub async fn client_credentials(
    transport: &Transport,
    token_url: &str,
    client_id: &str,
    client_secret: &str,
    scopes: &[String],
    audience: Option<&str>,
) -> Result<Grant, Error> {
    let url = TokenUrl::new(token_url.to_owned())
        .map_err(|e| Error::Config(format!("token URL {token_url:?}: {e}")))?;
    let client = BasicClient::new(ClientId::new(client_id.to_owned()))
        .set_client_secret(ClientSecret::new(client_secret.to_owned()))
        .set_auth_type(AuthType::BasicAuth)
        .set_token_uri(url);
    let mut req = client.exchange_client_credentials();
    for s in scopes {
        req = req.add_scope(Scope::new(s.clone()));
    }
    if let Some(aud) = audience {
        req = req.add_extra_param("audience", aud.to_owned());
    }
    let http = OAuthHttp(transport.clone());
    match req.request_async(&http).await {
        Ok(t) => Ok(Grant {
            token: AccessToken(t.access_token().secret().clone()),
            expires_in: t.expires_in().map(|d| d.as_secs()),
            scope: t
                .scopes()
                .map(|s| s.iter().map(|x| x.as_str()).collect::<Vec<_>>().join(" ")),
        }),
        Err(RequestTokenError::ServerResponse(r)) => Err(Error::OAuth {
            error: r.error().as_ref().to_owned(),
            description: r.error_description().cloned(),
        }),
        Err(RequestTokenError::Request(e)) => Err(e),
        Err(RequestTokenError::Parse(e, _)) => Err(Error::Protocol(format!("token response: {e}"))),
        Err(RequestTokenError::Other(e)) => Err(Error::Protocol(format!("token response: {e}"))),
    }
}

/// The `oauth2` crate's HTTP client: the SDK transport.
struct OAuthHttp(Transport);

impl<'c> oauth2::AsyncHttpClient<'c> for OAuthHttp {
    type Error = Error;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<HttpResponse, Error>> + Send + 'c>,
    >;

    fn call(&'c self, request: HttpRequest) -> Self::Future {
        Box::pin(send_oauth(&self.0, request))
    }
}

/// The `oauth2` crate's HTTP hook, over the SDK transport.
async fn send_oauth(transport: &Transport, r: HttpRequest) -> Result<HttpResponse, Error> {
    let (parts, body) = r.into_parts();
    let url = parts.uri.to_string();
    let resp = transport
        .send(
            transport
                .http()
                .request(parts.method, &url)
                .headers(parts.headers)
                .body(body),
        )
        .await?;
    let mut out = http::Response::builder().status(resp.status());
    for (k, v) in resp.headers() {
        out = out.header(k, v);
    }
    let bytes = resp
        .bytes()
        .await
        .map_err(|e| Error::Protocol(format!("reading the token response: {e}")))?;
    out.body(bytes.to_vec())
        .map_err(|e| Error::Protocol(e.to_string()))
}

/// Where and as whom a [`TokenSource`] asks for tokens.
#[derive(Clone)]
pub struct ClientCredentials {
    /// The tenant's token endpoint, `{issuer}/oauth2/token`.
    pub token_url: String,
    /// Client id.
    pub client_id: String,
    /// Client secret.
    pub client_secret: String,
    /// Scopes to ask for (none: all the client may have).
    pub scopes: Vec<String>,
}

impl fmt::Debug for ClientCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientCredentials")
            .field("token_url", &self.token_url)
            .field("client_id", &self.client_id)
            .finish_non_exhaustive()
    }
}

struct Cached {
    token: AccessToken,
    /// When it stops being valid.
    expires_at: UnixTime,
    /// When to get the next one (ahead of expiry).
    refresh_at: UnixTime,
}

#[derive(Default)]
struct Slot {
    current: Mutex<Option<Arc<Cached>>>,
    /// Held by the one task that asks the server; the others wait for its answer.
    in_flight: tokio::sync::Mutex<()>,
}

/// Cached, single-flight client-credentials tokens, per audience. Cheap to clone.
#[derive(Clone)]
pub struct TokenSource {
    inner: Arc<Inner>,
}

struct Inner {
    creds: ClientCredentials,
    transport: Transport,
    clock: Arc<dyn Clock>,
    slots: Mutex<HashMap<String, Arc<Slot>>>,
    requests: AtomicU64,
}

/// Audiences a source keeps tokens for; more is a misuse, refused.
const MAX_AUDIENCES: usize = 64;

impl TokenSource {
    /// A token source using the system clock.
    pub fn new(creds: ClientCredentials, transport: Transport) -> TokenSource {
        TokenSource::with_clock(creds, transport, Arc::new(SystemClock))
    }

    /// A token source with an injected clock (tests move it instead of sleeping).
    pub fn with_clock(
        creds: ClientCredentials,
        transport: Transport,
        clock: Arc<dyn Clock>,
    ) -> TokenSource {
        TokenSource {
            inner: Arc::new(Inner {
                creds,
                transport,
                clock,
                slots: Mutex::new(HashMap::new()),
                requests: AtomicU64::new(0),
            }),
        }
    }

    /// The client id.
    pub fn client_id(&self) -> &str {
        &self.inner.creds.client_id
    }

    /// How many token requests this source has sent.
    pub fn requests_sent(&self) -> u64 {
        self.inner.requests.load(Ordering::Relaxed)
    }

    /// A valid token for `audience` (`None`: every audience the client may have). Served from
    /// the cache until a fifth of its lifetime is left (at most 5 minutes before expiry); then
    /// one caller fetches the next while the others keep using the current one, and when none
    /// is valid every caller waits for that one request.
    pub async fn token(&self, audience: Option<&str>) -> Result<AccessToken, Error> {
        let key = audience.unwrap_or("").to_owned();
        let slot = {
            let mut slots = self.inner.slots.lock().unwrap_or_else(|e| e.into_inner());
            if !slots.contains_key(&key) && slots.len() >= MAX_AUDIENCES {
                return Err(Error::Config(format!(
                    "a token source keeps at most {MAX_AUDIENCES} audiences"
                )));
            }
            slots.entry(key).or_default().clone()
        };
        let now = self.inner.clock.now();
        let current = slot
            .current
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if let Some(c) = &current {
            if now < c.refresh_at {
                return Ok(c.token.clone());
            }
            if now < c.expires_at {
                // Still valid: refresh only if nobody else is doing it.
                let Ok(_guard) = slot.in_flight.try_lock() else {
                    return Ok(c.token.clone());
                };
                return match self.fetch(&slot, audience).await {
                    Ok(t) => Ok(t),
                    Err(e) => {
                        tracing::warn!(error = %e, "capstan: token refresh failed; using the current token");
                        Ok(c.token.clone())
                    }
                };
            }
        }
        let _guard = slot.in_flight.lock().await;
        // Someone else may have fetched while this task waited.
        let now = self.inner.clock.now();
        if let Some(c) = slot
            .current
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
        {
            if now < c.expires_at && now < c.refresh_at {
                return Ok(c.token.clone());
            }
        }
        self.fetch(&slot, audience).await
    }

    /// Asks the server (the caller holds the slot's in-flight lock).
    async fn fetch(&self, slot: &Slot, audience: Option<&str>) -> Result<AccessToken, Error> {
        let c = &self.inner.creds;
        self.inner.requests.fetch_add(1, Ordering::Relaxed);
        let grant = client_credentials(
            &self.inner.transport,
            &c.token_url,
            &c.client_id,
            &c.client_secret,
            &c.scopes,
            audience,
        )
        .await?;
        let now = self.inner.clock.now();
        let lifetime = grant.expires_in.unwrap_or(60).min(86_400) as i64;
        let ahead = (lifetime / 5).min(300);
        let cached = Arc::new(Cached {
            token: grant.token.clone(),
            expires_at: now + lifetime,
            refresh_at: now + lifetime - ahead,
        });
        *slot.current.lock().unwrap_or_else(|e| e.into_inner()) = Some(cached);
        Ok(grant.token)
    }

    /// Forgets the cached tokens (after the server refused one, say).
    pub fn invalidate(&self) {
        self.inner
            .slots
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }
}
