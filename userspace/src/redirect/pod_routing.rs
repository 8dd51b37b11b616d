//! Pod-namespace routing for transparent inbound delivery.
//!
//! The daemon hands an inbound connection to the app from inside the pod, bound to the
//! remote client's address (IP_TRANSPARENT) and marked with `MARK_DELIVER`. The app's
//! replies are addressed to that remote client, so without help they would leave through
//! the pod's interface. These settings, made by the daemon inside the pod's namespace, bring
//! them back over loopback to the daemon:
//! - `net.ipv4.tcp_fwmark_accept=1`: the app's accepted socket inherits the mark of the
//!   SYN that opened it (the daemon's mark);
//! - `net.ipv{4,6}.fwmark_reflect=1`: the kernel's own replies (a reset from a port nobody
//!   listens on, ICMP errors) carry it too, so a delivery to a closed port is refused at
//!   once instead of waiting out the connect timeout (marks never cross namespaces, so
//!   only the daemon's deliveries carry it);
//! - `ip rule fwmark MARK_DELIVER lookup MARK_DELIVER` with `local 0.0.0.0/0 dev lo` in that
//!   table: marked packets are delivered locally; the same for IPv6 (`local ::/0`) where
//!   the pod has IPv6 (without it, IPv6 deliveries fail: refused, never bypassed).
//!
//! Everything here runs inside the pod's namespace (`Netns::run`).

use std::io;

use hawser_common::MARK_DELIVER;
use netlink_packet_core::{
    NLM_F_ACK, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage,
    NetlinkPayload,
};
use netlink_packet_route::{
    AddressFamily, RouteNetlinkMessage,
    route::{
        RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope,
        RouteType,
    },
    rule::{RuleAction, RuleAttribute, RuleHeader, RuleMessage},
};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

/// Routing table holding the local route for marked replies.
const TABLE: u32 = MARK_DELIVER;
const RULE_PRIORITY: u32 = 100;
const LOOPBACK_IFINDEX: u32 = 1;

/// Prepares the current thread's network namespace (idempotent).
pub fn install() -> io::Result<()> {
    sysctl("net/ipv4/tcp_fwmark_accept")?;
    sysctl("net/ipv4/fwmark_reflect")?;
    if let Err(e) = sysctl("net/ipv6/fwmark_reflect") {
        tracing::debug!("no IPv6 in this pod: {e}");
    }
    let mut nl = Netlink::connect()?;
    let create = NLM_F_CREATE | NLM_F_EXCL;
    for msg in messages(AddressFamily::Inet, &[LOOPBACK_IFINDEX]) {
        ignore_exists(nl.request(msg, create))?;
    }
    let ipv6 = interfaces().and_then(|devices| {
        messages(AddressFamily::Inet6, &devices)
            .try_for_each(|msg| ignore_exists(nl.request(msg, create)))
    });
    if let Err(e) = ipv6 {
        tracing::debug!("no IPv6 delivery routes in this pod: {e}");
    }
    Ok(())
}

/// Sets one of the pod namespace's own sysctls to 1.
fn sysctl(name: &str) -> io::Result<()> {
    std::fs::write(format!("/proc/sys/{name}"), "1")
        .map_err(|e| io::Error::new(e.kind(), format!("set {}: {e}", name.replace('/', "."))))
}

/// Undoes `install` where the namespace still exists; missing pieces are fine.
pub fn remove() -> io::Result<()> {
    let mut nl = Netlink::connect()?;
    let delete = |msg| match msg {
        RouteNetlinkMessage::NewRule(rule) => RouteNetlinkMessage::DelRule(rule),
        RouteNetlinkMessage::NewRoute(route) => RouteNetlinkMessage::DelRoute(route),
        other => other,
    };
    for msg in messages(AddressFamily::Inet, &[LOOPBACK_IFINDEX]) {
        ignore_missing(nl.request(delete(msg), 0))?;
    }
    for msg in messages(AddressFamily::Inet6, &interfaces().unwrap_or_default()) {
        let _ = ignore_missing(nl.request(delete(msg), 0));
    }
    Ok(())
}

/// The rule and the local routes of one family. IPv6 needs one route per device: the
/// reply to a link-local client is routed with its device as the output interface, which
/// only a route through that device matches.
fn messages(family: AddressFamily, devices: &[u32]) -> impl Iterator<Item = RouteNetlinkMessage> {
    let rule = RouteNetlinkMessage::NewRule(rule(family));
    let routes = devices
        .iter()
        .map(move |dev| RouteNetlinkMessage::NewRoute(local_route(family, *dev)));
    std::iter::once(rule).chain(routes)
}

/// The devices of the current network namespace, loopback first.
fn interfaces() -> io::Result<Vec<u32>> {
    let mut devices: Vec<u32> = nix::net::if_::if_nameindex()?
        .iter()
        .map(|i| i.index())
        .collect();
    devices.sort_by_key(|i| *i != LOOPBACK_IFINDEX);
    Ok(devices)
}

