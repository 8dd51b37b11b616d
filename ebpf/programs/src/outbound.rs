//! Outbound capture: connect hooks and the original-destination hand-off.

use crate::ctx::{ctx_read, ctx_read_ip6};
use aya_ebpf::{
    bindings::{BPF_SOCK_OPS_TCP_CONNECT_CB, bpf_sock_addr},
    helpers::{bpf_get_current_cgroup_id, bpf_get_netns_cookie, bpf_get_socket_cookie},
    macros::{cgroup_sock_addr, map, sock_ops},
    maps::{HashMap, LruHashMap},
    programs::{SockAddrContext, SockOpsContext},
};
use hawser_common::{AF_INET, AF_INET6, ConnKey, Enrollment, OUTBOUND_PORT, SockAddr};

const IPPROTO_TCP: u32 = 6;
const SOCK_STREAM: u32 = 1;
/// Verdict of cgroup/connect programs: let the connect go on.
const ALLOW: i32 = 1;

/// Enrolled pods by network-namespace cookie; filled by the daemon.
#[map]
static ENROLLED_NETNS: HashMap<u64, Enrollment> = HashMap::pinned(4096, 0);

/// The cgroups the node daemon runs in (cgroup v2 ids); filled by the daemon. Its own
/// connects are never captured. A pod cannot join these cgroups, whereas it can set any
/// socket mark or uid it likes.
#[map]
static DAEMON_CGROUPS: HashMap<u64, u8> = HashMap::pinned(64, 0);

/// Original destination by client socket cookie, written at connect time.
#[map]
static ORIG_BY_COOKIE: LruHashMap<u64, SockAddr> = LruHashMap::pinned(65536, 0);

/// Original destination by (netns cookie, client address); the daemon reads and deletes.
#[map]
static ORIG_BY_CLIENT: LruHashMap<ConnKey, SockAddr> = LruHashMap::pinned(65536, 0);

/// 127.0.0.1 in network byte order.
const LOOPBACK4: u32 = u32::from_be_bytes([127, 0, 0, 1]);

#[cgroup_sock_addr(connect4)]
pub fn hawser_connect4(ctx: SockAddrContext) -> i32 {
    let sa = unsafe { &mut *ctx.sock_addr };
    if !should_capture(&ctx, sa) {
        return ALLOW;
    }
    let dst = u32::from_be(sa.user_ip4);
    if dst >> 24 == 127 {
        return ALLOW;
    }
    let orig = SockAddr {
        addr: [sa.user_ip4, 0, 0, 0],
        port: u16::from_be(sa.user_port as u16),
        family: AF_INET,
    };
    redirect(&ctx, sa, orig, |sa| sa.user_ip4 = LOOPBACK4.to_be());
    ALLOW
}

#[cgroup_sock_addr(connect6)]
pub fn hawser_connect6(ctx: SockAddrContext) -> i32 {
    let sa = unsafe { &mut *ctx.sock_addr };
    if !should_capture(&ctx, sa) {
        return ALLOW;
    }
    let ip6 = ctx_read_ip6(&sa.user_ip6);
    let v4_mapped = is_v4_mapped(&ip6);
    let loopback6 = ip6[0] == 0 && ip6[1] == 0 && ip6[2] == 0 && ip6[3] == 1u32.to_be();
    if loopback6 || (v4_mapped && u32::from_be(ip6[3]) >> 24 == 127) {
        return ALLOW;
    }
    let orig = SockAddr {
        addr: ip6,
        port: u16::from_be(sa.user_port as u16),
        family: AF_INET6,
    };
    // A v4-mapped destination must stay v4-mapped: a dual-stack socket cannot reach ::1
    // once it is talking IPv4, and the daemon listens on both loopbacks.
    let target = if v4_mapped {
        [0, 0, 0xffffu32.to_be(), LOOPBACK4.to_be()]
    } else {
        [0, 0, 0, 1u32.to_be()]
    };
    redirect(&ctx, sa, orig, |sa| sa.user_ip6 = target);
    ALLOW
}

/// TCP connects from an enrolled pod's netns, except the daemon's own.
fn should_capture(ctx: &SockAddrContext, sa: &bpf_sock_addr) -> bool {
    if sa.type_ != SOCK_STREAM || (sa.protocol != IPPROTO_TCP && sa.protocol != 0) {
        return false;
    }
    // The connecting task's cgroup, not the socket's: the hook runs in its context.
    let cgroup = unsafe { bpf_get_current_cgroup_id() };
    if unsafe { DAEMON_CGROUPS.get(&cgroup) }.is_some() {
        return false;
    }
    let netns = unsafe { bpf_get_netns_cookie(ctx.sock_addr.cast()) };
    unsafe { ENROLLED_NETNS.get(&netns) }.is_some()
}

/// Records the original destination and points the connect at the outbound listener.
/// If the record cannot be stored the connect still goes to the daemon, which then refuses
/// it: a capture we cannot account for must fail, never bypass.
fn redirect(
    ctx: &SockAddrContext,
    sa: &mut bpf_sock_addr,
    orig: SockAddr,
    rewrite: impl FnOnce(&mut bpf_sock_addr),
) {
    let cookie = unsafe { bpf_get_socket_cookie(ctx.sock_addr.cast()) };
    let _ = ORIG_BY_COOKIE.insert(&cookie, &orig, 0);
    rewrite(sa);
    sa.user_port = u32::from(OUTBOUND_PORT.to_be());
}

/// At `TCP_CONNECT_CB` the client's source address is bound and the SYN is not yet sent,
/// so the daemon cannot accept the connection before this record exists.
#[sock_ops]
pub fn hawser_sockops(ctx: SockOpsContext) -> u32 {
    if ctx.op() != BPF_SOCK_OPS_TCP_CONNECT_CB {
        return 0;
    }
    let cookie = unsafe { bpf_get_socket_cookie(ctx.ops.cast()) };
    let Some(orig) = (unsafe { ORIG_BY_COOKIE.get(&cookie) }).copied() else {
        return 0;
    };
    let _ = ORIG_BY_COOKIE.remove(&cookie);
    let ops = unsafe { &*ctx.ops };
    let (family, addr) = if ctx.family() as u16 == AF_INET {
        (AF_INET, [ctx_read(&ops.local_ip4), 0, 0, 0])
    } else {
        let ip6 = ctx_read_ip6(&ops.local_ip6);
        if is_v4_mapped(&ip6) {
            // A dual-stack client captured to ::ffff:127.0.0.1 reaches the daemon's IPv4
            // listener, which sees it as a plain IPv4 peer: key it that way.
            (AF_INET, [ip6[3], 0, 0, 0])
        } else {
            (AF_INET6, ip6)
        }
    };
    let key = ConnKey {
        netns_cookie: unsafe { bpf_get_netns_cookie(ctx.ops.cast()) },
        client: SockAddr {
            addr,
            port: ctx.local_port() as u16,
            family,
        },
        _pad: 0,
    };
    let _ = ORIG_BY_CLIENT.insert(&key, &orig, 0);
    0
}

fn is_v4_mapped(ip6: &[u32; 4]) -> bool {
    ip6[0] == 0 && ip6[1] == 0 && ip6[2] == 0xffffu32.to_be()
}
