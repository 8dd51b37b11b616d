//! Every rustls configuration the daemon uses is built here: the tunnel's two ends (TLS
//! 1.3 only, the tunnel's ALPN, secure naming), a workload port's server for clients
//! outside the mesh, TLS originated to external services, the probe that shows what a
//! peer presents, and both ends of the CA's gRPC connection. The data-path ones may hand
//! their session to the kernel (secrets extractable).
//!
//! Resumption: tunnels resume TLS 1.3 sessions from tickets (no signatures, no chain
//! checks: most of a handshake's cost), and `verify::session_peer` checks the peer's
//! identity, revocation and expiry on every resumed session. The configurations are
//! rebuilt, with a fresh ticket key and session store, whenever the SVID or the trust
//! bundle changes, so no session outlives the roots and revocations it was checked
//! against. A tunnel that leaves rustls keeps only the tickets it read before (see
//! `offload::Offload::client` and `read_tickets`). Nothing else resumes.

use std::sync::Arc;

use rustls::{
    ClientConfig, RootCertStore, ServerConfig,
    client::danger::ServerCertVerifier,
    crypto::CryptoProvider,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
    server::{WebPkiClientVerifier, danger::ClientCertVerifier},
};

use super::verify::{self, Anchors, MeshClients, SecureNaming, ServerCheck, Verifier};
use crate::{
    failure::{Failure, Result},
    identity::certs,
    svid::{bundle::TrustBundle, held::Svid},
};
use hawser_model::{
    SpiffeId,
    preamble::{ALPN, ALPN_SERIAL},
};

/// A certificate chain and its key, as a TLS end presents them.
pub type Identity = (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>);

/// The tunnel's client end: present `svid`, accept only a server that is `expected`
/// (its chain checked against the roots of `expected`'s trust domain).
pub fn mesh_client(
    svid: &Svid,
    anchors: &Arc<Anchors>,
    expected: SpiffeId,
    provider: Arc<CryptoProvider>,
    serial: bool,
) -> Result<ClientConfig> {
    anchors.of_domain(&expected.trust_domain)?;
    let check = SecureNaming {
        anchors: anchors.clone(),
        expected,
        provider: provider.clone(),
    };
    let mut config = client(check, Some(svid_identity(svid)?), Versions::Tls13, provider)?;
    // Serial sessions offered where this side keeps them in userspace; a server that does
    // not know them picks the other.
    config.alpn_protocols = match serial {
        true => vec![ALPN_SERIAL.to_vec(), ALPN.to_vec()],
        false => vec![ALPN.to_vec()],
    };
    config.resumption = rustls::client::Resumption::in_memory_sessions(SESSIONS);
    // Tickets on request (RFC 9149). A session in rustls reads them whenever they come;
    // one that leaves rustls reads them before the hand-off where it waits (`offload`),
    // and its relay passes over any that come later.
    config.send_ticket_request = Some(rustls::client::TicketRequest {
        new_session_count: TICKETS as u8,
        resumption_count: RESUMED_TICKETS,
    });
    Ok(config)
}

/// Tickets a client asks for on a resumed handshake: more than the one it used, since
/// a connection handed to the kernel at once keeps none of its own.
const RESUMED_TICKETS: u8 = 2;
/// The tickets a tunnel client asks for, after a resumed handshake or a full one: all a
/// server of this mesh sends it, in one flight.
pub fn tickets_asked(resumed: bool) -> u32 {
    if resumed {
        u32::from(RESUMED_TICKETS)
    } else {
        TICKETS as u32
    }
}

/// Tickets a client keeps per peer identity (one per connection resumed at once).
const SESSIONS: usize = 64;
/// Tickets a client asks for on a full handshake (`RESUMED_TICKETS` on a resumed one), so
/// that parallel connections resume too; a server hands out no more.
const TICKETS: usize = 4;

/// The tunnel's server end: present `svid`, require a client chaining to the roots of its
/// identity's trust domain (the caller reads that identity from the certificate). Serial
/// sessions for clients that offer them when `serial` (where this end stays in userspace:
/// a kernel-TLS end keeps its sessions in the kernel, one per connection).
pub fn mesh_server(
    svid: &Svid,
    anchors: &Arc<Anchors>,
    provider: Arc<CryptoProvider>,
    serial: bool,
) -> Result<ServerConfig> {
    let clients = Arc::new(MeshClients {
        anchors: anchors.clone(),
        provider: provider.clone(),
    });
    let mut config = server(clients, svid_identity(svid)?, Versions::Tls13, provider)?;
    config.alpn_protocols = match serial {
        true => vec![ALPN_SERIAL.to_vec(), ALPN.to_vec()],
        false => vec![ALPN.to_vec()],
    };
    // Sent before the session goes to the kernel: the handshake flushes them.
    config.ticketer = rustls::crypto::aws_lc_rs::Ticketer::new()?;
    config.send_tls13_tickets = 0;
    config.max_tls13_tickets = TICKETS;
    Ok(config)
}

