//! The server end: a pod's 15008 listener, in front of the pod's apps.

use std::{
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::{Duration, Instant},
};

use hawser_common::{INBOUND_PORT, OUTBOUND_PORT, TUNNEL_PORT};
use time::OffsetDateTime;
use tokio::{io::AsyncWriteExt, net::TcpStream};
use tokio_rustls::server::TlsStream;
use tokio_util::sync::CancellationToken;

use super::{
    preamble::{self, Preamble},
    spares::MAX_LIFE,
};
use crate::{
    context::pod::PodContext,
    failure::{Failure, Result},
    proxy::caller::client_certificate,
    svid::TrustBundle,
    tls::{
        self, HANDSHAKE_TIMEOUT,
        offload::TunnelStream,
        socket::Socket,
        verify::{self, ChainExpiry, session_peer},
    },
};
use hawser_model::{SpiffeId, frames::Frame, preamble::ALPN_SERIAL, proxy_v2::ClientCertificate};

/// A tunnel whose client proved its identity, between streams (no preamble read yet).
pub struct Verified {
    stream: TlsStream<Socket>,
    pub client: SpiffeId,
    pub certificate: ClientCertificate,
    /// The bundle the client's chain was last checked against.
    bundle: Arc<TrustBundle>,
    handshaken: Instant,
    /// When the client's chain expires (read at the first stream that asks).
    chain_expiry: ChainExpiry,
    /// The client was told the session takes no further stream (the daemon drains).
    told_going_away: bool,
}

impl Verified {
    /// Whether the client asked for a serial session (see `hawser_model::frames`).
    pub fn serial(&self) -> bool {
        self.stream.get_ref().1.alpn_protocol() == Some(ALPN_SERIAL)
    }

    /// A serial session's stream, to relay in frames once `next_stream` named it.
    pub fn stream(&mut self) -> &mut TlsStream<Socket> {
        &mut self.stream
    }
}

/// An accepted, authenticated tunnel: the client's identity and where it wants to go.
pub struct Accepted {
    pub stream: TunnelStream,
    pub client: SpiffeId,
    pub certificate: ClientCertificate,
    pub dst: SocketAddr,
}

/// Handshake (client certificate required), identity and revocation checks. (Boxed: a
/// serial session keeps it for its life, and every future it passes through would hold
/// a copy of its 1.5 KiB.)
pub async fn handshake(pod: &PodContext, conn: TcpStream) -> Result<Box<Verified>> {
    let (svid, bundle) = pod.credentials_soon().await?;
    let offload = &pod.shared.offload;
    let config = pod.tls_configs.server(&svid, &bundle, offload)?;
    let stream = tls::accept("server", conn, config, offload).await?;
    let session = stream.get_ref().1;
    let (client, leaf) = session_peer(session, &bundle, None)?;
    let certificate = client_certificate(leaf, session)?;
    Ok(Box::new(Verified {
        stream,
        client,
        certificate,
        bundle,
        handshaken: Instant::now(),
        chain_expiry: ChainExpiry::default(),
        told_going_away: false,
    }))
}

/// The preamble, then the session goes to the kernel where it can. The app is reached at
/// the address the client dialed, with the port the preamble names. None: the client
/// closed the session before sending anything (a spare session it did not use, see
/// `spares`).
pub async fn preamble(
    mut v: Box<Verified>,
    dialed: IpAddr,
    offload: &tls::offload::Offload,
) -> Result<Option<Accepted>> {
    let Some(port) = read_port(&mut v.stream).await? else {
        return Ok(None);
    };
    let Verified {
        stream,
        client,
        certificate,
        ..
    } = *v;
    // Bytes the client sent after the preamble may still sit in rustls: the offload
    // drains them into the stream it returns.
    let stream = offload.server(stream).await?;
    Ok(Some(Accepted {
        stream,
        client,
        certificate,
        dst: SocketAddr::new(dialed, port),
    }))
}

