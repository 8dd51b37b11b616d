//! Inbound steering: connections that arrive at an enrolled pod from the network go to the
//! daemon's listeners in that pod. Two kinds pass untouched: connections to loopback
//! addresses, and the daemon's own deliveries to the app, which it announces in
//! `DELIVERIES` before connecting (by address they are indistinguishable from remote
//! clients, and a connection to the pod's own IP does not even carry loopback's ifindex).

use aya_ebpf::{
    macros::{map, sk_lookup},
    maps::{HashMap, LruHashMap, SockHash},
    programs::SkLookupContext,
};
use aya_log_ebpf::warn;

use crate::ctx::{ctx_read, ctx_read_ip6};
use hawser_common::{
    AF_INET, DeliveryKey, Enrollment, LISTENER_INBOUND, LISTENER_TUNNEL, ListenerKey, PodAddr,
    SockAddr, TUNNEL_PORT,
};

const IPPROTO_TCP: u32 = 6;
const SK_DROP: u32 = 0;
const SK_PASS: u32 = 1;
/// The loopback device is ifindex 1 in every network namespace.
const LOOPBACK_IFINDEX: u32 = 1;

/// Enrolled pods by address (family + address words); filled by the daemon.
#[map]
static ENROLLED_ADDRS: HashMap<PodAddr, Enrollment> = HashMap::pinned(4096, 0);

/// The daemon's inbound and tunnel listeners, by pod address and kind.
#[map]
static LISTENERS: SockHash<ListenerKey> = SockHash::pinned(8192, 0);

/// Connections the daemon is opening to apps; written and removed by the daemon.
#[map]
static DELIVERIES: LruHashMap<DeliveryKey, u8> = LruHashMap::pinned(65536, 0);

#[sk_lookup]
pub fn hawser_sk_lookup(ctx: SkLookupContext) -> u32 {
    let lookup = unsafe { &*ctx.lookup };
    if lookup.protocol != IPPROTO_TCP || lookup.ingress_ifindex == LOOPBACK_IFINDEX {
        return SK_PASS;
    }
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
    let pod = PodAddr {
        addr: local,
        family,
    };
    if unsafe { ENROLLED_ADDRS.get(&pod) }.is_none() {
        return SK_PASS;
    }
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
    if unsafe { DELIVERIES.get(&delivery) }.is_some() {
        return SK_PASS;
    }
    let kind = if lookup.local_port == u32::from(TUNNEL_PORT) {
        LISTENER_TUNNEL
    } else {
        LISTENER_INBOUND
    };
    match LISTENERS.redirect_sk_lookup(&ctx, ListenerKey { pod, kind }, 0) {
        Ok(()) => SK_PASS,
        Err(_) => {
            // Enrolled but no listener: the daemon is down. Refuse rather than let the
            // connection reach the app around it.
            warn!(
                &ctx,
                "hawser: no listener for enrolled pod, port {}", lookup.local_port
            );
            SK_DROP
        }
    }
}
