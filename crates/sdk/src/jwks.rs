//! Offline verification of Capstan access tokens for resource servers (RFC 9068), with the same
//! checks as Capstan's own verifier (`capstan_core::jwt::verify`): `typ` `at+jwt`, a published
//! `kid` whose algorithm decides (never the header's choice), the signature, `iss`, `exp` and
//! `nbf` with a small leeway, and the audience. The JWKS is cached; an unknown `kid` refetches
//! it at most once per interval, so forged `kid`s cannot make the verifier hammer Capstan.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use capstan_core::clock::{Clock, SystemClock, UnixTime};
use capstan_core::jwt::{self, Expect, Jwk, VerifyingKey};
pub use capstan_core::jwt::{AccessClaims, TokenError};
use serde::Deserialize;

use crate::transport::Transport;
use crate::Error;

/// Why a token was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// The token is not valid (a 401 for the caller).
    #[error(transparent)]
    Invalid(#[from] TokenError),
    /// No keys could be loaded to check it against (a 503: Capstan unreachable at first use).
    #[error("signing keys unavailable: {0}")]
    Unavailable(Error),
}

/// Settings of a [`JwksVerifier`].
#[derive(Debug, Clone)]
pub struct VerifierConfig {
    /// The issuer tokens must name (`{public_url}/t/{tenant}`).
    pub issuer: String,
    /// Where its JWKS is (`{issuer}/oauth2/jwks`).
    pub jwks_url: String,
    /// The audience this resource server answers to; tokens must carry it.
    pub audience: String,
    /// Allowed clock skew for `exp` and `nbf`, in seconds (Capstan's own: 5).
    pub leeway: i64,
    /// The JWKS is refetched when older than this (seconds), so withdrawn keys stop verifying.
    pub max_age: i64,
    /// An unknown `kid` refetches the JWKS at most once per this many seconds.
    pub refetch_interval: i64,
}

impl VerifierConfig {
    /// Defaults for a tenant issuer: 5 s leeway, JWKS kept 5 minutes, unknown `kid`s refetch
    /// at most every 30 s.
    pub fn new(issuer: &str, audience: &str) -> VerifierConfig {
        let issuer = issuer.trim_end_matches('/').to_owned();
        VerifierConfig {
            jwks_url: format!("{issuer}/oauth2/jwks"),
            issuer,
            audience: audience.to_owned(),
            leeway: 5,
            max_age: 300,
            refetch_interval: 30,
        }
    }
}

#[derive(Default)]
struct Keys {
    by_kid: HashMap<String, Arc<VerifyingKey>>,
    /// When the JWKS was last fetched successfully.
    fetched_at: Option<UnixTime>,
    /// When it was last attempted (success or not).
    tried_at: Option<UnixTime>,
}

#[derive(Deserialize)]
struct JwkSet {
    keys: Vec<serde_json::Value>,
}

/// Verifies Capstan access tokens offline against a cached JWKS. Cheap to clone.
#[derive(Clone)]
pub struct JwksVerifier {
    inner: Arc<Inner>,
}

struct Inner {
    cfg: VerifierConfig,
    transport: Transport,
    clock: Arc<dyn Clock>,
    keys: RwLock<Keys>,
    fetching: tokio::sync::Mutex<()>,
    fetches: std::sync::atomic::AtomicU64,
}

/// Keys beyond this in one JWKS are ignored (a JWKS is a handful of keys).
const MAX_KEYS: usize = 100;

impl JwksVerifier {
    /// A verifier with the system clock.
    pub fn new(cfg: VerifierConfig, transport: Transport) -> JwksVerifier {
        JwksVerifier::with_clock(cfg, transport, Arc::new(SystemClock))
    }

    /// A verifier with an injected clock.
    pub fn with_clock(
        cfg: VerifierConfig,
        transport: Transport,
        clock: Arc<dyn Clock>,
    ) -> JwksVerifier {
        JwksVerifier {
            inner: Arc::new(Inner {
                cfg,
                transport,
                clock,
                keys: RwLock::new(Keys::default()),
                fetching: tokio::sync::Mutex::new(()),
                fetches: std::sync::atomic::AtomicU64::new(0),
            }),
        }
    }

    /// The settings.
    pub fn config(&self) -> &VerifierConfig {
        &self.inner.cfg
    }

