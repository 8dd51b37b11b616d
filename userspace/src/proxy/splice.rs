//! Moving bytes between an app-side TCP socket and a kernel-TLS socket with `splice(2)`:
//! through a pipe, by page reference, so the payload never enters userspace and the
//! kernel encrypts on the way.
//!
//! The kernel ends a TLS stream at the TCP FIN whether or not `close_notify` came first;
//! only `close_notify` is a complete stream here. Without it (the other daemon died, the
//! link was cut) the app's socket is reset, never closed as if the stream were whole —
//! unless our side had already sent its `close_notify`: servers such as nginx answer
//! that with a bare FIN, and every byte the app asked for has arrived by then.
//!
//! A relay can be paused for a successor daemon (`context::handoff`): each direction stops
//! when its pipe is empty, and the sockets are given back whole.

use std::{
    io,
    os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd},
    sync::atomic::{AtomicBool, AtomicU64, Ordering},
};

use nix::{
    fcntl::{OFlag, SpliceFFlags, splice},
    sys::socket::{Shutdown, shutdown},
};
use tokio::sync::watch;
use tokio::{
    io::{AsyncWriteExt, Interest},
    net::TcpStream,
};
use tokio_util::sync::CancellationToken;

use crate::tls::kernel_tls::{
    Control, KernelTls, SendBudget, TicketFlight, close_write, read_control_record,
};

/// Bytes asked of the kernel per splice.
const CHUNK: usize = 256 * 1024;

/// What a connection between an app and a tunnel moved each way, and the error that ended
/// it early (kernel TLS and serial sessions count from the app's side).
pub struct Moved {
    pub to_peer: u64,
    pub to_app: u64,
    pub error: Option<io::Error>,
}

/// How a relay ended: done (or cut), or paused with both directions open.
pub enum Ended {
    Done(Moved),
    Paused {
        app: TcpStream,
        tls: TcpStream,
        moved: Moved,
    },
}

/// Asks a relay to stop for a successor daemon. Once `stop` is cancelled each direction
/// waits at its next safe point, and the relay stops when both wait; once `resume` is
/// cancelled (the successor takes no more) a waiting direction goes on, and none waits
/// again. A direction that cannot reach its safe point (its app does not read) thus
/// holds the other up only until `resume`.
#[derive(Clone, Default)]
pub struct Pause {
    pub stop: CancellationToken,
    pub resume: CancellationToken,
}

/// Relays until both directions are done; a half-close is passed on (`close_notify` + FIN
/// towards the peer, FIN towards the app). When either direction fails, or `cut` says why
/// the connection may not go on, the app's socket is reset. With `pause` the sockets come
/// back whole, both directions stopped at a safe point. `budget` is what `tls`'s key may
/// still send (`KernelTls::send_budget`): the connection ends before it has sent more.
pub async fn relay(
    mut app: TcpStream,
    tls: KernelTls,
    budget: io::Result<SendBudget>,
    cut: impl std::future::Future<Output = String>,
    pause: &Pause,
) -> Ended {
    let (to_peer, to_app) = (AtomicU64::new(0), AtomicU64::new(0));
    let closed_ours = AtomicBool::new(false);
    let (tls, mut drained) = tls.into_parts();
    let result = async {
        let mut budget = budget?;
        // Freed once written: it holds the app's first bytes, and would otherwise stay
        // for the connection's life.
        let first = std::mem::take(&mut drained);
        app.write_all(&first).await?;
        to_app.fetch_add(first.len() as u64, Ordering::Relaxed);
        drop(first);
        let stopping = Stopping {
            pause,
            directions: watch::Sender::new(Directions::default()),
        };
        let upstream = async {
            let sent = pump(&app, &tls, None, Some(&mut budget), &to_peer, &stopping);
            if sent.await? == Pumped::Paused {
                return Ok::<_, io::Error>(Pumped::Paused);
            }
            stopping.ended();
            budget.reserve_close(&tls)?;
            unless_gone(close_write(&tls).await)?;
            closed_ours.store(true, Ordering::Release);
            Ok(Pumped::Ended)
        };
        let downstream = async {
            let received = pump(&tls, &app, Some(&closed_ours), None, &to_app, &stopping);
            if received.await? == Pumped::Paused {
                return Ok::<_, io::Error>(Pumped::Paused);
            }
            stopping.ended();
            unless_gone(shutdown(app.as_raw_fd(), Shutdown::Write).map_err(io::Error::from))?;
            Ok(Pumped::Ended)
        };
        let both = async {
            match tokio::try_join!(upstream, downstream)? {
                (Pumped::Ended, Pumped::Ended) => Ok(Pumped::Ended),
                (Pumped::Paused, Pumped::Paused) => Ok(Pumped::Paused),
                // A direction stops only once both wait: never one alone.
                _ => Err(io::Error::other("one direction stopped alone")),
            }
        };
        // A cut wins over a pause: a connection no longer allowed is never passed on.
        tokio::select! {
            biased;
            why = cut => Err(io::Error::other(why)),
            spliced = both => spliced,
        }
    }
    .await;
    let moved = |error| Moved {
        to_peer: to_peer.load(Ordering::Relaxed),
        to_app: to_app.load(Ordering::Relaxed),
        error,
    };
    match result {
        Ok(Pumped::Paused) => Ended::Paused {
            moved: moved(None),
            app,
            tls,
        },
        Ok(Pumped::Ended) => Ended::Done(moved(None)),
        Err(e) => {
            reset(&app);
            Ended::Done(moved(Some(e)))
        }
    }
}

