//! Moving bytes between an app-side TCP socket and a kernel-TLS socket with `splice(2)`:
//! through a pipe, by page reference, so the payload never enters userspace and the
//! kernel encrypts on the way.
//!
//! The kernel ends a TLS stream at the TCP FIN whether or not `close_notify` came first;
//! only `close_notify` is a complete stream here. Without it (the other daemon died, the
//! link was cut) the app's socket is reset, never closed as if the stream were whole —
//! unless our side had already sent its `close_notify`: servers such as nginx answer
//! that with a bare FIN, and every byte the app asked for has arrived by then.

use std::{
    io,
    os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd},
    sync::atomic::{AtomicBool, AtomicU64, Ordering},
};

use nix::{
    fcntl::{OFlag, SpliceFFlags, splice},
    sys::socket::{Shutdown, shutdown},
};
use tokio::{
    io::{AsyncWriteExt, Interest},
    net::TcpStream,
};

use crate::tls::kernel_tls::{KernelTls, close_write, read_control_record};

/// Bytes asked of the kernel per splice.
const CHUNK: usize = 256 * 1024;

/// What a spliced connection moved each way, and the error that ended it early.
pub struct Spliced {
    pub to_peer: u64,
    pub to_app: u64,
    pub error: Option<io::Error>,
}

/// Relays until both directions are done; a half-close is passed on (`close_notify` + FIN
/// towards the peer, FIN towards the app). When either direction fails, or `cut` says why
/// the connection may not go on, the app's socket is reset.
pub async fn relay(
    mut app: TcpStream,
    tls: KernelTls,
    cut: impl std::future::Future<Output = String>,
) -> Spliced {
    let (to_peer, to_app) = (AtomicU64::new(0), AtomicU64::new(0));
    let closed_ours = AtomicBool::new(false);
    let (tls, drained) = tls.into_parts();
    let result = async {
        app.write_all(&drained).await?;
        to_app.fetch_add(drained.len() as u64, Ordering::Relaxed);
        let upstream = async {
            pump(&app, &tls, None, &to_peer).await?;
            unless_gone(close_write(&tls).await)?;
            closed_ours.store(true, Ordering::Release);
            Ok(())
        };
        let downstream = async {
            pump(&tls, &app, Some(&closed_ours), &to_app).await?;
            unless_gone(shutdown(app.as_raw_fd(), Shutdown::Write).map_err(io::Error::from))
        };
        tokio::select! {
            spliced = async { tokio::try_join!(upstream, downstream) } => spliced.map(|_| ()),
            why = cut => Err(io::Error::other(why)),
        }
    }
    .await;
    let error = result.err();
    if error.is_some() {
        reset(&app);
    }
    Spliced {
        to_peer: to_peer.into_inner(),
        to_app: to_app.into_inner(),
        error,
    }
}

/// Makes closing `stream` abortive (a TCP reset), for a stream that was cut short.
pub fn reset(stream: &TcpStream) {
    if let Err(e) = socket2::SockRef::from(stream).set_linger(Some(std::time::Duration::ZERO)) {
        tracing::debug!("SO_LINGER 0: {e}");
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
/// without one while our side was still open was cut short.
async fn pump(
    src: &TcpStream,
    dst: &TcpStream,
    tls: Option<&AtomicBool>,
    moved: &AtomicU64,
) -> io::Result<()> {
    let from_tls = tls.is_some();
    let pipe = Pipe::new()?;
    loop {
        src.readable().await?;
        match src.try_io(Interest::READABLE, || pipe.fill(src.as_fd())) {
            Ok(0) if tls.is_some_and(|closed| !closed.load(Ordering::Acquire)) => {
                return Err(truncated());
            }
            Ok(0) => return Ok(()),
            Ok(n) => {
                pipe.drain_into(dst, n).await?;
                moved.fetch_add(n as u64, Ordering::Relaxed);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) if from_tls && matches!(e.raw_os_error(), Some(libc::EINVAL | libc::EIO)) => {
                return read_control_record(src);
            }
            Err(e) => return Err(e),
        }
    }
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

    /// Pipe → socket, all `len` bytes.
    async fn drain_into(&self, dst: &TcpStream, mut len: usize) -> io::Result<()> {
        let flags = SpliceFFlags::SPLICE_F_MOVE | SpliceFFlags::SPLICE_F_NONBLOCK;
        while len > 0 {
            dst.writable().await?;
            let moved = dst.try_io(Interest::WRITABLE, || {
                splice(self.read.as_fd(), None, dst.as_fd(), None, len, flags)
                    .map_err(io::Error::from)
            });
            match moved {
                Ok(n) => len -= n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}
