//! The client end: from the source pod to the destination pod's daemon on 15008.

use std::{
    net::{IpAddr, SocketAddr},
    sync::{Arc, Weak},
    time::{Duration, Instant},
};

use hawser_common::TUNNEL_PORT;
use rustls::pki_types::ServerName;
use tokio::io::AsyncWriteExt;

use super::{
    preamble::Preamble,
    spares::{MAX_AGE, Session},
};
use crate::{
    context::pod::PodContext,
    failure::{Failure, Result},
    identity::certs,
    svid::{Svid, TrustBundle},
    tls::{
        self,
        offload::TunnelStream,
        verify::{ChainExpiry, session_peer},
    },
};
use hawser_model::{SpiffeId, frames::Frame};

/// A spare waits at least this long for its session tickets (see `make_spare`).
const MIN_TICKET_WAIT: Duration = Duration::from_millis(50);

/// The next spare's handshake waits this long after the connection that asked for it:
/// its CPU, on both daemons, would otherwise compete with that connection's start
/// (measured here: p50 of a new connection 1.3 ms without the wait, 1.1 ms with it).
const SPARE_DELAY: Duration = Duration::from_millis(5);

/// At most this much of what the app sent already goes with the preamble: with it, one
/// TLS record (16 KiB of plaintext).
pub const FIRST_BYTES: usize = 16 * 1024 - 64;

/// An opened tunnel to a destination, its preamble sent.
pub enum Opened {
    /// A session for this connection alone, handed to the kernel where it can take it.
    Single(TunnelStream),
    /// A serial session (userspace TLS): its stream goes in frames, and once it ended
    /// cleanly the session is `keep`-able for the pair's next connection. (Boxed: the
    /// connection's task holds it for the connection's life.)
    Serial(Box<Session>),
}

/// A session opened for one connection to `to` (the pod's address and the app's port,
/// a Service's resolved), nothing of the connection sent on it yet.
pub struct Opening {
    session: Box<Session>,
    to: SocketAddr,
}

impl Opening {
    /// The serial of the server's certificate (for revocation).
    pub fn server_serial(&self) -> &str {
        &self.session.server_serial
    }
}

/// A session with `to`'s pod in which `peer` proved itself: an idle one of the pair's, or
/// a new handshake. The caller admits the connection (`server_serial`) before it
/// `start`s it.
pub async fn open(pod: &Arc<PodContext>, to: SocketAddr, peer: &SpiffeId) -> Result<Opening> {
    let (svid, bundle) = pod.credentials_soon().await?;
    let taken = pod.spares.take(to.ip(), peer, &svid, &bundle);
    if taken.make_next {
        let (pod, peer) = (Arc::downgrade(pod), peer.clone());
        tokio::spawn(make_spare(
            pod,
            to.ip(),
            peer,
            (svid.clone(), bundle.clone()),
        ));
    }
    let session = match taken.session {
        Some(session) => session,
        None => handshake(pod, to.ip(), peer, svid, bundle).await?,
    };
    Ok(Opening {
        session: Box::new(session),
        to,
    })
}

/// Names the port the session was opened to, with `first`: what the app sent already (at
/// most `FIRST_BYTES`), in the same record, so that the server has it when it reaches the
/// app instead of a record later (and the connection costs one record and one packet
/// less). Then the session goes to the kernel where it can.
pub async fn start(pod: &PodContext, opening: Opening, first: Vec<u8>) -> Result<Opened> {
    let Opening { mut session, to } = opening;
    let serial = session.serial();
    let mut sent = Preamble { port: to.port() }.encode();
    if !first.is_empty() {
        if serial {
            sent.extend(Frame::header(first.len()));
        }
        sent.extend(first);
    }
    let written = async {
        session.stream.write_all(&sent).await?;
        session.stream.flush().await
    };
    written
        .await
        .map_err(|e| Failure::io(format!("preamble to {to}"), e))?;
    if serial {
        return Ok(Opened::Serial(session));
    }
    let stream = pod.shared.offload.client(session.stream).await?;
    Ok(Opened::Single(stream))
}