/// One relay's two directions meeting at their safe points.
struct Stopping<'a> {
    pause: &'a Pause,
    /// How many directions wait at a safe point, and how many have ended.
    directions: watch::Sender<Directions>,
}

#[derive(Clone, Copy, Default)]
struct Directions {
    waiting: usize,
    ended: usize,
}

impl Stopping<'_> {
    /// Waits at a safe point: true once both directions wait (stop), false once the
    /// pause is given up or the other direction has ended (a half-closed connection is
    /// not passed on: go on at once).
    async fn both_wait(&self) -> bool {
        self.directions.send_modify(|d| d.waiting += 1);
        let mut directions = self.directions.subscribe();
        let met = tokio::select! {
            biased;
            d = directions.wait_for(|d| d.waiting >= 2 || d.ended > 0) => {
                d.is_ok_and(|d| d.waiting >= 2)
            }
            () = self.pause.resume.cancelled() => false,
        };
        if !met {
            self.directions.send_modify(|d| d.waiting -= 1);
        }
        met
    }

    /// A direction has ended: the other will not wait for it.
    fn ended(&self) {
        self.directions.send_modify(|d| d.ended += 1);
    }
}

/// Where one direction stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Pumped {
    /// Its source ended.
    Ended,
    /// Paused at a safe point: every byte read was written.
    Paused,
}

/// Makes closing `stream` abortive (a TCP reset), for a stream that was cut short.
pub fn reset(stream: &TcpStream) {
    abortive(socket2::SockRef::from(stream), true);
}

/// Makes closing a socket a reset (`SO_LINGER` 0), or an orderly close again.
pub fn abortive(socket: socket2::SockRef<'_>, on: bool) {
    let linger = on.then_some(std::time::Duration::ZERO);
    if let Err(e) = socket.set_linger(linger) {
        tracing::debug!("SO_LINGER: {e}");
    }
}

/// Passing a close on to a peer that has already closed (and reset) its socket fails
/// with nothing lost: every byte of that direction was delivered before. Clients outside
/// the mesh (curl, browsers) close without waiting for our close.
pub fn unless_gone(result: io::Result<()>) -> io::Result<()> {
    match result {
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(libc::ENOTCONN | libc::EPIPE | libc::ECONNRESET)
            ) =>
        {
            Ok(())
        }
        other => other,
    }
}

