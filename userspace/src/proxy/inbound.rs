//! Inbound: connections sk_lookup steered to a pod's inbound listener, delivered to the
//! app inside the pod with the client's own address as the source.

use std::{io, net::SocketAddr, sync::Arc, time::Duration};

use hawser_common::{INBOUND_PORT, OUTBOUND_PORT, TUNNEL_PORT};
use tokio::{
    io::AsyncWriteExt,
    net::{TcpListener, TcpStream},
};

use super::{
    accept_loop,
    caller::Caller,
    live::Admitted,
    refusal::Refusal,
    relay::{Connection, Direction},
    sockets, terminate,
};
use crate::{
    context::{
        pod::PodContext,
        steering::{DeliveryPort, Steering},
    },
    failure::{Failure, Result},
    tls::offload::{TlsPath, TunnelStream},
    tunnel,
};
use hawser_model::{
    SpiffeId,
    ports::{PortSettings, ServerTls},
};

pub async fn serve(listener: TcpListener, pod: Arc<PodContext>) {
    accept_loop(listener, pod, |conn, peer, pod| async move {
        handle(conn, peer, &pod).await;
    })
    .await
}

/// Tunnel connections: mutual TLS with the pod's SVID, then delivery to the app port the
/// preamble names (each preamble's, on a serial session), as the client pod's own address.
pub async fn serve_tunnel(listener: TcpListener, pod: Arc<PodContext>) {
    accept_loop(listener, pod, |conn, peer, pod| async move {
        tunnel(conn, peer, &pod).await;
    })
    .await
}

async fn tunnel(conn: TcpStream, peer: SocketAddr, pod: &PodContext) {
    // Boxed: the handshake, the preamble and the delivery need their state only until they
    // end; inline, it would stay in the connection's task for the connection's life.
    match Box::pin(accept_tunnel(conn, peer, pod)).await {
        Some(Next::Relay(mut record, app, stream)) => record.relay_tunnel(app, stream).await,
        // Boxed: a session's loop is larger than a single relay; inline, every tunnel's
        // task would be as large.
        Some(Next::Streams(session, dialed)) => {
            Box::pin(serial_streams(pod, peer, dialed, session)).await;
        }
        None => {}
    }
}

/// What an accepted tunnel connection carries next.
#[expect(
    clippy::large_enum_variant,
    reason = "taken apart as soon as it is returned; boxing would cost an allocation"
)]
enum Next {
    /// One stream, admitted and delivered to the app: to relay.
    Relay(Connection, TcpStream, TunnelStream),
    /// A serial session, authenticated, to the address the client dialed: its streams
    /// come next.
    Streams(Box<tunnel::server::Verified>, SocketAddr),
}

/// A tunnel connection authenticated, and either admitted and delivered to the app or
/// found to be a serial session. None: refused (logged), or closed unused.
async fn accept_tunnel(conn: TcpStream, peer: SocketAddr, pod: &PodContext) -> Option<Next> {
    let local = conn.local_addr().map_or(peer, sockets::canonical);
    let Some(dialed) = pod.net.dialed(local, peer) else {
        let record = Connection::new(Direction::Tunnel, pod, peer, local);
        record.refuse(Refusal::NotSteered);
        return None;
    };
    let record = Connection::new(Direction::Tunnel, pod, peer, dialed);
    let permit = match pod.unauthenticated.enter(peer.ip()) {
        Ok(permit) => permit,
        Err(why) => {
            record.refuse_unauthenticated(Refusal::TooManyHandshakes(why), pod);
            return None;
        }
    };
    // Boxed: its state is needed only until it ends.
    let verified = match Box::pin(tunnel::server::handshake(pod, conn)).await {
        Ok(verified) => verified,
        Err(e) => {
            record.refuse_unauthenticated(Refusal::Handshake(e), pod);
            return None;
        }
    };
    // Authenticated: the preamble wait (a spare session waits here) is no handshake.
    drop(permit);
    if verified.serial() {
        return Some(Next::Streams(verified, dialed));
    }
    let client = verified.client.clone();
    let path = pod.shared.offload.path();
    let preamble = tunnel::server::preamble(verified, dialed.ip(), &pod.shared.offload);
    let accepted = match Box::pin(preamble).await {
        Ok(Some(accepted)) => accepted,
        Ok(None) => {
            unused(pod, peer, &client);
            return None;
        }
        Err(e) => {
            record.mtls(&client, path).refuse(Refusal::Handshake(e));
            return None;
        }
    };
    let caller = Caller {
        src: peer,
        dst: accepted.dst,
        principal: Some(accepted.client.clone().into()),
        certificate: Some(accepted.certificate),
    };
    let (record, app) = open(pod, &accepted.client, caller, path).await?;
    Some(Next::Relay(record, app, accepted.stream))
}

