//! Inbound steering: connections that arrive at an enrolled pod from the network go to the
//! daemon's listeners in that pod; connections over loopback (the daemon delivering to the
//! app, or the pod talking to itself) pass untouched.

use aya_ebpf::{
    macros::{map, sk_lookup},
    maps::{HashMap, SockHash},
    programs::SkLookupContext,
};
use aya_log_ebpf::warn;

use crate::ctx::{ctx_read, ctx_read_ip6};
use hawser_common::{
    AF_INET, Enrollment, LISTENER_INBOUND, LISTENER_TUNNEL, ListenerKey, PodAddr, TUNNEL_PORT,
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

#[sk_lookup]
pub fn hawser_sk_lookup(ctx: SkLookupContext) -> u32 {
    let lookup = unsafe { &*ctx.lookup };
    if lookup.protocol != IPPROTO_TCP || lookup.ingress_ifindex == LOOPBACK_IFINDEX {
        return SK_PASS;
    }
    let family = lookup.family;
    let addr = if family == u32::from(AF_INET) {
        [ctx_read(&lookup.local_ip4), 0, 0, 0]
    } else {
        ctx_read_ip6(&lookup.local_ip6)
    };
    let pod = PodAddr { addr, family };
    if unsafe { ENROLLED_ADDRS.get(&pod) }.is_none() {
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
