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

const RECORD_ALERT: u8 = 21;
const ALERT_WARNING: u8 = 1;
const CLOSE_NOTIFY: u8 = 0;

pub struct KernelTls {
    io: TcpStream,
    /// Plaintext rustls had already decrypted when the kernel took over.
    drained: Vec<u8>,
    /// The most records the operator lets one key send (`--tls-records-per-key`), below
    /// the cipher's own limit (see `SendBudget`).
    records_per_key: u64,
}

impl KernelTls {
    pub fn new(io: TcpStream, drained: Option<Vec<u8>>, records_per_key: u64) -> Self {
        Self {
            io,
            drained: drained.unwrap_or_default(),
            records_per_key,
        }
    }

    /// The operator's bound, for a socket made anew from this one's (resumed after a
    /// hand-over nobody took).
    pub fn records_per_key(&self) -> u64 {
        self.records_per_key
    }

    /// How many more records the socket's send key may seal, as the kernel says.
    pub fn send_budget(&self) -> io::Result<SendBudget> {
        let fd = self.io.as_raw_fd();
        let mut header = [0u8; size_of::<libc::tls_crypto_info>()];
        let &[_, _, a, b] = get_send_info(fd, &mut header)? else {
            return Err(short_info());
        };
        let (info_size, limit) = cipher(u16::from_ne_bytes([a, b]))?;
        Ok(SendBudget {
            limit: limit.min(self.records_per_key),
            spent: sealed(fd, info_size)?,
            info_size,
        })
    }

    /// The socket, and the plaintext rustls decrypted before the hand-off (which comes
    /// before the socket's bytes): for splicing.
    pub fn into_parts(self) -> (TcpStream, Vec<u8>) {
        (self.io, self.drained)
    }
}

/// How many more records a kTLS socket may send under its key. An AES-GCM key may seal
/// only so many records before its confidentiality bound no longer holds (RFC 8446 5.5
/// allows 2^24.5 full records; rustls stops at 2^24); rustls updates the key there (TLS
/// 1.3) or closes (TLS 1.2), but the kernel does neither and rustls no longer has the
/// session. So the relay ends the connection before the key has sealed its last allowed
/// record, keeping one for `close_notify`.
///
/// Sends are counted from above without relying on how the kernel cuts records (by size,
/// by fragments, or where a send stopped): every record a send seals holds at least one
/// of its bytes, except a record a send before it left open, so a send of n bytes seals
/// at most n + 1. The kernel's own count, its record sequence number, is read when that
/// estimate reaches the limit: about once per 16 MiB of bulk early in a key's life, more
/// often as the limit nears, where each send is cut to what the key has left.
#[derive(Debug)]
pub struct SendBudget {
    limit: u64,
    /// Records sealed: the kernel's count when last read, plus the sends since, counted
    /// from above.
    spent: u64,
    /// The size of the socket's crypto-info struct (its cipher's), to read the count.
    info_size: usize,
}

impl SendBudget {
    /// No limit: for a plain TCP socket standing in for a kTLS one in tests.
    #[cfg(test)]
    pub fn unlimited() -> Self {
        Self {
            limit: u64::MAX,
            spent: 0,
            info_size: 0,
        }
    }

    /// Before a send of up to `len` bytes (and a `close_notify` after): how many of them
    /// the key may still seal (at least one), or an error that ends the connection.
    pub fn reserve(&mut self, io: &TcpStream, len: usize) -> io::Result<usize> {
        let info_size = self.info_size;
        self.reserve_with(len, || sealed(io.as_raw_fd(), info_size))
    }

    /// Before the `close_notify`: an error when the key may not seal it.
    pub fn reserve_close(&mut self, io: &TcpStream) -> io::Result<()> {
        let info_size = self.info_size;
        self.left(1, 1, || sealed(io.as_raw_fd(), info_size))
            .map(drop)
    }

