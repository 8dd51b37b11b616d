//! Moving bytes between an app-side TCP socket and a kernel-TLS socket with `splice(2)`:
//! through a pipe, by page reference, so the payload never enters userspace and the
//! kernel encrypts on the way.

use std::{
    io,
    os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd},
};

use nix::{
    fcntl::{OFlag, SpliceFFlags, splice},
    sys::socket::{Shutdown, shutdown},
};
use tokio::{
    io::{AsyncWriteExt, Interest},
    net::TcpStream,
};

use super::kernel_tls::{KernelTls, close_write, read_control_record};

/// Bytes asked of the kernel per splice.
const CHUNK: usize = 256 * 1024;

/// Relays until both directions are done; a half-close is passed on (`close_notify` + FIN
/// towards the peer, FIN towards the app). Returns (bytes app→peer, peer→app).
pub async fn relay(mut app: TcpStream, tls: KernelTls) -> io::Result<(u64, u64)> {
    let (tls, drained) = tls.into_parts();
    app.write_all(&drained).await?;
    let upstream = async {
        let n = pump(&app, &tls, false).await?;
        unless_gone(close_write(&tls).await)?;
        io::Result::Ok(n)
    };
    let downstream = async {
        let n = pump(&tls, &app, true).await?;
        unless_gone(shutdown(app.as_raw_fd(), Shutdown::Write).map_err(io::Error::from))?;
        io::Result::Ok(n + drained.len() as u64)
    };
    tokio::try_join!(upstream, downstream)
}

/// Passing a close on to a peer that has already closed (and reset) its socket fails
/// with nothing lost: every byte of that direction was delivered before. Clients outside
/// the mesh (curl, browsers) close without waiting for our close.
fn unless_gone(result: io::Result<()>) -> io::Result<()> {
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

/// `src` to `dst` until `src`'s end. A kTLS source (`from_tls`) ends with `close_notify`,
/// a record splice cannot carry (it fails with EINVAL or EIO and recvmsg reads it).
async fn pump(src: &TcpStream, dst: &TcpStream, from_tls: bool) -> io::Result<u64> {
    let pipe = Pipe::new()?;
    let mut total = 0;
    loop {
        src.readable().await?;
        match src.try_io(Interest::READABLE, || pipe.fill(src.as_fd())) {
            Ok(0) => return Ok(total),
            Ok(n) => {
                pipe.drain_into(dst, n).await?;
                total += n as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) if from_tls && matches!(e.raw_os_error(), Some(libc::EINVAL | libc::EIO)) => {
                read_control_record(src)?;
                return Ok(total);
            }
            Err(e) => return Err(e),
        }
    }
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
