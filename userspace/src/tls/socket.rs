//! The TCP socket under a TLS session, read in the way its session needs.
//!
//! A session the kernel will take over is read record by record (`CorkStream`), so
//! that rustls never holds bytes past the record where the kernel starts. Any other
//! session is read ahead in large chunks instead: rustls asks for at most 4 KiB at a time,
//! which read from the socket directly would be several system calls per 16 KiB record.
//! The read-ahead buffer is allocated when the socket is readable and freed when drained,
//! so an idle connection holds none (one whose app stopped reading holds up to 64 KiB
//! until it reads on). rustls is never handed bytes past the end of the record it is in,
//! so that a session can leave rustls for the daemon's own record layer
//! (`records::RecordStream`) at a record boundary, taking the bytes read ahead with it.

use std::{
    io::{self, IoSlice},
    os::fd::AsRawFd,
    pin::Pin,
    task::{Context, Poll, ready},
};

use bytes::{Buf, BytesMut};
use ktls::CorkStream;
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
};

/// Bytes read from the socket at once for a session in rustls.
const READ_AHEAD: usize = 64 * 1024;

pub enum Socket {
    /// Read record by record: the kernel's TLS may take over.
    Corked(CorkStream<TcpStream>),
    /// Read ahead: the session stays in userspace.
    ReadAhead {
        tcp: TcpStream,
        ahead: BytesMut,
        record: RecordEdge,
    },
}

/// Where the record rustls is reading ends, in the bytes read ahead.
#[derive(Debug, Default)]
pub struct RecordEdge {
    /// Bytes of the current record not yet handed to rustls (0: at a record boundary).
    left: usize,
    /// Hand rustls no further record: the session is leaving it.
    corked: bool,
}

/// A TLS record's header: type, version, length.
const HEADER: usize = 5;

impl Socket {
    pub fn corked(tcp: TcpStream) -> Self {
        Self::Corked(CorkStream::new(tcp))
    }

    pub fn read_ahead(tcp: TcpStream) -> Self {
        Self::ReadAhead {
            tcp,
            ahead: BytesMut::new(),
            record: RecordEdge::default(),
        }
    }

    /// Hands rustls nothing past the end of the record it is in (the kernel's TLS, or the
    /// daemon's record layer, takes the session on from there).
    pub fn cork(&mut self) {
        match self {
            Self::Corked(corked) => corked.corked = true,
            Self::ReadAhead { record, .. } => record.corked = true,
        }
    }

    pub fn tcp(&self) -> &TcpStream {
        match self {
            Self::Corked(corked) => &corked.io,
            Self::ReadAhead { tcp, .. } => tcp,
        }
    }

    /// Whether bytes wait to be read: read ahead, or in the kernel.
    pub fn has_unread(&self) -> bool {
        if let Self::ReadAhead { ahead, .. } = self
            && !ahead.is_empty()
        {
            return true;
        }
        let mut queued: libc::c_int = 0;
        // SAFETY: FIONREAD writes one int, the bytes in the socket's receive queue.
        let rc = unsafe { libc::ioctl(self.tcp().as_raw_fd(), libc::FIONREAD, &mut queued) };
        rc != 0 || queued > 0
    }

    /// The socket and the bytes read ahead past the record where rustls stopped (none for
    /// a socket read record by record); an error when rustls stopped within a record (the
    /// stream ended there).
    pub fn into_parts(self) -> Result<(TcpStream, BytesMut), String> {
        match self {
            Self::Corked(corked) => Ok((corked.io, BytesMut::new())),
            Self::ReadAhead { record, .. } if record.left > 0 => Err(format!(
                "the stream ended within a record ({} bytes short)",
                record.left
            )),
            Self::ReadAhead { tcp, ahead, .. } => Ok((tcp, ahead)),
        }
    }

    fn tcp_mut(&mut self) -> &mut TcpStream {
        match self {
            Self::Corked(corked) => &mut corked.io,
            Self::ReadAhead { tcp, .. } => tcp,
        }
    }
}

impl AsyncRead for Socket {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Corked(corked) => Pin::new(corked).poll_read(cx, buf),
            Self::ReadAhead { tcp, ahead, record } => poll_read_ahead(tcp, ahead, record, cx, buf),
        }
    }
}

