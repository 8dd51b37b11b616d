//! The seam between a pod's connection handlers and the kernel: where a captured
//! connection was going, whether a connection was steered to the daemon, sockets made in
//! the pod's namespace, and deliveries announced to the steering program. The daemon's
//! is `redirect::captured::Captured` (eBPF maps, the pod's namespace); tests of the
//! handlers put one of their own in its place, without eBPF or root.

use std::{
    io,
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use crate::failure::Failure;

pub trait Steering: Send + Sync {
    /// Where the captured outbound connection from `peer` was going (asked once: taken).
    fn original_dst(&self, peer: SocketAddr) -> Option<SocketAddr>;

    /// The address a connection from `peer`, accepted at `local` by one of the pod's
    /// listeners, was dialed to; None when it was not steered there from the network but
    /// dialed at the daemon's listener from inside the pod.
    fn dialed(&self, local: SocketAddr, peer: SocketAddr) -> Option<SocketAddr>;

    /// An unconnected socket in the pod for `dst`, bound to `source` when given (so the
    /// 4-tuple is known before the connection exists).
    fn outbound_socket(
        &self,
        dst: SocketAddr,
        source: Option<IpAddr>,
    ) -> io::Result<std::net::TcpStream>;

    /// An unconnected socket in the pod bound to the remote `client`'s address, to deliver
    /// a connection to the app as that client, on a port `port` allows.
    fn delivery_socket(
        &self,
        client: SocketAddr,
        port: DeliveryPort,
    ) -> io::Result<std::net::TcpStream>;

    /// Lets the delivery from `bound` reach the app at `dst` instead of being steered
    /// back to the daemon, until forgotten or `lifetime` has passed. False when another
    /// delivery holds this 4-tuple's pass: this one must take another port.
    fn announce_delivery(
        &self,
        bound: SocketAddr,
        dst: SocketAddr,
        lifetime: Duration,
    ) -> Result<bool, Failure>;

    fn forget_delivery(&self, bound: SocketAddr, dst: SocketAddr);
}

/// Which ports a delivery socket may bind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeliveryPort {
    /// One in TIME_WAIT too, or one a live delivery of the same client holds: connect
    /// refuses the 4-tuple when that delivery goes to the same app (`AddrNotAvailable`),
    /// and the caller tries again.
    Shared,
    /// Only one no socket holds: the kernel's choice once random ones are taken, so a
    /// range full of live connections still yields its last free ports.
    Free,
}