/// `src` to `dst` until `src`'s end, counting into `moved`. A kTLS source (`tls`: whether
/// our own `close_notify` went out) ends with `close_notify`, a record splice cannot
/// carry (it fails with EINVAL or EIO and recvmsg reads it); a kTLS source that ends
/// without one while our side was still open was cut short. A kTLS destination sends
/// only what its key's `budget` allows.
async fn pump(
    src: &TcpStream,
    dst: &TcpStream,
    tls: Option<&AtomicBool>,
    mut budget: Option<&mut SendBudget>,
    moved: &AtomicU64,
    stopping: &Stopping<'_>,
) -> io::Result<Pumped> {
    let from_tls = tls.is_some();
    let pipe = Pipe::new()?;
    let mut tickets = TicketFlight::default();
    let mut resumed = false;
    loop {
        // The pipe is empty here: the one safe point to stop at.
        tokio::select! {
            biased;
            // Not within a ticket cut across records: the successor's relay would start
            // in the middle of it.
            () = stopping.pause.stop.cancelled(), if !resumed && !tickets.is_open() => {
                if stopping.both_wait().await {
                    return Ok(Pumped::Paused);
                }
                resumed = true;
                continue;
            }
            readable = src.readable() => readable?,
        }
        match src.try_io(Interest::READABLE, || pipe.fill(src.as_fd())) {
            Ok(0) if tls.is_some_and(|closed| !closed.load(Ordering::Acquire)) => {
                return Err(truncated());
            }
            Ok(0) => return Ok(Pumped::Ended),
            Ok(_) if tickets.is_open() => return Err(cut_ticket()),
            Ok(n) => {
                pipe.drain_into(dst, n, budget.as_deref_mut()).await?;
                moved.fetch_add(n as u64, Ordering::Relaxed);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) if from_tls && matches!(e.raw_os_error(), Some(libc::EINVAL | libc::EIO)) => {
                match read_control_record(src, &mut tickets)? {
                    Control::CloseNotify => return Ok(Pumped::Ended),
                    Control::Tickets => {}
                }
            }
            Err(e) => return Err(e),
        }
    }
}

fn cut_ticket() -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        "a data record within a session ticket",
    )
}

fn truncated() -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        "the peer closed the TLS stream without close_notify: truncated",
    )
}

struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
}

impl Pipe {
    fn new() -> io::Result<Self> {
        let (read, write) = nix::unistd::pipe2(OFlag::O_NONBLOCK | OFlag::O_CLOEXEC)?;
        Ok(Self { read, write })
    }

    /// Socket → pipe, at most CHUNK bytes (what the pipe takes).
    fn fill(&self, src: BorrowedFd<'_>) -> io::Result<usize> {
        let flags = SpliceFFlags::SPLICE_F_MOVE | SpliceFFlags::SPLICE_F_NONBLOCK;
        splice(src, None, self.write.as_fd(), None, CHUNK, flags).map_err(io::Error::from)
    }

