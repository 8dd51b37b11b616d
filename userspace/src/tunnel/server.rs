//! The server end: a pod's 15008 listener, in front of the pod's apps.

use std::net::{IpAddr, SocketAddr};

use hawser_common::{INBOUND_PORT, OUTBOUND_PORT, TUNNEL_PORT};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

use super::preamble;
use crate::{
    context::pod::PodContext,
    failure::{Failure, Result},
    proxy::caller::client_certificate,
    tls::{self, HANDSHAKE_TIMEOUT, offload::TunnelStream, socket::Socket, verify::session_peer},
};
use hawser_model::{SpiffeId, proxy_v2::ClientCertificate};

/// A tunnel whose client proved its identity, its preamble not read yet.
pub struct Verified {
    stream: TlsStream<Socket>,
    pub client: SpiffeId,
    certificate: ClientCertificate,
}

/// An accepted, authenticated tunnel: the client's identity and where it wants to go.
pub struct Accepted {
    pub stream: TunnelStream,
    pub client: SpiffeId,
    pub certificate: ClientCertificate,
    pub dst: SocketAddr,
}

/// Handshake (client certificate required), identity and revocation checks.
pub async fn handshake(pod: &PodContext, conn: TcpStream) -> Result<Verified> {
    let (svid, bundle) = pod.credentials_soon().await?;
    let offload = &pod.shared.offload;
    let config = pod.tls_configs.server(&svid, &bundle, offload)?;
    let stream = tls::accept("server", conn, config, offload).await?;
    let session = stream.get_ref().1;
    let (client, leaf) = session_peer(session, &bundle, None)?;
    let certificate = client_certificate(leaf, session)?;
    Ok(Verified {
        stream,
        client,
        certificate,
    })
}

/// The preamble, then the session goes to the kernel where it can. The app is reached at
/// the address the client dialed, with the port the preamble names. None: the client
/// closed the session before sending anything (a spare session it did not use, see
/// `spares`).
pub async fn preamble(
    v: Verified,
    dialed: IpAddr,
    offload: &tls::offload::Offload,
) -> Result<Option<Accepted>> {
    let Verified {
        mut stream,
        client,
        certificate,
    } = v;
    let preamble = tokio::time::timeout(HANDSHAKE_TIMEOUT, preamble::read(&mut stream))
        .await
        .map_err(|_| Failure::TimedOut("preamble".into()))?
        .map_err(|e| Failure::io("preamble", e))?;
    let Some(preamble) = preamble else {
        return Ok(None);
    };
    if [OUTBOUND_PORT, INBOUND_PORT, TUNNEL_PORT].contains(&preamble.port) {
        return Err(Failure::Peer(format!(
            "port {} is the daemon's own",
            preamble.port
        )));
    }
    // Bytes the client sent after the preamble may still sit in rustls: the offload
    // drains them into the stream it returns.
    let stream = offload.server(stream).await?;
    Ok(Some(Accepted {
        stream,
        client,
        certificate,
        dst: SocketAddr::new(dialed, preamble.port),
    }))
}
