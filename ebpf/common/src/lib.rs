//! Types and constants shared by the eBPF programs and the node daemon.
//!
//! Everything here is `#[repr(C)]` plain data: the same bytes are map keys and values on
//! both sides. Addresses are stored as four `u32` words in network byte order (IPv4 in the
//! first word), ports in host byte order.
#![no_std]

/// Outbound capture listener, bound to loopback inside every enrolled pod.
pub const OUTBOUND_PORT: u16 = 15001;
/// Inbound plaintext listener: connections arriving from the network are steered here.
pub const INBOUND_PORT: u16 = 15006;
/// Inbound tunnel (mTLS) listener.
pub const TUNNEL_PORT: u16 = 15008;

/// Socket mark of the daemon's transparent sockets that deliver inbound connections to the
/// app as the remote client. The pod's policy route sends packets with this mark (the
/// app's replies inherit it) back over loopback to the daemon. It routes; it exempts
/// nothing: a pod may set any mark (SO_MARK needs only CAP_NET_RAW since Linux 5.17).
pub const MARK_DELIVER: u32 = 0x4857;

pub const AF_INET: u16 = 2;
pub const AF_INET6: u16 = 10;

/// An IPv4 or IPv6 address and port.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct SockAddr {
    /// Network byte order; IPv4 uses `addr[0]` only.
    pub addr: [u32; 4],
    /// Host byte order.
    pub port: u16,
    pub family: u16,
}

/// Key of a captured connection as the daemon sees it on accept: the client socket's own
/// address inside its network namespace. The netns cookie is part of the key because every
/// pod has its own 127.0.0.1.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct ConnKey {
    pub netns_cookie: u64,
    pub client: SockAddr,
    pub _pad: u32,
}

/// A connection the daemon is opening to an app inside a pod, as the remote client
/// (transparent delivery). sk_lookup must let exactly these through to the app: they look
/// like any connection from the network, and steering them back to the daemon would loop.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct DeliveryKey {
    /// The remote client's address and port, as the daemon bound them.
    pub client: SockAddr,
    /// The app's address and port.
    pub app: SockAddr,
}

/// Value of a delivery pass: the pass lets its connection through until `expires_ns`
/// (CLOCK_MONOTONIC, as `bpf_ktime_get_ns` reads it), a little after the daemon's connect
/// would have timed out. The daemon removes the pass once connected; the deadline bounds
/// the pass of a daemon that died connecting, which no one else can tell from a live one.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct DeliveryPass {
    pub expires_ns: u64,
}

/// Which of the daemon's per-pod listeners a connection goes to.
pub const LISTENER_INBOUND: u32 = 0;
pub const LISTENER_TUNNEL: u32 = 1;
pub const LISTENER_OUTBOUND: u32 = 2;

/// Key of the listener socket map: the pod (by its network namespace's cookie, so every
/// address the pod has, of either family, finds the same listeners) and the listener kind.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct ListenerKey {
    pub netns_cookie: u64,
    pub kind: u32,
    pub _pad: u32,
}

/// Value of the enrollment map (keyed by netns cookie).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Enrollment {
    /// Reserved for per-pod flags; non-zero means enrolled.
    pub flags: u32,
}

pub const ENROLLED: u32 = 1;

/// Name of the global the steering program is loaded with, once per pod: the cookie of
/// the network namespace it is attached to (sk_lookup programs cannot ask the kernel).
pub const POD_NETNS_COOKIE: &str = "POD_NETNS_COOKIE";

/// Names of the maps, shared so that pin paths and lookups cannot drift apart.
pub mod maps {
    pub const ENROLLED_NETNS: &str = "ENROLLED_NETNS";
    pub const DAEMON_CGROUPS: &str = "DAEMON_CGROUPS";
    pub const ORIG_BY_COOKIE: &str = "ORIG_BY_COOKIE";
    pub const ORIG_BY_CLIENT: &str = "ORIG_BY_CLIENT";
    pub const LISTENERS: &str = "LISTENERS";
    /// Named for its value's layout: a map whose layout changes takes a new name, so that
    /// a daemon never opens a pin of the old layout.
    pub const DELIVERY_PASSES: &str = "DELIVERY_PASSES";
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain-old-data, `#[repr(C)]`, no pointers; padding is explicit.
    unsafe impl aya::Pod for super::SockAddr {}
    unsafe impl aya::Pod for super::ConnKey {}
    unsafe impl aya::Pod for super::ListenerKey {}
    unsafe impl aya::Pod for super::DeliveryKey {}
    unsafe impl aya::Pod for super::DeliveryPass {}
    unsafe impl aya::Pod for super::Enrollment {}
}