/// A serial session's streams, one after another, each admitted and delivered like a
/// tunnel of its own; the session ends with the first that does not end cleanly (a
/// draining daemon tells the client to send no more, see `tunnel::server::next_stream`).
async fn serial_streams(
    pod: &PodContext,
    peer: SocketAddr,
    dialed: SocketAddr,
    mut session: Box<tunnel::server::Verified>,
) {
    let path = TlsPath::Userspace;
    let mut first = true;
    loop {
        let next = tunnel::server::next_stream(&mut session, dialed.ip(), pod, first);
        let dst = match Box::pin(next).await {
            Ok(Some(dst)) => dst,
            Ok(None) if first => return unused(pod, peer, &session.client),
            Ok(None) => return,
            Err(e) => {
                // The first stream's preamble completes the tunnel, as on any tunnel.
                let refusal = if first {
                    Refusal::Handshake(e)
                } else {
                    Refusal::Session(e)
                };
                let record = Connection::new(Direction::Tunnel, pod, peer, dialed);
                return record.mtls(&session.client, path).refuse(refusal);
            }
        };
        first = false;
        let caller = Caller {
            src: peer,
            dst,
            principal: Some(session.client.clone().into()),
            certificate: Some(session.certificate.clone()),
        };
        let client = session.client.clone();
        let Some((mut record, app)) = open(pod, &client, caller, path).await else {
            return;
        };
        if !record.relay_stream(app, session.stream()).await {
            return;
        }
    }
}

/// A tunnel the client closed before naming a stream: a spare it did not use.
fn unused(pod: &PodContext, peer: SocketAddr, client: &SpiffeId) {
    let unused = "tunnel closed before its preamble (an unused spare)";
    tracing::debug!(pod = %pod.key, %peer, %client, "{unused}");
}

/// Admits a tunnel stream of `client` (policy, revocation: watched from then on) and
/// connects it to the app; refusals are logged.
async fn open(
    pod: &PodContext,
    client: &SpiffeId,
    caller: Caller,
    path: TlsPath,
) -> Option<(Connection, TcpStream)> {
    let record = Connection::new(Direction::Tunnel, pod, caller.src, caller.dst)
        .mtls(client, path)
        .handable(pod);
    let ticket = match pod.admit_live(caller.admitted()) {
        Ok(ticket) => ticket,
        Err(refusal) => {
            record.refuse(refusal);
            return None;
        }
    };
    let settings = pod.port_settings(caller.dst.port());
    match deliver(pod, &caller, &settings).await {
        Ok(app) => Some((record.watched(ticket), app)),
        Err(e) => {
            record.refuse(Refusal::Connect(e));
            None
        }
    }
}

async fn handle(conn: TcpStream, peer: SocketAddr, pod: &PodContext) {
    let local = conn.local_addr().map_or(peer, sockets::canonical);
    let Some(dst) = pod.net.dialed(local, peer) else {
        return Connection::new(Direction::Inbound, pod, peer, local).refuse(Refusal::NotSteered);
    };
    let record = Connection::new(Direction::Inbound, pod, peer, dst);
    let settings = pod.port_settings(dst.port());
    if let Some(tls) = &settings.tls {
        return terminated(record.expecting_mtls(), conn, pod, tls, &settings).await;
    }
    // Plaintext: only a connection the daemon opened for a pod of this node has an
    // identity (see `same_node`); an address alone proves nothing.
    let origin = pod.shared.originated.origin(peer, dst);
    let record = match &origin {
        Some(origin) => record.same_node(&origin.identity),
        None => record,
    };
    let caller = Caller {
        src: peer,
        dst,
        principal: origin.as_ref().map(|o| o.identity.clone().into()),
        certificate: None,
    };
    let admitted = Admitted {
        serial: origin.and_then(|o| o.serial),
        ..caller.admitted()
    };
    let ticket = match pod.admit_live(admitted) {
        Ok(ticket) => ticket,
        Err(refusal) => return record.refuse(refusal),
    };
    match deliver(pod, &caller, &settings).await {
        Ok(app) => record.watched(ticket).relay(conn, app).await,
        Err(e) => record.refuse(Refusal::Connect(e)),
    }
}

/// A port with TLS for clients outside the mesh: the daemon does the handshake, policy
/// sees the client's certificate.
async fn terminated(
    record: Connection,
    conn: TcpStream,
    pod: &PodContext,
    tls: &ServerTls,
    settings: &PortSettings,
) {
    let (src, dst) = (record.src, record.dst);
    let permit = match pod.unauthenticated.enter(src.ip()) {
        Ok(permit) => permit,
        Err(why) => return record.refuse_unauthenticated(Refusal::TooManyHandshakes(why), pod),
    };
    let client = match Box::pin(terminate::accept(pod, conn, tls)).await {
        Ok(client) => client,
        Err(e) => return record.refuse_unauthenticated(Refusal::Handshake(e), pod),
    };
    drop(permit);
    let record = record.mtls(&client.principal, pod.shared.offload.path());
    let caller = Caller {
        src,
        dst,
        principal: Some(client.principal),
        certificate: Some(client.certificate),
    };
    let ticket = match pod.admit_live(caller.admitted()) {
        Ok(ticket) => ticket,
        Err(refusal) => return record.refuse(refusal),
    };
    match deliver(pod, &caller, settings).await {
        Ok(app) => {
            record
                .watched(ticket)
                .relay_tunnel(app, client.stream)
                .await
        }
        Err(e) => record.refuse(Refusal::Connect(e)),
    }
}