    /// Pipe → socket, all `len` bytes, each splice within the socket's `budget`.
    async fn drain_into(
        &self,
        dst: &TcpStream,
        mut len: usize,
        mut budget: Option<&mut SendBudget>,
    ) -> io::Result<()> {
        let flags = SpliceFFlags::SPLICE_F_MOVE | SpliceFFlags::SPLICE_F_NONBLOCK;
        while len > 0 {
            dst.writable().await?;
            let allowed = match budget.as_deref_mut() {
                Some(budget) => budget.reserve(dst, len)?,
                None => len,
            };
            let moved = dst.try_io(Interest::WRITABLE, || {
                splice(self.read.as_fd(), None, dst.as_fd(), None, allowed, flags)
                    .map_err(io::Error::from)
            });
            match moved {
                Ok(n) => {
                    len -= n;
                    if let Some(budget) = budget.as_deref_mut() {
                        budget.spend(n);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
pub(super) mod tests {
    use tokio::io::AsyncReadExt;

    use super::*;

    /// A plain TCP socket in the place of a kTLS one (splicing data is the same).
    fn plain(tls: TcpStream) -> KernelTls {
        KernelTls::new(tls, None, u64::MAX)
    }

    /// A connected loopback pair: (ours, the far end).
    pub(in crate::proxy) async fn tcp_pair() -> (TcpStream, TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let far = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        (listener.accept().await.unwrap().0, far)
    }

    async fn read_n(stream: &mut TcpStream, n: usize) -> Vec<u8> {
        let mut buf = vec![0; n];
        stream.read_exact(&mut buf).await.unwrap();
        buf
    }

    /// Paused with nothing in flight, the sockets come back whole and splicing them again
    /// goes on where it stopped. (Plain TCP stands in for the kernel-TLS side: splicing
    /// data is the same.)
    #[tokio::test]
    async fn a_paused_relay_gives_its_sockets_back_and_resumes_without_a_lost_byte() {
        let ((app, mut client), (tls, mut peer)) = (tcp_pair().await, tcp_pair().await);
        let pause = Pause::default();
        let never = std::future::pending::<String>();
        let running = tokio::spawn({
            let pause = pause.clone();
            async move { relay(app, plain(tls), Ok(SendBudget::unlimited()), never, &pause).await }
        });
        client.write_all(b"before").await.unwrap();
        assert_eq!(read_n(&mut peer, 6).await, b"before");
        pause.stop.cancel();
        let Ended::Paused { app, tls, moved } = running.await.unwrap() else {
            panic!("the relay did not pause");
        };
        assert_eq!((moved.to_peer, moved.to_app), (6, 0));
        // Bytes sent while paused wait in the sockets.
        peer.write_all(b"while").await.unwrap();
        let (cut, cutting) = tokio::sync::oneshot::channel::<()>();
        let resumed = tokio::spawn(async move {
            let cut = async {
                cutting
                    .await
                    .map_or_else(|_| "dropped".into(), |()| "cut".into())
            };
            relay(
                app,
                plain(tls),
                Ok(SendBudget::unlimited()),
                cut,
                &Pause::default(),
            )
            .await
        });
        assert_eq!(read_n(&mut client, 5).await, b"while");
        client.write_all(b"after").await.unwrap();
        assert_eq!(read_n(&mut peer, 5).await, b"after");
        cut.send(()).unwrap();
        let Ended::Done(moved) = resumed.await.unwrap() else {
            panic!("a resumed relay pauses no more");
        };
        assert_eq!((moved.to_peer, moved.to_app), (5, 5));
    }

    /// A direction whose app does not read never reaches its safe point: once the pause
    /// is given up, the relay goes on with both directions instead of hanging.
    #[tokio::test]
    async fn a_pause_given_up_lets_a_stalled_relay_go_on() {
        let ((app, mut client), (tls, mut peer)) = (tcp_pair().await, tcp_pair().await);
        let pause = Pause::default();
        let (cut, cutting) = tokio::sync::oneshot::channel::<()>();
        let running = tokio::spawn({
            let pause = pause.clone();
            async move {
                let cut = async {
                    cutting
                        .await
                        .map_or_else(|_| "dropped".into(), |()| "cut".into())
                };
                relay(app, plain(tls), Ok(SendBudget::unlimited()), cut, &pause).await
            }
        });
        // The peer sends more than the sockets hold while the client reads nothing.
        const BULK: usize = 16 << 20;
        let writer = tokio::spawn(async move {
            peer.write_all(&vec![7u8; BULK]).await.unwrap();
            peer
        });
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        pause.stop.cancel();
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        assert!(!running.is_finished(), "stopped with bytes in flight");
        pause.resume.cancel();
        assert_eq!(read_n(&mut client, BULK).await.len(), BULK);
        let mut peer = writer.await.unwrap();
        client.write_all(b"up").await.unwrap();
        assert_eq!(read_n(&mut peer, 2).await, b"up");
        cut.send(()).unwrap();
        let Ended::Done(moved) = running.await.unwrap() else {
            panic!("paused although a direction never reached its safe point");
        };
        assert_eq!((moved.to_peer, moved.to_app), (2, BULK as u64));
    }
}
