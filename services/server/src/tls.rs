//! HTTPS for `capstan serve --tls` / `dev --tls`: the serving certificate (issued by Capstan's
//! own CA to `spiffe://<td>/capstan/server` plus `--tls-dns-name`s and renewed at half-life,
//! or read from `--tls-cert`/`--tls-key` and reloaded when the files change, as cert-manager
//! rotates them), and client certificates requested but not required: an X.509-SVID that
//! chains to one of Capstan's CAs authenticates its principal on `/v1` without a bearer token.
//!
//! Both the certificate and the trust anchors sit behind atomic swaps, so renewals and CA
//! rotations take effect on the next handshake without a restart.

use std::path::PathBuf;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use capstan_core::authz::WorkloadIdentity;
use capstan_core::clock::Clock;
use capstan_http::PeerCertificate;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme};

use crate::error::ServerError;

/// Where the serving certificate comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsMode {
    /// Issued by Capstan's CA to itself, with these DNS names besides its SPIFFE ID.
    SelfIssued {
        /// DNS SANs (`--tls-dns-name`).
        dns_names: Vec<String>,
    },
    /// PEM files, reloaded when they change.
    Files {
        /// Certificate chain, leaf first.
        cert: PathBuf,
        /// Private key (PKCS#8, PKCS#1 or SEC1).
        key: PathBuf,
    },
}

/// How often the TLS layer looks for a renewal, a changed file or a changed CA set.
pub const REFRESH_EVERY: Duration = Duration::from_secs(10);

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(PoisonError::into_inner)
}

fn write<T>(l: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(PoisonError::into_inner)
}

/// The serving certificate, swapped atomically.
#[derive(Debug, Default)]
struct CertSlot(RwLock<Option<Arc<CertifiedKey>>>);

impl ResolvesServerCert for CertSlot {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        read(&self.0).clone()
    }
}

/// Client certificates: optional; when given, they must chain to one of Capstan's CAs (not
/// merely to an upstream root that may sign other things) and be valid for clientAuth.
#[derive(Debug)]
struct ClientVerifier {
    inner: RwLock<Option<Arc<dyn ClientCertVerifier>>>,
    provider: Arc<CryptoProvider>,
}

impl ClientVerifier {
    fn current(&self) -> Option<Arc<dyn ClientCertVerifier>> {
        read(&self.inner).clone()
    }
}

impl ClientCertVerifier for ClientVerifier {
    fn offer_client_auth(&self) -> bool {
        // Without the identity service there is nothing to check a client certificate against.
        self.current().is_some()
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        match self.current() {
            Some(v) => v.verify_client_cert(end_entity, intermediates, now),
            None => Err(rustls::Error::General(
                "client certificates are not accepted: this server has no identity service".into(),
            )),
        }
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

#[derive(Debug, Default)]
struct Renewal {
    /// When the self-issued certificate should be renewed (half its life).
    renew_at: i64,
    /// The contents of the files last loaded (compared, not their mtimes: a Kubernetes
    /// Secret update swaps a symlink, and a rewrite can keep the size and the second).
    files: Option<(Vec<u8>, Vec<u8>)>,
    /// The anchors the client verifier was built from.
    anchors: Vec<Vec<u8>>,
}

/// The TLS layer of one server.
pub struct Tls {
    mode: TlsMode,
    identity: Option<Arc<dyn WorkloadIdentity>>,
    clock: Arc<dyn Clock>,
    cert: Arc<CertSlot>,
    verifier: Arc<ClientVerifier>,
    state: tokio::sync::Mutex<Renewal>,
    /// The rustls configuration handshakes use.
    pub config: Arc<rustls::ServerConfig>,
}

impl Tls {
    /// Builds the layer and gets its first certificate (fails when none can be had).
    pub async fn new(
        mode: TlsMode,
        identity: Option<Arc<dyn WorkloadIdentity>>,
        clock: Arc<dyn Clock>,
    ) -> Result<Arc<Tls>, ServerError> {
        if matches!(mode, TlsMode::SelfIssued { .. }) && identity.is_none() {
            return Err(ServerError::Config(
                "--tls without --tls-cert/--tls-key needs the identity service (its CA issues the server's certificate): add identity to --services".into(),
            ));
        }
        let cert = Arc::new(CertSlot::default());
        let verifier = Arc::new(ClientVerifier {
            inner: RwLock::new(None),
            provider: provider(),
        });
        let mut config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| ServerError::Config(format!("tls: {e}")))?
            .with_client_cert_verifier(verifier.clone())
            .with_cert_resolver(cert.clone());
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        // No resumption: a resumed session would carry a client certificate forward without
        // checking it again (expired, or from a CA tainted since).
        config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        config.send_tls13_tickets = 0;
        let tls = Arc::new(Tls {
            mode,
            identity,
            clock,
            cert,
            verifier,
            state: tokio::sync::Mutex::new(Renewal::default()),
            config: Arc::new(config),
        });
        tls.refresh().await?;
        Ok(tls)
    }

    /// The serial of the certificate served now (empty when none).
    pub fn serving_serial(&self) -> Vec<u8> {
        use x509_parser::prelude::{FromDer, X509Certificate};
        read(&self.cert.0)
            .as_ref()
            .and_then(|c| c.cert.first().cloned())
            .and_then(|der| {
                X509Certificate::from_der(&der)
                    .ok()
                    .map(|(_, c)| c.raw_serial().to_vec())
            })
            .unwrap_or_default()
    }

    /// The acceptor handshakes go through.
    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(self.config.clone())
    }

