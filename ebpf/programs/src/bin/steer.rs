//! Steering into the daemon's listeners: one `sk_lookup` program instance per enrolled
//! pod, attached to the pod's network namespace and loaded with that namespace's cookie.
//!
//! sk_lookup runs before the kernel looks for a listening socket, so whatever a process in
//! the pod has bound (a squatter on 127.0.0.1:15001, 0.0.0.0:15008, an app on any address)
//! never receives a steered connection:
//! - connections to port 15001 over the pod's loopback (outbound connects the connect
//!   hooks rewrote) go to the daemon's outbound listener;
//! - every TCP connection arriving from the network, whatever local address it is for
//!   (IPv4, IPv6 global, ULA, link-local, secondary), goes to the daemon's tunnel listener
//!   (port 15008) or inbound listener (any other port);
//! - without the listener (daemon down, enrollment failed) the connection is refused.
//!
//! Passed untouched: other loopback connections (the pod talking to itself), and the
//! daemon's own deliveries to the app, which it announces in `DELIVERY_PASSES` before
//! connecting (by address they look like remote clients), until the pass expires.
#![no_std]
#![no_main]

#[path = "../ctx.rs"]
mod ctx;

use aya_ebpf::{
    Global,
    helpers::bpf_ktime_get_ns,
    macros::{map, sk_lookup},
    maps::{LruHashMap, SockHash},
    programs::SkLookupContext,
};

use ctx::{ctx_read, ctx_read_ip6};
use hawser_common::{
    AF_INET, DeliveryKey, DeliveryPass, LISTENER_INBOUND, LISTENER_OUTBOUND, LISTENER_TUNNEL,
    ListenerKey, OUTBOUND_PORT, SockAddr, TUNNEL_PORT,
};

const IPPROTO_TCP: u32 = 6;
const SK_DROP: u32 = 0;
const SK_PASS: u32 = 1;
/// The loopback device is ifindex 1 in every network namespace.
const LOOPBACK_IFINDEX: u32 = 1;

/// The cookie of the pod's network namespace, set by the daemon when it loads this copy.
#[unsafe(no_mangle)]
static POD_NETNS_COOKIE: Global<u64> = Global::new(0);

/// The daemon's listeners, by pod and kind.
#[map]
static LISTENERS: SockHash<ListenerKey> = SockHash::pinned(16384, 0);

/// Connections the daemon is opening to apps; written and removed by the daemon.
#[map]
static DELIVERY_PASSES: LruHashMap<DeliveryKey, DeliveryPass> = LruHashMap::pinned(65536, 0);

#[sk_lookup]
pub fn hawser_sk_lookup(ctx: SkLookupContext) -> u32 {
    let lookup = unsafe { &*ctx.lookup };
    if lookup.protocol != IPPROTO_TCP {
        return SK_PASS;
    }
    let kind = if lookup.ingress_ifindex == LOOPBACK_IFINDEX {
        if lookup.local_port != u32::from(OUTBOUND_PORT) {
            return SK_PASS;
        }
        LISTENER_OUTBOUND
    } else {
        if is_delivery(lookup) {
            return SK_PASS;
        }
        if lookup.local_port == u32::from(TUNNEL_PORT) {
            LISTENER_TUNNEL
        } else {
            LISTENER_INBOUND
        }
    };
    let key = ListenerKey {
        netns_cookie: POD_NETNS_COOKIE.load(),
        kind,
        _pad: 0,
    };
    match LISTENERS.redirect_sk_lookup(&ctx, key, 0) {
        Ok(()) => SK_PASS,
        // No listener: the daemon is down or the pod's enrollment failed. Refuse rather
        // than let the connection reach whatever else is bound.
        Err(_) => SK_DROP,
    }
}

/// Whether this is the daemon connecting to the app as the remote client.
fn is_delivery(lookup: &aya_ebpf::bindings::bpf_sk_lookup) -> bool {
    let family = lookup.family;
    let (local, remote) = if family == u32::from(AF_INET) {
        (
            [ctx_read(&lookup.local_ip4), 0, 0, 0],
            [ctx_read(&lookup.remote_ip4), 0, 0, 0],
        )
    } else {
        (
            ctx_read_ip6(&lookup.local_ip6),
            ctx_read_ip6(&lookup.remote_ip6),
        )
    };
    let delivery = DeliveryKey {
        client: SockAddr {
            addr: remote,
            port: u16::from_be(unsafe { core::ptr::read_volatile(&lookup.remote_port) }),
            family: family as u16,
        },
        app: SockAddr {
            addr: local,
            port: lookup.local_port as u16,
            family: family as u16,
        },
    };
    match unsafe { DELIVERY_PASSES.get(&delivery) } {
        Some(pass) => pass.expires_ns > unsafe { bpf_ktime_get_ns() },
        None => false,
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