    /// Verifies `token` and returns its claims. A certificate-bound token (RFC 8705 `cnf`) is
    /// refused here: use [`JwksVerifier::verify_presented`] with the connection's certificate.
    pub async fn verify(&self, token: &str) -> Result<AccessClaims, VerifyError> {
        self.verify_presented(token, None).await
    }

    /// Verifies `token` presented over a connection whose client certificate (DER) is `cert`:
    /// a certificate-bound token must name exactly that certificate's thumbprint.
    pub async fn verify_presented(
        &self,
        token: &str,
        cert: Option<&[u8]>,
    ) -> Result<AccessClaims, VerifyError> {
        let claims = self.verify_signed(token).await?;
        jwt::check_confirmation(&claims, cert)?;
        Ok(claims)
    }

    async fn verify_signed(&self, token: &str) -> Result<AccessClaims, VerifyError> {
        let kid = jsonwebtoken::decode_header(token)
            .map_err(|_| TokenError::Malformed)?
            .kid
            .ok_or(TokenError::UnknownKey)?;
        let now = self.inner.clock.now();
        let (key, stale, loaded, tried_at) = {
            let k = self.read();
            (
                k.by_kid.get(&kid).cloned(),
                k.fetched_at
                    .is_none_or(|t| now >= t + self.inner.cfg.max_age),
                k.fetched_at.is_some(),
                k.tried_at,
            )
        };
        let key = if key.is_none() || stale {
            // A fetch (for an old set or an unknown kid) at most once per interval, whatever
            // the tokens presented say.
            if tried_at.is_none_or(|t| now >= t + self.inner.cfg.refetch_interval) {
                self.refresh(now).await?;
            } else if !loaded {
                return Err(VerifyError::Unavailable(Error::Protocol(
                    "the JWKS could not be loaded yet; retrying later".into(),
                )));
            }
            self.read().by_kid.get(&kid).cloned()
        } else {
            key
        };
        let cfg = &self.inner.cfg;
        let expect = Expect {
            issuer: &cfg.issuer,
            audience: Some(&cfg.audience),
            now,
            leeway: cfg.leeway,
        };
        Ok(jwt::verify(token, |_| key.as_deref(), expect)?)
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Keys> {
        self.inner.keys.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Fetches the JWKS, one fetch at a time; keeps the old keys when it fails (unless there
    /// are none, then the failure is the answer).
    async fn refresh(&self, now: UnixTime) -> Result<(), VerifyError> {
        let _guard = self.inner.fetching.lock().await;
        // Another task may have fetched while this one waited.
        if self.read().tried_at.is_some_and(|t| t >= now) {
            return Ok(());
        }
        self.inner
            .keys
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .tried_at = Some(now);
        self.inner
            .fetches
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let url = &self.inner.cfg.jwks_url;
        let fetched = self
            .inner
            .transport
            .json(self.inner.transport.http().get(url))
            .await
            .and_then(|v| {
                serde_json::from_value::<JwkSet>(v)
                    .map_err(|e| Error::Protocol(format!("JWKS: {e}")))
            });
        match fetched {
            Ok(set) => {
                let by_kid: HashMap<_, _> = set
                    .keys
                    .into_iter()
                    .take(MAX_KEYS)
                    .filter_map(|v| serde_json::from_value::<Jwk>(v).ok())
                    .filter(|j| j.use_ == "sig")
                    .filter_map(|j| {
                        let key = VerifyingKey::from_jwk(&j).ok()?;
                        Some((j.kid, Arc::new(key)))
                    })
                    .collect();
                let mut k = self.inner.keys.write().unwrap_or_else(|e| e.into_inner());
                k.by_kid = by_kid;
                k.fetched_at = Some(now);
                Ok(())
            }
            Err(e) if self.read().fetched_at.is_some() => {
                tracing::warn!(error = %e, "capstan: JWKS refresh failed; keeping the cached keys");
                Ok(())
            }
            Err(e) => Err(VerifyError::Unavailable(e)),
        }
    }

    /// How many times the JWKS has been fetched (or tried).
    pub fn jwks_fetches(&self) -> u64 {
        self.inner
            .fetches
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// When the JWKS was last fetched successfully (Unix seconds), for health checks.
    pub fn last_fetched(&self) -> Option<UnixTime> {
        self.read().fetched_at
    }
}
