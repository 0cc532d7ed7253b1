//! X.509-SVIDs for mTLS between services: [`SvidSource`] obtains the service's SVID from
//! Capstan (the private key is made here and never leaves the process), renews it at half-life
//! with jitter, keeps the trust bundle current, and gives rustls configurations that present
//! the current SVID and verify the peer's SPIFFE ID against the bundle ([`PeerPolicy`]).
//!
//! rustls alone checks chains, validity and key usage, not SPIFFE IDs, and its server-name
//! check needs a DNS name that URI-only SVIDs lack: the verifiers here check the chain with
//! rustls' webpki verification and then require exactly one `spiffe://` URI SAN in the
//! bundle's trust domain that the policy allows. Renewed SVIDs and bundles are picked up by the
//! next handshake without a restart.

use std::collections::HashSet;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use reqwest::Method;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::ResolvesClientCert;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ParsedCertificate, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme};
use serde_json::json;

use crate::api::ApiClient;
use crate::{Clock, Error, SystemClock};

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(PoisonError::into_inner)
}

fn write<T>(l: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(PoisonError::into_inner)
}

/// Which peers a configuration accepts, beyond a valid chain to the bundle: their SPIFFE ID
/// must be in the bundle's trust domain and allowed here.
#[derive(Clone)]
pub struct PeerPolicy(Allow);

#[derive(Clone)]
enum Allow {
    Any,
    Ids(Arc<HashSet<String>>),
    Predicate(Arc<dyn Fn(&str) -> bool + Send + Sync>),
}

impl PeerPolicy {
    /// Any SPIFFE ID of the trust domain.
    pub fn any() -> PeerPolicy {
        PeerPolicy(Allow::Any)
    }

    /// Exactly these SPIFFE IDs.
    pub fn ids<I: IntoIterator<Item = S>, S: Into<String>>(ids: I) -> PeerPolicy {
        PeerPolicy(Allow::Ids(Arc::new(
            ids.into_iter().map(Into::into).collect(),
        )))
    }

    /// IDs for which `f` is true.
    pub fn predicate(f: impl Fn(&str) -> bool + Send + Sync + 'static) -> PeerPolicy {
        PeerPolicy(Allow::Predicate(Arc::new(f)))
    }

    fn allows(&self, id: &str) -> bool {
        match &self.0 {
            Allow::Any => true,
            Allow::Ids(ids) => ids.contains(id),
            Allow::Predicate(f) => f(id),
        }
    }
}

impl std::fmt::Debug for PeerPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            Allow::Any => f.write_str("PeerPolicy::any"),
            Allow::Ids(ids) => write!(f, "PeerPolicy::ids({ids:?})"),
            Allow::Predicate(_) => f.write_str("PeerPolicy::predicate"),
        }
    }
}

/// The SPIFFE ID of a certificate: its one URI SAN, when that is a `spiffe://` URI (none when
/// it has no URI SAN or several).
pub fn spiffe_id_of(der: &[u8]) -> Option<String> {
    use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    let san = cert.subject_alternative_name().ok()??;
    let uris: Vec<&str> = san
        .value
        .general_names
        .iter()
        .filter_map(|g| match g {
            GeneralName::URI(u) => Some(*u),
            _ => None,
        })
        .collect();
    match uris.as_slice() {
        [u] if u.starts_with("spiffe://") => Some((*u).to_owned()),
        _ => None,
    }
}

fn trust_domain_of(id: &str) -> Option<&str> {
    id.strip_prefix("spiffe://")?.split('/').next()
}

/// The current SVID and bundle, shared by the source and every configuration it made.
struct Current {
    trust_domain: String,
    svid: RwLock<Option<Svid>>,
    roots: RwLock<Roots>,
}

#[derive(Clone)]
struct Roots {
    version: u64,
    ders: Arc<Vec<CertificateDer<'static>>>,
    store: Arc<RootCertStore>,
}

/// An X.509-SVID with its key.
#[derive(Clone)]
pub struct Svid {
    /// Its SPIFFE ID.
    pub spiffe_id: String,
    /// Expiry (Unix seconds).
    pub expires_at: i64,
    /// When it is renewed (half-life, less jitter).
    pub renew_at: i64,
    /// The serial Capstan gave it (hex).
    pub serial: String,
    /// The CA generation that signed it.
    pub ca_id: String,
    certified: Arc<CertifiedKey>,
}

