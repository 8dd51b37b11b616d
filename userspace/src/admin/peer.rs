//! `hawser certs --peer IP:PORT`: the chain a peer daemon's tunnel port presents, checked
//! against this node's trust bundle as a tunnel client checks it (chain to a root, the
//! client-side EKU, one SPIFFE ID, not revoked). What `istioctl proxy-config secret` users
//! look at when a rotation is under way.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::{Context, Result, bail};
use hawser_model::SpiffeId;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::{
    svid::TrustBundle,
    tls::{
        configs,
        verify::{self, ServerCheck},
    },
};

/// The chain `addr` presents in its TLS handshake (the handshake is abandoned as soon as
/// the chain is in: this client has no certificate to show).
pub async fn presented(addr: SocketAddr) -> Result<Vec<CertificateDer<'static>>> {
    let recorder = Recorder::default();
    let config = configs::mesh_probe(recorder.clone(), configs::provider())?;
    let tcp = tokio::time::timeout(Duration::from_secs(10), TcpStream::connect(addr))
        .await
        .with_context(|| format!("connect {addr}: timed out"))?
        .with_context(|| format!("connect {addr}"))?;
    let name = ServerName::IpAddress(addr.ip().into());
    let handshake = TlsConnector::from(Arc::new(config)).connect(name, tcp);
    let ended = tokio::time::timeout(Duration::from_secs(10), handshake).await;
    let chain = recorder.chain.lock().unwrap().take();
    match (chain, ended) {
        (Some(chain), _) => Ok(chain),
        (None, Ok(Err(e))) => bail!("{addr} presented no certificate: {e}"),
        (None, _) => bail!("{addr} presented no certificate"),
    }
}

/// The peer's SPIFFE ID, if `chain` passes the checks a tunnel client makes.
pub fn check(chain: &[CertificateDer<'_>], bundle: &TrustBundle) -> Result<SpiffeId> {
    let Some((leaf, intermediates)) = chain.split_first() else {
        bail!("an empty chain");
    };
    let anchors = verify::Anchors::of(bundle)?;
    let (usage, provider) = (webpki::KeyUsage::server_auth(), configs::provider());
    anchors.prove(usage, leaf, intermediates, &provider, UnixTime::now())?;
    Ok(verify::peer_identity(leaf, bundle)?)
}

/// Keeps the server's chain and ends the handshake there.
#[derive(Clone, Debug, Default)]
struct Recorder {
    chain: Arc<Mutex<Option<Vec<CertificateDer<'static>>>>>,
}

impl ServerCheck for Recorder {
    fn check(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<(), rustls::Error> {
        let chain = std::iter::once(end_entity)
            .chain(intermediates)
            .map(|c| c.clone().into_owned())
            .collect();
        *self.chain.lock().unwrap() = Some(chain);
        Err(rustls::Error::General("chain recorded".into()))
    }
}