    fn reserve_with(
        &mut self,
        len: usize,
        sent: impl FnOnce() -> io::Result<u64>,
    ) -> io::Result<usize> {
        // A send of n bytes seals at most n + 1 records, and close_notify one more.
        let left = self.left(3, len as u64 + 2, sent)?;
        Ok(usize::try_from(left - 2).map_or(len, |n| n.min(len)))
    }

    /// The records left, up to `wanted`: from the estimate while it allows `wanted`, else
    /// from the kernel's count; an error when fewer than `at_least` are left.
    fn left(
        &mut self,
        at_least: u64,
        wanted: u64,
        sent: impl FnOnce() -> io::Result<u64>,
    ) -> io::Result<u64> {
        if self.limit.saturating_sub(self.spent) >= wanted {
            return Ok(wanted);
        }
        self.spent = sent()?;
        let left = self.limit.saturating_sub(self.spent);
        if left < at_least {
            return Err(io::Error::other(format!(
                "the TLS session's key has sealed {} of the {} records it may (a new connection gets a new key)",
                self.spent, self.limit
            )));
        }
        Ok(left.min(wanted))
    }

    /// Counts a send of `len` bytes.
    pub fn spend(&mut self, len: usize) {
        self.spent = self.spent.saturating_add(len as u64 + 1);
    }
}

/// The size of the kernel's crypto-info struct for `cipher`, and how many records one
/// key may seal with it, as rustls counts them: AES-GCM 2^24 (TLS 1.2 and 1.3 alike);
/// ChaCha20-Poly1305 has no limit that matters. Any other cipher is refused: its limit is
/// unknown here (hawser gives the kernel no other).
fn cipher(cipher: u16) -> io::Result<(usize, u64)> {
    match cipher {
        libc::TLS_CIPHER_AES_GCM_128 => {
            Ok((size_of::<libc::tls12_crypto_info_aes_gcm_128>(), 1 << 24))
        }
        libc::TLS_CIPHER_AES_GCM_256 => {
            Ok((size_of::<libc::tls12_crypto_info_aes_gcm_256>(), 1 << 24))
        }
        libc::TLS_CIPHER_CHACHA20_POLY1305 => Ok((
            size_of::<libc::tls12_crypto_info_chacha20_poly1305>(),
            u64::MAX,
        )),
        other => Err(io::Error::new(
            io::ErrorKind::Unsupported,
            format!("kernel TLS cipher {other}: no known record limit"),
        )),
    }
}

const _: () = assert!(
    size_of::<libc::tls12_crypto_info_chacha20_poly1305>()
        <= size_of::<libc::tls12_crypto_info_aes_gcm_256>()
);

/// The records the send key has sealed: the kernel's record sequence number, the last
/// field of the cipher's crypto-info struct (`info_size` bytes), which holds the key too:
/// wiped once read.
fn sealed(fd: RawFd, info_size: usize) -> io::Result<u64> {
    let mut info = zeroize::Zeroizing::new([0u8; size_of::<libc::tls12_crypto_info_aes_gcm_256>()]);
    let info = info.get_mut(..info_size).ok_or_else(short_info)?;
    let full = get_send_info(fd, info)?;
    let seq = full.last_chunk::<8>().filter(|_| full.len() == info_size);
    Ok(u64::from_be_bytes(*seq.ok_or_else(short_info)?))
}

fn short_info() -> io::Error {
    io::Error::other("kernel TLS: a short crypto-info struct")
}