impl std::fmt::Debug for Svid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Svid")
            .field("spiffe_id", &self.spiffe_id)
            .field("expires_at", &self.expires_at)
            .field("serial", &self.serial)
            .finish_non_exhaustive()
    }
}

impl Svid {
    /// The certificate chain, leaf first.
    pub fn chain(&self) -> &[CertificateDer<'static>] {
        &self.certified.cert
    }
}

fn certs_from_pem(pem: &str) -> Result<Vec<CertificateDer<'static>>, Error> {
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Error::Protocol(format!("certificates: {e}")))
}

/// Obtains and renews the service's X.509-SVID and the trust bundle.
pub struct SvidSource {
    current: Arc<Current>,
    api: Option<ApiClient>,
    clock: Arc<dyn Clock>,
    renewals: std::sync::atomic::AtomicU64,
    /// When the bundle is polled next (Unix seconds).
    next_poll: std::sync::atomic::AtomicI64,
    task: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl std::fmt::Debug for SvidSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SvidSource")
            .field("svid", &*read(&self.current.svid))
            .finish_non_exhaustive()
    }
}

impl Drop for SvidSource {
    fn drop(&mut self) {
        if let Some(t) = self
            .task
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        {
            t.abort();
        }
    }
}

impl SvidSource {
    /// Gets an SVID from Capstan as `api`'s principal (the action `identity:IssueSvid` on its
    /// own CRN, e.g. the built-in `IdentityWorkload` policy), then renews it in the background
    /// at half-life with jitter, until the source is dropped.
    pub async fn start(api: ApiClient) -> Result<Arc<SvidSource>, Error> {
        SvidSource::start_with_clock(api, Arc::new(SystemClock)).await
    }

    /// [`SvidSource::start`] with an injected clock (tests).
    pub async fn start_with_clock(
        api: ApiClient,
        clock: Arc<dyn Clock>,
    ) -> Result<Arc<SvidSource>, Error> {
        let source = SvidSource::fetch_first(api, clock).await?;
        let weak = Arc::downgrade(&source);
        let task = tokio::spawn(async move {
            let mut failures = 0u32;
            loop {
                let Some(s) = weak.upgrade() else { return };
                let now = s.clock.now();
                let renew_at = read(&s.current.svid).as_ref().map_or(0, |v| v.renew_at);
                let poll_at = s.next_poll.load(std::sync::atomic::Ordering::Relaxed);
                let mut wait = (renew_at.min(poll_at) - now).max(0) as u64;
                if failures > 0 {
                    wait = wait.min(1u64 << failures.min(5));
                }
                drop(s);
                tokio::time::sleep(Duration::from_secs(wait).max(Duration::from_millis(200))).await;
                let Some(s) = weak.upgrade() else { return };
                let now = s.clock.now();
                let mut result = Ok(());
                if now >= read(&s.current.svid).as_ref().map_or(0, |v| v.renew_at) {
                    result = s.renew().await;
                }
                if result.is_ok() && now >= s.next_poll.load(std::sync::atomic::Ordering::Relaxed) {
                    result = s.refresh_bundle().await;
                }
                match result {
                    Ok(()) => failures = 0,
                    Err(e) => {
                        failures += 1;
                        tracing::warn!(error = %e, "capstan: SVID or bundle refresh failed; retrying");
                    }
                }
            }
        });
        *source.task.lock().unwrap_or_else(PoisonError::into_inner) = Some(task);
        Ok(source)
    }

    async fn fetch_first(api: ApiClient, clock: Arc<dyn Clock>) -> Result<Arc<SvidSource>, Error> {
        let (svid, bundle) = request(&api, clock.as_ref()).await?;
        let td = trust_domain_of(&svid.spiffe_id)
            .ok_or_else(|| Error::Protocol("the SVID's SPIFFE ID has no trust domain".into()))?
            .to_owned();
        Ok(Arc::new(SvidSource {
            current: Arc::new(Current {
                trust_domain: td,
                svid: RwLock::new(Some(svid)),
                roots: RwLock::new(roots(bundle, 1)?),
            }),
            api: Some(api),
            clock,
            renewals: std::sync::atomic::AtomicU64::new(0),
            next_poll: std::sync::atomic::AtomicI64::new(0),
            task: std::sync::Mutex::new(None),
        }))
    }

