//! Outbound: connections the connect hooks captured in a pod, relayed to where the app
//! meant to go, from inside the pod's namespace so the pod's own address is the source.

use std::{io::Read, net::SocketAddr, sync::Arc};

use tokio::net::{TcpListener, TcpStream};

use super::{
    accept_loop,
    live::Admitted,
    refusal::Refusal,
    relay::{Connection, Direction},
    same_node::{Origin, Record},
    sockets, splice,
};
use crate::{
    context::pod::PodContext,
    egress::originate,
    failure::{Failure, Result},
    tunnel::{self, client::Opened},
};
use hawser_model::{SpiffeId, egress::route::Origination, policy::Principal, route::Route};

pub async fn serve(listener: TcpListener, pod: Arc<PodContext>) {
    accept_loop(listener, pod, |client, peer, pod| async move {
        handle(client, peer, &pod).await;
    })
    .await
}

async fn handle(client: TcpStream, peer: SocketAddr, pod: &Arc<PodContext>) {
    let Some(dst) = pod.net.original_dst(peer) else {
        let local = client.local_addr().map_or(peer, sockets::canonical);
        Connection::new(Direction::Outbound, pod, peer, local)
            .refuse(Refusal::NoOriginalDestination);
        return;
    };
    // The app's socket is on loopback (its connect was redirected to the daemon): the
    // log names the pod's own address, with the app's port.
    let src = pod.workload.ip_like(dst.ip()).unwrap_or(peer.ip());
    let mut conn = Connection::new(
        Direction::Outbound,
        pod,
        SocketAddr::new(src, peer.port()),
        dst,
    );
    match pod.shared.route(&pod.workload, dst) {
        Route::Direct { to } => match pod.connect(to).await {
            Ok(upstream) => conn.relay(client, upstream).await,
            Err(e) => conn.refuse(Refusal::Connect(e)),
        },
        Route::Local { to } => match connect_local(pod, to).await {
            Ok((upstream, _record)) => conn.relay(client, upstream).await,
            Err(e) => conn.refuse(Refusal::Connect(e)),
        },
        // Never falls back to plaintext: a mesh peer is reached through the tunnel or not.
        Route::Tunnel { to, peer } => {
            let conn = conn.mtls(&peer, pod.shared.offload.path()).handable(pod);
            // Boxed, like every handshake on a connection's path: its state is large and
            // needed only until it ends, but inline it would stay in the connection's task
            // for the connection's life (kilobytes per idle connection).
            let opening = match Box::pin(tunnel::client::open(pod, to, &peer)).await {
                Ok(opening) => opening,
                Err(e) => return conn.refuse(Refusal::Tunnel(e)),
            };
            // Admitted before any of the app's bytes leave; watched: a withdrawn trust
            // domain or a revoked server cuts it.
            let serial = opening.server_serial().to_string();
            let mut conn = match pod.admit_live(opened(&peer, dst, serial)) {
                Ok(ticket) => conn.watched(ticket),
                Err(refusal) => return conn.refuse(refusal),
            };
            let first = match waiting(&client) {
                Ok(first) => first,
                Err(e) => return conn.failed_at_start(e),
            };
            let sent_first = first.len();
            let started = tunnel::client::start(pod, opening, first);
            let upstream = match Box::pin(started).await {
                Ok(upstream) => upstream,
                Err(e) => {
                    // Its first bytes were read: a close would look like a clean end.
                    splice::reset(&client);
                    return conn.refuse(Refusal::Tunnel(e));
                }
            };
            conn.sent_first(sent_first);
            match upstream {
                Opened::Single(stream) => conn.relay_tunnel(client, stream).await,
                Opened::Serial(mut session) => {
                    // Boxed: a framed relay's state is larger than a plain one's; inline,
                    // every connection's task would be as large.
                    let relayed = Box::pin(conn.relay_stream(client, &mut session.stream));
                    if relayed.await {
                        tunnel::client::keep(pod, to.ip(), &peer, session);
                    }
                }
            }
        }
        // Boxed: see the serial relay above.
        Route::Egress(o) => Box::pin(egress(conn, client, pod, &o)).await,
        Route::Refused(why) => conn.refuse(Refusal::NoRoute(why)),
    }
}

/// What the app sent already, read without waiting (see `tunnel::client::start`). An
/// error ends the connection here: read again later, a reset would look like a clean end.
fn waiting(client: &TcpStream) -> std::io::Result<Vec<u8>> {
    let mut bytes = [0; tunnel::client::FIRST_BYTES];
    match (&*socket2::SockRef::from(client)).read(&mut bytes) {
        Ok(n) => Ok(bytes[..n].to_vec()),
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}

/// A tunnel the pod opened to `peer`, as `Live` keeps it.
pub fn opened(peer: &SpiffeId, dst: SocketAddr, serial: String) -> Admitted {
    Admitted {
        port: dst.port(),
        principal: Some(Principal::Spiffe(peer.clone())),
        serial: Some(serial),
        opened: true,
    }
}

/// To an external service: plain to its target port, or through TLS the daemon
/// originates (never plaintext when a rule asks for TLS).
async fn egress(conn: Connection, client: TcpStream, pod: &PodContext, o: &Origination) {
    match &o.tls {
        None => {
            let mut conn = conn.egress(o, None);
            match originate::dial(pod, o).await {
                Ok(upstream) => conn.relay(client, upstream).await,
                Err(e) => conn.refuse(Refusal::Connect(e)),
            }
        }
        Some((rule, settings)) => {
            let mut conn = conn.egress(o, Some((settings.mode, pod.shared.offload.path())));
            match Box::pin(originate::tls(pod, o, settings)).await {
                Ok(upstream) => conn.relay_tunnel(client, upstream).await,
                Err(error) => conn.refuse(Refusal::Origination {
                    rule: rule.clone(),
                    error,
                }),
            }
        }
    }
}

/// Connects to a pod of this node, recording the exact connection as this pod's before it
/// exists, so the other pod's inbound side can tell it from one with a borrowed address.
/// The record lives as long as the returned guard.
async fn connect_local(pod: &PodContext, dst: SocketAddr) -> Result<(TcpStream, Option<Record>)> {
    // The pod's address of the destination's family; without one (an address not yet
    // known, a dual-stack pod declared with one family) it goes unauthenticated.
    let source = pod.workload.ip_like(dst.ip());
    let socket = pod.socket(dst, source)?;
    let bound = socket.local_addr();
    let bound = bound.map_err(|e| Failure::io("the bound address", e))?;
    let origin = || Origin {
        identity: pod.identity.clone(),
        serial: pod.svid().map(|svid| svid.serial.clone()),
    };
    let bound = sockets::canonical(bound);
    let record = source.map(|_| pod.shared.originated.record(bound, dst, origin()));
    Ok((
        sockets::connect(socket, dst, pod.shared.keepalive).await?,
        record,
    ))
}