/// A serial session's next stream: where it goes, its preamble read (its frames follow in
/// `stream()`). None: the client closed the session, or left it idle, between streams
/// (or the drain window ended meanwhile). A stream on a session past `MAX_LIFE` (and the
/// client's grace) is refused; after a change of the trust bundle, the client's chain is
/// checked again (revocation and trust domain are the stream's admission's). `first`:
/// the stream right after the handshake, which must come in time.
pub async fn next_stream(
    session: &mut Verified,
    dialed: IpAddr,
    pod: &PodContext,
    first: bool,
) -> Result<Option<SocketAddr>> {
    // Told before this stream: the client sends none after the one that crossed the mark.
    if session.told_going_away && !first {
        return Ok(None);
    }
    let drain = &pod.shared.drain;
    let (stopping, deadline) = (drain.stopping(), drain.deadline());
    let waited = next_byte(session, &stopping, &deadline);
    let byte = match tokio::time::timeout(HANDSHAKE_TIMEOUT, waited).await {
        // Idle between streams that long: the client dropped the session.
        Err(_) if !first => return Ok(None),
        Err(_) => return Err(Failure::TimedOut("preamble".into())),
        Ok(byte) => byte.map_err(|e| Failure::io("preamble", e))?,
    };
    let Some(byte) = byte else {
        return Ok(None);
    };
    let rest = preamble::rest(byte, &mut session.stream);
    let rest = tokio::time::timeout(HANDSHAKE_TIMEOUT, rest).await;
    let Some(port) = port_of(rest.map(|read| read.map(Some)))? else {
        return Ok(None);
    };
    let valid_until = session.chain_expiry.of(session.stream.get_ref().1)?;
    still_trusted(session.handshaken.elapsed(), valid_until)?;
    let (_, bundle) = pod.credentials()?;
    if !Arc::ptr_eq(&bundle, &session.bundle) {
        let provider = pod.shared.offload.provider();
        let chain = session.stream.get_ref().1.peer_certificates();
        verify::recheck_client(chain.unwrap_or_default(), &bundle, &provider)?;
        session.bundle = bundle;
    }
    Ok(Some(SocketAddr::new(dialed, port)))
}

/// Whether a serial session whose handshake was `age` ago may carry a stream now: within
/// its life (and the client's grace), with the client's chain unexpired.
fn still_trusted(age: Duration, valid_until: OffsetDateTime) -> Result<()> {
    if age >= MAX_LIFE + HANDSHAKE_TIMEOUT {
        return Err(Failure::Peer(format!(
            "a stream on a serial session older than {MAX_LIFE:?}"
        )));
    }
    if OffsetDateTime::now_utc() >= valid_until {
        return Err(Failure::Peer(format!(
            "a stream on a serial session whose client chain expired at {valid_until}"
        )));
    }
    Ok(())
}

/// How long a session told that the daemon goes away still waits for a preamble the
/// client may have sent before it read the mark.
const GOING_AWAY_GRACE: Duration = Duration::from_secs(1);

/// The first byte of a serial session's next preamble. Once the daemon drains, the
/// client is told first that the session takes no stream after the one it may already
/// have sent (`hawser_model::frames`), which has `GOING_AWAY_GRACE` to arrive. None: the
/// session ended, the grace or the drain window did.
async fn next_byte(
    session: &mut Verified,
    stopping: &CancellationToken,
    deadline: &CancellationToken,
) -> std::io::Result<Option<u8>> {
    let grace = tokio::time::sleep(Duration::MAX);
    tokio::pin!(grace);
    loop {
        let told = session.told_going_away;
        let stream = &mut session.stream;
        let next = tokio::select! {
            byte = preamble::first_byte(stream) => Some(byte),
            () = stopping.cancelled(), if !told => None,
            () = &mut grace, if told => return Ok(None),
            () = deadline.cancelled() => return Ok(None),
        };
        if let Some(byte) = next {
            return byte;
        }
        session.told_going_away = true;
        grace
            .as_mut()
            .reset(tokio::time::Instant::now() + GOING_AWAY_GRACE);
        let mark = Frame::going_away();
        let told = async {
            session.stream.write_all(&mark).await?;
            session.stream.flush().await
        };
        if told.await.is_err() {
            return Ok(None);
        }
    }
}

/// The port a preamble names, read within `HANDSHAKE_TIMEOUT`; None: the session ended
/// before its first byte.
async fn read_port(stream: &mut TlsStream<Socket>) -> Result<Option<u16>> {
    port_of(tokio::time::timeout(HANDSHAKE_TIMEOUT, preamble::read(stream)).await)
}

/// The port of a preamble read in time, unless it is one of the daemon's own.
fn port_of(
    read: std::result::Result<std::io::Result<Option<Preamble>>, tokio::time::error::Elapsed>,
) -> Result<Option<u16>> {
    let preamble = read
        .map_err(|_| Failure::TimedOut("preamble".into()))?
        .map_err(|e| Failure::io("preamble", e))?;
    let Some(preamble) = preamble else {
        return Ok(None);
    };
    if [OUTBOUND_PORT, INBOUND_PORT, TUNNEL_PORT].contains(&preamble.port) {
        return Err(Failure::Peer(format!(
            "port {} is the daemon's own",
            preamble.port
        )));
    }
    Ok(Some(preamble.port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stream_needs_a_young_session_and_an_unexpired_client_chain() {
        let soon = OffsetDateTime::now_utc() + time::Duration::minutes(5);
        let past = OffsetDateTime::now_utc() - time::Duration::seconds(1);
        assert!(still_trusted(Duration::from_secs(1), soon).is_ok());
        assert!(still_trusted(MAX_LIFE, soon).is_ok(), "the client's grace");
        let old = still_trusted(MAX_LIFE + HANDSHAKE_TIMEOUT, soon).unwrap_err();
        assert!(old.to_string().contains("older than"), "{old}");
        let expired = still_trusted(Duration::from_secs(1), past).unwrap_err();
        assert!(expired.to_string().contains("chain expired"), "{expired}");
    }
}