    /// A fixed SVID and bundle (PEM), e.g. files a sidecar keeps current; never renewed.
    pub fn from_pem(
        chain_pem: &str,
        key_pem: &str,
        bundle_pem: &str,
    ) -> Result<Arc<SvidSource>, Error> {
        let chain = certs_from_pem(chain_pem)?;
        let leaf = chain
            .first()
            .ok_or_else(|| Error::Config("the SVID chain holds no certificate".into()))?;
        let spiffe_id = spiffe_id_of(leaf)
            .ok_or_else(|| Error::Config("the certificate is not an X.509-SVID".into()))?;
        let td = trust_domain_of(&spiffe_id).unwrap_or_default().to_owned();
        let expires_at = not_after(leaf).unwrap_or(0);
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
            .map_err(|e| Error::Config(format!("private key: {e}")))?;
        let certified = CertifiedKey::from_der(chain, key, &provider())
            .map_err(|e| Error::Config(format!("the key does not fit the certificate: {e}")))?;
        Ok(Arc::new(SvidSource {
            current: Arc::new(Current {
                trust_domain: td,
                svid: RwLock::new(Some(Svid {
                    spiffe_id,
                    expires_at,
                    renew_at: i64::MAX,
                    serial: String::new(),
                    ca_id: String::new(),
                    certified: Arc::new(certified),
                })),
                roots: RwLock::new(roots(certs_from_pem(bundle_pem)?, 1)?),
            }),
            api: None,
            clock: Arc::new(SystemClock),
            renewals: std::sync::atomic::AtomicU64::new(0),
            next_poll: std::sync::atomic::AtomicI64::new(0),
            task: std::sync::Mutex::new(None),
        }))
    }

    /// Renews now: a new key, a new SVID and the current bundle. Handshakes after this one use
    /// them.
    pub async fn renew(&self) -> Result<(), Error> {
        let api = self
            .api
            .as_ref()
            .ok_or_else(|| Error::Config("this SVID source has no Capstan to renew from".into()))?;
        let (svid, bundle) = request(api, self.clock.as_ref()).await?;
        self.set_bundle(bundle)?;
        *write(&self.current.svid) = Some(svid);
        self.renewals
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    /// Polls the trust bundle (`GET /v1/identity/bundle`, done in the background every
    /// `spiffe_refresh_hint`): new roots are trusted from the next handshake, and an SVID whose
    /// CA was tainted is re-issued at once.
    pub async fn refresh_bundle(&self) -> Result<(), Error> {
        let api = self.api.as_ref().ok_or_else(|| {
            Error::Config("this SVID source has no Capstan to refresh from".into())
        })?;
        let url = format!("{}/v1/identity/bundle", api.base());
        let v = api
            .transport()
            .json(api.transport().http().get(&url))
            .await?;
        let hint = v["spiffe_refresh_hint"]
            .as_i64()
            .unwrap_or(300)
            .clamp(5, 3600);
        let mut roots = Vec::new();
        for k in v["keys"].as_array().into_iter().flatten() {
            if k["use"] != "x509-svid" {
                continue;
            }
            use base64::Engine;
            let der = k["x5c"][0]
                .as_str()
                .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
                .ok_or_else(|| Error::Protocol("bundle: an x509-svid key without x5c".into()))?;
            roots.push(CertificateDer::from(der));
        }
        if roots.is_empty() {
            return Err(Error::Protocol("bundle: no x509-svid roots".into()));
        }
        self.set_bundle(roots)?;
        self.next_poll.store(
            self.clock.now() + hint,
            std::sync::atomic::Ordering::Relaxed,
        );
        let tainted = v["capstan_tainted_ca_ids"].as_array().is_some_and(|ids| {
            let mine = read(&self.current.svid).as_ref().map(|s| s.ca_id.clone());
            ids.iter()
                .any(|i| Some(i.as_str().unwrap_or_default().to_owned()) == mine)
        });
        if tainted {
            tracing::info!("capstan: the CA of this SVID was tainted; re-issuing");
            self.renew().await?;
        }
        Ok(())
    }

    /// Replaces the trust bundle (roots, DER).
    pub fn set_bundle(&self, bundle: Vec<CertificateDer<'static>>) -> Result<(), Error> {
        let mut cur = write(&self.current.roots);
        if *cur.ders == bundle {
            return Ok(());
        }
        *cur = roots(bundle, cur.version + 1)?;
        Ok(())
    }

    /// How many times the SVID was renewed.
    pub fn renewals(&self) -> u64 {
        self.renewals.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The current SVID.
    pub fn svid(&self) -> Option<Svid> {
        read(&self.current.svid).clone()
    }

    /// The trust domain.
    pub fn trust_domain(&self) -> &str {
        &self.current.trust_domain
    }

    /// The current bundle's roots.
    pub fn bundle(&self) -> Vec<CertificateDer<'static>> {
        read(&self.current.roots).ders.to_vec()
    }

    /// A server configuration: presents the current SVID and requires client SVIDs that
    /// `peers` allows.
    pub fn server_config(&self, peers: PeerPolicy) -> Result<rustls::ServerConfig, Error> {
        let verifier = Arc::new(SpiffeClientVerifier {
            current: self.current.clone(),
            peers,
            built: RwLock::new(None),
            provider: provider(),
        });
        let config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::Config(format!("tls: {e}")))?
            .with_client_cert_verifier(verifier)
            .with_cert_resolver(Arc::new(CurrentCert(self.current.clone())));
        Ok(config)
    }

