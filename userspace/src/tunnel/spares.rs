//! Spare tunnel sessions: for a (pod, destination pod) pair with recent traffic, one
//! session is kept handshaken ahead of need, so the next connection skips the handshake's
//! round trips and CPU on its way (the handshake still happens, off its path).
//!
//! A spare belongs to one source pod (the map lives in its context), one destination
//! address and the identity proven there: never shared across identities. It is handed
//! out only with the SVID and trust bundle it was made with still current and within
//! `MAX_AGE` (the server waits `HANDSHAKE_TIMEOUT` for the preamble); the revocation and
//! trust-domain checks of an opened tunnel run when it is used, as for a fresh one.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use std::os::fd::AsRawFd;

use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use crate::{
    metrics::METRICS,
    svid::{Svid, TrustBundle},
    tls::socket::Socket,
};
use hawser_model::SpiffeId;

/// A spare older than this is dropped unused; traffic to a pair counts as recent within
/// this of its last connection.
pub const MAX_AGE: Duration = Duration::from_secs(5);
/// Pairs a pod keeps track of (each with at most one spare).
const MAX_PAIRS: usize = 256;

/// A handshaken session to a destination, its preamble not yet sent.
pub struct Spare {
    pub stream: TlsStream<Socket>,
    /// The serial of the server's certificate (for revocation).
    pub server_serial: String,
    pub svid: Arc<Svid>,
    pub bundle: Arc<TrustBundle>,
    pub made: Instant,
}

#[derive(Default)]
struct Pair {
    last_used: Option<Instant>,
    spare: Option<Spare>,
    /// A spare's handshake is under way.
    making: bool,
}

/// One pod's spares, by destination address and the identity proven there.
#[derive(Default)]
pub struct Spares {
    pairs: Mutex<HashMap<(IpAddr, SpiffeId), Pair>>,
}

/// What a connection gets: a spare to use, and whether to make the next one.
pub struct Taken {
    pub spare: Option<Spare>,
    pub make_next: bool,
}

impl Spares {
    /// The spare for a connection to `dst` as `peer` with these credentials, if a fresh
    /// one is ready; `make_next` when this pair saw traffic within `MAX_AGE` and no
    /// spare is ready or under way.
    pub fn take(
        &self,
        dst: IpAddr,
        peer: &SpiffeId,
        svid: &Arc<Svid>,
        bundle: &Arc<TrustBundle>,
    ) -> Taken {
        let now = Instant::now();
        let mut pairs = self.lock();
        if pairs.len() >= MAX_PAIRS {
            pairs.retain(|_, p| p.making || p.last_used.is_some_and(|t| now - t < MAX_AGE));
        }
        let key = (dst, peer.clone());
        if pairs.len() >= MAX_PAIRS && !pairs.contains_key(&key) {
            return Taken {
                spare: None,
                make_next: false,
            };
        }
        let pair = pairs.entry(key).or_default();
        let recent = pair.last_used.is_some_and(|t| now - t < MAX_AGE);
        pair.last_used = Some(now);
        let spare = pair.spare.take().and_then(|s| usable(s, svid, bundle, now));
        let make_next = recent && !pair.making;
        pair.making |= make_next;
        Taken { spare, make_next }
    }

    /// Keeps `spare` for the next connection to `dst` as `peer` (None: its handshake
    /// failed).
    pub fn put(&self, dst: IpAddr, peer: &SpiffeId, spare: Option<Spare>) {
        if spare.is_none() {
            METRICS.tunnel_spares.with_label_values(&["failed"]).inc();
        }
        let mut pairs = self.lock();
        if let Some(pair) = pairs.get_mut(&(dst, peer.clone())) {
            pair.making = false;
            pair.spare = spare;
        }
    }

    /// Drops the spare for `dst` as `peer` made at `made` if still unused: it would be
    /// too old to use, and it holds a connection.
    pub fn expire(&self, dst: IpAddr, peer: &SpiffeId, made: Instant) {
        let mut pairs = self.lock();
        if let Some(pair) = pairs.get_mut(&(dst, peer.clone()))
            && pair.spare.as_ref().is_some_and(|s| s.made == made)
        {
            pair.spare = None;
            METRICS.tunnel_spares.with_label_values(&["expired"]).inc();
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(IpAddr, SpiffeId), Pair>> {
        self.pairs.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// `spare` if it may carry a connection now: made with these credentials, young enough,
/// and not closed by the other side (its daemon restarted, say).
fn usable(
    spare: Spare,
    svid: &Arc<Svid>,
    bundle: &Arc<TrustBundle>,
    now: Instant,
) -> Option<Spare> {
    let outcome = if !Arc::ptr_eq(&spare.svid, svid) || !Arc::ptr_eq(&spare.bundle, bundle) {
        "stale"
    } else if now - spare.made >= MAX_AGE {
        "expired"
    } else if !established(spare.stream.get_ref().0.tcp()) {
        "closed"
    } else {
        "used"
    };
    METRICS.tunnel_spares.with_label_values(&[outcome]).inc();
    (outcome == "used").then_some(spare)
}

/// Whether the kernel still has the connection open both ways (a FIN or a reset from the
/// other side ends that).
fn established(tcp: &TcpStream) -> bool {
    let mut info = std::mem::MaybeUninit::<libc::tcp_info>::zeroed();
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: the buffer and its length describe a `tcp_info` the kernel fills.
    let rc = unsafe {
        libc::getsockopt(
            tcp.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            info.as_mut_ptr().cast(),
            &mut len,
        )
    };
    // SAFETY: zeroed is a valid `tcp_info`; the kernel wrote at most `len` bytes of it.
    rc == 0 && unsafe { info.assume_init() }.tcpi_state == TCP_ESTABLISHED
}

/// Linux's `TCP_ESTABLISHED` state.
const TCP_ESTABLISHED: u8 = 1;

#[cfg(test)]
mod tests {
    use tokio::net::TcpListener;

    use super::*;

    #[tokio::test]
    async fn a_connection_the_other_side_closed_is_not_established() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let ours = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (theirs, _) = listener.accept().await.unwrap();
        assert!(established(&ours));
        drop(theirs);
        // The FIN arrives at once on loopback; give the kernel a moment anyway.
        for _ in 0..100 {
            if !established(&ours) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("still established after the other side closed");
    }
}
