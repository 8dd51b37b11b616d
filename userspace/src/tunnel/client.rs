//! The client end: from the source pod to the destination pod's daemon on 15008.

use std::{
    net::{IpAddr, SocketAddr},
    sync::{Arc, Weak},
    time::{Duration, Instant},
};

use hawser_common::TUNNEL_PORT;
use rustls::pki_types::ServerName;
use tokio::io::AsyncWriteExt;
use tokio_rustls::client::TlsStream;

use super::{
    preamble::Preamble,
    spares::{MAX_AGE, Spare},
};
use crate::{
    context::pod::PodContext,
    failure::{Failure, Result},
    identity::certs,
    svid::{Svid, TrustBundle},
    tls::{self, offload::TunnelStream, socket::Socket, verify::session_peer},
};
use hawser_model::SpiffeId;

/// The next spare's handshake waits this long after the connection that asked for it:
/// its CPU, on both daemons, would otherwise compete with that connection's start
/// (measured here: p50 of a new connection 1.3 ms without the wait, 1.1 ms with it).
const SPARE_DELAY: Duration = Duration::from_millis(5);

/// Opens the tunnel to `dst`'s pod (or takes the spare session there), proves `peer` is
/// there, names the port, and hands the session to the kernel where it can take it.
/// Returns it with the serial of the server's certificate (for revocation).
pub async fn connect(
    pod: &Arc<PodContext>,
    dst: SocketAddr,
    peer: &SpiffeId,
) -> Result<(TunnelStream, String)> {
    let (svid, bundle) = pod.credentials_soon().await?;
    let taken = pod.spares.take(dst.ip(), peer, &svid, &bundle);
    if taken.make_next {
        let (pod, peer) = (Arc::downgrade(pod), peer.clone());
        tokio::spawn(make_spare(
            pod,
            dst.ip(),
            peer,
            (svid.clone(), bundle.clone()),
        ));
    }
    let (mut stream, serial) = match taken.spare {
        Some(spare) => (spare.stream, spare.server_serial),
        None => handshake(pod, dst.ip(), peer, &svid, &bundle).await?,
    };
    let preamble = Preamble { port: dst.port() }.encode();
    let sent = async {
        stream.write_all(&preamble).await?;
        stream.flush().await
    };
    sent.await
        .map_err(|e| Failure::io(format!("preamble to {dst}"), e))?;
    Ok((pod.shared.offload.client(stream).await?, serial))
}

/// A session with `dst`'s daemon in which `peer` proved itself, and the serial of its
/// certificate.
async fn handshake(
    pod: &PodContext,
    dst: IpAddr,
    peer: &SpiffeId,
    svid: &Arc<Svid>,
    bundle: &Arc<TrustBundle>,
) -> Result<(TlsStream<Socket>, String)> {
    let offload = &pod.shared.offload;
    let config = pod.tls_configs.client(svid, bundle, peer, offload)?;
    let tunnel = SocketAddr::new(dst, TUNNEL_PORT);
    let tcp = pod.connect(tunnel).await?;
    // Names play no part in the check (see `tls::verify::SecureNaming`); an IP sends no SNI.
    let name = ServerName::IpAddress(dst.into());
    let stream = tls::connect("client", tunnel, tcp, config, name, offload).await?;
    let (_, leaf) = session_peer(stream.get_ref().1, bundle, Some(peer))?;
    let server = certs::info_der(leaf.as_ref()).map_err(|e| Failure::Peer(format!("{e:#}")))?;
    Ok((stream, server.serial))
}

/// Makes the next spare session to `dst` as `peer` (once `SPARE_DELAY` has passed, if the
/// pod is still served), and drops it if it is still unused when too old (without keeping
/// the pod's context meanwhile).
async fn make_spare(
    pod: Weak<PodContext>,
    dst: IpAddr,
    peer: SpiffeId,
    (svid, bundle): (Arc<Svid>, Arc<TrustBundle>),
) {
    tokio::time::sleep(SPARE_DELAY).await;
    let Some(pod) = pod.upgrade() else {
        return;
    };
    let made = Instant::now();
    let spare = match handshake(&pod, dst, &peer, &svid, &bundle).await {
        Ok((stream, server_serial)) => Some(Spare {
            stream,
            server_serial,
            svid,
            bundle,
            made,
        }),
        Err(e) => {
            tracing::debug!(pod = %pod.key, %dst, "no spare tunnel session: {e}");
            None
        }
    };
    pod.spares.put(dst, &peer, spare);
    let pod = Arc::downgrade(&pod);
    tokio::time::sleep(MAX_AGE.saturating_sub(made.elapsed())).await;
    if let Some(pod) = pod.upgrade() {
        pod.spares.expire(dst, &peer, made);
    }
}