/// Connects to the app at the caller's destination from inside the pod, as the caller,
/// and tells it who called when the port asks for a PROXY header.
async fn deliver(pod: &PodContext, caller: &Caller, settings: &PortSettings) -> Result<TcpStream> {
    let (client, dst) = (caller.src, caller.dst);
    let own = [OUTBOUND_PORT, INBOUND_PORT, TUNNEL_PORT];
    if own.contains(&dst.port()) || pod.listener_ports.contains(&dst.port()) {
        return Err(Failure::Peer(format!(
            "port {} is the daemon's own",
            dst.port()
        )));
    }
    let mut app = connect_as(pod, client, dst).await?;
    if settings.proxy_protocol {
        let header = caller.proxy_header();
        let header = header.map_err(|e| Failure::Peer(format!("PROXY header: {e}")))?;
        let written = app.write_all(&header).await;
        written.map_err(|e| Failure::io("PROXY header to the app", e))?;
    }
    Ok(app)
}

/// The ports a delivery tries, in order: random ones that may be shared (a port whose
/// 4-tuple a live delivery of the same client to the same app holds comes up again only
/// by chance), then a free one.
const DELIVERY_PORTS: [DeliveryPort; 4] = [
    DeliveryPort::Shared,
    DeliveryPort::Shared,
    DeliveryPort::Shared,
    DeliveryPort::Free,
];

/// How long a delivery's pass lets its SYNs through: past the connect's own timeout and
/// the delivery socket's last SYN (`sockets::transparent`), so that a live delivery never
/// loses it, and bounded, so that the pass of a daemon killed while it connected does not
/// stay a way around the mesh.
const PASS_LIFETIME: Duration = Duration::from_secs(sockets::CONNECT_TIMEOUT.as_secs() + 1);

/// Connects to the app at `dst` from `client`'s address (`sockets::transparent`: its port
/// may be one in TIME_WAIT, taken over); a port whose 4-tuple is in use is tried again
/// elsewhere.
async fn connect_as(pod: &PodContext, client: SocketAddr, dst: SocketAddr) -> Result<TcpStream> {
    for port in DELIVERY_PORTS {
        if let Some(app) = try_connect_as(pod, client, dst, port).await? {
            return Ok(app);
        }
    }
    let taken = io::Error::new(
        io::ErrorKind::AddrNotAvailable,
        format!(
            "each of {} ports tried is in use to this app",
            DELIVERY_PORTS.len()
        ),
    );
    Err(Failure::io(
        format!("connect {dst} from {}", client.ip()),
        taken,
    ))
}

/// One try of `connect_as`; None when its port's 4-tuple is in use.
async fn try_connect_as(
    pod: &PodContext,
    client: SocketAddr,
    dst: SocketAddr,
    port: DeliveryPort,
) -> Result<Option<TcpStream>> {
    let socket = pod.net.delivery_socket(client, port);
    let socket = socket.map_err(|e| Failure::io("a delivery socket in the pod", e))?;
    let bound = socket.local_addr();
    let bound = bound.map_err(|e| Failure::io("the bound address", e))?;
    // Announced, sk_lookup lets this connection through to the app instead of steering it
    // back to us.
    if !pod.net.announce_delivery(bound, dst, PASS_LIFETIME)? {
        tracing::debug!(%bound, %dst, "another delivery holds this 4-tuple's pass");
        return Ok(None);
    }
    let pass = Pass {
        net: &*pod.net,
        bound,
        dst,
    };
    let connected = sockets::connect(socket, dst, pod.shared.keepalive).await;
    drop(pass);
    match connected {
        Err(Failure::Io { error, .. }) if error.kind() == io::ErrorKind::AddrNotAvailable => {
            tracing::debug!(%bound, %dst, "a live connection holds this 4-tuple");
            Ok(None)
        }
        connected => connected.map(Some),
    }
}

/// A delivery's sk_lookup pass, forgotten when dropped: also when the delivery is given up
/// while it connects (its connection cut), so that no pass outlives its connect.
struct Pass<'a> {
    net: &'a dyn Steering,
    bound: SocketAddr,
    dst: SocketAddr,
}

impl Drop for Pass<'_> {
    fn drop(&mut self) {
        self.net.forget_delivery(self.bound, self.dst);
    }
}