    /// Renews or reloads the certificate when due and rebuilds the client verifier when the CA
    /// set changed. A failure keeps what is served (and is reported).
    pub async fn refresh(&self) -> Result<(), ServerError> {
        let mut st = self.state.lock().await;
        let mut result = Ok(());
        if let Some(identity) = &self.identity {
            match identity.issuing_cas().await {
                Ok(anchors) if anchors != st.anchors && !anchors.is_empty() => {
                    match client_verifier(&anchors) {
                        Ok(v) => {
                            *write(&self.verifier.inner) = Some(v);
                            st.anchors = anchors;
                        }
                        Err(e) => result = Err(e),
                    }
                }
                Ok(_) => {}
                Err(e) => result = Err(ServerError::Config(format!("tls: trust anchors: {e}"))),
            }
        }
        let cert = match &self.mode {
            TlsMode::SelfIssued { dns_names } => {
                let now = self.clock.now();
                if read(&self.cert.0).is_some() && now < st.renew_at {
                    Ok(())
                } else {
                    self.issue_own(dns_names, &mut st).await
                }
            }
            TlsMode::Files { cert, key } => self.reload_files(cert, key, &mut st),
        };
        result.and(cert)
    }

    async fn issue_own(&self, dns_names: &[String], st: &mut Renewal) -> Result<(), ServerError> {
        let Some(identity) = &self.identity else {
            return Ok(());
        };
        let key = rcgen::KeyPair::generate()
            .map_err(|e| ServerError::Config(format!("tls: key generation: {e}")))?;
        let csr = rcgen::CertificateParams::default()
            .serialize_request(&key)
            .and_then(|c| c.pem())
            .map_err(|e| ServerError::Config(format!("tls: CSR: {e}")))?;
        let now = self.clock.now();
        let (chain, not_after) = identity
            .issue_server_certificate(&csr, dns_names)
            .await
            .map_err(|e| ServerError::Config(format!("tls: server certificate: {e}")))?;
        let certified = certified_key(
            chain.into_iter().map(CertificateDer::from).collect(),
            PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )?;
        *write(&self.cert.0) = Some(Arc::new(certified));
        st.renew_at = now + (not_after - now) / 2;
        Ok(())
    }

    fn reload_files(
        &self,
        cert: &PathBuf,
        key: &PathBuf,
        st: &mut Renewal,
    ) -> Result<(), ServerError> {
        let cert_pem = std::fs::read(cert)
            .map_err(|e| ServerError::Config(format!("tls: {}: {e}", cert.display())))?;
        let key_pem = std::fs::read(key)
            .map_err(|e| ServerError::Config(format!("tls: {}: {e}", key.display())))?;
        if st.files.as_ref() == Some(&(cert_pem.clone(), key_pem.clone()))
            && read(&self.cert.0).is_some()
        {
            return Ok(());
        }
        let chain = CertificateDer::pem_slice_iter(&cert_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| ServerError::Config(format!("tls: {}: {e}", cert.display())))?;
        if chain.is_empty() {
            return Err(ServerError::Config(format!(
                "tls: {} holds no CERTIFICATE",
                cert.display()
            )));
        }
        let key_der = PrivateKeyDer::from_pem_slice(&key_pem)
            .map_err(|e| ServerError::Config(format!("tls: {}: {e}", key.display())))?;
        let certified = certified_key(chain, key_der)?;
        *write(&self.cert.0) = Some(Arc::new(certified));
        st.files = Some((cert_pem, key_pem));
        tracing::info!(cert = %cert.display(), "loaded the TLS certificate");
        Ok(())
    }

    /// Refreshes every [`REFRESH_EVERY`] until aborted.
    pub fn spawn_refresh(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let tls = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(REFRESH_EVERY);
            tick.tick().await;
            loop {
                tick.tick().await;
                if let Err(e) = tls.refresh().await {
                    tracing::warn!(error = %e, "TLS refresh failed; serving the current certificate");
                }
            }
        })
    }
}

fn certified_key(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<CertifiedKey, ServerError> {
    let certified = CertifiedKey::from_der(chain, key, &provider()).map_err(|e| {
        ServerError::Config(format!("tls: the key does not fit the certificate: {e}"))
    })?;
    Ok(certified)
}

fn client_verifier(anchors: &[Vec<u8>]) -> Result<Arc<dyn ClientCertVerifier>, ServerError> {
    let mut roots = RootCertStore::empty();
    for a in anchors {
        roots
            .add(CertificateDer::from(a.clone()))
            .map_err(|e| ServerError::Config(format!("tls: trust anchor: {e}")))?;
    }
    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
        .allow_unauthenticated()
        .build()
        .map_err(|e| ServerError::Config(format!("tls: client verifier: {e}")))
}

/// The client certificate of a finished handshake, for the request extensions: parsed once per
/// connection (SPIFFE ID, serial, RFC 8705 thumbprint), not per request.
pub fn peer_certificate(conn: &rustls::ServerConnection) -> Option<PeerCertificate> {
    use x509_parser::prelude::{FromDer, X509Certificate};
    let leaf = conn.peer_certificates()?.first()?;
    let der: Arc<[u8]> = Arc::from(leaf.as_ref());
    let (spiffe_id, serial) = match X509Certificate::from_der(&der) {
        Ok((_, c)) => (
            spiffe_id_of(&c),
            c.raw_serial().iter().map(|b| format!("{b:02x}")).collect(),
        ),
        Err(_) => (None, String::new()),
    };
    Some(PeerCertificate {
        spiffe_id,
        serial,
        x5t_s256: capstan_core::jwt::x5t_s256(&der),
        der,
    })
}

/// The one `spiffe://` URI SAN of a certificate (none when it has zero or several URIs).
fn spiffe_id_of(cert: &x509_parser::certificate::X509Certificate<'_>) -> Option<String> {
    use x509_parser::prelude::GeneralName;
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
