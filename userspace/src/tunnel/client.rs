//! The client end: from the source pod to the destination pod's daemon on 15008.

use std::net::SocketAddr;

use anyhow::Result;
use rustls::pki_types::ServerName;
use tokio::io::AsyncWriteExt;
use tokio_rustls::TlsConnector;

use super::{offload::TunnelStream, preamble::Preamble};
use crate::{context::pod::PodContext, proxy::sockets};
use hawser_model::SpiffeId;

/// Opens the tunnel to `dst`'s pod, proves `peer` is there, names the port, and hands the
/// session to the kernel where it can take it.
pub async fn connect(pod: &PodContext, dst: SocketAddr, peer: &SpiffeId) -> Result<TunnelStream> {
    let (svid, bundle) = pod.credentials_soon().await?;
    let offload = &pod.shared.offload;
    let config = pod
        .tls_configs
        .client(&svid, &bundle, peer, || offload.provider())?;
    let tunnel = SocketAddr::new(dst.ip(), hawser_common::TUNNEL_PORT);
    let socket = pod.net.outbound_socket(tunnel, None).await?;
    let tcp = sockets::connect(socket, tunnel, pod.shared.keepalive).await?;
    // Names play no part in the check (see `tls::SecureNaming`); an IP sends no SNI.
    let name = ServerName::IpAddress(dst.ip().into());
    let handshake = TlsConnector::from(config).connect(name, offload.prepare(tcp));
    let mut stream = super::bounded("client", tunnel, handshake).await?;
    stream
        .write_all(&Preamble { port: dst.port() }.encode())
        .await?;
    stream.flush().await?;
    offload.client(stream).await
}
