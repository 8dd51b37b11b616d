//! Sockets the daemon opens inside a pod's namespace. All carry `DAEMON_MARK`, which keeps
//! them out of the connect hooks (the daemon never captures itself).

use std::{io, net::SocketAddr, time::Duration};

use anyhow::{Context, Result};
use hawser_common::DAEMON_MARK;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::{TcpSocket, TcpStream};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Connects a socket made by one of the functions below, within a bounded time.
pub async fn connect(socket: std::net::TcpStream, dst: SocketAddr) -> Result<TcpStream> {
    let connecting = TcpSocket::from_std_stream(socket).connect(dst);
    tokio::time::timeout(CONNECT_TIMEOUT, connecting)
        .await
        .with_context(|| format!("connect {dst}: timed out"))?
        .with_context(|| format!("connect {dst}"))
}

/// A listener bound to `addr`, ready for `tokio::net::TcpListener::from_std`.
pub fn listener(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_mark(DAEMON_MARK)?;
    socket.set_nonblocking(true)?;
    socket
        .bind(&addr.into())
        .map_err(|e| io::Error::new(e.kind(), format!("bind {addr}: {e}")))?;
    socket.listen(1024)?;
    Ok(socket.into())
}

/// An unconnected socket for connecting onward from the pod, with the pod's own address.
pub fn outbound(dst: SocketAddr) -> io::Result<std::net::TcpStream> {
    let socket = Socket::new(Domain::for_address(dst), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_mark(DAEMON_MARK)?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

/// An unconnected socket bound to `source`, an address that is not the pod's (the remote
/// client's): IP_TRANSPARENT allows the bind, and the mark routes the app's replies back.
pub fn transparent(source: SocketAddr) -> io::Result<std::net::TcpStream> {
    let socket = Socket::new(
        Domain::for_address(source),
        Type::STREAM,
        Some(Protocol::TCP),
    )?;
    socket.set_mark(DAEMON_MARK)?;
    match source {
        SocketAddr::V4(_) => socket.set_ip_transparent_v4(true)?,
        SocketAddr::V6(_) => socket.set_ip_transparent_v6(true)?,
    }
    // Pick the source port at connect time, so the 4-tuple (not the port alone) must be
    // unique: many connections from one client address do not exhaust ports.
    set_bind_address_no_port(&socket)?;
    socket.bind(&SocketAddr::new(source.ip(), 0).into())?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

fn set_bind_address_no_port(socket: &Socket) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let one: libc::c_int = 1;
    // SAFETY: passes a valid c_int and its size.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&raw const one).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}
