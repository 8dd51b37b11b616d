//! Deciding on a peer's certificate: the chain checks, the identity in a mesh leaf
//! (refused when revoked), and the two server checks: secure naming for the tunnel (the
//! server's SPIFFE ID must be the one expected at the destination) and the expected names
//! of an external server for originated TLS. Host names play no part in the mesh.

use std::sync::Arc;

use rustls::{
    CommonState, DigitallySignedStruct, HandshakeKind, RootCertStore, SignatureScheme,
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    crypto::CryptoProvider,
    pki_types::{CertificateDer, ServerName, UnixTime},
};

use crate::{
    failure::{Failure, Result},
    identity::certs,
    svid::bundle::TrustBundle,
};
use hawser_model::SpiffeId;

/// The identity in a peer's leaf certificate, refused if revoked.
pub fn peer_identity(leaf: &CertificateDer<'_>, bundle: &TrustBundle) -> Result<SpiffeId> {
    let pem = pem::encode(&pem::Pem::new("CERTIFICATE", leaf.as_ref().to_vec()));
    let info = certs::info(&pem).map_err(|e| Failure::Peer(format!("{e:#}")))?;
    let [uri] = &info.uri_sans[..] else {
        return Err(Failure::Peer(format!(
            "the peer certificate carries {} URI SANs, not one SPIFFE ID",
            info.uri_sans.len()
        )));
    };
    bundle.check_revoked(Some(&info.serial), uri)?;
    uri.parse().map_err(Failure::Peer)
}

/// The identity of the peer of an established session (and its certificate), refused if
/// revoked. A resumed
/// session skipped the certificate checks of a full handshake (its ticket was issued under
/// the same SVID and bundle, see `configs`), so its peer certificate is also checked for
/// expiry and, on the client side, for being the `expected` identity.
pub fn session_peer<'s>(
    session: &'s CommonState,
    bundle: &TrustBundle,
    expected: Option<&SpiffeId>,
) -> Result<(SpiffeId, &'s CertificateDer<'static>)> {
    let leaf = session
        .peer_certificates()
        .and_then(|c| c.first())
        .ok_or_else(|| Failure::Peer("no peer certificate".into()))?;
    let id = peer_identity(leaf, bundle)?;
    if session.handshake_kind() != Some(HandshakeKind::Resumed) {
        return Ok((id, leaf));
    }
    let pem = pem::encode(&pem::Pem::new("CERTIFICATE", leaf.as_ref().to_vec()));
    let info = certs::info(&pem).map_err(|e| Failure::Peer(format!("{e:#}")))?;
    if info.not_after <= time::OffsetDateTime::now_utc() {
        return Err(Failure::Peer(format!(
            "the resumed peer certificate of {id} has expired"
        )));
    }
    match expected {
        Some(expected) if *expected != id => Err(Failure::Peer(format!(
            "resumed session with {id}, not {expected}"
        ))),
        _ => Ok((id, leaf)),
    }
}

/// Checks that `end_entity` chains to `roots` for server authentication; returns it
/// parsed for name checks.
pub fn verify_chain<'a>(
    end_entity: &'a CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    roots: &RootCertStore,
    provider: &CryptoProvider,
    now: UnixTime,
) -> Result<webpki::EndEntityCert<'a>, rustls::Error> {
    verify_for(
        webpki::KeyUsage::server_auth(),
        end_entity,
        intermediates,
        roots,
        provider,
        now,
    )
    .map_err(|e| rustls::Error::General(format!("server chain: {e}")))
}

/// Whether a client's chain goes to `roots` (for a verifier that trusts several sets).
pub fn chains_as_client(
    chain: &[CertificateDer<'_>],
    roots: &RootCertStore,
    provider: &CryptoProvider,
) -> bool {
    let Some((leaf, intermediates)) = chain.split_first() else {
        return false;
    };
    let usage = webpki::KeyUsage::client_auth();
    verify_for(usage, leaf, intermediates, roots, provider, UnixTime::now()).is_ok()
}

fn verify_for<'a>(
    usage: webpki::KeyUsage,
    end_entity: &'a CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    roots: &RootCertStore,
    provider: &CryptoProvider,
    now: UnixTime,
) -> Result<webpki::EndEntityCert<'a>, String> {
    let cert = webpki::EndEntityCert::try_from(end_entity).map_err(|e| e.to_string())?;
    cert.verify_for_usage(
        provider.signature_verification_algorithms.all,
        &roots.roots,
        intermediates,
        now,
        usage,
        None,
        None,
    )
    .map_err(|e| e.to_string())?;
    Ok(cert)
}

/// What one kind of server check decides; `Verifier` does the rest (signatures) the same
/// way for every kind.
pub trait ServerCheck: std::fmt::Debug + Send + Sync {
    fn check(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<(), rustls::Error>;
}

/// A server certificate verifier: `check` decides on the chain, the provider's algorithms
/// verify the handshake signatures.
#[derive(Debug)]
pub struct Verifier<C> {
    pub check: C,
    pub provider: Arc<CryptoProvider>,
}

impl<C: ServerCheck> ServerCertVerifier for Verifier<C> {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.check.check(end_entity, intermediates, now)?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algorithms = &self.provider.signature_verification_algorithms;
        rustls::crypto::verify_tls12_signature(message, cert, dss, algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algorithms = &self.provider.signature_verification_algorithms;
        rustls::crypto::verify_tls13_signature(message, cert, dss, algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Chain validation against the bundle, then the server's SPIFFE ID against the one the
/// destination must have. Host names play no part.
#[derive(Debug)]
pub struct SecureNaming {
    pub roots: Arc<RootCertStore>,
    pub bundle: TrustBundle,
    pub expected: SpiffeId,
    pub provider: Arc<CryptoProvider>,
}

impl ServerCheck for SecureNaming {
    fn check(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<(), rustls::Error> {
        verify_chain(end_entity, intermediates, &self.roots, &self.provider, now)?;
        let id = peer_identity(end_entity, &self.bundle)
            .map_err(|e| rustls::Error::General(e.to_string()))?;
        if id != self.expected {
            return Err(rustls::Error::General(format!(
                "server identity {id} is not {}",
                self.expected
            )));
        }
        Ok(())
    }
}

/// The server's chain must reach `roots`, and its certificate must carry one of `names`
/// (DNS names or IPs checked as TLS clients do; `spiffe://` URIs against its URI SANs).
#[derive(Debug)]
pub struct ExpectedServer {
    pub roots: Arc<RootCertStore>,
    pub names: Vec<String>,
    pub provider: Arc<CryptoProvider>,
}

impl ExpectedServer {
    fn carries(
        &self,
        cert: &webpki::EndEntityCert<'_>,
        der: &CertificateDer<'_>,
        name: &str,
    ) -> bool {
        if name.starts_with("spiffe://") {
            let pem = pem::encode(&pem::Pem::new("CERTIFICATE", der.as_ref().to_vec()));
            return certs::info(&pem).is_ok_and(|info| info.uri_sans.iter().any(|u| u == name));
        }
        ServerName::try_from(name).is_ok_and(|n| cert.verify_is_valid_for_subject_name(&n).is_ok())
    }
}

impl ServerCheck for ExpectedServer {
    fn check(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<(), rustls::Error> {
        let cert = verify_chain(end_entity, intermediates, &self.roots, &self.provider, now)?;
        if self
            .names
            .iter()
            .any(|n| self.carries(&cert, end_entity, n))
        {
            return Ok(());
        }
        Err(rustls::Error::General(format!(
            "the server certificate is for none of {:?}",
            self.names
        )))
    }
}
