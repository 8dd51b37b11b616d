//! Idle tunnel sessions ready for a pair's next connection: spares and kept sessions.
//!
//! A spare: for a (pod, destination pod) pair with recent traffic, one session is kept
//! handshaken ahead of need, so the next connection skips the handshake's round trips and
//! CPU on its way (the handshake still happens, off its path). A kept session: a serial
//! session (ALPN `hawser-tunnel/2`, `--tunnel-reuse`) whose stream ended cleanly both ways,
//! which carries the pair's next connection without a handshake at all.
//!
//! A session belongs to one source pod (the map lives in its context), one destination
//! address and the identity proven there: never shared across identities. It is handed
//! out only with the SVID and trust bundle it was made with still current, idle for less
//! than `MAX_AGE` (the server waits `HANDSHAKE_TIMEOUT` for a preamble) and within
//! `MAX_LIFE` of its handshake, with the server's chain unexpired; the revocation and
//! trust-domain checks of an opened tunnel run each time it is used, as for a fresh one.

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
    tls::{socket::Socket, verify::ChainExpiry},
};
use hawser_model::{SpiffeId, preamble::ALPN_SERIAL};

/// A session idle longer than this is dropped; traffic to a pair counts as recent within
/// this of its last connection.
pub const MAX_AGE: Duration = Duration::from_secs(5);
/// A serial session carries no stream this long after its handshake: how long a chain
/// checked once (revocation is checked per stream) may keep being trusted. The server
/// allows `HANDSHAKE_TIMEOUT` more, for a stream the client started just in time.
pub const MAX_LIFE: Duration = Duration::from_secs(60);
/// Pairs a pod keeps track of.
const MAX_PAIRS: usize = 256;
/// Idle sessions a pair keeps (about its connections open at once); more are closed.
const MAX_IDLE: usize = 8;
/// Idle sessions a pod keeps in all (each holds a socket and its TLS state).
const MAX_POD_IDLE: usize = 64;

/// A handshaken session to a destination, between streams (no preamble pending).
pub struct Session {
    pub stream: TlsStream<Socket>,
    /// The serial of the server's certificate (for revocation).
    pub server_serial: String,
    pub svid: Arc<Svid>,
    pub bundle: Arc<TrustBundle>,
    pub handshaken: Instant,
    /// When the server's chain expires (read at the first reuse).
    pub chain_expiry: ChainExpiry,
    /// When it became idle (made, or kept after a stream).
    pub idle_since: Instant,
    /// It carried a stream (a kept serial session, not a spare).
    pub carried: bool,
}

impl Session {
    /// Whether it carries streams one after another (the server agreed to
    /// `hawser-tunnel/2`), or only one.
    pub fn serial(&self) -> bool {
        self.stream.get_ref().1.alpn_protocol() == Some(ALPN_SERIAL)
    }
}

#[derive(Default)]
struct Pair {
    last_used: Option<Instant>,
    /// Newest last.
    idle: Vec<Session>,
    /// A spare's handshake is under way.
    making: bool,
}

/// One pod's idle sessions, by destination address and the identity proven there.
#[derive(Default)]
pub struct Spares {
    pairs: Mutex<HashMap<(IpAddr, SpiffeId), Pair>>,
}

/// What a connection gets: a session to use, and whether to make a spare.
pub struct Taken {
    pub session: Option<Session>,
    pub make_next: bool,
}

