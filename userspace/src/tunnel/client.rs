//! The client end: from the source pod to the destination pod's daemon on 15008.

use std::net::SocketAddr;

use rustls::pki_types::ServerName;
use tokio::io::AsyncWriteExt;

use super::preamble::Preamble;
use crate::{
    context::pod::PodContext,
    failure::{Failure, Result},
    identity::certs,
    tls::{self, offload::TunnelStream, verify::session_peer},
};
use hawser_model::SpiffeId;

/// Opens the tunnel to `dst`'s pod, proves `peer` is there, names the port, and hands the
/// session to the kernel where it can take it. Returns it with the serial of the server's
/// certificate (for revocation).
pub async fn connect(
    pod: &PodContext,
    dst: SocketAddr,
    peer: &SpiffeId,
) -> Result<(TunnelStream, String)> {
    let (svid, bundle) = pod.credentials_soon().await?;
    let offload = &pod.shared.offload;
    let config = pod.tls_configs.client(&svid, &bundle, peer, offload)?;
    let tunnel = SocketAddr::new(dst.ip(), hawser_common::TUNNEL_PORT);
    let tcp = pod.connect(tunnel).await?;
    // Names play no part in the check (see `tls::verify::SecureNaming`); an IP sends no SNI.
    let name = ServerName::IpAddress(dst.ip().into());
    let mut stream = tls::connect("client", tunnel, tcp, config, name, offload).await?;
    let (_, leaf) = session_peer(stream.get_ref().1, &bundle, Some(peer))?;
    let server = certs::info_der(leaf.as_ref()).map_err(|e| Failure::Peer(format!("{e:#}")))?;
    let preamble = Preamble { port: dst.port() }.encode();
    let sent = async {
        stream.write_all(&preamble).await?;
        stream.flush().await
    };
    sent.await
        .map_err(|e| Failure::io(format!("preamble to {tunnel}"), e))?;
    Ok((offload.client(stream).await?, server.serial))
}
