//! Copying both ways between an app's socket and one stream of a serial tunnel session
//! (`hawser_model::frames`): the app's bytes go out in frames and its half-close as an end
//! frame; frames coming in go to the app, and an end frame half-closes it. The session
//! outlives the stream only when both ends passed cleanly and the peer is not going away.
//!
//! As in `copy`, a stream cut short is never passed on as complete: a failure either way
//! (the app reset, the session ended inside the stream, a malformed frame) resets the
//! app, and the caller drops the session, which its peer then sees cut inside a stream.

use std::{
    future::Future,
    io,
    sync::atomic::{AtomicBool, AtomicU64, Ordering},
};

use hawser_model::frames::{Frame, HEADER_LEN};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    net::{TcpStream, tcp::ReadHalf},
};

use super::{
    copy::{FIRST_BUFFER, grown, send},
    splice::{self, Moved, unless_gone},
};

/// Runs a stream's two directions until both are done or one fails, or until `cut`
/// resolves (with the reason, the error).
async fn both_ways(
    there: impl Future<Output = io::Result<()>>,
    back: impl Future<Output = io::Result<()>>,
    cut: impl Future<Output = String>,
) -> io::Result<()> {
    tokio::select! {
        copied = async { tokio::try_join!(there, back) } => copied.map(|_| ()),
        why = cut => Err(io::Error::other(why)),
    }
}

/// A stream relayed: what moved, and whether the session may carry the next stream.
pub struct Relayed {
    pub moved: Moved,
    pub reusable: bool,
}

/// Relays one stream until both directions ended, one fails, or `cut` says why it may
/// not go on. `client`: this end is the session's client (only a server goes away).
pub async fn relay(
    mut app: TcpStream,
    session: &mut (impl AsyncRead + AsyncWrite + Unpin),
    cut: impl Future<Output = String>,
    client: bool,
) -> Relayed {
    let (to_peer, to_app) = (AtomicU64::new(0), AtomicU64::new(0));
    let going_away = Marks {
        allowed: client,
        seen: AtomicBool::new(false),
    };
    let result = {
        let (app_read, mut app_write) = app.split();
        let (mut session_read, mut session_write) = tokio::io::split(session);
        both_ways(
            into_frames(&app_read, &mut session_write, &to_peer),
            out_of_frames(&mut session_read, &mut app_write, &to_app, &going_away),
            cut,
        )
        .await
    };
    let error = result.err();
    if error.is_some() {
        splice::reset(&app);
    }
    Relayed {
        reusable: error.is_none() && !going_away.seen.into_inner(),
        moved: Moved {
            to_peer: to_peer.into_inner(),
            to_app: to_app.into_inner(),
            error,
        },
    }
}

/// Going-away marks on a stream: whether the peer may send one, and whether it did.
struct Marks {
    allowed: bool,
    seen: AtomicBool,
}

/// The app's bytes as frames until it half-closes, then the end frame. The buffer is
/// allocated once the app has bytes, and kept between reads only by a bulk flow (as in
/// `copy`): an idle stream holds none.
async fn into_frames(
    from: &ReadHalf<'_>,
    to: &mut (impl AsyncWrite + Unpin),
    moved: &AtomicU64,
) -> io::Result<()> {
    let mut buffer = Vec::new();
    loop {
        from.readable().await?;
        if buffer.is_empty() {
            // The header goes in front of the bytes read, so each frame is one write.
            buffer = vec![0; HEADER_LEN + FIRST_BUFFER];
        }
        let n = match from.try_read(&mut buffer[HEADER_LEN..]) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        };
        buffer[..HEADER_LEN].copy_from_slice(&Frame::header(n));
        send(to, &buffer[..HEADER_LEN + n]).await?;
        if n == 0 {
            return Ok(());
        }
        moved.fetch_add(n as u64, Ordering::Relaxed);
        if n < FIRST_BUFFER {
            buffer = Vec::new();
        } else {
            buffer.resize(HEADER_LEN + grown(buffer.len() - HEADER_LEN, n), 0);
        }
    }
}