/// A workload port's TLS for clients outside the mesh: present `identity`, require a
/// client certificate chaining to `client_roots` (the mesh's and the port's own anchors).
pub fn port_server(
    identity: Identity,
    client_roots: RootCertStore,
    provider: Arc<CryptoProvider>,
) -> Result<ServerConfig> {
    let clients = client_verifier(client_roots, &provider)?;
    server(clients, identity, Versions::Default, provider)
}

/// TLS originated to an external service, checked by `check`; a client certificate when
/// `identity` is given.
pub fn origination(
    check: impl ServerCheck + 'static,
    identity: Option<Identity>,
    provider: Arc<CryptoProvider>,
) -> Result<ClientConfig> {
    client(check, identity, Versions::Default, provider)
}

/// A client of the tunnel that shows no certificate, for looking at the chain a peer
/// presents (`hawser certs --peer`); `check` decides on it.
pub fn mesh_probe(
    check: impl ServerCheck + 'static,
    provider: Arc<CryptoProvider>,
) -> Result<ClientConfig> {
    let mut config = client(check, None, Versions::Tls13, provider)?;
    config.alpn_protocols = vec![ALPN.to_vec()];
    Ok(config)
}

/// The CA's gRPC server: whatever certificate `serving` holds now (it follows the CA's
/// signing material), HTTP/2, no client certificate (callers prove themselves with their
/// node credential).
pub fn ca_server(serving: Arc<dyn rustls::server::ResolvesServerCert>) -> Result<ServerConfig> {
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(Versions::Default.all())?
        .with_no_client_auth()
        .with_cert_resolver(serving);
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// A node daemon's connection to the CA: the server's name checked against `roots`.
pub fn ca_client(roots: RootCertStore) -> Result<ClientConfig> {
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(Versions::Default.all())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// The crypto of connections that never go to the kernel (the CA's, the `certs --peer`
/// probe); tunnels take `Offload::provider`, which offers only what the kernel can take.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// The SVID's chain and key.
pub fn svid_identity(svid: &Svid) -> Result<Identity> {
    let chain = svid
        .chain
        .iter()
        .map(|pem| certs::der(pem).map(CertificateDer::from))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Failure::Credentials(format!("the SVID's chain: {e:#}")))?;
    let key = PrivateKeyDer::from_pem_slice(svid.key_pem.as_bytes())
        .map_err(|e| Failure::Credentials(format!("the SVID's key: {e}")))?;
    Ok((chain, key))
}

/// The trust bundle's own roots; refused while it has none.
pub fn roots(bundle: &TrustBundle) -> Result<RootCertStore> {
    let store = verify::store(&bundle.roots, "a root of the trust bundle")?;
    if store.is_empty() {
        return Err(Failure::NotReady(
            "the trust bundle has no roots yet".into(),
        ));
    }
    Ok(store)
}

/// The tunnel speaks TLS 1.3 only; peers outside the mesh may speak 1.2.
enum Versions {
    Tls13,
    Default,
}

impl Versions {
    fn all(&self) -> &'static [&'static rustls::SupportedProtocolVersion] {
        const TLS13: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13];
        match self {
            Versions::Tls13 => TLS13,
            Versions::Default => rustls::DEFAULT_VERSIONS,
        }
    }
}

fn client(
    check: impl ServerCheck + 'static,
    identity: Option<Identity>,
    versions: Versions,
    provider: Arc<CryptoProvider>,
) -> Result<ClientConfig> {
    let verifier: Arc<dyn ServerCertVerifier> = Arc::new(Verifier {
        check,
        provider: provider.clone(),
    });
    let builder = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions.all())?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut config = match identity {
        Some((chain, key)) => builder.with_client_auth_cert(chain, key)?,
        None => builder.with_no_client_auth(),
    };
    config.resumption = rustls::client::Resumption::disabled();
    config.enable_secret_extraction = true;
    Ok(config)
}

fn server(
    clients: Arc<dyn ClientCertVerifier>,
    (chain, key): Identity,
    versions: Versions,
    provider: Arc<CryptoProvider>,
) -> Result<ServerConfig> {
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(versions.all())?
        .with_client_cert_verifier(clients)
        .with_single_cert(chain, key)?;
    config.send_tls13_tickets = 0;
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    config.enable_secret_extraction = true;
    Ok(config)
}

/// Client certificates are required and must chain to `roots` (client-auth EKU).
fn client_verifier(
    roots: RootCertStore,
    provider: &Arc<CryptoProvider>,
) -> Result<Arc<dyn ClientCertVerifier>> {
    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| Failure::Credentials(format!("client certificate verifier: {e}")))
}
