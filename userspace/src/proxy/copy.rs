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
    pin::Pin,
    task::{Context, Poll, ready},
};

use tokio::{
    io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf},
    net::TcpStream,
};

use super::splice::{self, unless_gone};
use crate::tls::offload::Stream;

/// A direction reads this much at first (onto the stack, see `Half`), and its buffer
/// grows sixteenfold each time a read fills it, up to `MAX_BUFFER`: a bulk flow then
/// moves in few, large reads and writes (a full 16 KiB TLS record at the second step).
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
    let (mut there, mut back) = (Half::default(), Half::default());
    let result = Relay {
        client: &mut client,
        server: &mut server,
        there: &mut there,
        back: &mut back,
        cut: std::pin::pin!(cut),
        back_first: false,
    }
    .await;
    let error = result.err();
    if error.is_some() {
        client.reset();
        server.reset();
    }
    Outcome {
        request: there.moved,
        response: back.moved,
        error,
    }
}

/// Both directions of a connection and what may cut it, polled by hand: nested async fns
/// (a future per direction, joined, raced against the cut) would keep a copy of each
/// future they are handed in the connection's task, a kilobyte or more per idle
/// connection.
struct Relay<'a, A, B, C> {
    client: &'a mut A,
    server: &'a mut B,
    there: &'a mut Half,
    back: &'a mut Half,
    cut: Pin<&'a mut C>,
    /// Which direction this poll starts with: it alternates, or a direction that always
    /// has bytes would spend the task's budget before the other is polled.
    back_first: bool,
}

impl<A: Endpoint, B: Endpoint, C: Future<Output = String>> Future for Relay<'_, A, B, C> {
    type Output = io::Result<()>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if let Poll::Ready(why) = this.cut.as_mut().poll(cx) {
            return Poll::Ready(Err(io::Error::other(why)));
        }
        this.back_first = !this.back_first;
        let (there, back) = if this.back_first {
            let back = this.back.poll_copy(cx, this.server, this.client)?;
            (this.there.poll_copy(cx, this.client, this.server)?, back)
        } else {
            let there = this.there.poll_copy(cx, this.client, this.server)?;
            (there, this.back.poll_copy(cx, this.server, this.client)?)
        };
        if there.is_ready() && back.is_ready() {
            Poll::Ready(Ok(()))
        } else {
            Poll::Pending
        }
    }
}

/// One direction of a relayed connection.
#[derive(Default)]
struct Half {
    /// Bytes read and not yet written: `buffer[written..filled]`. A direction whose last
    /// read was small has none between reads (an idle connection holds no buffer); a
    /// bulk flow keeps one, grown with it (see `FIRST_BUFFER`).
    buffer: Vec<u8>,
    written: usize,
    filled: usize,
    /// The size of the last read: under `FIRST_BUFFER`, the flow is not bulk.
    last_read: usize,
    step: Step,
    moved: u64,
}

#[derive(Default)]
enum Step {
    #[default]
    Read,
    Write,
    Flush,
    Shutdown,
    Done,
}

impl Half {
    /// Copies `from` to `to` until `from` ends, then passes the end on.
    fn poll_copy(
        &mut self,
        cx: &mut Context<'_>,
        from: &mut (impl AsyncRead + Unpin),
        to: &mut (impl AsyncWrite + Unpin),
    ) -> Poll<io::Result<()>> {
        loop {
            match self.step {
                Step::Read => ready!(self.poll_read(cx, from, to))?,
                Step::Write => {
                    let n = write_now(cx, to, &self.buffer[self.written..self.filled])?;
                    self.written += n;
                    self.moved += n as u64;
                    if self.written < self.filled {
                        return Poll::Pending;
                    }
                    self.step = Step::Flush;
                }
                // A TLS stream may take bytes while its records still wait for the
                // socket; only a flush waits until they are out (see `send`).
                Step::Flush => {
                    ready!(Pin::new(&mut *to).poll_flush(cx))?;
                    self.rebuffer();
                    self.step = Step::Read;
                }
                Step::Shutdown => {
                    unless_gone(ready!(Pin::new(&mut *to).poll_shutdown(cx)))?;
                    self.step = Step::Done;
                }
                Step::Done => return Poll::Ready(Ok(())),
            }
        }
    }

