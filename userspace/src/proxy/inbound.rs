//! Inbound: connections sk_lookup steered to a pod's inbound listener, delivered to the
//! app inside the pod with the client's own address as the source.

use std::{net::SocketAddr, sync::Arc};

use anyhow::{Result, bail};
use hawser_common::{INBOUND_PORT, OUTBOUND_PORT, TUNNEL_PORT};
use tokio::net::{TcpListener, TcpStream};

use super::{
    accept_loop,
    relay::{Connection, Direction},
    sockets,
};
use crate::{node::pod::PodContext, tunnel};

pub async fn serve(listener: TcpListener, pod: Arc<PodContext>) {
    accept_loop(listener, pod, |conn, peer, pod| async move {
        handle(conn, peer, &pod).await;
    })
    .await
}

/// Tunnel connections: mutual TLS with the pod's SVID, then delivery to the app port the
/// preamble names, as the client pod's own address.
pub async fn serve_tunnel(listener: TcpListener, pod: Arc<PodContext>) {
    accept_loop(listener, pod, |conn, peer, pod| async move {
        let dst = conn.local_addr().unwrap_or(peer);
        let record = Connection::new(Direction::Tunnel, &pod, peer, dst);
        let accepted = match tunnel::server::accept(&pod, conn).await {
            Ok(accepted) => accepted,
            Err(e) => return record.refuse(&format!("{e:#}")),
        };
        let record = Connection::new(Direction::Tunnel, &pod, peer, accepted.dst)
            .mtls(&accepted.client, pod.shared.offload.path());
        if let Err(why) = pod.admit(accepted.dst.port(), Some(&accepted.client)) {
            return record.refuse(&format!("policy: {why}"));
        }
        match deliver(&pod, peer, accepted.dst).await {
            Ok(app) => record.relay_tunnel(app, accepted.stream).await,
            Err(e) => record.refuse(&format!("{e:#}")),
        }
    })
    .await
}

async fn handle(conn: TcpStream, peer: SocketAddr, pod: &PodContext) {
    // sk_lookup keeps the address the client dialed as the socket's local address.
    let dst = match conn.local_addr() {
        Ok(dst) => dst,
        Err(e) => return tracing::warn!(pod = %pod.key, "inbound local_addr: {e}"),
    };
    let record = Connection::new(Direction::Inbound, pod, peer, dst);
    // Plaintext: only a pod of this node has an identity here (see Shared::local_identity).
    if let Err(why) = pod.admit(dst.port(), pod.shared.local_identity(peer.ip()).as_ref()) {
        return record.refuse(&format!("policy: {why}"));
    }
    match deliver(pod, peer, dst).await {
        Ok(app) => record.relay(conn, app).await,
        Err(e) => record.refuse(&format!("{e:#}")),
    }
}

/// Connects to the app at `dst` from inside the pod, as `client`.
async fn deliver(pod: &PodContext, client: SocketAddr, dst: SocketAddr) -> Result<TcpStream> {
    if [OUTBOUND_PORT, INBOUND_PORT, TUNNEL_PORT].contains(&dst.port()) {
        bail!("port {} is the daemon's own", dst.port());
    }
    let socket = pod.netns.run(move || sockets::transparent(client)).await?;
    let bound = socket.local_addr()?;
    // Announced, sk_lookup lets this connection through to the app instead of steering it
    // back to us.
    pod.dataplane.announce_delivery(bound, dst)?;
    let connected = sockets::connect(socket, dst).await;
    pod.dataplane.forget_delivery(bound, dst);
    connected
}
