//! TLS 1.3 configurations for the tunnel, from an SVID and the trust bundle.
//!
//! The client checks the server's chain against the bundle and then its SPIFFE ID against
//! the identity expected at the destination (secure naming). The server requires a client
//! chain to the bundle (client-auth EKU); the caller then reads the client's identity from
//! its certificate. Both ends refuse revoked serials and identities.

use std::sync::Arc;

use anyhow::{Context, Result, anyhow, bail};
use rustls::{
    ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme,
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    crypto::CryptoProvider,
    pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime, pem::PemObject},
    server::WebPkiClientVerifier,
};

use super::preamble::ALPN;
use crate::{
    identity::certs,
    svid::{Svid, TrustBundle},
};
use hawser_model::SpiffeId;

pub(crate) fn chain(svid: &Svid) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)> {
    let certs = svid
        .chain
        .iter()
        .map(|pem| Ok(CertificateDer::from(certs::der(pem)?)))
        .collect::<Result<Vec<_>>>()?;
    let key = PrivateKeyDer::from_pem_slice(svid.key_pem.as_bytes()).context("the SVID's key")?;
    Ok((certs, key))
}

pub(crate) fn roots(bundle: &TrustBundle) -> Result<RootCertStore> {
    let mut store = RootCertStore::empty();
    for pem in &bundle.roots {
        store
            .add(CertificateDer::from(certs::der(pem)?))
            .context("a root of the trust bundle")?;
    }
    if store.is_empty() {
        bail!("the trust bundle has no roots yet");
    }
    Ok(store)
}

/// The identity in a peer's leaf certificate, refused if revoked.
pub fn peer_identity(leaf: &CertificateDer<'_>, bundle: &TrustBundle) -> Result<SpiffeId> {
    let pem = pem::encode(&pem::Pem::new("CERTIFICATE", leaf.as_ref().to_vec()));
    let info = certs::info(&pem)?;
    let [uri] = &info.uri_sans[..] else {
        bail!(
            "the peer certificate carries {} URI SANs, not one SPIFFE ID",
            info.uri_sans.len()
        );
    };
    bundle.check_revoked(Some(&info.serial), uri)?;
    uri.parse().map_err(|e: String| anyhow!(e))
}

/// Client side: present `svid`, accept only a server that is `expected`.
pub fn client_config(
    svid: &Svid,
    bundle: &TrustBundle,
    expected: SpiffeId,
    provider: Arc<CryptoProvider>,
) -> Result<ClientConfig> {
    let (certs, key) = chain(svid)?;
    let verifier = Arc::new(Verifier {
        check: SecureNaming {
            roots: Arc::new(roots(bundle)?),
            bundle: bundle.clone(),
            expected,
            provider: provider.clone(),
        },
        provider: provider.clone(),
    });
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_auth_cert(certs, key)?;
    config.alpn_protocols = vec![ALPN.to_vec()];
    config.resumption = rustls::client::Resumption::disabled();
    config.enable_secret_extraction = true;
    Ok(config)
}

/// Server side: present `svid`, require a client chaining to the bundle.
pub fn server_config(
    svid: &Svid,
    bundle: &TrustBundle,
    provider: Arc<CryptoProvider>,
) -> Result<ServerConfig> {
    let (certs, key) = chain(svid)?;
    let verifier =
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots(bundle)?), provider.clone())
            .build()?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)?;
    config.alpn_protocols = vec![ALPN.to_vec()];
    // No resumption: kernel TLS takes over the session, and tickets would be records it
    // has to carry.
    config.send_tls13_tickets = 0;
    config.enable_secret_extraction = true;
    Ok(config)
}

/// Checks that `end_entity` chains to `roots` for server authentication; returns it
/// parsed for name checks.
pub(crate) fn verify_chain<'a>(
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
pub(crate) fn chains_as_client(
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
pub(crate) trait ServerCheck: std::fmt::Debug + Send + Sync {
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
pub(crate) struct Verifier<C> {
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
struct SecureNaming {
    roots: Arc<RootCertStore>,
    bundle: TrustBundle,
    expected: SpiffeId,
    provider: Arc<CryptoProvider>,
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