    /// Reads the next bytes: into the buffer of a bulk flow, else onto the stack, written
    /// from there at once as far as `to` takes them, so that only what waits for `to`
    /// goes to the heap.
    fn poll_read(
        &mut self,
        cx: &mut Context<'_>,
        from: &mut (impl AsyncRead + Unpin),
        to: &mut (impl AsyncWrite + Unpin),
    ) -> Poll<io::Result<()>> {
        if !self.buffer.is_empty() {
            let mut read = ReadBuf::new(&mut self.buffer);
            ready!(Pin::new(from).poll_read(cx, &mut read))?;
            let n = read.filled().len();
            (self.written, self.filled, self.last_read) = (0, n, n);
            self.step = if n == 0 { Step::Shutdown } else { Step::Write };
            if n == 0 {
                self.buffer = Vec::new();
            }
            return Poll::Ready(Ok(()));
        }
        let mut stack = [0; FIRST_BUFFER];
        let mut read = ReadBuf::new(&mut stack);
        ready!(Pin::new(from).poll_read(cx, &mut read))?;
        let n = read.filled().len();
        self.last_read = n;
        if n == 0 {
            self.step = Step::Shutdown;
            return Poll::Ready(Ok(()));
        }
        let written = write_now(cx, to, &stack[..n])?;
        self.moved += written as u64;
        self.buffer = stack[written..n].to_vec();
        (self.written, self.filled) = (0, n - written);
        self.step = Step::Write;
        Poll::Ready(Ok(()))
    }

    /// After a write: no buffer for a flow whose last read was small, a larger one for a
    /// flow that filled its buffer.
    fn rebuffer(&mut self) {
        if self.last_read < FIRST_BUFFER {
            self.buffer = Vec::new();
        } else {
            let len = grown(self.buffer.len().max(FIRST_BUFFER), self.last_read);
            self.buffer.resize(len, 0);
        }
    }
}

