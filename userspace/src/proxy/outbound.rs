//! Outbound: connections the connect hooks captured in a pod, relayed to where the app
//! meant to go, from inside the pod's namespace so the pod's own address is the source.

use std::{net::SocketAddr, sync::Arc};

use anyhow::Result;
use tokio::net::{TcpListener, TcpStream};

use super::{
    accept_loop,
    relay::{Connection, Direction},
    sockets,
};
use crate::{
    egress::{originate, route::Origination},
    node::{Route, pod::PodContext},
    tunnel,
};

pub async fn serve(listener: TcpListener, pod: Arc<PodContext>) {
    accept_loop(listener, pod, |client, peer, pod| async move {
        handle(client, peer, &pod).await;
    })
    .await
}

async fn handle(client: TcpStream, peer: SocketAddr, pod: &PodContext) {
    let Some(dst) = pod.dataplane.take_original_dst(pod.netns_cookie, peer) else {
        let local = client.local_addr().unwrap_or(peer);
        Connection::new(Direction::Outbound, pod, peer, local)
            .refuse("no original destination recorded for this connection");
        return;
    };
    let conn = Connection::new(Direction::Outbound, pod, peer, dst);
    match pod.shared.route(&pod.workload, dst) {
        Route::Direct { to } => match connect(pod, to).await {
            Ok(upstream) => conn.relay(client, upstream).await,
            Err(e) => conn.refuse(&format!("{e:#}")),
        },
        // Never falls back to plaintext: a mesh peer is reached through the tunnel or not.
        Route::Tunnel { to, peer } => {
            let conn = conn.mtls(&peer, pod.shared.offload.path());
            match tunnel::client::connect(pod, to, &peer).await {
                Ok(upstream) => conn.relay_tunnel(client, upstream).await,
                Err(e) => conn.refuse(&format!("{e:#}")),
            }
        }
        Route::Egress(o) => egress(conn, client, pod, &o).await,
        Route::Refused(why) => conn.refuse(&why),
    }
}

/// To an external service: plain to its target port, or through TLS the daemon
/// originates (never plaintext when a rule asks for TLS).
async fn egress(conn: Connection, client: TcpStream, pod: &PodContext, o: &Origination) {
    match &o.tls {
        None => {
            let conn = conn.egress(o, None);
            match originate::dial(pod, o).await {
                Ok(upstream) => conn.relay(client, upstream).await,
                Err(e) => conn.refuse(&format!("{e:#}")),
            }
        }
        Some((rule, settings)) => {
            let conn = conn.egress(o, Some((settings.mode, pod.shared.offload.path())));
            match originate::tls(pod, o, settings).await {
                Ok(upstream) => conn.relay_tunnel(client, upstream).await,
                Err(e) => conn.refuse(&format!("DestinationRule {rule}: {e:#}")),
            }
        }
    }
}

/// Connects to `dst` with a socket made inside the pod's namespace.
async fn connect(pod: &PodContext, dst: SocketAddr) -> Result<TcpStream> {
    let socket = pod.netns.run(move || sockets::outbound(dst)).await?;
    sockets::connect(socket, dst).await
}