fn rule(family: AddressFamily) -> RuleMessage {
    let mut msg = RuleMessage::default();
    msg.header = RuleHeader {
        family,
        action: RuleAction::ToTable,
        ..Default::default()
    };
    msg.attributes = vec![
        RuleAttribute::FwMark(MARK_DELIVER),
        RuleAttribute::FwMask(u32::MAX),
        RuleAttribute::Table(TABLE),
        RuleAttribute::Priority(RULE_PRIORITY),
    ];
    msg
}

fn local_route(family: AddressFamily, device: u32) -> RouteMessage {
    let mut msg = RouteMessage::default();
    msg.header = RouteHeader {
        address_family: family,
        destination_prefix_length: 0,
        protocol: RouteProtocol::Static,
        scope: RouteScope::Host,
        kind: RouteType::Local,
        ..Default::default()
    };
    let any = match family {
        AddressFamily::Inet6 => RouteAddress::Inet6(std::net::Ipv6Addr::UNSPECIFIED),
        _ => RouteAddress::Inet(std::net::Ipv4Addr::UNSPECIFIED),
    };
    msg.attributes = vec![
        RouteAttribute::Table(TABLE),
        RouteAttribute::Destination(any),
        RouteAttribute::Oif(device),
        // IPv6 keeps routes to one prefix apart by metric.
        RouteAttribute::Priority(1024 + device),
    ];
    msg
}

fn ignore_exists(r: io::Result<()>) -> io::Result<()> {
    match r {
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(()),
        other => other,
    }
}

fn ignore_missing(r: io::Result<()>) -> io::Result<()> {
    match r {
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ESRCH)) => Ok(()),
        other => other,
    }
}

/// A synchronous rtnetlink socket for a handful of requests.
struct Netlink {
    socket: Socket,
    seq: u32,
}

impl Netlink {
    fn connect() -> io::Result<Self> {
        let mut socket = Socket::new(NETLINK_ROUTE)?;
        socket.bind_auto()?;
        socket.connect(&SocketAddr::new(0, 0))?;
        Ok(Self { socket, seq: 0 })
    }

    /// Sends one request and waits for its acknowledgement.
    fn request(&mut self, payload: RouteNetlinkMessage, flags: u16) -> io::Result<()> {
        self.seq += 1;
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | NLM_F_ACK | flags;
        header.sequence_number = self.seq;
        let mut msg = NetlinkMessage::new(header, NetlinkPayload::from(payload));
        msg.finalize();
        let mut buf = vec![0; msg.buffer_len()];
        msg.serialize(&mut buf);
        self.socket.send(&buf, 0)?;
        let mut reply = Vec::with_capacity(8192);
        loop {
            reply.clear();
            self.socket.recv(&mut reply, 0)?;
            let msg = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&reply)
                .map_err(|e| io::Error::other(format!("netlink reply: {e}")))?;
            if msg.header.sequence_number != self.seq {
                continue;
            }
            return match msg.payload {
                NetlinkPayload::Error(e) => match e.code {
                    None => Ok(()),
                    Some(code) => Err(io::Error::from_raw_os_error(-code.get())),
                },
                _ => Ok(()),
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `f` on a thread inside a fresh network namespace (root only).
    fn in_new_netns<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
        if !nix::unistd::Uid::effective().is_root() {
            eprintln!("SKIPPED: needs root to create a network namespace");
            return None;
        }
        let worker = std::thread::spawn(move || {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("unshare");
            f()
        });
        Some(worker.join().unwrap())
    }

    fn ip(args: &[&str]) -> String {
        let out = std::process::Command::new("ip")
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    #[test]
    fn install_is_idempotent_and_remove_undoes_it() {
        let Some((rules, routes, after)) = in_new_netns(|| {
            // As in a pod: IPv6 routes need the device up.
            ip(&["link", "set", "lo", "up"]);
            install().unwrap();
            install().unwrap();
            let state = (
                ip(&["rule"]) + &ip(&["-6", "rule"]),
                ip(&["route", "show", "table", &TABLE.to_string()])
                    + &ip(&["-6", "route", "show", "table", &TABLE.to_string()]),
            );
            remove().unwrap();
            remove().unwrap();
            (
                state.0,
                state.1,
                ip(&["rule"])
                    + &ip(&["-6", "rule"])
                    + &ip(&["route", "show", "table", &TABLE.to_string()])
                    + &ip(&["-6", "route", "show", "table", &TABLE.to_string()]),
            )
        }) else {
            return;
        };
        assert_eq!(
            rules.matches("fwmark 0x4857 lookup 18519").count(),
            2,
            "one rule per family: {rules}"
        );
        assert_eq!(
            routes.matches("local default dev lo").count(),
            2,
            "{routes}"
        );
        assert!(!after.contains("18519"), "{after}");
    }
}
