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
    /// Where the send key's record budget comes from.
    budget: Budget,
}

enum Budget {
    /// The kernel's count and the cipher's limit, or `records_per_key` if lower (the
    /// operator's `--tls-records-per-key`).
    Kernel { records_per_key: u64 },
    /// A plain TCP socket standing in for a kTLS one in tests: no key to wear out.
    #[cfg(test)]
    Unlimited,
}

impl KernelTls {
    pub fn new(io: TcpStream, drained: Option<Vec<u8>>, records_per_key: u64) -> Self {
        Self {
            io,
            drained: drained.unwrap_or_default(),
            budget: Budget::Kernel { records_per_key },
        }
    }

    /// A plain TCP socket in the place of a kTLS one (splicing data is the same).
    #[cfg(test)]
    pub fn plain(io: TcpStream) -> Self {
        Self {
            io,
            drained: Vec::new(),
            budget: Budget::Unlimited,
        }
    }

    /// The operator's bound on records per key, for a socket made anew from this one's.
    pub fn records_per_key(&self) -> u64 {
        match self.budget {
            Budget::Kernel { records_per_key } => records_per_key,
            #[cfg(test)]
            Budget::Unlimited => u64::MAX,
        }
    }

    /// How many more records the socket's send key may seal.
    pub fn send_budget(&self) -> io::Result<SendBudget> {
        match self.budget {
            Budget::Kernel { records_per_key } => SendBudget::of(&self.io, records_per_key),
            #[cfg(test)]
            Budget::Unlimited => Ok(SendBudget {
                limit: u64::MAX,
                spent: 0,
            }),
        }
    }

    /// The socket, and the plaintext rustls decrypted before the hand-off (which comes
    /// before the socket's bytes): for splicing.
    pub fn into_parts(self) -> (TcpStream, Vec<u8>) {
        (self.io, self.drained)
    }
}

/// The largest record payload (see `records`).
const MAX_RECORD: u64 = 1 << 14;

/// How many more records a kTLS socket may send under its key. An AES-GCM key may seal
/// only so many records before its confidentiality bound no longer holds (2^24, RFC 8446
/// 5.5, as rustls counts it); rustls updates the key there (TLS 1.3) or closes (TLS 1.2),
/// but the kernel does neither and rustls no longer has the session. So the relay ends
/// the connection before the key has sent its last allowed record, keeping one for
/// `close_notify`. Sends are counted from above (records per send: see `MAX_RECORD`);
/// the kernel's own count, its record sequence number, is read when that estimate reaches
/// the limit (a relay of one-byte writes, which the estimate counts twice, reads it about
/// 24 times in a key's life).
#[derive(Debug)]
pub struct SendBudget {
    limit: u64,
    /// Records sent, counted from above since the kernel's count was last read.
    spent: u64,
}

impl SendBudget {
    /// The budget of `io`'s send key: its cipher's limit (or `records_per_key`, if lower)
    /// and what it has sent so far, as the kernel says.
    fn of(io: &TcpStream, records_per_key: u64) -> io::Result<Self> {
        let (limit, sent) = send_state(io.as_raw_fd())?;
        Ok(Self {
            limit: limit.min(records_per_key),
            spent: sent,
        })
    }

    /// Before a send of up to `len` bytes (and a `close_notify` after it): Ok while the
    /// key may still seal them, an error that ends the connection once it may not.
    pub fn reserve(&mut self, io: &TcpStream, len: usize) -> io::Result<()> {
        self.reserve_with(len, || Ok(send_state(io.as_raw_fd())?.1))
    }

    fn reserve_with(
        &mut self,
        len: usize,
        sent: impl FnOnce() -> io::Result<u64>,
    ) -> io::Result<()> {
        let needed = records(len) + 1;
        if self.spent.saturating_add(needed) <= self.limit {
            return Ok(());
        }
        self.spent = sent()?;
        if self.spent.saturating_add(needed) <= self.limit {
            return Ok(());
        }
        Err(io::Error::other(format!(
            "the TLS session's key has sent {} of the {} records it may (a new connection gets a new key)",
            self.spent, self.limit
        )))
    }