    /// A client configuration: presents the current SVID and accepts servers whose SVID
    /// `peers` allows (the server name is not checked: the SPIFFE ID is the identity).
    pub fn client_config(&self, peers: PeerPolicy) -> Result<rustls::ClientConfig, Error> {
        let config = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::Config(format!("tls: {e}")))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(SpiffeServerVerifier {
                current: self.current.clone(),
                peers,
                provider: provider(),
            }))
            .with_client_cert_resolver(Arc::new(CurrentCert(self.current.clone())));
        Ok(config)
    }
}

/// A fresh P-256 key and a CSR for it (PEM) with nothing in it but the key: Capstan sets
/// every field of the SVID. The key never leaves the caller.
pub fn new_key_and_csr() -> Result<(rcgen::KeyPair, String), Error> {
    let key =
        rcgen::KeyPair::generate().map_err(|e| Error::Config(format!("key generation: {e}")))?;
    let csr = rcgen::CertificateParams::default()
        .serialize_request(&key)
        .and_then(|c| c.pem())
        .map_err(|e| Error::Config(format!("CSR: {e}")))?;
    Ok((key, csr))
}

/// Makes a key and a CSR here and asks Capstan for an SVID; the new SVID and bundle.
async fn request(
    api: &ApiClient,
    clock: &dyn Clock,
) -> Result<(Svid, Vec<CertificateDer<'static>>), Error> {
    let (key, csr) = new_key_and_csr()?;
    let v = api
        .call(
            Method::POST,
            "/v1/identity/svids",
            &[],
            Some(&json!({ "csr": csr })),
        )
        .await?;
    let r: capstan_proto::identity::SvidResponse = serde_json::from_value(v)
        .map_err(|e| Error::Protocol(format!("/v1/identity/svids: {e}")))?;
    let chain = certs_from_pem(&r.svid_chain_pem)?;
    let bundle = certs_from_pem(&r.bundle_pem)?;
    let certified = CertifiedKey::from_der(
        chain,
        PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        &provider(),
    )
    .map_err(|e| Error::Protocol(format!("the issued SVID does not fit its key: {e}")))?;
    let now = clock.now();
    let half = (r.expires_at - now).max(0) / 2;
    // Jitter: up to a tenth of the lifetime earlier, so replicas do not renew in step.
    let jitter = jitter_below((r.expires_at - now).max(0) / 10);
    Ok((
        Svid {
            spiffe_id: r.spiffe_id,
            expires_at: r.expires_at,
            renew_at: now + half - jitter,
            serial: r.serial,
            ca_id: r.ca_id,
            certified: Arc::new(certified),
        },
        bundle,
    ))
}

fn jitter_below(max: i64) -> i64 {
    if max <= 0 {
        return 0;
    }
    // RandomState is seeded from the OS's randomness: enough to spread renewals.
    use std::hash::{BuildHasher, Hasher};
    let h = std::collections::hash_map::RandomState::new().build_hasher();
    (h.finish() % (max as u64)) as i64
}

