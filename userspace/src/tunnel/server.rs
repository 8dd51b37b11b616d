//! The server end: a pod's 15008 listener, in front of the pod's apps.

use std::{
    net::{IpAddr, SocketAddr},
    sync::Arc,
};

use anyhow::{Context, Result, bail};
use hawser_common::{INBOUND_PORT, OUTBOUND_PORT, TUNNEL_PORT};
use ktls::CorkStream;
use rustls::ServerConfig;
use tokio::net::TcpStream;
use tokio_rustls::{TlsAcceptor, server};

use super::{
    HANDSHAKE_TIMEOUT,
    offload::{Offload, TunnelStream},
    preamble, tls,
};
use crate::{context::pod::PodContext, proxy::caller::client_certificate};
use hawser_model::{SpiffeId, proxy_v2::ClientCertificate};

/// An accepted, authenticated tunnel: the client's identity and where it wants to go.
pub struct Accepted {
    pub stream: TunnelStream,
    pub client: SpiffeId,
    pub certificate: ClientCertificate,
    pub dst: SocketAddr,
}

/// The server's side of a handshake, within `HANDSHAKE_TIMEOUT`; `side` names it in the
/// handshake metric.
pub(crate) async fn handshake(
    conn: TcpStream,
    config: Arc<ServerConfig>,
    offload: &Offload,
    side: &'static str,
) -> Result<server::TlsStream<CorkStream<TcpStream>>> {
    let peer = conn
        .peer_addr()
        .map_or("the client".into(), |a| a.to_string());
    let handshake = TlsAcceptor::from(config).accept(offload.prepare(conn));
    super::bounded(side, peer, handshake).await
}

/// Handshake (client certificate required), identity and revocation checks, preamble,
/// then the session goes to the kernel where it can. The app is reached at the address the
/// client dialed, with the port the preamble names.
pub async fn accept(pod: &PodContext, conn: TcpStream, dialed: IpAddr) -> Result<Accepted> {
    let (svid, bundle) = pod.credentials_soon().await?;
    let offload = &pod.shared.offload;
    let config = pod
        .tls_configs
        .server(&svid, &bundle, || offload.provider())?;
    let mut stream = handshake(conn, config, offload, "server").await?;
    let session = stream.get_ref().1;
    let leaf = session
        .peer_certificates()
        .and_then(|c| c.first())
        .context("no client certificate")?;
    let client = tls::peer_identity(leaf, &bundle)?;
    let certificate = client_certificate(leaf, session)?;
    let preamble = tokio::time::timeout(HANDSHAKE_TIMEOUT, preamble::read(&mut stream))
        .await
        .context("preamble: timed out")?
        .context("preamble")?;
    if [OUTBOUND_PORT, INBOUND_PORT, TUNNEL_PORT].contains(&preamble.port) {
        bail!("port {} is the daemon's own", preamble.port);
    }
    // Bytes the client sent after the preamble may still sit in rustls: the offload
    // drains them into the stream it returns.
    let stream = offload.server(stream).await?;
    Ok(Accepted {
        stream,
        client,
        certificate,
        dst: SocketAddr::new(dialed, preamble.port),
    })
}