    /// Counts a send of `len` bytes.
    pub fn spend(&mut self, len: usize) {
        self.spent = self.spent.saturating_add(records(len));
    }
}

/// The most records a send of `len` bytes makes (a record left open by the send before
/// may be closed by this one).
fn records(len: usize) -> u64 {
    len as u64 / MAX_RECORD + 2
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

/// The send key's record limit and the records it has sealed (the kernel's record
/// sequence number, the last field of the cipher's crypto-info struct).
fn send_state(fd: RawFd) -> io::Result<(u64, u64)> {
    let mut info = [0u8; size_of::<libc::tls12_crypto_info_aes_gcm_256>()];
    let short = || io::Error::other("kernel TLS: a short crypto-info struct");
    let header = get_send_info(fd, &mut info[..size_of::<libc::tls_crypto_info>()])?;
    let &[_, _, a, b] = header else {
        return Err(short());
    };
    let (size, limit) = cipher(u16::from_ne_bytes([a, b]))?;
    let full = get_send_info(fd, &mut info[..size])?;
    let seq = full.last_chunk::<8>().filter(|_| full.len() == size);
    Ok((limit, u64::from_be_bytes(*seq.ok_or_else(short)?)))
}

/// `getsockopt(SOL_TLS, TLS_TX)` into `buf`, whose length selects what the kernel
/// returns (the header alone, or the whole struct of the socket's cipher).
fn get_send_info(fd: RawFd, buf: &mut [u8]) -> io::Result<&[u8]> {
    let mut len = buf.len() as libc::socklen_t;
    // SAFETY: the kernel writes at most `len` bytes into `buf`, which outlives the call.
    let rc =
        unsafe { libc::getsockopt(fd, SOL_TLS, libc::TLS_TX, buf.as_mut_ptr().cast(), &mut len) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(&buf[..len as usize])
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

    /// Sends through a budget of `limit` records to a stand-in kernel that seals
    /// `per_send` records per send of `len` bytes: (records sealed when the budget
    /// stopped the sends, kernel reads).
    fn send_until_stopped(limit: u64, len: usize, per_send: u64) -> (u64, u64) {
        let mut budget = SendBudget { limit, spent: 0 };
        let (sealed, reads) = (std::cell::Cell::new(0), std::cell::Cell::new(0));
        let kernel = || {
            reads.set(reads.get() + 1);
            Ok(sealed.get())
        };
        while budget.reserve_with(len, kernel).is_ok() {
            sealed.set(sealed.get() + per_send);
            budget.spend(len);
        }
        (sealed.get(), reads.get())
    }

    #[test]
    fn a_key_stops_sending_before_its_limit_with_room_for_close_notify() {
        // One-byte sends, one record each: counted twice from above, read at the limit.
        let (sealed, reads) = send_until_stopped(1 << 24, 1, 1);
        // The last send may need two records (one left open before), and close_notify one.
        assert_eq!(sealed, (1 << 24) - 2);
        assert!(reads <= 26, "{reads} reads of the kernel's count");
        // Full records: a 64 KiB send seals 4, the estimate allows for 6 and close_notify.
        let (sealed, _) = send_until_stopped(1000, 64 << 10, 4);
        assert_eq!(sealed, 996);
    }

    #[test]
    fn a_budget_out_of_records_refuses_every_send_after() {
        let mut budget = SendBudget {
            limit: 10,
            spent: 0,
        };
        for _ in 0..4 {
            assert!(budget.reserve_with(1, || Ok(0)).is_ok());
            budget.spend(1);
        }
        let refused = budget.reserve_with(1, || Ok(8)).unwrap_err();
        assert!(
            refused.to_string().contains("8 of the 10 records"),
            "{refused}"
        );
        assert!(budget.reserve_with(1, || Ok(8)).is_err());
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
