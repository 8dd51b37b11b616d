//! Copying both ways between the two ends of a relayed connection (through userspace:
//! plaintext, or TLS done by rustls), counting bytes as they move.
//!
//! A half-close is passed on. A stream cut short is never passed on as complete: when
//! either direction fails (a peer that reset, a TLS session that ended without
//! `close_notify` because the other daemon died or the link was cut), both ends are
//! reset, so the app reads an error instead of a clean end of a truncated stream.

use std::{
    future::Future,
    io,
    sync::atomic::{AtomicU64, Ordering},
};

use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    net::TcpStream,
};

use super::splice::{self, unless_gone};
use crate::tls::offload::Stream;

/// A direction's buffer starts small, so an idle connection holds little, and grows
/// sixteenfold each time a read fills it, up to `MAX_BUFFER`: a bulk flow then moves in
/// few, large reads and writes (a full 16 KiB TLS record at the second step).
pub(super) const FIRST_BUFFER: usize = 1024;
const MAX_BUFFER: usize = 256 * 1024;
const GROWTH: usize = 16;
const _: () = assert!(MAX_BUFFER <= hawser_model::frames::MAX_LEN);

/// One end of a relayed connection.
pub trait Endpoint: AsyncRead + AsyncWrite + Unpin + Send {
    /// Makes closing this end abortive (a TCP reset), for a stream that was cut short.
    fn reset(&self);
}

impl Endpoint for TcpStream {
    fn reset(&self) {
        splice::reset(self);
    }
}

/// A userspace TLS session: dropped without `close_notify`, its peer sees the cut.
impl Endpoint for Box<dyn Stream> {
    fn reset(&self) {}
}

/// What moved, client to server and back, and the error that ended the connection early.
pub struct Outcome {
    pub request: u64,
    pub response: u64,
    pub error: Option<io::Error>,
}

/// Copies until both directions are done, one fails, or `cut` says why the connection
/// may not go on.
pub async fn bidirectional(
    mut client: impl Endpoint,
    mut server: impl Endpoint,
    cut: impl Future<Output = String>,
) -> Outcome {
    let (request, response) = (AtomicU64::new(0), AtomicU64::new(0));
    let result = {
        let (mut client_read, mut client_write) = tokio::io::split(&mut client);
        let (mut server_read, mut server_write) = tokio::io::split(&mut server);
        both_ways(
            one_way(&mut client_read, &mut server_write, &request),
            one_way(&mut server_read, &mut client_write, &response),
            cut,
        )
        .await
    };
    let error = result.err();
    if error.is_some() {
        client.reset();
        server.reset();
    }
    Outcome {
        request: request.into_inner(),
        response: response.into_inner(),
        error,
    }
}

/// Runs a connection's two directions until both are done or one fails, or until `cut`
/// resolves (with the reason, the error).
pub(super) async fn both_ways(
    there: impl Future<Output = io::Result<()>>,
    back: impl Future<Output = io::Result<()>>,
    cut: impl Future<Output = String>,
) -> io::Result<()> {
    tokio::select! {
        copied = async { tokio::try_join!(there, back) } => copied.map(|_| ()),
        why = cut => Err(io::Error::other(why)),
    }
}

/// `from` to `to` until `from` ends, then passes the end on.
async fn one_way(
    from: &mut (impl AsyncRead + Unpin),
    to: &mut (impl AsyncWrite + Unpin),
    moved: &AtomicU64,
) -> io::Result<()> {
    let mut buffer = vec![0; FIRST_BUFFER];
    loop {
        let n = from.read(&mut buffer).await?;
        if n == 0 {
            return unless_gone(to.shutdown().await);
        }
        send(to, &buffer[..n]).await?;
        moved.fetch_add(n as u64, Ordering::Relaxed);
        buffer.resize(grown(buffer.len(), n), 0);
    }
}

/// Writes all of `bytes` and flushes: a TLS stream may accept bytes while its records
/// still wait for the socket (tokio-rustls returns from a write whose socket would
/// block), and only a flush waits until they are out. (A no-op for a TCP socket.)
pub(super) async fn send(to: &mut (impl AsyncWrite + Unpin), bytes: &[u8]) -> io::Result<()> {
    to.write_all(bytes).await?;
    to.flush().await
}

/// The size of a buffer of `len` bytes after a read of `n` into it (see `FIRST_BUFFER`).
pub(super) fn grown(len: usize, n: usize) -> usize {
    if n == len && len < MAX_BUFFER {
        (len * GROWTH).min(MAX_BUFFER)
    } else {
        len
    }
}
