//! A TCP stream whose TLS records the kernel encrypts and decrypts (kTLS), with TLS 1.3's
//! half-close: a peer's `close_notify` ends only what it sends, and our shutdown sends
//! `close_notify` and a FIN but keeps reading. (The `ktls` crate's own stream treats
//! `close_notify` as a full close and drops the other direction's tail, which breaks
//! protocols that half-close; we use that crate only for the key hand-off.)
//!
//! Non-data records reach userspace as a control message: a plain `read` fails with EIO
//! and `recvmsg` then returns the record with its type.

use std::{
    io,
    os::fd::{AsRawFd, RawFd},
    pin::Pin,
    task::{Context, Poll, ready},
};

use nix::sys::socket::{ControlMessageOwned, MsgFlags, TlsGetRecordType, recvmsg};
use tokio::{
    io::{AsyncRead, AsyncWrite, Interest, ReadBuf},
    net::TcpStream,
};

const SOL_TLS: libc::c_int = 282;
const TLS_SET_RECORD_TYPE: libc::c_int = 1;
const RECORD_ALERT: u8 = 21;
const ALERT_WARNING: u8 = 1;
const CLOSE_NOTIFY: u8 = 0;

pub struct KernelTlsStream {
    io: TcpStream,
    /// Plaintext rustls had already decrypted when the kernel took over.
    drained: Vec<u8>,
    read_closed: bool,
    write_closed: bool,
}

impl KernelTlsStream {
    pub fn new(io: TcpStream, drained: Option<Vec<u8>>) -> Self {
        Self {
            io,
            drained: drained.unwrap_or_default(),
            read_closed: false,
            write_closed: false,
        }
    }

    /// Reads the non-data record at the head of the queue: `close_notify` ends the read
    /// side, anything else is an error.
    fn control_record(&mut self) -> io::Result<()> {
        let fd = self.io.as_raw_fd();
        let mut payload = [0u8; 64];
        let (record, len) = self
            .io
            .try_io(Interest::READABLE, || recv_record(fd, &mut payload))?;
        match (record, &payload[..len]) {
            (TlsGetRecordType::Alert, [_, CLOSE_NOTIFY]) => {
                self.read_closed = true;
                Ok(())
            }
            (TlsGetRecordType::Alert, [level, description]) => Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                format!("peer sent TLS alert {description} (level {level})"),
            )),
            (other, _) => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "unexpected {other:?} record after the handshake (not supported with kernel TLS)"
                ),
            )),
        }
    }
}

fn recv_record(fd: RawFd, payload: &mut [u8]) -> io::Result<(TlsGetRecordType, usize)> {
    let mut cmsg = nix::cmsg_space!(u8);
    let mut iov = [io::IoSliceMut::new(payload)];
    let msg =
        recvmsg::<()>(fd, &mut iov, Some(&mut cmsg), MsgFlags::empty()).map_err(io::Error::from)?;
    let record = msg.cmsgs().map_err(io::Error::from)?.find_map(|c| match c {
        ControlMessageOwned::TlsGetRecordType(t) => Some(t),
        _ => None,
    });
    let record =
        record.ok_or_else(|| io::Error::other("kTLS control record without a record type"))?;
    Ok((record, msg.bytes))
}

/// Sends a `close_notify` alert record through kernel TLS.
fn send_close_notify(fd: RawFd) -> io::Result<()> {
    let mut alert = [ALERT_WARNING, CLOSE_NOTIFY];
    // SAFETY: the control buffer is sized with CMSG_SPACE for one byte and filled through
    // the CMSG_* accessors; iov and control outlive the call.
    unsafe {
        let space = libc::CMSG_SPACE(1) as usize;
        let mut control = vec![0u8; space];
        let mut iov = libc::iovec {
            iov_base: alert.as_mut_ptr().cast(),
            iov_len: alert.len(),
        };
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = space;
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = SOL_TLS;
        (*cmsg).cmsg_type = TLS_SET_RECORD_TYPE;
        (*cmsg).cmsg_len = libc::CMSG_LEN(1) as usize;
        *libc::CMSG_DATA(cmsg) = RECORD_ALERT;
        if libc::sendmsg(fd, &msg, 0) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

impl AsyncRead for KernelTlsStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if !this.drained.is_empty() {
            let n = this.drained.len().min(buf.remaining());
            buf.put_slice(&this.drained[..n]);
            this.drained.drain(..n);
            return Poll::Ready(Ok(()));
        }
        loop {
            if this.read_closed {
                return Poll::Ready(Ok(()));
            }
            match ready!(Pin::new(&mut this.io).poll_read(cx, buf)) {
                Err(e) if e.raw_os_error() == Some(libc::EIO) => match this.control_record() {
                    Ok(()) => continue,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    Err(e) => return Poll::Ready(Err(e)),
                },
                other => return Poll::Ready(other),
            }
        }
    }
}

impl AsyncWrite for KernelTlsStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    /// `close_notify`, then FIN; the read side stays open for the peer's tail.
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        while !this.write_closed {
            ready!(this.io.poll_write_ready(cx))?;
            let fd = this.io.as_raw_fd();
            match this.io.try_io(Interest::WRITABLE, || send_close_notify(fd)) {
                Ok(()) => this.write_closed = true,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}