/// Writes `bytes` to `to` as far as it takes them without waiting: how many it took
/// (fewer than all: `to` wakes the task when it takes more).
fn write_now(
    cx: &mut Context<'_>,
    to: &mut (impl AsyncWrite + Unpin),
    bytes: &[u8],
) -> io::Result<usize> {
    let mut written = 0;
    while written < bytes.len() {
        match Pin::new(&mut *to).poll_write(cx, &bytes[written..]) {
            Poll::Ready(Ok(0)) => return Err(io::ErrorKind::WriteZero.into()),
            Poll::Ready(Ok(n)) => written += n,
            Poll::Ready(Err(e)) => return Err(e),
            Poll::Pending => break,
        }
    }
    Ok(written)
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

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use tokio::{
        io::{AsyncReadExt, AsyncWriteExt},
        net::TcpListener,
    };

    use super::*;

    /// Two ends of a loopback TCP connection.
    async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let near = TcpStream::connect(listener.local_addr().unwrap());
        let (near, far) = tokio::join!(near, listener.accept());
        (near.unwrap(), far.unwrap().0)
    }

    /// Polls `half` from `from` to `to` until `done` says so after a poll.
    async fn copy_until(
        half: &mut Half,
        (from, to): (&mut TcpStream, &mut TcpStream),
        mut done: impl FnMut(&Half) -> bool,
    ) {
        std::future::poll_fn(|cx| match half.poll_copy(cx, from, to) {
            Poll::Ready(result) => Poll::Ready(result),
            Poll::Pending if done(half) => Poll::Ready(Ok(())),
            Poll::Pending => Poll::Pending,
        })
        .await
        .unwrap();
    }

    /// Small messages cross without a buffer kept between them; a bulk flow gets one that
    /// grows, and gives it up once its reads are small again. Every byte arrives in order.
    #[tokio::test]
    async fn only_a_bulk_flow_keeps_a_buffer_between_reads() {
        let ((mut app, mut from), (mut to, mut peer)) = (pair().await, pair().await);
        let mut half = Half::default();
        app.write_all(b"hello").await.unwrap();
        copy_until(&mut half, (&mut from, &mut to), |h| h.moved == 5).await;
        assert_eq!(
            half.buffer.capacity(),
            0,
            "an idle direction holds a buffer"
        );
        let mut hello = [0; 5];
        peer.read_exact(&mut hello).await.unwrap();
        assert_eq!(&hello, b"hello");

        let bulk: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        let sent = bulk.clone();
        let writing = tokio::spawn(async move {
            app.write_all(&sent).await.unwrap();
            app
        });
        let reading = tokio::spawn(async move {
            let mut received = vec![0; 3_000_000];
            peer.read_exact(&mut received).await.unwrap();
            (peer, received)
        });
        let mut largest = 0;
        copy_until(&mut half, (&mut from, &mut to), |h| {
            largest = largest.max(h.buffer.len());
            h.moved == 5 + 3_000_000
        })
        .await;
        let (mut peer, received) = reading.await.unwrap();
        assert!(received == bulk, "the bulk flow arrived changed");
        assert!(largest > FIRST_BUFFER, "the buffer never grew: {largest}");

        let mut app = writing.await.unwrap();
        app.write_all(b"bye").await.unwrap();
        copy_until(&mut half, (&mut from, &mut to), |h| h.moved == 3_000_008).await;
        assert_eq!(
            half.buffer.capacity(),
            0,
            "a flow slowed down keeps its buffer"
        );
        drop(app);
        copy_until(&mut half, (&mut from, &mut to), |_| false).await;
        let mut rest = Vec::new();
        peer.read_to_end(&mut rest).await.unwrap();
        assert_eq!(rest, b"bye", "the end was not passed on");
    }

    /// A bulk flow that ends gives its buffer up with it (the other direction may go on
    /// for long).
    #[tokio::test]
    async fn a_direction_that_ended_holds_no_buffer() {
        let ((mut app, mut from), (mut to, mut peer)) = (pair().await, pair().await);
        let reading = tokio::spawn(async move {
            let mut all = Vec::new();
            peer.read_to_end(&mut all).await.unwrap();
            all.len()
        });
        let writing = tokio::spawn(async move {
            app.write_all(&vec![7; 1_000_000]).await.unwrap();
        });
        let mut half = Half::default();
        let mut largest = 0;
        copy_until(&mut half, (&mut from, &mut to), |h| {
            largest = largest.max(h.buffer.len());
            false
        })
        .await;
        writing.await.unwrap();
        assert!(largest > FIRST_BUFFER, "the buffer never grew: {largest}");
        assert_eq!(
            half.buffer.capacity(),
            0,
            "an ended direction keeps its buffer"
        );
        drop(to);
        assert_eq!(reading.await.unwrap(), 1_000_000);
    }

    /// The client end of `a_sustained_upload_leaves_the_reply_its_turn`: it always has
    /// bytes to send, and keeps what it is sent. Like a socket, each call spends the
    /// task's budget.
    struct Uploader(Arc<Mutex<Vec<u8>>>);

    /// The server end: takes every byte, and replies once.
    struct Replier(Option<&'static [u8]>);

    /// Spends a unit of the task's budget, as a socket's calls do (Pending once spent).
    fn budget(cx: &mut Context<'_>) -> Poll<()> {
        tokio::task::coop::poll_proceed(cx).map(|unit| unit.made_progress())
    }

    impl AsyncRead for Uploader {
        fn poll_read(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            ready!(budget(cx));
            buf.put_slice(&vec![b'u'; buf.remaining()]);
            Poll::Ready(Ok(()))
        }
    }

    impl AsyncWrite for Uploader {
        fn poll_write(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            bytes: &[u8],
        ) -> Poll<io::Result<usize>> {
            ready!(budget(cx));
            self.0.lock().unwrap().extend_from_slice(bytes);
            Poll::Ready(Ok(bytes.len()))
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    impl AsyncRead for Replier {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            ready!(budget(cx));
            match self.0.take() {
                Some(reply) => {
                    buf.put_slice(reply);
                    Poll::Ready(Ok(()))
                }
                None => Poll::Pending,
            }
        }
    }

    impl AsyncWrite for Replier {
        fn poll_write(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            bytes: &[u8],
        ) -> Poll<io::Result<usize>> {
            ready!(budget(cx));
            Poll::Ready(Ok(bytes.len()))
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    impl Endpoint for Uploader {
        fn reset(&self) {}
    }

    impl Endpoint for Replier {
        fn reset(&self) {}
    }

    /// A direction that always has bytes (an upload faster than it can be read) spends
    /// the task's budget at every poll; the other direction still gets its turn.
    #[tokio::test]
    async fn a_sustained_upload_leaves_the_reply_its_turn() {
        let received = Arc::new(Mutex::new(Vec::new()));
        let relay = tokio::spawn(bidirectional(
            Uploader(received.clone()),
            Replier(Some(b"reply")),
            std::future::pending(),
        ));
        let replied = async {
            while received.lock().unwrap().is_empty() {
                tokio::task::yield_now().await;
            }
        };
        let replied = tokio::time::timeout(std::time::Duration::from_secs(5), replied).await;
        relay.abort();
        assert!(replied.is_ok(), "the upload held the reply back");
        assert_eq!(*received.lock().unwrap(), b"reply");
    }

    /// A connection cut (a policy change, the drain window) resets both ends, and says
    /// why.
    #[tokio::test]
    async fn a_cut_resets_both_ends() {
        let ((mut app, client), (server, mut peer)) = (pair().await, pair().await);
        let (cut, why) = tokio::sync::oneshot::channel::<()>();
        let relay = tokio::spawn(bidirectional(client, server, async move {
            why.await.unwrap();
            "denied by policy".to_string()
        }));
        app.write_all(b"ping").await.unwrap();
        let mut ping = [0; 4];
        peer.read_exact(&mut ping).await.unwrap();
        cut.send(()).unwrap();
        let outcome = relay.await.unwrap();
        assert_eq!((outcome.request, outcome.response), (4, 0));
        assert!(
            outcome
                .error
                .unwrap()
                .to_string()
                .contains("denied by policy")
        );
        for end in [&mut app, &mut peer] {
            let read = end.read(&mut [0; 1]).await;
            assert_eq!(read.unwrap_err().kind(), io::ErrorKind::ConnectionReset);
        }
    }
}
