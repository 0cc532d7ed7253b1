//! Calls to Capstan's `/v1` API with a bearer token, the wire types of `capstan-proto` in and
//! out.

use reqwest::{Method, RequestBuilder, Response, StatusCode};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

use crate::token::{AccessToken, TokenSource};
use crate::transport::{read_json, Transport};
use crate::Error;

/// The audience of Capstan's own API.
pub const API_AUDIENCE: &str = "capstan";

/// Where an [`ApiClient`]'s bearer token comes from.
#[derive(Clone, Debug)]
pub enum Credentials {
    /// No token (public endpoints only).
    None,
    /// A token obtained elsewhere (the CLI's saved login).
    Token(AccessToken),
    /// A token source, asked for audience `capstan`.
    Source(TokenSource),
}

impl std::fmt::Debug for TokenSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenSource")
            .field("client_id", &self.client_id())
            .finish_non_exhaustive()
    }
}

/// A client of the `/v1` API. Cheap to clone.
#[derive(Clone, Debug)]
pub struct ApiClient {
    base: String,
    transport: Transport,
    creds: Credentials,
}

impl ApiClient {
    /// A client of the Capstan at `base` (e.g. `http://127.0.0.1:8470`).
    pub fn new(base: &str, transport: Transport, creds: Credentials) -> ApiClient {
        ApiClient {
            base: base.trim_end_matches('/').to_owned(),
            transport,
            creds,
        }
    }

    /// The base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// The transport.
    pub fn transport(&self) -> &Transport {
        &self.transport
    }

    async fn bearer(&self) -> Result<Option<AccessToken>, Error> {
        Ok(match &self.creds {
            Credentials::None => None,
            Credentials::Token(t) => Some(t.clone()),
            Credentials::Source(s) => Some(s.token(Some(API_AUDIENCE)).await?),
        })
    }

    /// Sends `method path?query` with an optional JSON body; the JSON answer (`Null` when
    /// empty), or [`Error::Api`]. A 401 with a token source fetches a new token and tries once
    /// more.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<&Value>,
    ) -> Result<Value, Error> {
        let resp = self
            .request(method, path, |mut b| {
                if !query.is_empty() {
                    b = b.query(query);
                }
                if let Some(v) = body {
                    b = b.json(v);
                }
                b
            })
            .await?;
        read_json(resp).await
    }

    /// Sends `method path` with the bearer token, the request shaped by `build` (query,
    /// headers, body, a timeout of its own), and returns the response whatever its status: for
    /// what [`ApiClient::call`] does not cover (conditional writes, long polls, event streams).
    /// `build` runs once per attempt. A 401 with a token source fetches a new token and tries
    /// once more.
    pub async fn request(
        &self,
        method: Method,
        path: &str,
        build: impl Fn(RequestBuilder) -> RequestBuilder,
    ) -> Result<Response, Error> {
        self.request_with(self.transport.http(), method, path, build)
            .await
    }

    /// [`ApiClient::request`] for a long-lived stream: on a connection of its own
    /// ([`Transport::streams`]).
    pub async fn stream(
        &self,
        method: Method,
        path: &str,
        build: impl Fn(RequestBuilder) -> RequestBuilder,
    ) -> Result<Response, Error> {
        self.request_with(self.transport.streams()?, method, path, build)
            .await
    }

    async fn request_with(
        &self,
        http: &reqwest::Client,
        method: Method,
        path: &str,
        build: impl Fn(RequestBuilder) -> RequestBuilder,
    ) -> Result<Response, Error> {
        let url = format!("{}{}", self.base, path);
        let mut retried = false;
        loop {
            let bearer = self.bearer().await?;
            let mut b = http.request(method.clone(), &url);
            if let Some(t) = &bearer {
                b = b.bearer_auth(t.secret());
            }
            let resp = self.transport.send(build(b)).await?;
            match &self.creds {
                Credentials::Source(s) if resp.status() == StatusCode::UNAUTHORIZED && !retried => {
                    s.invalidate();
                    retried = true;
                }
                _ => return Ok(resp),
            }
        }
    }

    /// [`ApiClient::call`] with a typed body and answer.
    pub async fn send<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<T, Error> {
        let v = self.call(method, path, &[], body.as_ref()).await?;
        serde_json::from_value(v).map_err(|e| Error::Protocol(format!("{path}: {e}")))
    }
}

/// A wire type as a JSON body.
pub fn to_body(v: &impl Serialize) -> Result<Value, Error> {
    serde_json::to_value(v).map_err(|e| Error::Config(e.to_string()))
}

/// A path segment, percent-encoded (ids, names and CRNs go into paths as data).
pub fn segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~:@+=,".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
