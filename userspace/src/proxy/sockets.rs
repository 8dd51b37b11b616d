//! Sockets the daemon opens inside a pod's namespace. The connect hooks leave them alone
//! because the daemon's cgroup is exempt (see `redirect::dataplane`), not by any mark.

use std::{
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    time::Duration,
};

use hawser_common::MARK_DELIVER;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::{TcpSocket, TcpStream};

use crate::failure::{Failure, Result};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Connects a socket made by one of the functions below, within a bounded time.
pub async fn connect(
    socket: std::net::TcpStream,
    dst: SocketAddr,
    keepalive: Keepalive,
) -> Result<TcpStream> {
    let connecting = TcpSocket::from_std_stream(socket).connect(dst);
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, connecting)
        .await
        .map_err(|_| Failure::TimedOut(format!("connect {dst}")))?
        .map_err(|e| Failure::io(format!("connect {dst}"), e))?;
    tune(&stream, keepalive);
    Ok(stream)
}

/// How long a relayed connection may go silent before the kernel probes its peer. An idle
/// app connection is legitimate and stays; a peer that vanished (node gone, link cut, no
/// RST ever coming) is found by the probes, and the relay then ends the other side with a
/// reset instead of holding both sockets forever.
#[derive(Clone, Copy, Debug)]
pub struct Keepalive {
    pub idle: Duration,
}

impl Keepalive {
    const PROBES: u32 = 4;

    fn interval(self) -> Duration {
        (self.idle / Self::PROBES).max(Duration::from_secs(1))
    }

    /// Unacknowledged data is not probed; TCP_USER_TIMEOUT bounds it the same way.
    fn user_timeout(self) -> Duration {
        self.idle + self.interval() * Self::PROBES
    }
}

/// Options of every relayed socket: no Nagle (the daemon relays what the app already chose
/// to send: holding a small segment back for an ACK the peer delays costs 40 ms where a
/// handshake's last flight is followed by the preamble or a request) and keep-alives.
pub fn tune(stream: &TcpStream, keepalive: Keepalive) {
    if let Err(e) = stream.set_nodelay(true) {
        tracing::debug!("TCP_NODELAY: {e}");
    }
    let probes = socket2::TcpKeepalive::new()
        .with_time(keepalive.idle)
        .with_interval(keepalive.interval())
        .with_retries(Keepalive::PROBES);
    let socket = socket2::SockRef::from(stream);
    let tuned = socket
        .set_tcp_keepalive(&probes)
        .and_then(|()| socket.set_tcp_user_timeout(Some(keepalive.user_timeout())));
    if let Err(e) = tuned {
        tracing::debug!("TCP keep-alive: {e}");
    }
}

/// A listener for connections steered to it by sk_lookup, on a free port (its address
/// does not matter to steering). Dual-stack where the kernel has IPv6, so it takes
/// connections of both families, which needs the wildcard address (binding ::1 makes a
/// socket IPv6-only). Nothing reaches it from the network unsteered: sk_lookup steers
/// every connection arriving there; the handlers refuse direct ones from the pod itself.
pub fn steered_listener() -> io::Result<std::net::TcpListener> {
    let dual = || -> io::Result<Socket> {
        let socket = Socket::new(Domain::IPV6, Type::STREAM, Some(Protocol::TCP))?;
        socket.set_only_v6(false)?;
        socket.bind(&SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), 0).into())?;
        Ok(socket)
    };
    let socket = match dual() {
        Ok(socket) => socket,
        Err(e) => {
            tracing::debug!("no IPv6 in the pod ({e}): IPv4 listener");
            let socket = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))?;
            socket.bind(&SocketAddr::new(Ipv4Addr::LOCALHOST.into(), 0).into())?;
            socket
        }
    };
    socket.set_nonblocking(true)?;
    socket.listen(1024)?;
    Ok(socket.into())
}

/// An unconnected socket for connecting onward from the pod to `dst`, bound to `source`
/// (port chosen by the kernel) when given, so the caller knows the exact 4-tuple before
/// the connection exists.
pub fn outbound(dst: SocketAddr, source: Option<IpAddr>) -> io::Result<std::net::TcpStream> {
    let socket = Socket::new(Domain::for_address(dst), Type::STREAM, Some(Protocol::TCP))?;
    if let Some(ip) = source {
        socket.bind(&SocketAddr::new(ip, 0).into())?;
    }
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

/// A connection's address as one family sees it: a dual-stack listener reports IPv4
/// peers as v4-mapped IPv6 addresses.
/// Other addresses stay as they are, a link-local one with its interface (scope id).
pub fn canonical(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(v6) if v6.ip().to_ipv4_mapped().is_some() => {
            SocketAddr::new(addr.ip().to_canonical(), addr.port())
        }
        other => other,
    }
}

/// An unconnected socket bound to the remote client's address (`source`, port chosen by the
/// kernel), which is not the pod's: IP_TRANSPARENT allows the bind, and the mark routes the
/// app's replies back. The port is bound here, not at connect, because the caller must
/// announce the exact 4-tuple to sk_lookup before connecting.
pub fn transparent(source: SocketAddr) -> io::Result<std::net::TcpStream> {
    let socket = Socket::new(
        Domain::for_address(source),
        Type::STREAM,
        Some(Protocol::TCP),
    )?;
    socket.set_mark(MARK_DELIVER)?;
    match source {
        SocketAddr::V4(_) => socket.set_ip_transparent_v4(true)?,
        SocketAddr::V6(_) => socket.set_ip_transparent_v6(true)?,
    }
    let mut any_port = source;
    any_port.set_port(0); // keeps a link-local address's interface
    socket.bind(&any_port.into())?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}
