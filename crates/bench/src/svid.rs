//! `capstan-bench svid`: X.509-SVIDs per second, end to end over HTTP (distinct CSRs prepared
//! before timing, each issuance recorded in Postgres), and the raw in-process rate of the same
//! work (CSR parse and self-signature check, certificate build and signature) in the same run.

use std::sync::atomic::{AtomicUsize, Ordering};

use std::time::{Duration, Instant};

use capstan_core::rng::SystemRng;
use capstan_identity::pki::{self, CaKeyType, CaSigner, LeafSpec};
use capstan_identity::spiffe::{SpiffeId, TrustDomain};

/// `n` distinct CSRs (a fresh P-256 key each), PEM.
pub fn csrs(n: usize) -> Result<Vec<String>, String> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let per = n.div_ceil(threads);
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(move || -> Result<Vec<String>, String> {
                    (0..per)
                        .map(|_| {
                            let key = rcgen::KeyPair::generate().map_err(|e| e.to_string())?;
                            rcgen::CertificateParams::default()
                                .serialize_request(&key)
                                .and_then(|c| c.pem())
                                .map_err(|e| e.to_string())
                        })
                        .collect()
                })
            })
            .collect();
        let mut all = Vec::with_capacity(n);
        for h in handles {
            all.extend(h.join().map_err(|_| "CSR thread panicked")??);
        }
        all.truncate(n);
        Ok(all)
    })
}

/// The raw rate: every thread checks a CSR and signs a leaf, for `dur`; SVIDs/s and threads.
pub fn raw_rate(csrs: &[String], dur: Duration) -> Result<(f64, usize), String> {
    let td = TrustDomain::parse("capstan.local").map_err(|e| e.to_string())?;
    let now = capstan_core::clock::Clock::now(&capstan_core::clock::SystemClock);
    let rng = SystemRng::new();
    let serial = pki::random_serial(&rng).map_err(|e| e.to_string())?;
    let m = pki::generate_ca(&td, 1, CaKeyType::EcP256, now, 86_400 * 30, serial)
        .map_err(|e| e.to_string())?;
    let signer = CaSigner::load(&m.cert_der, &m.intermediates_der, &m.key_pkcs8, &m.root_der)
        .map_err(|e| e.to_string())?;
    let id =
        SpiffeId::parse("spiffe://capstan.local/t/default/svc_bench").map_err(|e| e.to_string())?;
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let next = AtomicUsize::new(0);
    let start = Instant::now();
    let done: Result<Vec<u64>, String> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                let (signer, id, next, rng) = (&signer, &id, &next, &rng);
                s.spawn(move || -> Result<u64, String> {
                    let mut n = 0u64;
                    while start.elapsed() < dur {
                        let i = next.fetch_add(1, Ordering::Relaxed) % csrs.len();
                        let csr = pki::check_csr(csrs[i].as_bytes()).map_err(|e| e.to_string())?;
                        let serial = pki::random_serial(rng).map_err(|e| e.to_string())?;
                        pki::sign_leaf(
                            signer,
                            &csr,
                            &LeafSpec {
                                spiffe_id: id,
                                dns_names: &[],
                                now,
                                not_after: now + 3600,
                                serial,
                            },
                        )
                        .map_err(|e| e.to_string())?;
                        n += 1;
                    }
                    Ok(n)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().map_err(|_| "signing thread panicked".to_owned())?)
            .collect()
    });
    let total: u64 = done?.iter().sum();
    Ok((total as f64 / start.elapsed().as_secs_f64(), threads))
}

/// The JSON bodies of `POST /v1/identity/svids`, one per CSR.
pub fn bodies(csrs: &[String]) -> Vec<String> {
    csrs.iter()
        .map(|c| serde_json::json!({ "csr": c }).to_string())
        .collect()
}