/// Keeps a serial session whose stream ended cleanly for the next connection of its pod
/// to `dst` as `peer`, and drops it if still unused when idle too long.
pub fn keep(pod: &Arc<PodContext>, dst: IpAddr, peer: &SpiffeId, mut session: Box<Session>) {
    if pod.shared.drain.stopping().is_cancelled() {
        return;
    }
    session.idle_since = Instant::now();
    session.carried = true;
    let since = session.idle_since;
    pod.spares.keep(dst, peer, *session);
    tokio::spawn(expire(Arc::downgrade(pod), dst, peer.clone(), since));
}

/// A session with `dst`'s daemon in which `peer` proved itself.
async fn handshake(
    pod: &PodContext,
    dst: IpAddr,
    peer: &SpiffeId,
    svid: Arc<Svid>,
    bundle: Arc<TrustBundle>,
) -> Result<Session> {
    let offload = &pod.shared.offload;
    let serial = pod.shared.serial_tunnels;
    let config = pod
        .tls_configs
        .client(&svid, &bundle, peer, offload, serial)?;
    let tunnel = SocketAddr::new(dst, TUNNEL_PORT);
    let tcp = pod.connect(tunnel).await?;
    // Names play no part in the check (see `tls::verify::SecureNaming`); an IP sends no SNI.
    let name = ServerName::IpAddress(dst.into());
    let stream = tls::connect("client", tunnel, tcp, config, name, offload).await?;
    let (_, leaf) = session_peer(stream.get_ref().1, &bundle, Some(peer))?;
    let server = certs::info_der(leaf.as_ref()).map_err(|e| Failure::Peer(format!("{e:#}")))?;
    let now = Instant::now();
    Ok(Session {
        stream,
        server_serial: server.serial,
        svid,
        bundle,
        handshaken: now,
        chain_expiry: ChainExpiry::default(),
        idle_since: now,
        carried: false,
    })
}

/// Makes the next spare session to `dst` as `peer` (once `SPARE_DELAY` has passed, if the
/// pod is still served), and drops it if it is still unused when too old (without keeping
/// the pod's context meanwhile).
async fn make_spare(
    pod: Weak<PodContext>,
    dst: IpAddr,
    peer: SpiffeId,
    (svid, bundle): (Arc<Svid>, Arc<TrustBundle>),
) {
    tokio::time::sleep(SPARE_DELAY).await;
    let Some(pod) = pod.upgrade() else {
        return;
    };
    let spare = async {
        let started = Instant::now();
        let mut spare = handshake(&pod, dst, &peer, svid, bundle).await?;
        // Four times what the connection and the handshake took is ample for the server to
        // check the client's flight and answer: one that sends none (an older kernel-TLS
        // daemon) does not hold the pair's next spare up long.
        let wait = (started.elapsed() * 4).max(MIN_TICKET_WAIT);
        let tickets = pod
            .shared
            .offload
            .read_tickets(&mut spare.stream, wait)
            .await;
        tickets.map_err(|e| Failure::io(format!("session tickets from {dst}"), e))?;
        Ok::<_, Failure>(spare)
    };
    let spare = match spare.await {
        Ok(spare) => spare,
        Err(e) => {
            tracing::debug!(pod = %pod.key, %dst, "no spare tunnel session: {e}");
            return pod.spares.made(dst, &peer, None);
        }
    };
    let since = spare.idle_since;
    pod.spares.made(dst, &peer, Some(spare));
    expire(Arc::downgrade(&pod), dst, peer, since).await;
}

/// Drops the session to `dst` as `peer` idle since `since`, if still unused after
/// `MAX_AGE` (without keeping the pod's context meanwhile).
async fn expire(pod: Weak<PodContext>, dst: IpAddr, peer: SpiffeId, since: Instant) {
    tokio::time::sleep(MAX_AGE.saturating_sub(since.elapsed())).await;
    if let Some(pod) = pod.upgrade() {
        pod.spares.expire(dst, &peer, since);
    }
}