/// `getsockopt(SOL_TLS, TLS_TX)` into `buf`, whose length selects what the kernel
/// returns (the header alone, or the whole struct of the socket's cipher).
fn get_send_info(fd: RawFd, buf: &mut [u8]) -> io::Result<&[u8]> {
    let mut len = buf.len() as libc::socklen_t;
    // SAFETY: the kernel writes at most `len` bytes into `buf`, which outlives the call.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_TLS,
            libc::TLS_TX,
            buf.as_mut_ptr().cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    buf.get(..len as usize)
        .ok_or_else(|| io::Error::other("kernel TLS: a long crypto-info struct"))
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
    pub(super) fn pass_over(&mut self, mut record: &[u8]) -> bool {
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

    /// The bytes passed over so far.
    #[cfg(test)]
    pub(super) fn passed(&self) -> usize {
        self.passed
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
        (*cmsg).cmsg_level = libc::SOL_TLS;
        (*cmsg).cmsg_type = libc::TLS_SET_RECORD_TYPE;
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

    /// Sends up to `len` bytes at a time through a budget of `limit` records to a
    /// stand-in kernel that seals `seal(n)` records for a send of n bytes, until the
    /// budget stops them: (records sealed then, bytes sent, reads of the kernel's count).
    fn send_until_stopped(limit: u64, len: usize, seal: impl Fn(u64) -> u64) -> (u64, u64, u64) {
        let mut budget = SendBudget {
            limit,
            spent: 0,
            info_size: 0,
        };
        let (sealed, reads) = (std::cell::Cell::new(0), std::cell::Cell::new(0));
        let mut bytes = 0;
        loop {
            let kernel = || {
                reads.set(reads.get() + 1);
                Ok(sealed.get())
            };
            let Ok(n) = budget.reserve_with(len, kernel) else {
                break;
            };
            assert!((1..=len).contains(&n), "{n} of {len} bytes");
            sealed.set(sealed.get() + seal(n as u64));
            bytes += n as u64;
            budget.spend(n);
        }
        // close_notify still fits.
        assert!(budget.left(1, 1, || Ok(sealed.get())).is_ok());
        (sealed.get(), bytes, reads.get())
    }

    #[test]
    fn a_key_stops_sending_before_its_limit_with_room_for_close_notify() {
        // One record per one-byte send: counted twice from above, read at the limit.
        let (sealed, _, reads) = send_until_stopped(1 << 24, 1, |_| 1);
        assert_eq!(sealed, (1 << 24) - 2);
        assert!(reads <= 26, "{reads} reads of the kernel's count");
        // The worst a kernel could do: a record per byte, and one left open before.
        let (sealed, _, _) = send_until_stopped(1000, 100, |n| n + 1);
        assert!((997..1000).contains(&sealed), "{sealed}");
        // Bulk: full records; near the limit the sends are cut to what is left.
        let full = |n: u64| n.div_ceil(1 << 14);
        let (sealed, _, _) = send_until_stopped(1 << 20, 64 << 10, full);
        assert!(((1 << 20) - 3..(1 << 20)).contains(&sealed), "{sealed}");
    }

    #[test]
    fn far_from_its_limit_a_key_is_read_once_per_16_mib() {
        let mut budget = SendBudget {
            limit: 1 << 24,
            spent: 0,
            info_size: 0,
        };
        let (mut sealed, mut reads) = (0, 0);
        // A gibibyte in 64 KiB sends of full records.
        for _ in 0..1 << 14 {
            let kernel = || {
                reads += 1;
                Ok(sealed)
            };
            let n = budget.reserve_with(64 << 10, kernel).unwrap();
            assert_eq!(n, 64 << 10);
            sealed += 4;
            budget.spend(n);
        }
        assert!((60..=70).contains(&reads), "{reads} reads");
    }

    #[test]
    fn a_budget_out_of_records_refuses_every_send_after() {
        let mut budget = SendBudget {
            limit: 10,
            spent: 0,
            info_size: 0,
        };
        assert_eq!(budget.reserve_with(100, || Ok(0)).unwrap(), 8);
        budget.spend(8);
        let refused = budget.reserve_with(1, || Ok(8)).unwrap_err();
        assert!(
            refused.to_string().contains("8 of the 10 records"),
            "{refused}"
        );
        assert!(budget.reserve_with(1, || Ok(8)).is_err());
        // Room for close_notify alone, then none.
        assert!(budget.left(1, 1, || Ok(9)).is_ok());
        let mut spent = SendBudget {
            limit: 10,
            spent: 10,
            info_size: 0,
        };
        assert!(spent.left(1, 1, || Ok(10)).is_err());
        // The kernel's count unreadable: no send.
        let unreadable = || Err(io::Error::other("getsockopt"));
        assert!(budget.reserve_with(1, unreadable).is_err());
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