/// Serves `buf` from `ahead` up to the end of the current record, refilling `ahead` with
/// one large read when it holds too little. Corked at a record boundary, serves nothing:
/// rustls reads that as the end of the stream.
fn poll_read_ahead(
    tcp: &TcpStream,
    ahead: &mut BytesMut,
    record: &mut RecordEdge,
    cx: &mut Context<'_>,
    buf: &mut ReadBuf<'_>,
) -> Poll<io::Result<()>> {
    loop {
        if record.left == 0 && record.corked {
            return Poll::Ready(Ok(()));
        }
        if record.left == 0 && ahead.len() >= HEADER {
            record.left = HEADER + usize::from(u16::from_be_bytes([ahead[3], ahead[4]]));
        }
        if record.left > 0 && !ahead.is_empty() {
            break;
        }
        ready!(tcp.poll_read_ready(cx))?;
        ahead.reserve(READ_AHEAD);
        match tcp.try_read_buf(ahead) {
            // The end of the stream: rustls gets a header cut short as it is, then nothing.
            Ok(0) if ahead.is_empty() => {
                *ahead = BytesMut::new();
                return Poll::Ready(Ok(()));
            }
            Ok(0) => record.left = ahead.len(),
            Ok(_) => {}
            // A spurious readiness: tokio cleared it, the next poll waits.
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if ahead.is_empty() {
                    *ahead = BytesMut::new();
                }
            }
            Err(e) => return Poll::Ready(Err(e)),
        }
    }
    let n = buf.remaining().min(ahead.len()).min(record.left);
    buf.put_slice(&ahead[..n]);
    ahead.advance(n);
    record.left -= n;
    if ahead.is_empty() {
        *ahead = BytesMut::new();
    }
    Poll::Ready(Ok(()))
}

/// Writes go to the socket as they come, vectored: rustls hands over a record per slice.
impl AsyncWrite for Socket {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(self.get_mut().tcp_mut()).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(self.get_mut().tcp_mut()).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(self.get_mut().tcp_mut()).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(self.get_mut().tcp_mut()).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use tokio::{
        io::{AsyncReadExt, AsyncWriteExt},
        net::TcpListener,
    };

    use super::*;

    /// Small reads (rustls asks for 4 KiB) get every byte in order and the end of the
    /// stream; between bursts the connection holds no read-ahead buffer.
    #[tokio::test]
    async fn small_reads_get_every_byte_and_an_idle_socket_holds_no_buffer() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut writer = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let mut socket = Socket::read_ahead(listener.accept().await.unwrap().0);
        let sent: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();

        writer.write_all(&sent[..1000]).await.unwrap();
        let mut first = vec![0; 1000];
        socket.read_exact(&mut first).await.unwrap();
        assert_eq!(first, sent[..1000]);
        let Socket::ReadAhead { ahead, .. } = &socket else {
            unreachable!()
        };
        assert_eq!(ahead.capacity(), 0, "a drained socket keeps its buffer");

        let rest = sent[1000..].to_vec();
        let writing = tokio::spawn(async move {
            writer.write_all(&rest).await.unwrap();
        });
        let mut received = first;
        let mut chunk = [0; 4096];
        loop {
            let n = socket.read(&mut chunk).await.unwrap();
            if n == 0 {
                break;
            }
            received.extend_from_slice(&chunk[..n]);
        }
        writing.await.unwrap();
        assert_eq!(received, sent);
    }

    /// Records as the wire has them: a header with the body's length, then the body.
    fn records(lengths: &[usize]) -> Vec<Vec<u8>> {
        lengths
            .iter()
            .enumerate()
            .map(|(i, &len)| {
                let mut record = vec![23, 3, 3];
                record.extend((len as u16).to_be_bytes());
                record.extend(std::iter::repeat_n(i as u8, len));
                record
            })
            .collect()
    }

    /// rustls is handed no byte past the record it is in, even from bytes that come a few
    /// at a time (headers split too): corked within a record, reads end at its end, and
    /// the bytes read ahead past it, with those still in the socket, are the next records
    /// whole.
    #[tokio::test]
    async fn corked_within_a_record_reads_end_at_its_end_and_keep_what_follows() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut writer = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let mut socket = Socket::read_ahead(listener.accept().await.unwrap().0);
        let records = records(&[1000, 20, 5000]);
        let wire = records.concat();
        let writing = tokio::spawn(async move {
            for piece in wire.chunks(3) {
                writer.write_all(piece).await.unwrap();
                tokio::task::yield_now().await;
            }
        });

        let mut first = vec![0; 10];
        let n = socket.read(&mut first).await.unwrap();
        first.truncate(n);
        socket.cork();
        socket.read_to_end(&mut first).await.unwrap();
        assert_eq!(
            first, records[0],
            "reads ended elsewhere than the record's end"
        );

        writing.await.unwrap();
        let (mut tcp, ahead) = socket.into_parts().unwrap();
        let mut rest = ahead.to_vec();
        tcp.read_to_end(&mut rest).await.unwrap();
        assert_eq!(rest, records[1..].concat());
    }
}