impl Spares {
    /// An idle session for a connection to `dst` as `peer` with these credentials, the
    /// newest usable one; `make_next` when this pair saw traffic within `MAX_AGE` and no
    /// session is left idle, under way or coming back.
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
            pairs.retain(|_, p| {
                p.making || !p.idle.is_empty() || p.last_used.is_some_and(|t| now - t < MAX_AGE)
            });
        }
        let key = (dst, peer.clone());
        if pairs.len() >= MAX_PAIRS && !pairs.contains_key(&key) {
            return Taken {
                session: None,
                make_next: false,
            };
        }
        let pair = pairs.entry(key).or_default();
        let recent = pair.last_used.is_some_and(|t| now - t < MAX_AGE);
        pair.last_used = Some(now);
        let mut session = None;
        while let Some(idle) = pair.idle.pop() {
            session = usable(idle, svid, bundle, now);
            if session.is_some() {
                break;
            }
        }
        // A serial session taken comes back after its stream: no spare for it.
        let coming_back = session.as_ref().is_some_and(Session::serial);
        let make_next = recent && !pair.making && pair.idle.is_empty() && !coming_back;
        pair.making |= make_next;
        Taken { session, make_next }
    }

    /// Keeps a spare made for `dst` as `peer` (None: its handshake failed).
    pub fn made(&self, dst: IpAddr, peer: &SpiffeId, spare: Option<Session>) {
        let Some(spare) = spare else {
            METRICS.tunnel_spares.with_label_values(&["failed"]).inc();
            return self.with_pair(dst, peer, |pair, _| pair.making = false);
        };
        self.with_pair(dst, peer, |pair, idle| {
            pair.making = false;
            keep_in(pair, spare, idle);
        });
    }

    /// Keeps a serial session whose stream ended cleanly for the pair's next connection.
    pub fn keep(&self, dst: IpAddr, peer: &SpiffeId, session: Session) {
        METRICS.tunnel_spares.with_label_values(&["kept"]).inc();
        self.with_pair(dst, peer, |pair, idle| keep_in(pair, session, idle));
    }

    /// Drops the session for `dst` as `peer` idle since `since` if still unused: it
    /// would be too old to use, and it holds a connection.
    pub fn expire(&self, dst: IpAddr, peer: &SpiffeId, since: Instant) {
        self.with_pair(dst, peer, |pair, _| {
            let before = pair.idle.len();
            pair.idle.retain(|s| s.idle_since != since);
            if pair.idle.len() < before {
                METRICS.tunnel_spares.with_label_values(&["expired"]).inc();
            }
        });
    }

    /// Runs `f` on the pair if it is still tracked, with the pod's idle sessions in all (a
    /// dropped session is closed: its server sees the session end before a preamble, and
    /// ends it quietly).
    fn with_pair(&self, dst: IpAddr, peer: &SpiffeId, f: impl FnOnce(&mut Pair, usize)) {
        let mut pairs = self.lock();
        let idle = pairs.values().map(|p| p.idle.len()).sum();
        if let Some(pair) = pairs.get_mut(&(dst, peer.clone())) {
            f(pair, idle);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(IpAddr, SpiffeId), Pair>> {
        self.pairs.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Adds an idle session to `pair`, closing its oldest past `MAX_IDLE`; closes it instead
/// when the pod keeps `MAX_POD_IDLE` (`idle` now) already.
fn keep_in(pair: &mut Pair, session: Session, idle: usize) {
    if idle >= MAX_POD_IDLE {
        return METRICS.tunnel_spares.with_label_values(&["surplus"]).inc();
    }
    pair.idle.push(session);
    if pair.idle.len() > MAX_IDLE {
        pair.idle.remove(0);
        METRICS.tunnel_spares.with_label_values(&["surplus"]).inc();
    }
}

/// `session` if it may carry a connection now: made with these credentials, young enough
/// (with the server's chain unexpired), and not closed by the other side (its daemon
/// restarted, say).
fn usable(
    mut session: Session,
    svid: &Arc<Svid>,
    bundle: &Arc<TrustBundle>,
    now: Instant,
) -> Option<Session> {
    let outcome = if !Arc::ptr_eq(&session.svid, svid) || !Arc::ptr_eq(&session.bundle, bundle) {
        "stale"
    } else if now - session.idle_since >= MAX_AGE
        || now - session.handshaken >= MAX_LIFE
        || (session.carried && chain_expired(&mut session))
    {
        "expired"
    } else if !established(session.stream.get_ref().0.tcp()) || said_something(&session) {
        "closed"
    } else {
        "used"
    };
    METRICS.tunnel_spares.with_label_values(&[outcome]).inc();
    (outcome == "used").then_some(session)
}

/// Whether the first certificate of the server's chain has expired (or cannot be read):
/// a kept session outlives its handshake's check of the chain.
fn chain_expired(session: &mut Session) -> bool {
    let expiry = session.chain_expiry.of(session.stream.get_ref().1);
    !expiry.is_ok_and(|expiry| expiry > time::OffsetDateTime::now_utc())
}

/// Whether the server sent anything since the session's last stream ended: it sends
/// nothing between streams but a going-away mark (a spare may hold session tickets).
fn said_something(session: &Session) -> bool {
    session.carried && session.stream.get_ref().0.has_unread()
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
