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
    /// (Part of) session tickets the server sent after the session went to the kernel.
    /// They are passed over: the client keeps those it read before the hand-off.
    Tickets,
}

/// Reads the non-data record at the head of a kTLS socket's queue: `close_notify` or
/// session tickets (followed across records by `flight`); an error for anything else
/// (another alert; a key update, which the kernel could not follow).
pub fn read_control_record(io: &TcpStream, flight: &mut TicketFlight) -> io::Result<Control> {
    let fd = io.as_raw_fd();
    // A record's plaintext is at most 2^14 bytes; a longer one is read on by the next call.
    let mut payload = [0u8; 1 << 14];
    let (record, len) = io.try_io(Interest::READABLE, || recv_record(fd, &mut payload))?;
    match (record, &payload[..len]) {
        (TlsGetRecordType::Alert, [_, CLOSE_NOTIFY]) if !flight.is_open() => {
            Ok(Control::CloseNotify)
        }
        (TlsGetRecordType::Alert, [level, description]) => Err(io::Error::new(
            io::ErrorKind::ConnectionAborted,
            format!("peer sent TLS alert {description} (level {level})"),
        )),
        (TlsGetRecordType::Handshake, messages) if flight.pass_over(messages) => {
            Ok(Control::Tickets)
        }
        (other, _) => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "unexpected {other:?} record after the handshake (not supported with kernel TLS)"
            ),
        )),
    }
}

/// The session tickets passed over on one kTLS socket. A flight of NewSessionTicket
/// messages may span records (rustls cuts a flight at 16 KiB; a ticket carries the
/// client's chain), so each message is followed across them; at most
/// `MAX_TICKET_BYTES` in all, so that a peer cannot keep a relay busy with them. (From a
/// client they would break the protocol, but passing over them changes nothing.)
#[derive(Debug, Default)]
pub struct TicketFlight {
    /// The current message's header, as far as it has come.
    header: [u8; 4],
    header_len: usize,
    /// What is left of the current message's body.
    body_left: usize,
    passed: usize,
}

/// What a connection's ticket records may hold in all (as much as rustls allows one
/// handshake message): four tickets of a client whose chain passes 16 KB would pass it,
/// and that connection would be reset.
const MAX_TICKET_BYTES: usize = 64 * 1024;
const NEW_SESSION_TICKET: u8 = 4;

impl TicketFlight {
    /// Passes over one handshake record: false when it holds anything but (parts of)
    /// NewSessionTicket messages, or the bound is passed.
    fn pass_over(&mut self, mut record: &[u8]) -> bool {
        self.passed += record.len();
        if record.is_empty() || self.passed > MAX_TICKET_BYTES {
            return false;
        }
        while !record.is_empty() {
            if self.body_left > 0 {
                let n = self.body_left.min(record.len());
                self.body_left -= n;
                record = &record[n..];
                continue;
            }
            let n = (self.header.len() - self.header_len).min(record.len());
            self.header[self.header_len..][..n].copy_from_slice(&record[..n]);
            self.header_len += n;
            record = &record[n..];
            if self.header_len == self.header.len() {
                let [kind, a, b, c] = self.header;
                if kind != NEW_SESSION_TICKET {
                    return false;
                }
                self.body_left = u32::from_be_bytes([0, a, b, c]) as usize;
                self.header_len = 0;
            }
        }
        true
    }

    /// Whether a message goes on in the next record, which must then be a handshake
    /// record: TLS 1.3 interleaves no other record within a handshake message.
    pub fn is_open(&self) -> bool {
        self.header_len > 0 || self.body_left > 0
    }
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

    fn ticket(body: &[u8]) -> Vec<u8> {
        let len = (body.len() as u32).to_be_bytes();
        [&[NEW_SESSION_TICKET, len[1], len[2], len[3]][..], body].concat()
    }

    #[test]
    fn whole_session_tickets_pass_and_anything_else_does_not() {
        let flight = |record: &[u8]| TicketFlight::default().pass_over(record);
        assert!(flight(&ticket(b"one")));
        assert!(flight(&[ticket(b"one"), ticket(b"two")].concat()));
        // A key update (24), a ticket then a key update, nothing at all.
        assert!(!flight(&[24, 0, 0, 1, 0]));
        assert!(!flight(&[ticket(b"one"), vec![24, 0, 0, 0]].concat()));
        assert!(!flight(&[]));
    }

    #[test]
    fn a_flight_cut_into_records_anywhere_passes_and_must_go_on() {
        let (first, second) = (ticket(&[7; 300]), ticket(&[8; 5]));
        let whole = [first.clone(), second].concat();
        for cut in 1..whole.len() {
            let mut flight = TicketFlight::default();
            assert!(flight.pass_over(&whole[..cut]), "cut at {cut}");
            // Open unless the cut falls between the two messages.
            assert_eq!(flight.is_open(), cut != first.len(), "cut at {cut}");
            assert!(flight.pass_over(&whole[cut..]), "cut at {cut}");
            assert!(!flight.is_open(), "cut at {cut}");
        }
        // A record that ends the ticket it went on with, then brings a key update.
        let mut flight = TicketFlight::default();
        assert!(flight.pass_over(&first[..100]));
        assert!(!flight.pass_over(&[&first[100..], &[24, 0, 0, 0][..]].concat()));
    }

    #[test]
    fn tickets_pass_up_to_their_bound() {
        let mut flight = TicketFlight::default();
        let record = ticket(&[0; 16 * 1024 - 4]);
        for _ in 0..MAX_TICKET_BYTES / record.len() {
            assert!(flight.pass_over(&record));
        }
        assert!(!flight.pass_over(&record));
    }
}
