//! Sockets the daemon opens inside a pod's namespace. The connect hooks leave them alone
//! because the daemon's cgroup is exempt (see `redirect::dataplane`), not by any mark.

use std::{
    cell::RefCell,
    collections::HashMap,
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    ops::RangeInclusive,
    os::fd::{AsFd, AsRawFd},
    time::{Duration, Instant},
};

use hawser_common::MARK_DELIVER;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::{TcpSocket, TcpStream};

use crate::{
    context::steering::DeliveryPort,
    failure::{Failure, Result},
    netns::netns_cookie,
};

pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

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
    if let Err(e) = tune(&stream, keepalive) {
        tracing::debug!(%dst, "TCP options: {e}");
    }
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
/// Set on a listener, they hold for every connection it accepts (the kernel copies them
/// to each), without six system calls per connection.
pub fn tune(socket: &impl AsFd, keepalive: Keepalive) -> io::Result<()> {
    let socket = socket2::SockRef::from(socket);
    let probes = socket2::TcpKeepalive::new()
        .with_time(keepalive.idle)
        .with_interval(keepalive.interval())
        .with_retries(Keepalive::PROBES);
    socket.set_tcp_nodelay(true)?;
    socket.set_tcp_keepalive(&probes)?;
    socket.set_tcp_user_timeout(Some(keepalive.user_timeout()))
}

/// A listener for connections steered to it by sk_lookup, on a free port (its address
/// does not matter to steering). Dual-stack where the kernel has IPv6, so it takes
/// connections of both families, which needs the wildcard address (binding ::1 makes a
/// socket IPv6-only). Nothing reaches it from the network unsteered: sk_lookup steers
/// every connection arriving there; the handlers refuse direct ones from the pod itself.
///
/// A connection it accepts keeps the address the client dialled, so it sits on the app's
/// port (until its TIME_WAIT ends): SO_REUSEADDR, which accepted sockets inherit, lets an
/// app that restarts bind its port meanwhile, as its own connections' would. A squatter
/// still cannot bind this listener's port: a listening socket is never shared that way.
/// Tuned (`tune`): so are the connections it accepts.
pub fn steered_listener(keepalive: Keepalive) -> io::Result<std::net::TcpListener> {
    let bound = |domain, address: IpAddr| -> io::Result<Socket> {
        let socket = Socket::new(domain, Type::STREAM.nonblocking(), Some(Protocol::TCP))?;
        if domain == Domain::IPV6 {
            socket.set_only_v6(false)?;
        }
        socket.set_reuse_address(true)?;
        socket.bind(&SocketAddr::new(address, 0).into())?;
        Ok(socket)
    };
    let socket = match bound(Domain::IPV6, Ipv6Addr::UNSPECIFIED.into()) {
        Ok(socket) => socket,
        Err(e) => {
            tracing::debug!("no IPv6 in the pod ({e}): IPv4 listener");
            bound(Domain::IPV4, Ipv4Addr::LOCALHOST.into())?
        }
    };
    if let Err(e) = tune(&socket, keepalive) {
        tracing::warn!("the pod's connections go without TCP keep-alives or TCP_NODELAY: {e}");
    }
    socket.listen(1024)?;
    Ok(socket.into())
}