fn not_after(der: &[u8]) -> Option<i64> {
    use x509_parser::prelude::{FromDer, X509Certificate};
    let (_, c) = X509Certificate::from_der(der).ok()?;
    Some(c.validity().not_after.timestamp())
}

fn roots(ders: Vec<CertificateDer<'static>>, version: u64) -> Result<Roots, Error> {
    let mut store = RootCertStore::empty();
    for d in &ders {
        store
            .add(d.clone())
            .map_err(|e| Error::Protocol(format!("bundle root: {e}")))?;
    }
    Ok(Roots {
        version,
        ders: Arc::new(ders),
        store: Arc::new(store),
    })
}

/// Presents the current SVID, on either side of a connection.
#[derive(Clone)]
struct CurrentCert(Arc<Current>);

impl std::fmt::Debug for CurrentCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CurrentCert")
    }
}

impl CurrentCert {
    fn get(&self) -> Option<Arc<CertifiedKey>> {
        read(&self.0.svid).as_ref().map(|s| s.certified.clone())
    }
}

impl ResolvesServerCert for CurrentCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.get()
    }
}

impl ResolvesClientCert for CurrentCert {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        self.get()
    }

    fn has_certs(&self) -> bool {
        self.get().is_some()
    }
}

/// The SPIFFE ID check after the chain verified: exactly one `spiffe://` URI SAN, in the
/// bundle's trust domain, allowed by the policy.
fn check_peer(current: &Current, peers: &PeerPolicy, leaf: &[u8]) -> Result<(), rustls::Error> {
    let id = spiffe_id_of(leaf).ok_or_else(|| {
        rustls::Error::General(
            "the peer certificate is not an X.509-SVID (one spiffe:// URI SAN)".into(),
        )
    })?;
    if trust_domain_of(&id) != Some(current.trust_domain.as_str()) {
        return Err(rustls::Error::General(format!(
            "the peer's SPIFFE ID {id} is not in trust domain {}",
            current.trust_domain
        )));
    }
    if !peers.allows(&id) {
        return Err(rustls::Error::General(format!(
            "the peer's SPIFFE ID {id} is not allowed"
        )));
    }
    Ok(())
}

/// Verifies a server's SVID (client side).
struct SpiffeServerVerifier {
    current: Arc<Current>,
    peers: PeerPolicy,
    provider: Arc<CryptoProvider>,
}

impl std::fmt::Debug for SpiffeServerVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SpiffeServerVerifier")
            .field("peers", &self.peers)
            .finish_non_exhaustive()
    }
}

impl ServerCertVerifier for SpiffeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let roots = read(&self.current.roots).store.clone();
        let cert = ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &cert,
            &roots,
            intermediates,
            now,
            self.provider.signature_verification_algorithms.all,
        )?;
        check_peer(&self.current, &self.peers, end_entity)?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Verifies a client's SVID (server side); client certificates are required.
struct SpiffeClientVerifier {
    current: Arc<Current>,
    peers: PeerPolicy,
    /// The webpki verifier for one version of the roots.
    built: RwLock<Option<(u64, Arc<dyn ClientCertVerifier>)>>,
    provider: Arc<CryptoProvider>,
}

impl std::fmt::Debug for SpiffeClientVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SpiffeClientVerifier")
            .field("peers", &self.peers)
            .finish_non_exhaustive()
    }
}

impl SpiffeClientVerifier {
    fn inner(&self) -> Result<Arc<dyn ClientCertVerifier>, rustls::Error> {
        let roots = read(&self.current.roots).clone();
        if let Some((v, inner)) = read(&self.built).as_ref() {
            if *v == roots.version {
                return Ok(inner.clone());
            }
        }
        let inner = WebPkiClientVerifier::builder_with_provider(roots.store, self.provider.clone())
            .build()
            .map_err(|e| rustls::Error::General(format!("client verifier: {e}")))?;
        *write(&self.built) = Some((roots.version, inner.clone()));
        Ok(inner)
    }
}

impl ClientCertVerifier for SpiffeClientVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.inner()?
            .verify_client_cert(end_entity, intermediates, now)?;
        check_peer(&self.current, &self.peers, end_entity)?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
