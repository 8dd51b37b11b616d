//! TLS terminated by the daemon on a workload port that asks for it (`InboundPorts`), for
//! clients outside the mesh: a client certificate is required and must chain to the
//! mesh's roots (a mesh SVID: its SPIFFE ID is the principal, revocation applies) or to
//! the port's extra trust anchors (a company CA: the certificate's SAN or subject is the
//! principal). The session goes to the kernel where it can, as the tunnel's does.

use std::sync::Arc;

use anyhow::{Context, Result, bail};
use rustls::{
    RootCertStore, ServerConfig,
    crypto::CryptoProvider,
    pki_types::{CertificateDer, PrivateKeyDer},
    server::WebPkiClientVerifier,
};
use tokio::net::TcpStream;

use super::caller::client_certificate;
use crate::{
    context::pod::PodContext,
    svid::TrustBundle,
    tunnel::{self, offload::TunnelStream, tls},
};
use hawser_model::proxy_v2::ClientCertificate;
use hawser_model::{policy::Principal, ports::ServerTls};

/// A client that proved who it is.
pub struct Terminated {
    pub stream: TunnelStream,
    pub principal: Principal,
    pub certificate: ClientCertificate,
}

pub async fn accept(pod: &PodContext, conn: TcpStream, settings: &ServerTls) -> Result<Terminated> {
    let offload = &pod.shared.offload;
    let trust = Trust::new(pod, settings)?;
    let provider = offload.provider();
    let config = trust.server_config(provider.clone())?;
    let stream = tunnel::server::handshake(conn, Arc::new(config), offload, "inbound").await?;
    let session = stream.get_ref().1;
    let chain = session
        .peer_certificates()
        .context("no client certificate")?
        .to_vec();
    let leaf = chain.first().context("an empty client certificate chain")?;
    let certificate = client_certificate(leaf, session)?;
    let principal = trust.principal(&chain, &certificate, &provider)?;
    Ok(Terminated {
        stream: offload.server(stream).await?,
        principal,
        certificate,
    })
}

/// What one port trusts, and what it presents.
struct Trust {
    /// The mesh's bundle, when the daemon holds one.
    mesh: Option<(Arc<TrustBundle>, RootCertStore)>,
    extra: Option<Arc<RootCertStore>>,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    trust_domain: String,
}

impl Trust {
    fn new(pod: &PodContext, settings: &ServerTls) -> Result<Self> {
        let material = pod.shared.credentials.server(settings)?;
        let credentials = pod.credentials();
        let Some(key) = &material.key else {
            bail!("no server certificate and key in what the port names");
        };
        let (chain, key) = (material.chain.clone(), key.clone_key());
        let mesh = match credentials {
            Ok((_, bundle)) => {
                let roots = tls::roots(&bundle)?;
                Some((bundle, roots))
            }
            Err(_) => None,
        };
        Ok(Self {
            mesh,
            extra: material.roots.clone(),
            chain,
            key,
            trust_domain: pod.shared.trust_domain.clone(),
        })
    }

    fn server_config(&self, provider: Arc<CryptoProvider>) -> Result<ServerConfig> {
        let mut all = RootCertStore::empty();
        if let Some((_, mesh)) = &self.mesh {
            all.roots.extend(mesh.roots.iter().cloned());
        }
        if let Some(extra) = &self.extra {
            all.roots.extend(extra.roots.iter().cloned());
        }
        let verifier =
            WebPkiClientVerifier::builder_with_provider(Arc::new(all), provider.clone()).build()?;
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_client_cert_verifier(verifier)
            .with_single_cert(self.chain.clone(), self.key.clone_key())?;
        // No resumption: kernel TLS takes over the session.
        config.send_tls13_tickets = 0;
        config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        config.enable_secret_extraction = true;
        Ok(config)
    }

    /// A chain to the mesh's roots is a mesh identity; otherwise it went to the extra
    /// anchors, which may not vouch for the mesh's own SPIFFE IDs.
    fn principal(
        &self,
        chain: &[CertificateDer<'_>],
        certificate: &ClientCertificate,
        provider: &CryptoProvider,
    ) -> Result<Principal> {
        if let Some((bundle, roots)) = &self.mesh
            && tls::chains_as_client(chain, roots, provider)
        {
            // A chain that verified is not empty.
            return Ok(tls::peer_identity(&chain[0], bundle)?.into());
        }
        let own = format!("spiffe://{}/", self.trust_domain);
        if let Some(uri) = &certificate.uri_san
            && uri.starts_with(&own)
        {
            bail!("a certificate outside the mesh's CA claims the mesh identity {uri}");
        }
        Ok(Principal::Certificate(certificate.principal_name()))
    }
}