/// An unconnected socket for connecting onward from the pod to `dst`, bound to `source`
/// (a random port, see `bind_random_port`) when given, so the caller knows the exact
/// 4-tuple before the connection exists.
pub fn outbound(dst: SocketAddr, source: Option<IpAddr>) -> io::Result<std::net::TcpStream> {
    let socket = Socket::new(
        Domain::for_address(dst),
        Type::STREAM.nonblocking(),
        Some(Protocol::TCP),
    )?;
    if let Some(ip) = source {
        bind_random_port(&socket, SocketAddr::new(ip, 0))?;
    }
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

/// An unconnected socket bound to the remote client's address (`source`, a port of
/// `bind_random_port`'s choosing), which is not the pod's: IP_TRANSPARENT allows the bind,
/// and the mark routes the app's replies back. The port is bound here, not at connect,
/// because the caller must announce the exact 4-tuple to sk_lookup before connecting.
///
/// The daemon closes a delivery first when its client does, so each leaves its port in
/// TIME_WAIT for a minute, and a client that closes first (an echo, a probe) would fill
/// the pod's port range with them: about 28 000 connections a minute from one client to
/// one app, fewer than the client itself may open where its pod lets `connect` take a
/// port in TIME_WAIT over (`tcp_tw_reuse`). SO_REUSEADDR, on every delivery socket (the
/// one in TIME_WAIT must have it too), lets the bind take such a port
/// (`DeliveryPort::Shared`), and the kernel's connect then takes its 4-tuple over: for an
/// explicitly bound port it does so whenever the TIME_WAIT holds the app's timestamps
/// (they keep the two connections' segments apart), whatever `tcp_tw_reuse` says. An app
/// socket that a killed daemon left half-closed on that 4-tuple answers the new SYN with
/// a challenge ACK, then a reset: that connect takes a second.
pub fn transparent(source: SocketAddr, port: DeliveryPort) -> io::Result<std::net::TcpStream> {
    let socket = Socket::new(
        Domain::for_address(source),
        Type::STREAM.nonblocking(),
        Some(Protocol::TCP),
    )?;
    socket.set_mark(MARK_DELIVER)?;
    match source {
        SocketAddr::V4(_) => socket.set_ip_transparent_v4(true)?,
        SocketAddr::V6(_) => socket.set_ip_transparent_v6(true)?,
    }
    set_syn_retries(&socket, DELIVERY_SYN_RETRIES)?;
    // A TIME_WAIT keeps its socket's SO_REUSEADDR from the close: a `Free` socket binds
    // without it, then sets it too, or no later delivery could take its port over.
    let shared = matches!(port, DeliveryPort::Shared);
    if shared {
        socket.set_reuse_address(true)?;
    }
    bind_random_port(&socket, source)?;
    if !shared {
        socket.set_reuse_address(true)?;
    }
    Ok(socket.into())
}

/// A delivery's SYNs go out at 0, 1, 3 and 7 s, and no later: its sk_lookup pass lets
/// them through for the connect's timeout and a second (`proxy::inbound`), which even a
/// runtime too stalled to time the connect out cannot stretch.
const DELIVERY_SYN_RETRIES: libc::c_int = 3;

fn set_syn_retries(socket: &Socket, retries: libc::c_int) -> io::Result<()> {
    // SAFETY: the value and its length describe a valid c_int.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_SYNCNT,
            (&raw const retries).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

const RANDOM_PORT_TRIES: usize = 16;

/// Binds `socket` to `source`'s address on a port its options allow (one no socket holds;
/// with SO_REUSEADDR also one in TIME_WAIT or shared), for a connection whose 4-tuple
/// must be known before it exists (never `source`'s own port: a delivery from the
/// client's address on the client's port would meet that client's own connection). The
/// kernel's own choice (port 0) avoids ports in TIME_WAIT and slows down badly when many
/// are, as it scans the odd ports it prefers for a bind one by one before it gives up (at
/// about 14 000 of them in TIME_WAIT each bind took ~6 ms here). A random port of the
/// namespace's local range, not reserved, is taken at the first tries until the range is
/// nearly full; the kernel chooses after that. Odd ones first, as the kernel's choice for
/// a bind: a client's `connect` prefers even ones, so the ports of the client's own
/// connections are met less often. Then any.
fn bind_random_port(socket: &Socket, source: SocketAddr) -> io::Result<()> {
    let ports = LocalPorts::of(socket)?;
    let mut addr = source; // keeps a link-local address's interface
    for tries in 0..RANDOM_PORT_TRIES {
        let odd = tries < RANDOM_PORT_TRIES / 2;
        let port = rand::random_range(ports.range.clone()) | u16::from(odd);
        if !ports.range.contains(&port) || ports.is_reserved(port) || port == source.port() {
            continue;
        }
        addr.set_port(port);
        match socket.bind(&addr.into()) {
            Err(e) if e.kind() == io::ErrorKind::AddrInUse => continue,
            bound => return bound,
        }
    }
    addr.set_port(0);
    socket.bind(&addr.into())
}

/// A namespace's `ip_local_port_range` and `ip_local_reserved_ports`. Read by a thread
/// inside the socket's namespace (`netns::Netns::enter`; sysctls follow the thread), cached
/// per thread and namespace (any thread enters any pod), read again after
/// `LocalPorts::FRESH`.
#[derive(Clone)]
struct LocalPorts {
    range: RangeInclusive<u16>,
    reserved: Vec<RangeInclusive<u16>>,
    read: Instant,
}

thread_local! {
    /// By netns cookie; only namespaces used within `LocalPorts::FRESH` are kept.
    static LOCAL_PORTS: RefCell<HashMap<u64, LocalPorts>> = RefCell::new(HashMap::new());
}

impl LocalPorts {
    const FRESH: Duration = Duration::from_secs(10);

    /// Those of `socket`'s namespace, which must be the calling thread's.
    fn of(socket: &Socket) -> io::Result<Self> {
        let netns = netns_cookie(socket)?;
        Ok(LOCAL_PORTS.with_borrow_mut(|cached| {
            if let Some(ports) = cached
                .get(&netns)
                .filter(|p| p.read.elapsed() < Self::FRESH)
            {
                return ports.clone();
            }
            cached.retain(|_, p| p.read.elapsed() < Self::FRESH);
            cached.entry(netns).insert_entry(Self::read()).get().clone()
        }))
    }

    fn read() -> Self {
        let sysctl = |name| std::fs::read_to_string(format!("/proc/sys/net/ipv4/{name}"));
        let range = sysctl("ip_local_port_range")
            .ok()
            .and_then(|text| Self::range_of(&text))
            .unwrap_or(32768..=60999);
        let reserved = sysctl("ip_local_reserved_ports").unwrap_or_default();
        Self {
            range,
            reserved: reserved
                .trim()
                .split(',')
                .filter_map(Self::ports_of)
                .collect(),
            read: Instant::now(),
        }
    }

    /// "LOW\tHIGH", as `ip_local_port_range` reads.
    fn range_of(text: &str) -> Option<RangeInclusive<u16>> {
        let mut bounds = text.split_whitespace().map(str::parse::<u16>);
        let (Some(Ok(low)), Some(Ok(high))) = (bounds.next(), bounds.next()) else {
            return None;
        };
        (low <= high).then_some(low..=high)
    }

    /// "PORT" or "LOW-HIGH", an item of `ip_local_reserved_ports`.
    fn ports_of(item: &str) -> Option<RangeInclusive<u16>> {
        let (low, high) = item.split_once('-').unwrap_or((item, item));
        Some(low.trim().parse().ok()?..=high.trim().parse().ok()?)
    }

    fn is_reserved(&self, port: u16) -> bool {
        self.reserved.iter().any(|r| r.contains(&port))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_local_port_sysctls() {
        assert_eq!(LocalPorts::range_of("32768\t60999\n"), Some(32768..=60999));
        assert_eq!(LocalPorts::range_of("60999 32768"), None);
        let reserved = "8080,9000-9100\n".trim().split(',');
        let reserved: Vec<_> = reserved.filter_map(LocalPorts::ports_of).collect();
        assert_eq!(reserved, vec![8080..=8080, 9000..=9100]);
        assert!(LocalPorts::ports_of("").is_none());
    }

    /// A delivery never takes its client's own port, nor a reserved one, and an odd one
    /// while odd ones are free.
    #[test]
    fn a_random_port_is_odd_unreserved_and_not_the_sources_own() {
        let source: SocketAddr = "127.0.0.1:40001".parse().unwrap();
        for _ in 0..200 {
            let socket = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
            bind_random_port(&socket, source).unwrap();
            let port = socket.local_addr().unwrap().as_socket().unwrap().port();
            let ports = LocalPorts::of(&socket).unwrap();
            assert!(
                port % 2 == 1 && port != 40001 && !ports.is_reserved(port),
                "{port}"
            );
            assert!(ports.range.contains(&port), "{port}");
        }
    }

    /// Any thread makes sockets in any pod: each bound port comes from the range of the
    /// socket's own namespace, never from one cached for another.
    #[test]
    fn each_namespace_binds_within_its_own_port_range() {
        use crate::netns::testing::new_netns;
        if !nix::unistd::Uid::effective().is_root() {
            eprintln!("SKIPPED: needs root to create a network namespace");
            return;
        }
        let (a, b) = (new_netns(), new_netns());
        let range_file = "/proc/sys/net/ipv4/ip_local_port_range";
        a.enter(|| std::fs::write(range_file, "40000 40099"))
            .unwrap();
        b.enter(|| std::fs::write(range_file, "50000 50099"))
            .unwrap();
        let dst: SocketAddr = "127.0.0.1:1".parse().unwrap();
        for _ in 0..5 {
            for (netns, range) in [(&a, 40000..=40099), (&b, 50000..=50099)] {
                let socket = netns.enter(|| outbound(dst, Some(Ipv4Addr::UNSPECIFIED.into())));
                let socket = Socket::from(socket.unwrap());
                assert!(socket.nonblocking().unwrap(), "made blocking");
                let port = socket.local_addr().unwrap().as_socket().unwrap().port();
                assert!(range.contains(&port), "{port} outside {range:?}");
            }
        }
    }

    /// Every connection a pod's listener accepts has its options from the start (no
    /// Nagle, keep-alive probes, the user timeout), set once on the listener: a relayed
    /// connection whose peer vanished is found by the probes, and a small segment goes at
    /// once.
    #[tokio::test]
    async fn a_steered_listeners_connections_are_tuned_as_they_arrive() {
        let keepalive = Keepalive {
            idle: Duration::from_secs(80),
        };
        let listener = steered_listener(keepalive).unwrap();
        assert!(socket2::SockRef::from(&listener).nonblocking().unwrap());
        let listener = tokio::net::TcpListener::from_std(listener).unwrap();
        let port = listener.local_addr().unwrap().port();
        let _client = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        let (accepted, _) = listener.accept().await.unwrap();
        let accepted = socket2::SockRef::from(&accepted);
        assert!(accepted.tcp_nodelay().unwrap());
        assert!(accepted.keepalive().unwrap());
        assert_eq!(accepted.tcp_keepalive_time().unwrap(), keepalive.idle);
        assert_eq!(
            accepted.tcp_keepalive_interval().unwrap(),
            keepalive.interval()
        );
        assert_eq!(accepted.tcp_keepalive_retries().unwrap(), Keepalive::PROBES);
        assert_eq!(
            accepted.tcp_user_timeout().unwrap(),
            Some(keepalive.user_timeout())
        );
    }

    /// A delivery stops sending SYNs well before its pass expires: the kernel's default
    /// would retry for two minutes.
    #[test]
    fn a_delivery_socket_sends_its_last_syn_within_its_pass() {
        if !nix::unistd::Uid::effective().is_root() {
            eprintln!("SKIPPED: needs root for IP_TRANSPARENT in a network namespace");
            return;
        }
        let pod = crate::netns::testing::new_netns();
        let client: SocketAddr = "192.0.2.7:0".parse().unwrap();
        let socket = pod
            .enter(|| transparent(client, DeliveryPort::Free))
            .unwrap();
        let mut retries: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: the buffer and its length describe a valid c_int.
        let rc = unsafe {
            libc::getsockopt(
                socket.as_raw_fd(),
                libc::IPPROTO_TCP,
                libc::TCP_SYNCNT,
                (&raw mut retries).cast(),
                &mut len,
            )
        };
        assert_eq!(rc, 0);
        let socket = Socket::from(socket);
        assert!(socket.nonblocking().unwrap(), "made blocking");
        assert!(
            socket.reuse_address().unwrap(),
            "its port could not be taken over"
        );
        // SYNs at 0, 1, 3 and 7 s: the last one 4 s before the pass ends.
        assert_eq!(retries, DELIVERY_SYN_RETRIES);
        let last_syn = Duration::from_secs((1 << retries) - 1);
        assert!(last_syn < CONNECT_TIMEOUT, "{last_syn:?}");
    }
}
