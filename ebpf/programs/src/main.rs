//! hawser's eBPF programs.
//!
//! Outbound: `cgroup/connect4` and `cgroup/connect6` rewrite TCP connects of enrolled pods
//! to the daemon's outbound listener on the pod's own loopback and remember the original
//! destination by socket cookie; `sockops` moves that record, at the moment the client's
//! source port is known and before the SYN leaves, to a key the daemon can compute from an
//! accepted socket (netns cookie + client address).
//!
//! Steering into the daemon's listeners (`sk_lookup`, one instance per pod) is the
//! separate object `hawser-steer` (src/bin/steer.rs).
#![no_std]
#![no_main]

mod ctx;
mod outbound;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
