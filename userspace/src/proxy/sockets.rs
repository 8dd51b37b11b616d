//! Sockets the daemon opens inside a pod's namespace. All carry one of the daemon's marks,
//! which keep them out of the connect hooks (the daemon never captures itself).

use std::{io, net::SocketAddr, time::Duration};

use anyhow::{Context, Result};
use hawser_common::{MARK_DELIVER, MARK_UPSTREAM};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::{TcpSocket, TcpStream};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Connects a socket made by one of the functions below, within a bounded time.
pub async fn connect(socket: std::net::TcpStream, dst: SocketAddr) -> Result<TcpStream> {
    let connecting = TcpSocket::from_std_stream(socket).connect(dst);
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, connecting)
        .await
        .with_context(|| format!("connect {dst}: timed out"))?
        .with_context(|| format!("connect {dst}"))?;
    no_delay(&stream);
    Ok(stream)
}

/// The daemon relays what the app already chose to send: it must not hold a small segment
/// back (Nagle) waiting for an ACK the peer delays, which costs 40 ms per exchange where a
/// handshake's last flight is followed by the preamble or a request.
pub fn no_delay(stream: &TcpStream) {
    if let Err(e) = stream.set_nodelay(true) {
        tracing::debug!("TCP_NODELAY: {e}");
    }
}

/// A listener bound to `addr`, ready for `tokio::net::TcpListener::from_std`.
pub fn listener(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_mark(MARK_UPSTREAM)?;
    socket.set_nonblocking(true)?;
    socket
        .bind(&addr.into())
        .map_err(|e| io::Error::new(e.kind(), format!("bind {addr}: {e}")))?;
    socket.listen(1024)?;
    Ok(socket.into())
}

/// An unconnected socket for connecting onward from the pod, with the pod's own address.
pub fn outbound(dst: SocketAddr) -> io::Result<std::net::TcpStream> {
    let socket = tcp_socket(dst, MARK_UPSTREAM)?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

/// An unconnected socket bound to the remote client's address (`source`, port chosen by the
/// kernel), which is not the pod's: IP_TRANSPARENT allows the bind, and the mark routes the
/// app's replies back. The port is bound here, not at connect, because the caller must
/// announce the exact 4-tuple to sk_lookup before connecting.
pub fn transparent(source: SocketAddr) -> io::Result<std::net::TcpStream> {
    let socket = tcp_socket(source, MARK_DELIVER)?;
    match source {
        SocketAddr::V4(_) => socket.set_ip_transparent_v4(true)?,
        SocketAddr::V6(_) => socket.set_ip_transparent_v6(true)?,
    }
    socket.bind(&SocketAddr::new(source.ip(), 0).into())?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

fn tcp_socket(addr: SocketAddr, mark: u32) -> io::Result<Socket> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_mark(mark)?;
    Ok(socket)
}