/// Frames to the app until the end frame, which half-closes it; a going-away mark is
/// noted (an error from a client). Reads exactly the frames' bytes: whatever follows the
/// end (the next stream's preamble) stays in the session. Only a stream of large frames
/// keeps its buffer between frames.
async fn out_of_frames(
    from: &mut (impl AsyncRead + Unpin),
    to: &mut (impl AsyncWrite + Unpin),
    moved: &AtomicU64,
    going_away: &Marks,
) -> io::Result<()> {
    let mut buffer = Vec::new();
    loop {
        let mut header = [0; HEADER_LEN];
        from.read_exact(&mut header).await?;
        let frame = Frame::decode(header);
        let frame = frame.map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        let len = match frame {
            Frame::Data(len) => len,
            Frame::End => return unless_gone(to.shutdown().await),
            Frame::GoingAway if going_away.allowed => {
                going_away.seen.store(true, Ordering::Relaxed);
                continue;
            }
            Frame::GoingAway => {
                let unasked = "a going-away mark from the session's client";
                return Err(io::Error::new(io::ErrorKind::InvalidData, unasked));
            }
        };
        let mut left = len;
        while left > 0 {
            if buffer.is_empty() {
                buffer = vec![0; FIRST_BUFFER];
            }
            let want = left.min(buffer.len());
            let n = from.read(&mut buffer[..want]).await?;
            if n == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            to.write_all(&buffer[..n]).await?;
            moved.fetch_add(n as u64, Ordering::Relaxed);
            left -= n;
            buffer.resize(grown(buffer.len(), n), 0);
        }
        if len < FIRST_BUFFER {
            buffer = Vec::new();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::future::pending;

    use tokio::io::duplex;

    use super::*;
    use crate::proxy::splice::tests::tcp_pair;
    use hawser_model::frames::MAX_LEN;

    /// Streams in turn on one session, each relayed at both ends: the bytes and the
    /// half-close of each direction pass, the session carries the next stream with nothing
    /// of the last one left in it, and a stream that crossed the server's going-away mark
    /// is carried whole but leaves the session unfit for another.
    #[tokio::test]
    async fn streams_follow_one_another_on_a_session_with_their_half_closes() {
        let (mut near, mut far) = duplex(64 * 1024);
        for round in 0..3u8 {
            let ((app, mut client), (server_app, mut server)) =
                (tcp_pair().await, tcp_pair().await);
            // The last stream: the server said it is going away as it began.
            let going_away = round == 2;
            if going_away {
                far.write_all(&Frame::going_away()).await.unwrap();
            }
            let near_end =
                tokio::spawn(async move { (relay(app, &mut near, pending(), true).await, near) });
            let far_end =
                tokio::spawn(
                    async move { (relay(server_app, &mut far, pending(), false).await, far) },
                );
            // Larger than a frame: it goes in several.
            let request = vec![round; 300_000];
            client.write_all(&request).await.unwrap();
            client.shutdown().await.unwrap();
            let mut received = Vec::new();
            server.read_to_end(&mut received).await.unwrap();
            assert!(
                received == request,
                "round {round}: the request arrives whole, then its end"
            );
            server.write_all(b"response").await.unwrap();
            server.shutdown().await.unwrap();
            let mut response = Vec::new();
            client.read_to_end(&mut response).await.unwrap();
            assert_eq!(response, b"response");
            let (relayed, session) = near_end.await.unwrap();
            let moved = relayed.moved;
            assert!(moved.error.is_none(), "{:?}", moved.error);
            assert_eq!((moved.to_peer, moved.to_app), (request.len() as u64, 8));
            assert_eq!(relayed.reusable, !going_away);
            let (relayed, session_far) = far_end.await.unwrap();
            assert!(relayed.reusable, "{:?}", relayed.moved.error);
            (near, far) = (session, session_far);
        }
    }

    /// A session that ends inside a stream, sends a frame larger than any sender makes, or
    /// a going-away mark to a server cuts the stream: the app reads an error, never a
    /// clean end.
    #[tokio::test]
    async fn a_stream_cut_inside_a_frame_or_by_a_bad_frame_resets_the_app() {
        use io::ErrorKind::{InvalidData, UnexpectedEof};
        let mut cut_short = Frame::header(10).to_vec();
        cut_short.extend(b"abc");
        let oversized = ((MAX_LEN + 1) as u32).to_be_bytes().to_vec();
        let mut to_a_server = Frame::going_away().to_vec();
        to_a_server.extend(Frame::header(3).iter().chain(b"abc"));
        let cases = [
            (cut_short, true, UnexpectedEof),
            (oversized, true, InvalidData),
            (to_a_server, false, InvalidData),
        ];
        for (sent, client_end, why) in cases {
            let (mut near, mut far) = duplex(1024);
            let (app, mut client) = tcp_pair().await;
            let relayed =
                tokio::spawn(async move { relay(app, &mut near, pending(), client_end).await });
            far.write_all(&sent).await.unwrap();
            drop(far);
            let relayed = relayed.await.unwrap();
            let error = relayed.moved.error.expect("the stream was cut");
            assert_eq!(error.kind(), why, "{sent:?}: {error}");
            assert!(!relayed.reusable);
            let mut received = Vec::new();
            let read = client.read_to_end(&mut received).await;
            let error = read.expect_err("a reset, not a clean end");
            assert_eq!(error.kind(), io::ErrorKind::ConnectionReset, "{sent:?}");
        }
    }

    /// A cut (a revocation, the drain's deadline) ends the stream with a reset too.
    #[tokio::test]
    async fn a_cut_stream_resets_the_app() {
        let (mut near, _far) = duplex(1024);
        let (app, mut client) = tcp_pair().await;
        let relayed = relay(app, &mut near, async { "revoked".to_string() }, true).await;
        let error = relayed.moved.error.map(|e| e.to_string());
        assert_eq!(error.as_deref(), Some("revoked"));
        let mut received = Vec::new();
        assert!(client.read_to_end(&mut received).await.is_err());
    }
}
