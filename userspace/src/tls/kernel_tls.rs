//! A TCP socket whose TLS records the kernel encrypts and decrypts (kTLS), and the two
//! record-level operations the splice relay needs, with TLS 1.3's half-close: a peer's
//! `close_notify` ends only what it sends; ours is followed by a FIN, and we keep
//! reading. (The `ktls` crate's own stream treats `close_notify` as a full close and
//! drops the other direction's tail, which breaks protocols that half-close; we use that
//! crate for the key hand-off only.)
//!
//! Non-data records reach userspace as a control message: `read`/`splice` fail and
//! `recvmsg` returns the record with its type.

use std::{
    io,
    os::fd::{AsRawFd, RawFd},
};

use nix::sys::socket::{ControlMessageOwned, MsgFlags, TlsGetRecordType, recvmsg};
use tokio::{io::Interest, net::TcpStream};

const SOL_TLS: libc::c_int = 282;
const TLS_SET_RECORD_TYPE: libc::c_int = 1;
const RECORD_ALERT: u8 = 21;
const ALERT_WARNING: u8 = 1;
const CLOSE_NOTIFY: u8 = 0;

pub struct KernelTls {
    io: TcpStream,
    /// Plaintext rustls had already decrypted when the kernel took over.
    drained: Vec<u8>,
}

impl KernelTls {
    pub fn new(io: TcpStream, drained: Option<Vec<u8>>) -> Self {
        Self {
            io,
            drained: drained.unwrap_or_default(),
        }
    }

    /// The socket, and the plaintext rustls decrypted before the hand-off (which comes
    /// before the socket's bytes): for splicing.
    pub fn into_parts(self) -> (TcpStream, Vec<u8>) {
        (self.io, self.drained)
    }
}

/// A non-data record the peer may send once the kernel has the session.
#[derive(Debug, PartialEq, Eq)]
pub enum Control {
    /// `close_notify`: the peer is done sending.
    CloseNotify,
    /// Session tickets the server sent after the session went to the kernel. They are
    /// passed over: the client keeps those it read before the hand-off. (From a client
    /// they would break the protocol, but passing over them changes nothing: no side
    /// is told apart for it.)
    Tickets,
}

/// Reads the non-data record at the head of a kTLS socket's queue: `close_notify` or
/// session tickets; an error for anything else (another alert; a key update, which
/// the kernel could not follow).
pub fn read_control_record(io: &TcpStream) -> io::Result<Control> {
    let fd = io.as_raw_fd();
    // A record's plaintext is at most 2^14 bytes: a ticket record is read whole.
    let mut payload = vec![0u8; 1 << 14];
    let (record, len) = io.try_io(Interest::READABLE, || recv_record(fd, &mut payload))?;
    match (record, &payload[..len]) {
        (TlsGetRecordType::Alert, [_, CLOSE_NOTIFY]) => Ok(Control::CloseNotify),
        (TlsGetRecordType::Alert, [level, description]) => Err(io::Error::new(
            io::ErrorKind::ConnectionAborted,
            format!("peer sent TLS alert {description} (level {level})"),
        )),
        (TlsGetRecordType::Handshake, messages) if only_tickets(messages) => Ok(Control::Tickets),
        (other, _) => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "unexpected {other:?} record after the handshake (not supported with kernel TLS)"
            ),
        )),
    }
}

/// Whether a handshake record holds whole NewSessionTicket messages and nothing else.
fn only_tickets(mut messages: &[u8]) -> bool {
    const NEW_SESSION_TICKET: u8 = 4;
    if messages.is_empty() {
        return false;
    }
    while let [kind, a, b, c, rest @ ..] = messages {
        let len = u32::from_be_bytes([0, *a, *b, *c]) as usize;
        if *kind != NEW_SESSION_TICKET || rest.len() < len {
            return false;
        }
        messages = &rest[len..];
    }
    messages.is_empty()
}

/// `close_notify` then FIN on a kTLS socket, waiting for room in the send buffer.
pub async fn close_write(io: &TcpStream) -> io::Result<()> {
    loop {
        io.writable().await?;
        let fd = io.as_raw_fd();
        match io.try_io(Interest::WRITABLE, || send_close_notify(fd)) {
            Ok(()) => break,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    }
    nix::sys::socket::shutdown(io.as_raw_fd(), nix::sys::socket::Shutdown::Write)
        .map_err(io::Error::from)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_whole_session_tickets_pass() {
        let ticket = |body: &[u8]| {
            let len = (body.len() as u32).to_be_bytes();
            [&[4, len[1], len[2], len[3]][..], body].concat()
        };
        assert!(only_tickets(&ticket(b"one")));
        assert!(only_tickets(&[ticket(b"one"), ticket(b"two")].concat()));
        // A key update (24), a message cut short, trailing bytes, nothing at all.
        assert!(!only_tickets(&[24, 0, 0, 1, 0]));
        assert!(!only_tickets(&ticket(b"one")[..5]));
        assert!(!only_tickets(&[ticket(b"one"), vec![4, 0]].concat()));
        assert!(!only_tickets(&[]));
    }
}
