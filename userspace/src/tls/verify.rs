//! Deciding on a peer's certificate: the chain checks, the identity in a mesh leaf
//! (refused when revoked), and the two server checks: secure naming for the tunnel (the
//! server's SPIFFE ID must be the one expected at the destination) and the expected names
//! of an external server for originated TLS. Host names play no part in the mesh.
//!
//! A mesh peer's chain is checked against the roots of the trust domain its identity names
//! (`Anchors`): ours, or a federated domain's. A root vouches for its own domain only, so
//! a federated CA cannot mint identities of ours, nor ours of theirs.

use std::{collections::HashMap, sync::Arc};

use rustls::{
    CommonState, DigitallySignedStruct, DistinguishedName, HandshakeKind, RootCertStore,
    SignatureScheme,
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    crypto::CryptoProvider,
    pki_types::{CertificateDer, ServerName, UnixTime},
    server::danger::{ClientCertVerified, ClientCertVerifier},
};

use crate::{
    failure::{Failure, Result},
    identity::certs,
    svid::bundle::TrustBundle,
};
use hawser_model::SpiffeId;

/// The identity in a peer's leaf certificate, refused if revoked.
pub fn peer_identity(leaf: &CertificateDer<'_>, bundle: &TrustBundle) -> Result<SpiffeId> {
    let (id, serial) = claimed_identity(leaf)?;
    bundle.check_revoked(Some(&serial), &id.to_string())?;
    Ok(id)
}

/// The SPIFFE ID a leaf certificate claims (its only URI SAN), and its serial.
fn claimed_identity(leaf: &CertificateDer<'_>) -> Result<(SpiffeId, String)> {
    let pem = pem::encode(&pem::Pem::new("CERTIFICATE", leaf.as_ref().to_vec()));
    let info = certs::info(&pem).map_err(|e| Failure::Peer(format!("{e:#}")))?;
    let [uri] = &info.uri_sans[..] else {
        return Err(Failure::Peer(format!(
            "the peer certificate carries {} URI SANs, not one SPIFFE ID",
            info.uri_sans.len()
        )));
    };
    Ok((uri.parse().map_err(Failure::Peer)?, info.serial))
}

/// PEM certificates as a root store.
pub fn store(pems: &[String], what: &str) -> Result<RootCertStore> {
    let mut store = RootCertStore::empty();
    for pem in pems {
        let der = certs::der(pem).map_err(|e| Failure::Credentials(format!("{what}: {e:#}")))?;
        store
            .add(CertificateDer::from(der))
            .map_err(|e| Failure::Credentials(format!("{what}: {e}")))?;
    }
    Ok(store)
}

/// The roots each trust domain's identities must chain to, from one trust bundle.
#[derive(Debug)]
pub struct Anchors {
    pub bundle: TrustBundle,
    by_domain: HashMap<String, RootCertStore>,
}

impl Anchors {
    /// The bundle's own roots (refused while it has none) and its federated domains'.
    pub fn of(bundle: &TrustBundle) -> Result<Self> {
        let mut by_domain = HashMap::new();
        let own = store(&bundle.roots, "a root of the trust bundle")?;
        if own.is_empty() {
            return Err(Failure::NotReady(
                "the trust bundle has no roots yet".into(),
            ));
        }
        by_domain.insert(bundle.trust_domain.clone(), own);
        // A federated domain whose roots do not load, or that shares a root with ours (which
        // would let either CA vouch for the other's identities), is not trusted; ours is.
        for (domain, roots) in &bundle.federated {
            if bundle.shares_a_root(roots) {
                tracing::error!("trust domain {domain} shares a root with ours: not trusted");
                continue;
            }
            match store(roots, &format!("a root of trust domain {domain}")) {
                Ok(roots) => {
                    by_domain.insert(domain.clone(), roots);
                }
                Err(e) => tracing::error!("{e}: the trust domain is not trusted"),
            }
        }
        Ok(Self {
            bundle: bundle.clone(),
            by_domain,
        })
    }

    /// The roots of `trust_domain`, refused when it is not trusted.
    pub fn of_domain(&self, trust_domain: &str) -> Result<&RootCertStore> {
        self.by_domain.get(trust_domain).ok_or_else(|| {
            Failure::Peer(format!("no trust bundle for trust domain {trust_domain}"))
        })
    }

    /// The identity a mesh peer's chain proves for `usage`: the chain must reach a root of
    /// the trust domain that identity names. Revocation is the caller's to check.
    pub fn prove(
        &self,
        usage: webpki::KeyUsage,
        leaf: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        provider: &CryptoProvider,
        now: UnixTime,
    ) -> Result<SpiffeId, rustls::Error> {
        let general = |e: Failure| rustls::Error::General(e.to_string());
        let (id, _) = claimed_identity(leaf).map_err(general)?;
        let roots = self.of_domain(&id.trust_domain).map_err(general)?;
        verify_for(usage, leaf, intermediates, roots, provider, now)
            .map_err(|e| rustls::Error::General(format!("chain of {id}: {e}")))?;
        Ok(id)
    }
}

