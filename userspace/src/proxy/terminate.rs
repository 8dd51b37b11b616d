//! TLS terminated by the daemon on a workload port that asks for it (`InboundPorts`), for
//! clients outside the mesh: a client certificate is required and must chain to the
//! mesh's roots (a mesh SVID: its SPIFFE ID is the principal, revocation applies) or to
//! the port's extra trust anchors (a company CA: the certificate's SAN or subject is the
//! principal). The session goes to the kernel where it can, as the tunnel's does.

use std::sync::Arc;

use rustls::{RootCertStore, crypto::CryptoProvider, pki_types::CertificateDer};
use tokio::net::TcpStream;

use super::caller::client_certificate;
use crate::{
    context::pod::PodContext,
    failure::{Failure, Result},
    svid::TrustBundle,
    tls::{
        self,
        configs::{self, Identity},
        offload::TunnelStream,
        verify,
    },
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
    let config = configs::port_server(trust.identity(), trust.client_roots(), provider.clone())?;
    let stream = tls::accept("inbound", conn, Arc::new(config), offload).await?;
    let session = stream.get_ref().1;
    let chain = session.peer_certificates().unwrap_or_default().to_vec();
    let leaf = chain
        .first()
        .ok_or_else(|| Failure::Peer("no client certificate".into()))?;
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
    identity: Identity,
    trust_domain: String,
}

impl Trust {
    fn new(pod: &PodContext, settings: &ServerTls) -> Result<Self> {
        let material = pod.shared.credentials.server(settings)?;
        let credentials = pod.credentials();
        let Some(key) = &material.key else {
            return Err(Failure::Credentials(
                "no server certificate and key in what the port names".into(),
            ));
        };
        let identity = (material.chain.clone(), key.clone_key());
        let mesh = match credentials {
            Ok((_, bundle)) => {
                let roots = configs::roots(&bundle)?;
                Some((bundle, roots))
            }
            Err(_) => None,
        };
        Ok(Self {
            mesh,
            extra: material.roots.clone(),
            identity,
            trust_domain: pod.shared.trust_domain.clone(),
        })
    }

    /// The trust domains whose identities only their own roots may vouch for.
    fn mesh_domains(&self) -> impl Iterator<Item = &str> {
        let federated = self.mesh.iter().flat_map(|(b, _)| b.federated.keys());
        std::iter::once(self.trust_domain.as_str()).chain(federated.map(String::as_str))
    }

    fn identity(&self) -> Identity {
        (self.identity.0.clone(), self.identity.1.clone_key())
    }

    /// The mesh's roots and the port's own anchors: a client may chain to either.
    fn client_roots(&self) -> RootCertStore {
        let mut all = RootCertStore::empty();
        if let Some((_, mesh)) = &self.mesh {
            all.roots.extend(mesh.roots.iter().cloned());
        }
        if let Some(extra) = &self.extra {
            all.roots.extend(extra.roots.iter().cloned());
        }
        all
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
            && verify::chains_as_client(chain, roots, provider)
        {
            // A chain that verified is not empty. Our roots vouch for our domain only.
            let id = verify::peer_identity(&chain[0], bundle)?;
            if id.trust_domain != self.trust_domain {
                return Err(Failure::Peer(format!(
                    "a certificate of the mesh's CA claims {id}, outside its trust domain"
                )));
            }
            return Ok(id.into());
        }
        if let Some(uri) = &certificate.uri_san
            && self
                .mesh_domains()
                .any(|td| uri.starts_with(&format!("spiffe://{td}/")))
        {
            return Err(Failure::Peer(format!(
                "a certificate outside the mesh's CA claims the mesh identity {uri}"
            )));
        }
        Ok(Principal::Certificate(certificate.principal_name()))
    }
}
