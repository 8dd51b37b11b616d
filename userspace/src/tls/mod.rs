//! TLS, for the tunnel, for ports terminated for outside clients and for originated TLS
//! alike: the configurations (`configs`, cached per SVID and bundle in `cache`), the
//! checks on a peer's certificate (`verify`), handshakes bounded in time and timed in the
//! handshake metric (here), and the hand-off of an established session to the kernel
//! or the daemon's record layer (`offload`, `kernel_tls`, `records`, over a socket read
//! for the path the session takes: `socket`).

pub mod cache;
pub mod configs;
pub mod kernel_tls;
pub mod offload;
pub mod records;
pub mod socket;
pub mod verify;

use std::{fmt::Display, future::Future, io, sync::Arc, time::Duration};

use rustls::{ClientConfig, CommonState, HandshakeKind, ServerConfig, pki_types::ServerName};
use tokio::net::TcpStream;
use tokio_rustls::{TlsAcceptor, TlsConnector, client, server};

use crate::{
    failure::{Failure, Result},
    metrics::{METRICS, timed},
};
use offload::Offload;
use socket::Socket;

/// Handshake and preamble must complete within this, or the connection is dropped.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The client side of a handshake with `peer` on `tcp`; `side` names it in the metric.
pub async fn connect(
    side: &'static str,
    peer: impl Display,
    tcp: TcpStream,
    config: Arc<ClientConfig>,
    name: ServerName<'static>,
    offload: &Offload,
) -> Result<client::TlsStream<Socket>> {
    let handshake = TlsConnector::from(config).connect(name, offload.prepare(tcp));
    let stream = bounded(side, peer, handshake).await?;
    counted(side, stream.get_ref().1);
    Ok(stream)
}

/// The server side of a handshake on an accepted `conn`; `side` names it in the metric.
pub async fn accept(
    side: &'static str,
    conn: TcpStream,
    config: Arc<ServerConfig>,
    offload: &Offload,
) -> Result<server::TlsStream<Socket>> {
    let peer = conn
        .peer_addr()
        .map_or("the client".into(), |a| a.to_string());
    let handshake = TlsAcceptor::from(config).accept(offload.prepare(conn));
    let stream = bounded(side, peer, handshake).await?;
    counted(side, stream.get_ref().1);
    Ok(stream)
}

/// Counts a completed handshake by side and kind.
fn counted(side: &'static str, session: &CommonState) {
    let kind = match session.handshake_kind() {
        Some(HandshakeKind::Resumed) => "resumed",
        _ => "full",
    };
    METRICS.handshakes.with_label_values(&[side, kind]).inc();
}

/// Runs a `handshake` with `peer` within `HANDSHAKE_TIMEOUT`, timed in the handshake
/// metric as `side` (client, server, inbound, egress): every handshake the daemon does.
async fn bounded<S>(
    side: &'static str,
    peer: impl Display,
    handshake: impl Future<Output = io::Result<S>>,
) -> Result<S> {
    timed(&METRICS.handshake_seconds, side, async {
        tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake)
            .await
            .map_err(|_| Failure::TimedOut(format!("TLS handshake with {peer}")))?
            .map_err(|e| Failure::io(format!("TLS handshake with {peer}"), e))
    })
    .await
}