/// The identity of the peer of an established session (and its certificate), refused if
/// revoked. A resumed
/// session skipped the certificate checks of a full handshake (its ticket was issued under
/// the same SVID and bundle, see `configs`), so its peer's chain is also checked for
/// expiry (every certificate of it) and, on the client side, for being the `expected`
/// identity.
pub fn session_peer<'s>(
    session: &'s CommonState,
    bundle: &TrustBundle,
    expected: Option<&SpiffeId>,
) -> Result<(SpiffeId, &'s CertificateDer<'static>)> {
    let chain = session.peer_certificates().unwrap_or_default();
    let leaf = chain
        .first()
        .ok_or_else(|| Failure::Peer("no peer certificate".into()))?;
    let id = peer_identity(leaf, bundle)?;
    if session.handshake_kind() != Some(HandshakeKind::Resumed) {
        return Ok((id, leaf));
    }
    if chain_expiry(chain)? <= time::OffsetDateTime::now_utc() {
        return Err(Failure::Peer(format!(
            "the resumed session of {id}: its chain has expired"
        )));
    }
    match expected {
        Some(expected) if *expected != id => Err(Failure::Peer(format!(
            "resumed session with {id}, not {expected}"
        ))),
        _ => Ok((id, leaf)),
    }
}

/// When the first certificate of a peer's `chain` expires: a session outliving its
/// handshake (resumed, or carrying streams one after another) trusts the peer no longer.
pub fn chain_expiry(chain: &[CertificateDer<'_>]) -> Result<time::OffsetDateTime> {
    let mut expiries = chain.iter().map(|cert| {
        let info = certs::info_der(cert).map_err(|e| Failure::Peer(format!("{e:#}")))?;
        Ok(info.not_after)
    });
    let first = expiries
        .next()
        .ok_or_else(|| Failure::Peer("no peer certificate".into()))?;
    expiries.try_fold(first?, |earliest, next: Result<_>| Ok(earliest.min(next?)))
}

/// The expiry of a session's peer chain, read once: a serial session checks it at every
/// stream, and parsing the chain each time cost more than anything else of a stream's
/// own (8 % of both daemons' CPU under a new-connection load). The chain of a session
/// never changes.
#[derive(Default)]
pub struct ChainExpiry(Option<time::OffsetDateTime>);

impl ChainExpiry {
    /// When the first certificate of `session`'s peer chain expires.
    pub fn of(&mut self, session: &CommonState) -> Result<time::OffsetDateTime> {
        if let Some(expiry) = self.0 {
            return Ok(expiry);
        }
        let expiry = chain_expiry(session.peer_certificates().unwrap_or_default())?;
        self.0 = Some(expiry);
        Ok(expiry)
    }
}

/// The client `chain` of an established session checked again against `bundle` (a serial
/// session outlives the bundle its handshake checked the chain against): it must still
/// reach a root of its trust domain, unexpired, and not be revoked.
pub fn recheck_client(
    chain: &[CertificateDer<'_>],
    bundle: &TrustBundle,
    provider: &CryptoProvider,
) -> Result<SpiffeId> {
    let (leaf, intermediates) = chain
        .split_first()
        .ok_or_else(|| Failure::Peer("no peer certificate".into()))?;
    let id = peer_identity(leaf, bundle)?;
    let anchors = Anchors::of(bundle)?;
    let usage = webpki::KeyUsage::client_auth();
    anchors
        .prove(usage, leaf, intermediates, provider, UnixTime::now())
        .map_err(|e| Failure::Peer(format!("{id} under the new trust bundle: {e}")))?;
    Ok(id)
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

/// The tunnel server's check of a client: its chain must reach the roots of the trust
/// domain its identity names (the caller reads that identity, and checks revocation and
/// policy, once the handshake is done).
#[derive(Debug)]
pub struct MeshClients {
    pub anchors: Arc<Anchors>,
    pub provider: Arc<CryptoProvider>,
}

impl ClientCertVerifier for MeshClients {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let usage = webpki::KeyUsage::client_auth();
        (self.anchors).prove(usage, end_entity, intermediates, &self.provider, now)?;
        Ok(ClientCertVerified::assertion())
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

/// Chain validation against the roots of the server's trust domain, then the server's
/// SPIFFE ID against the one the destination must have. Host names play no part.
#[derive(Debug)]
pub struct SecureNaming {
    pub anchors: Arc<Anchors>,
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
        let usage = webpki::KeyUsage::server_auth();
        let anchors = &self.anchors;
        anchors.prove(usage, end_entity, intermediates, &self.provider, now)?;
        let id = peer_identity(end_entity, &anchors.bundle)
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

#[cfg(test)]
mod tests {
    use rcgen::{
        BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
        SanType,
    };

    use super::*;

    /// A self-signed root and what signs with it.
    fn root() -> (String, Issuer<'static, KeyPair>) {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let pem = params.self_signed(&key).unwrap().pem();
        (pem, Issuer::new(params, key))
    }

    /// A leaf for `id`, signed by `issuer`.
    fn leaf(id: &str, issuer: &Issuer<'_, KeyPair>) -> CertificateDer<'static> {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.subject_alt_names = vec![SanType::URI(id.try_into().unwrap())];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ClientAuth,
            ExtendedKeyUsagePurpose::ServerAuth,
        ];
        let key = KeyPair::generate().unwrap();
        params.signed_by(&key, issuer).unwrap().der().clone()
    }

    fn prove(anchors: &Anchors, leaf: &CertificateDer<'_>) -> Result<SpiffeId, rustls::Error> {
        let provider = crate::tls::configs::provider();
        let usage = webpki::KeyUsage::client_auth();
        anchors.prove(usage, leaf, &[], &provider, UnixTime::now())
    }

    /// A session trusts its peer until the first certificate of the chain expires, an
    /// intermediate's too.
    #[test]
    fn a_chain_expires_with_its_first_certificate_to_expire() {
        let (_, root_ca) = root();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let soon = time::OffsetDateTime::now_utc() + time::Duration::hours(1);
        params.not_after = soon;
        let key = KeyPair::generate().unwrap();
        let intermediate = params.signed_by(&key, &root_ca).unwrap().der().clone();
        let leaf = leaf("spiffe://td/ns/default/sa/a", &Issuer::new(params, key));
        let chain = [leaf, intermediate];
        let expiry = chain_expiry(&chain).unwrap();
        assert_eq!(expiry.unix_timestamp(), soon.unix_timestamp());
        assert!(chain_expiry(&chain[..1]).unwrap() > soon, "the leaf alone");
        assert!(chain_expiry(&[]).is_err());
    }

    /// A serial session's client under a new bundle: still trusted while its root is, and
    /// not once the root is gone or the client is revoked.
    #[test]
    fn a_client_checked_again_under_a_new_bundle_needs_its_root_and_no_revocation() {
        let ((old, old_ca), (new, _)) = (root(), root());
        let id = "spiffe://td/ns/default/sa/a";
        let chain = [leaf(id, &old_ca)];
        let provider = crate::tls::configs::provider();
        let bundle = |roots: Vec<String>| TrustBundle {
            trust_domain: "td".into(),
            roots,
            ..Default::default()
        };
        let both = bundle(vec![old.clone(), new.clone()]);
        assert_eq!(
            recheck_client(&chain, &both, &provider)
                .unwrap()
                .to_string(),
            id
        );
        let rotated = recheck_client(&chain, &bundle(vec![new]), &provider).unwrap_err();
        assert!(
            rotated.to_string().contains("under the new trust bundle"),
            "{rotated}"
        );
        let revoked = TrustBundle {
            revoked_identities: vec![id.into()],
            ..both
        };
        let refused = recheck_client(&chain, &revoked, &provider).unwrap_err();
        assert!(refused.to_string().contains("revoked"), "{refused}");
        assert!(recheck_client(&[], &bundle(vec![old]), &provider).is_err());
    }

    #[test]
    fn a_root_vouches_for_its_own_trust_domain_only() {
        let ((ours, our_ca), (theirs, their_ca)) = (root(), root());
        let mut bundle = TrustBundle {
            trust_domain: "td2".into(),
            roots: vec![ours],
            federated: [("td1".to_string(), vec![theirs])].into(),
            ..Default::default()
        };
        let anchors = Anchors::of(&bundle).unwrap();
        let a = leaf("spiffe://td1/ns/default/sa/a", &their_ca);
        let b = leaf("spiffe://td2/ns/default/sa/b", &our_ca);
        assert_eq!(
            prove(&anchors, &a).unwrap().to_string(),
            "spiffe://td1/ns/default/sa/a"
        );
        assert_eq!(prove(&anchors, &b).unwrap().trust_domain, "td2");
        // Each CA minting the other domain's identities.
        for forged in [
            leaf("spiffe://td2/ns/default/sa/b", &their_ca),
            leaf("spiffe://td1/ns/default/sa/a", &our_ca),
        ] {
            let refused = prove(&anchors, &forged).unwrap_err().to_string();
            assert!(refused.contains("chain of spiffe://"), "{refused}");
        }
        // A domain whose roots do not load, or that shares ours, is not trusted; the others
        // still are.
        bundle
            .federated
            .insert("td3".into(), vec!["not a certificate".into()]);
        // (Our root as another domain's SPIFFE bundle carries it: PEM text differs.)
        let spiffe = crate::identity::spiffe_bundle::to_json(&bundle.roots, 1).unwrap();
        let ours_again = crate::identity::spiffe_bundle::roots(&spiffe).unwrap();
        bundle.federated.insert("td4".into(), ours_again);
        let anchors = Anchors::of(&bundle).unwrap();
        assert!(prove(&anchors, &b).is_ok() && prove(&anchors, &a).is_ok());
        assert!(anchors.of_domain("td3").is_err() && anchors.of_domain("td4").is_err());
        // A domain without a bundle is not trusted at all.
        bundle.federated.clear();
        let refused = prove(&Anchors::of(&bundle).unwrap(), &a)
            .unwrap_err()
            .to_string();
        assert!(
            refused.contains("no trust bundle for trust domain td1"),
            "{refused}"
        );
    }
}
